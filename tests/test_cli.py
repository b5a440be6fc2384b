"""The command line as a user meets it: exit codes, one-line errors, the --json shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from refsync.connector.cli import cli

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"


@pytest.fixture
def config(tmp_path: Path, ledger_url: str) -> Path:
    path = tmp_path / "refsync.toml"
    path.write_text(f'[ledger]\nurl = "{ledger_url}"\n[logging]\nformat = "json"\n')
    return path


def refsync(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_import_then_list_json_has_the_contract_shape(config: Path, tmp_path: Path) -> None:
    sample = tmp_path / "r.csv"
    sample.write_text(HEADER + "\nacme,a@x.example,Acme,Ann,partner,referral,q4,2026-10-01T00:00:00Z,,e1\n")
    assert refsync(config, "init")[0] == 0
    code, out, _ = refsync(config, "import", str(sample))
    assert code == 0 and "1 imported" in out
    code, out, _ = refsync(config, "referrals", "list", "--json")
    assert code == 0
    [referral] = json.loads(out)
    for key in ("id", "external_id", "partner", "prospect_email", "prospect_company", "status", "submitted_at",
                "status_history", "links", "outcome", "attribution"):
        assert key in referral, key
    assert set(referral["status_history"][0]) >= {"status", "at", "source"}
    assert set(referral["outcome"]) >= {"amount", "currency", "close_date"}
    assert set(referral["attribution"]) >= {"model", "policy_version", "reason"}
    code, out, _ = refsync(config, "referrals", "show", referral["id"], "--json")
    shown = json.loads(out)
    assert [e["kind"] for e in shown["timeline"]] == ["submitted", "attribution_decided"]
    code, out, _ = refsync(config, "status", "--json")
    status = json.loads(out)
    assert set(status) >= {"ops", "cursors", "last_runs"}
    assert status["last_runs"]["import"]["counts"]["imported"] == 1


def test_rejected_rows_exit_1_and_name_line_and_column(config: Path, tmp_path: Path) -> None:
    sample = tmp_path / "r.csv"
    sample.write_text(HEADER + "\nacme,a@x.example,,,,,,,,e1\nacme,broken,,,,,,,,e2\n")
    refsync(config, "init")
    code, out, err = refsync(config, "import", str(sample))
    assert code == 1
    assert f"{sample}:3: prospect_email" in err
    assert "1 imported" in out and "1 rejected" in out


def test_missing_import_file_exits_2_with_one_line(config: Path, tmp_path: Path) -> None:
    refsync(config, "init")
    code, _, err = refsync(config, "import", str(tmp_path / "nope.csv"))
    assert code == 2
    assert err.strip().splitlines() == [f"refsync: error: {tmp_path / 'nope.csv'}: no such file"]


def test_bad_config_exits_2_listing_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[ledger]\nurl = "mysql://x"\n[attribution]\non_duplicate = "ignore"\n')
    code, _, err = refsync(bad, "status")
    assert code == 2
    assert "2 problems" in err and f"{bad}:2: ledger.url" in err and f"{bad}:4: attribution.on_duplicate" in err
    assert "Traceback" not in err


def test_uninitialised_ledger_says_to_run_init(tmp_path: Path) -> None:
    path = tmp_path / "refsync.toml"
    path.write_text('[ledger]\nurl = "sqlite:///fresh.db"\n')
    code, _, err = refsync(path, "referrals", "list")
    assert code == 2 and "run `refsync init` first" in err


def test_unknown_referral_exits_2(config: Path) -> None:
    refsync(config, "init")
    code, _, err = refsync(config, "referrals", "show", "01NOPE")
    assert code == 2 and "no referral with id 01NOPE" in err


def test_console_script_runs_and_debug_shows_traceback(tmp_path: Path) -> None:
    path = tmp_path / "refsync.toml"
    path.write_text('[ledger]\nurl = "sqlite:///fresh.db"\n')
    exe = Path(sys.executable).with_name("refsync")
    env = {**os.environ, "REFSYNC_CONFIG": str(path)}
    plain = subprocess.run([str(exe), "status"], capture_output=True, text=True, env=env, check=False)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run([str(exe), "--debug", "status"], capture_output=True, text=True, env=env, check=False)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
