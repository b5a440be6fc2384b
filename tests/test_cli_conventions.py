"""The command line's conventions, as an operator meets them: `--json` wherever something is
printed, `--config`/`--debug` after the subcommand too, usage errors in the one-line
`refsync: error:` form with exit 2, and the exit code contract (0 done, 1 problems, 2 unusable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.cli import cli
from refsync.state.ledger import Ledger
from refsync.state.models import SyncOp
from tests.conftest import FAST_RETRY, ROOT

EXE = Path(sys.executable).with_name("refsync")
# Commands that print no result of their own to script against: the daemon (logs), the sandbox
# (one JSON line already) and the demo (a narrative).
NO_JSON = {"run", "sandbox", "demo"}


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    path = tmp_path / "refsync.toml"
    path.write_text(f'[ledger]\nurl = "{sqlite_url}"\n[logging]\nformat = "json"\n')
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_every_command_that_prints_a_result_has_json() -> None:
    missing = [name for name, command in leaf_commands(cli).items()
               if name not in NO_JSON and not any("--json" in p.opts for p in command.params)]
    assert missing == []


def test_json_of_init_expire_notify_retry_and_partners_set(config: Path, tmp_path: Path) -> None:
    code, out, _ = invoke("init", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["action"] == "up_to_date"
    sample = tmp_path / "r.csv"
    sample.write_text("partner,prospect_email,submitted_at\nacme,a@x.example,2026-01-01T00:00:00Z\n")
    assert invoke("import", str(sample), "--config", str(config))[0] == 0
    code, out, _ = invoke("expire", "--dry-run", "--json", "--config", str(config))
    assert code == 0 and json.loads(out) == {"dry_run": True, "expire_after_days": 90, "candidates": 1,
                                             "expired": 0}
    code, out, _ = invoke("notify", "--json", "--config", str(config))
    assert code == 0 and json.loads(out)["webhooks"] == {"delivered": 0, "failed": 0, "dead": 0, "skipped": 0}
    code, out, _ = invoke("retry", "--json", "--config", str(config))
    assert code == 0 and json.loads(out) == {"requeued": 0, "not_dead": []}
    code, out, _ = invoke("partners", "set", "acme", "--clear-webhook", "--json", "--config", str(config))
    assert code == 0 and json.loads(out) == {"partner": "acme", "webhook": "cleared"}


def test_config_after_the_subcommand_wins_over_the_environment_and_the_root_option(
        config: Path, tmp_path: Path) -> None:
    elsewhere = str(tmp_path / "missing.toml")
    code, out, err = invoke("status", "--config", str(config), "--json", env={"REFSYNC_CONFIG": elsewhere})
    assert code == 0, err
    assert set(json.loads(out)) >= {"ops", "cursors", "last_runs"}
    code, out, _ = invoke("--config", elsewhere, "referrals", "list", "--json", "--config", str(config))
    assert code == 0 and json.loads(out) == []
    code, _, err = invoke("status", "--config", elsewhere)
    assert code == 2 and f"--config {elsewhere}" in err


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "refsync.toml"
    path.write_text('[ledger]\nurl = "sqlite:///fresh.db"\n')
    run = subprocess.run([str(EXE), "status", "--config", str(path), "--debug"], capture_output=True, text=True,
                         check=False, env={**os.environ, "REFSYNC_CONFIG": ""})
    assert run.returncode == 2 and "Traceback" in run.stderr and "run `refsync init` first" in run.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["status", "--bogus"], "No such option '--bogus'"),
    (["import"], "Missing argument 'FILE'"),
    (["referrals", "list", "--limit", "0"], "Invalid value for '--limit'"),
    (["report", "--by", "colour"], "Invalid value for '--by'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["alerts", "--open", "--resolved"], "--open and --resolved exclude each other"),
    (["retry", "abc"], "Invalid value for '[OP_IDS]...'"),
])
def test_usage_errors_are_one_line_with_exit_2(config: Path, args: list[str], says: str) -> None:
    code, out, err = invoke("--config", str(config), *args)
    assert code == 2
    assert out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("refsync: error: ") and says in line and "--help`" in line


def test_usage_error_from_the_installed_command(config: Path) -> None:
    run = subprocess.run([str(EXE), "ops", "--state", "stuck", "--config", str(config)], capture_output=True,
                         text=True, check=False)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "refsync: error: Invalid value for '--state': 'stuck' is not one of 'pending', 'in_flight', 'done', "
        "'failed', 'dead' (see `refsync ops --help`)"]


def _op(ledger: Ledger, key: str, state: str) -> int:
    now = datetime.now(UTC)
    with ledger.transaction() as txn:
        op = SyncOp(kind="push", dedupe_key=key, crm="hubspot", state=state, attempts=8, next_attempt_at=now,
                    created_at=now, updated_at=now)
        txn.session.add(op)
        txn.session.flush()
        return op.id


def test_retry_of_an_unknown_op_exits_2_names_it_and_requeues_nothing(config: Path, sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url)
    dead, done = _op(ledger, "a", "dead"), _op(ledger, "b", "done")
    code, out, err = invoke("--config", str(config), "retry", str(dead), "9999")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["refsync: error: no op with id 9999; nothing was requeued "
                                        "(`refsync ops --dead` lists the dead ops and their ids)"]
    assert ledger.ops(state="dead")[0]["id"] == dead  # still dead
    code, out, err = invoke("--config", str(config), "retry", str(dead), str(done))
    assert code == 1 and "1 dead ops requeued" in out and f"op {done} is done, not dead; left alone" in err
    assert ledger.ops(state="dead") == [] and ledger.ops(state="done")[0]["id"] == done
    ledger.close()


def _hubspot_config(tmp_path: Path, base_url: str, token: str) -> Path:
    (tmp_path / "hs.token").write_text(token)
    path = tmp_path / "crm.toml"
    path.write_text(f'[ledger]\nurl = "sqlite:///{tmp_path}/never.db"\n[crm.hubspot]\nbase_url = "{base_url}"\n'
                    f'access_token = "file:hs.token"\nmapping = "{ROOT}/mappings/hubspot.toml"\n{FAST_RETRY}'
                    '[logging]\nlevel = "error"\n')
    return path


def test_mappings_check_exits_2_when_the_crm_refuses_the_credentials(
        sandbox: RunningSandbox, tmp_path: Path) -> None:
    path = _hubspot_config(tmp_path, sandbox.hubspot.base_url, "pat-na1-not-the-token")
    code, out, err = invoke("mappings", "check", "--config", str(path))
    assert code == 2 and out == ""
    assert "refsync: error: hubspot: not checked: HubSpot refused refsync's credentials" in err
    code, out, _ = invoke("mappings", "check", "--config", str(path), "--json")
    assert code == 2
    result = json.loads(out)["hubspot"]
    assert result["ok"] is False and result["checked"] is False and result["misconfigured"] is True
    good = _hubspot_config(tmp_path, sandbox.hubspot.base_url, sandbox.hubspot.access_token)
    code, out, _ = invoke("mappings", "check", "--config", str(good), "--json")
    assert code == 0 and json.loads(out)["hubspot"]["ok"] is True


def test_mappings_check_of_an_unreachable_crm_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = _hubspot_config(tmp_path, f"http://127.0.0.1:{port}", "pat-na1-whatever")
    code, _, err = invoke("mappings", "check", "--config", str(path))
    assert code == 1 and "refsync: problem: hubspot: not checked: HubSpot unreachable" in err


def test_a_partner_webhook_url_without_a_scheme_is_refused_with_the_fix(config: Path, tmp_path: Path) -> None:
    sample = tmp_path / "r.csv"
    sample.write_text("partner,prospect_email\nacme,a@x.example\n")
    assert invoke("import", str(sample), "--config", str(config))[0] == 0
    code, _, err = invoke("partners", "set", "acme", "--webhook-url", "hooks.acme.example/refsync",
                          "--config", str(config))
    assert code == 2
    assert err.strip().splitlines() == ["refsync: error: --webhook-url 'hooks.acme.example/refsync' has no "
                                        "scheme; write it as 'https://hooks.acme.example/refsync'"]


def test_a_group_without_a_command_shows_its_help_not_an_error() -> None:
    code, out, err = invoke("referrals")
    assert "refsync: error" not in out + err and "Commands:" in out + err and "list" in out + err
    assert code == 2  # as click says: nothing was done
