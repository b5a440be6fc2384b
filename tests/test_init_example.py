"""`refsync --version` and `refsync init --example`: what a new user runs first."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from refsync.connector.cli import cli
from refsync.connector.config import load_config
from refsync.shipped import shipped_path


def refsync(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_version_prints_the_installed_version() -> None:
    assert refsync("--version") == (0, f"refsync {version('refsync')}\n", "")


def test_init_example_writes_the_commented_config_and_shows_the_default_mappings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = refsync("init", "--example")
    written = tmp_path / "refsync.toml"
    assert code == 0 and out.startswith("wrote refsync.toml")
    assert written.read_text() == shipped_path("config.example.toml").read_text()
    assert "# refsync configuration." in written.read_text()
    mappings = shipped_path("mappings")
    assert str(mappings) in out and (mappings / "salesforce.toml").is_file()
    assert not list(tmp_path.glob("*.db"))  # the ledger is not touched
    # The file it wrote is a configuration refsync accepts, its mappings found among the shipped ones.
    config = load_config(written)
    assert config.mapping_path(config.crm.salesforce.mapping, "crm.salesforce.mapping") == mappings / "salesforce.toml"


def test_init_example_into_a_folder_and_never_over_a_file(tmp_path: Path) -> None:
    code, out, _ = refsync("init", "--example", f"{tmp_path}/")
    assert code == 0 and f"wrote {tmp_path / 'refsync.toml'}" in out
    mine = tmp_path / "mine.toml"
    mine.write_text("# my settings\n")
    code, out, err = refsync("init", "--example", str(mine))
    assert code == 2 and out == ""
    assert err == (f"refsync: error: {mine} already exists; refsync init --example never overwrites a file: "
                   "move it away or give another PATH\n")
    assert mine.read_text() == "# my settings\n"
    code, _, err = refsync("init", "--example", str(tmp_path / "missing" / "refsync.toml"))
    assert code == 2 and "check that its folder exists" in err


def test_plain_init_still_creates_the_ledger_and_refuses_a_path(tmp_path: Path) -> None:
    config = tmp_path / "refsync.toml"
    config.write_text('[ledger]\nurl = "sqlite:///ledger.db"\n')
    code, out, _ = refsync("--config", str(config), "init")
    assert code == 0 and "ledger created at" in out and (tmp_path / "ledger.db").is_file()
    code, _, err = refsync("--config", str(config), "init", "elsewhere.toml")
    assert code == 2 and "PATH is only taken with --example" in err
