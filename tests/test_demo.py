"""How `refsync demo` ends: a summary and the next commands to try, which work as printed with the
config the demo leaves behind after its sandbox CRMs are gone."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from refsync.adapters.sandbox.run import start_sandbox
from refsync.connector.cli import cli
from refsync.connector.cli.support import run_cli
from refsync.connector.demo import SAMPLE, demo_config, refsync_command, summary


def test_the_next_commands_work_as_printed_once_the_sandbox_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REFSYNC_CONFIG", raising=False)
    directory = tmp_path / ".demo"
    directory.mkdir()
    sandbox = start_sandbox(directory / "sandbox", seed=7)
    try:
        config = demo_config(directory, sandbox.salesforce.base_url, str(sandbox.salesforce.ca_path),
                             sandbox.hubspot.base_url, sandbox.salesforce.session_id, sandbox.hubspot.access_token)
        assert run_cli(["--config", str(config), "init"]) == 0
        assert run_cli(["--config", str(config), "import", str(SAMPLE)]) == 0
    finally:
        sandbox.stop()
    assert oct((directory / "sandbox-salesforce.session").stat().st_mode & 0o777) == "0o600"
    assert "stopped with it" in config.read_text()  # the left-over file says what still works

    text = summary(config, example="portal-1001")
    assert text.startswith("7 referrals (")
    commands = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    exe = Path(sys.executable).with_name("refsync")
    assert refsync_command() in ("refsync", str(exe))  # outside the working directory: the full path
    assert [c.split(" --config ")[1].split(" ", 1)[0] for c in commands] == [".demo/refsync.toml"] * 5
    assert "run the demo again" in text and "cannot reach them" in text
    first = shlex.split(commands[0])
    if first[0] == "refsync":
        first[0] = str(exe)
    run = subprocess.run(first, capture_output=True, text=True, check=False, cwd=tmp_path)  # as typed
    assert run.returncode == 0 and "ops:" in run.stdout, run.stderr
    for command in commands[1:]:  # the rest in-process, with the same arguments
        result = CliRunner().invoke(cli, shlex.split(command)[1:])
        assert result.exit_code in ((0, 1) if " alerts " in command else (0,)), (command, result.stderr)
        assert "refsync: error" not in result.stderr and result.stdout, command
    shown = CliRunner().invoke(cli, [*shlex.split(commands[2])[1:], "--json"])
    assert '"external_id": "portal-1001"' in shown.stdout


def test_refsync_command_is_the_path_the_user_typed_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = Path(sys.executable).with_name("refsync")
    monkeypatch.chdir(exe.parent.parent.parent)  # the project folder holding .venv
    monkeypatch.setattr(sys, "argv", [str(exe.relative_to(Path.cwd())), "demo"])
    monkeypatch.setenv("PATH", str(tmp_path))  # not on the PATH
    assert refsync_command() == str(exe.relative_to(Path.cwd()))
    monkeypatch.setenv("PATH", str(exe.parent))
    assert refsync_command() == "refsync"
