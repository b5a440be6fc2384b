"""Secrets never reach a log line; lines about a referral carry its id."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from refsync.connector import logs
from refsync.connector.cli import cli

TOKEN = "pat-na1-5e1f2a3b-9c8d-4e7f-a6b5-0123456789ab"
SESSION = "00D5g000000abcd!AQ4AQFakeSessionIdValueXYZ123456"


def capture(fmt: str = "json") -> io.StringIO:
    stream = io.StringIO()
    logs.configure(fmt, "debug", stream=stream, secrets=[TOKEN])
    return stream


def test_configured_token_never_reaches_the_log_output() -> None:
    stream = capture()
    log = logs.get_logger("t", referral_id="01REF")
    log.info("pushing", url=f"https://api.example/x?access_token={TOKEN}", note=f"token is {TOKEN}")
    log.info("headers", headers={"Authorization": f"Bearer {TOKEN}", "X-Other": "fine"})
    logging.getLogger("urllib3.connectionpool").warning("sent Authorization: Bearer %s", TOKEN)
    try:
        raise RuntimeError(f"HTTP 401 for token {TOKEN}")
    except RuntimeError:
        log.exception("call failed")
    output = stream.getvalue()
    assert TOKEN not in output
    assert output.count("[REDACTED]") >= 4
    first = json.loads(output.splitlines()[0])
    assert first["referral_id"] == "01REF" and first["event"] == "pushing"


def test_secret_shaped_values_are_redacted_even_when_not_configured() -> None:
    stream = capture()
    logs.get_logger("t").info("login", session_id=SESSION, detail=f"sid={SESSION}", password="hunter22")
    output = stream.getvalue()
    assert SESSION not in output and "hunter22" not in output


def test_console_format_is_readable_text() -> None:
    stream = capture("console")
    logs.get_logger("t").info("imported", rows=3)
    line = stream.getvalue()
    assert "imported" in line and "rows=3" in line and not line.startswith("{")


def test_cli_never_logs_the_config_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HS_TOKEN_T", TOKEN)
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "sqlite:///{tmp_path}/l.db"\n'
                      '[crm.hubspot]\naccess_token = "env:HS_TOKEN_T"\n[logging]\nlevel = "debug"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "--debug", "init"])
    assert result.exit_code == 0
    logs.get_logger("t").info("echo", value=f"token={TOKEN}")
    assert TOKEN not in result.output + result.stderr
    assert logs.REDACTOR.scrub(f"x {TOKEN} y") == "x [REDACTED] y"
