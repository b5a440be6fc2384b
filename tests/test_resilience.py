"""refsync keeps syncing through CRM faults, one CRM's outage, and mapping drift across restarts:
driven as an operator drives it (the CLI, a config file pointing at the sandbox emulators)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.cli import cli
from refsync.connector.push import CrmTarget
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts
from tests.conftest import FAST_RETRY, ROOT
from tests.test_push import crm_state

REFSYNC = str(Path(sys.executable).with_name("refsync"))
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
ID_FIELDS = ("Referral_Id__c", "refsync_referral_id")


def closed_port() -> int:
    """A local port nothing listens on: a CRM that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, ledger_url: str, sandbox: RunningSandbox, *, crms: tuple[str, ...] = ("salesforce",
                 "hubspot"), down: str | None = None, extra: str = "") -> Path:
    sf, hs = sandbox.salesforce, sandbox.hubspot
    sf_url = f"https://127.0.0.1:{closed_port()}" if down == "salesforce" else sf.base_url
    hs_url = f"http://127.0.0.1:{closed_port()}" if down == "hubspot" else hs.base_url
    text = f'[ledger]\nurl = "{ledger_url}"\n[logging]\nformat = "json"\nlevel = "warning"\n{FAST_RETRY}{extra}'
    if "salesforce" in crms:
        text += (f'[crm.salesforce]\ninstance_url = "{sf_url}"\nca_bundle = "{sf.ca_path}"\n'
                 f'session_id = "env:R_SF"\nmapping = "{ROOT}/mappings/salesforce.toml"\n')
    if "hubspot" in crms:
        text += (f'[crm.hubspot]\nbase_url = "{hs_url}"\naccess_token = "env:R_HS"\n'
                 f'mapping = "{ROOT}/mappings/hubspot.toml"\n')
    path.write_text(text)
    return path


@pytest.fixture
def creds(sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.salesforce.reset()
    sandbox.hubspot.reset()
    monkeypatch.setenv("R_SF", sandbox.salesforce.session_id)
    monkeypatch.setenv("R_HS", sandbox.hubspot.access_token)


def refsync(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def referrals_file(tmp_path: Path, count: int, start: int = 0) -> Path:
    path = tmp_path / f"r{start}.csv"
    path.write_text(HEADER + "\n" + "\n".join(
        f"p{n % 3},person{n}@res.example,Res Co {n},Person {n},partner,referral,c{n % 2},2026-10-01T00:00:00Z,,x{n}"
        for n in range(start, start + count)) + "\n")
    return path


def synced(sandbox: RunningSandbox, url: str) -> dict[str, tuple[Any, ...]]:
    """Each referral's record on each CRM with refsync's fields, without the per-ledger referral id."""
    ledger = Ledger.open(url)
    try:
        return {key: tuple((f, v) for f, v in fields if f not in ID_FIELDS)
                for key, fields in crm_state(sandbox, ledger).items()}
    finally:
        ledger.close()


def sync_once(config: Path, referrals: Path) -> tuple[int, dict[str, Any], str]:
    assert refsync(config, "import", str(referrals))[0] == 0
    code, out, err = refsync(config, "sync", "--once", "--json")
    return code, json.loads(out), err


def test_twenty_percent_transient_faults_the_first_sync_already_pushes_everything(
    ledger_url: str, second_ledger_url: str, sandbox: RunningSandbox, creds: None, tmp_path: Path
) -> None:
    referrals = referrals_file(tmp_path, 40)
    clean = write_config(tmp_path / "clean.toml", ledger_url, sandbox)
    code, report, err = sync_once(clean, referrals)
    assert code == 0, err
    expected = synced(sandbox, ledger_url)
    assert len(expected) == 80  # 40 referrals on two CRMs

    sandbox.salesforce.reset()
    sandbox.hubspot.reset()
    url = second_ledger_url
    faulty = write_config(tmp_path / "faulty.toml", url, sandbox)
    # Every kind of call fails one time in five, start-up (describes, stage reads) included.
    sandbox.salesforce.set_faults(server_error=0.1, drop=0.1, seed=11)
    sandbox.hubspot.set_faults(server_error=0.08, drop=0.06, rate_limit=0.06, retry_after=0, seed=11)
    try:
        code, report, err = sync_once(faulty, referrals)
    finally:
        sandbox.salesforce.set_faults()
        sandbox.hubspot.set_faults()
    assert code == 0, err
    assert report["pushed"] == 80 and report["failed"] == report["dead"] == 0
    assert "retrying" in err  # each retry is a warning line
    assert synced(sandbox, url) == expected


@pytest.mark.parametrize(("broken", "how"), [("hubspot", "down"), ("hubspot", "bad_token"),
                                            ("salesforce", "down")])
def test_one_broken_crm_leaves_the_other_syncing_as_if_alone(
    ledger_url: str, second_ledger_url: str, sandbox: RunningSandbox, creds: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, broken: str, how: str
) -> None:
    healthy = "salesforce" if broken == "hubspot" else "hubspot"
    referrals = referrals_file(tmp_path, 15)
    alone = write_config(tmp_path / "alone.toml", ledger_url, sandbox, crms=(healthy,))
    assert sync_once(alone, referrals)[0] == 0
    expected = synced(sandbox, ledger_url)

    sandbox.salesforce.reset()
    sandbox.hubspot.reset()
    url = second_ledger_url
    if how == "bad_token":
        monkeypatch.setenv("R_HS", "pat-na1-00000000-0000-0000-0000-000000000000")
    both = write_config(tmp_path / "both.toml", url, sandbox, down=broken if how == "down" else None)
    code, report, err = sync_once(both, referrals)
    assert code == 1, err  # done with a problem, not a configuration error
    problems = [e for e in report["errors"] if e.startswith(f"{broken}: not ready")]
    assert problems, report["errors"]
    label = {"hubspot": "HubSpot", "salesforce": "Salesforce"}[broken]
    assert label in problems[0] and ("credentials" in problems[0] if how == "bad_token" else "unreachable"
                                     in problems[0])
    assert synced(sandbox, url) == expected
    code, out, _ = refsync(both, "status", "--json")
    crms = json.loads(out)["crms"]
    assert code == 1 and crms[healthy]["ready"] is True and crms[broken]["ready"] is False
    assert label in crms[broken]["reason"] and crms[broken]["since"]
    assert sync_once(both, referrals)[0] == 1  # a later run: still waiting, since the first one noticed
    assert json.loads(refsync(both, "status", "--json")[1])["crms"][broken]["since"] == crms[broken]["since"]
    code, out, _ = refsync(both, "alerts", "--json", "--kind", "crm_unavailable")
    assert [(a["crm"], a["resolved_at"]) for a in json.loads(out)] == [(broken, None)]


def test_a_configuration_wrong_on_its_face_still_stops_the_start(
    ledger_url: str, sandbox: RunningSandbox, creds: None, tmp_path: Path
) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shipped = (ROOT / "mappings" / "hubspot.toml").read_text()
    (mappings / "hubspot.toml").write_text(shipped.replace("referral_source = {", "referal_source = {", 1))
    config = write_config(tmp_path / "refsync.toml", ledger_url, sandbox, crms=("hubspot",))
    config.write_text(config.read_text().replace(f"{ROOT}/mappings/hubspot.toml", f"{mappings}/hubspot.toml"))
    code, _out, err = refsync(config, "sync", "--once")
    assert code == 2 and "referal_source" in err and "never" not in err.lower()
    bad_key = write_config(tmp_path / "bad.toml", ledger_url, sandbox, extra="[retry]\nattempt = 3\n")
    code, _out, err = refsync(bad_key, "sync", "--once")
    assert code == 2 and "retry" in err


def test_quiet_sync_reads_no_schema_again(ledger_url: str, sandbox: RunningSandbox, creds: None,
                                          tmp_path: Path) -> None:
    config = write_config(tmp_path / "refsync.toml", ledger_url, sandbox)
    assert sync_once(config, referrals_file(tmp_path, 5))[0] == 0
    sf_before, hs_before = sandbox.salesforce.calls(), sandbox.hubspot.calls()
    assert refsync(config, "sync", "--once")[0] == 0
    sf = {k: v - sf_before.get(k, 0) for k, v in sandbox.salesforce.calls().items()}
    hs = {k: v - hs_before.get(k, 0) for k, v in sandbox.hubspot.calls().items()}
    assert sf.get("describe", 0) == 0 and hs.get("properties", 0) == 0 and hs.get("pipelines", 0) == 0
    assert sf.get("query", 0) > 0  # the poll itself still runs


def test_a_deleted_field_stays_drift_across_restarts_and_resolves_when_back(
    ledger_url: str, sandbox: RunningSandbox, creds: None, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "refsync.toml", ledger_url, sandbox)
    assert sync_once(config, referrals_file(tmp_path, 5))[0] == 0
    sandbox.salesforce.remove_field("Lead", "Referral_Campaign__c")
    # Each run is a restart: a new process reading the ledger's memory of the schema.
    for batch in (1, 2):
        code, report, err = sync_once(config, referrals_file(tmp_path, 5, start=batch * 10))
        assert code == 0, err
        assert report["pushed"] == 10 and report["failed"] == report["dead"] == 0
    ledger = Ledger.open(ledger_url)
    state = crm_state(sandbox, ledger)
    ledger.close()
    new_leads = {k: dict(v) for k, v in state.items() if re.fullmatch(r"x1\d:salesforce:Lead", k)}
    assert len(new_leads) == 5
    for fields in new_leads.values():  # every other field keeps syncing
        assert fields["Referral_Partner__c"] and fields["Referral_Source__c"] == "partner"
        assert "Referral_Campaign__c" not in fields
    code, out, _ = refsync(config, "alerts", "--json", "--kind", "mapping_drift")
    drift = json.loads(out)
    assert [(a["crm"], a["resolved_at"]) for a in drift] == [("salesforce", None)]
    assert "Lead.Referral_Campaign__c" in drift[0]["message"]
    sandbox.salesforce.restore_field("Lead", "Referral_Campaign__c")
    code, _out, err = refsync(config, "sync", "--once")
    assert code == 0, err
    code, out, _ = refsync(config, "alerts", "--json", "--kind", "mapping_drift")
    assert code == 0 and [a["resolved_at"] is not None for a in json.loads(out)] == [True]


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - a loopback URL of the test
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_run_starts_with_a_crm_down_names_it_in_readyz_and_picks_it_up_when_back(
    sqlite_url: str, sandbox: RunningSandbox, creds: None, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "refsync.toml", sqlite_url, sandbox, extra=(
        '[daemon]\npush_interval_seconds = 1\npoll_interval_seconds = 2\n[http]\nlisten = "127.0.0.1:0"\n'))
    config.write_text(config.read_text().replace('level = "warning"', 'level = "info"'))
    assert refsync(config, "import", str(referrals_file(tmp_path, 6)))[0] == 0
    sandbox.hubspot.set_faults(drop=1.0)  # HubSpot down: every call dropped
    env = {**os.environ, "R_SF": sandbox.salesforce.session_id, "R_HS": sandbox.hubspot.access_token}
    daemon = subprocess.Popen([REFSYNC, "--config", str(config), "run"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert daemon.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(daemon.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any('"http listening"' in line for line in list(lines)):
            assert daemon.poll() is None, "refsync run stopped"
            time.sleep(0.1)
        port = next(json.loads(line)["port"] for line in list(lines) if '"http listening"' in line)
        ledger = Ledger.open(sqlite_url)
        while time.monotonic() < deadline and ledger.status()["ops"]["done"] < 6:
            time.sleep(0.2)
        assert ledger.status()["ops"]["done"] == 6  # Salesforce synced
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and body["status"] == "degraded"
        assert body["crms"]["hubspot"]["ready"] is False and "HubSpot" in body["crms"]["hubspot"]["reason"]
        assert body["crms"]["salesforce"]["ready"] is True
        sandbox.hubspot.set_faults()  # HubSpot is back
        while time.monotonic() < deadline and ledger.status()["ops"]["done"] < 12:
            time.sleep(0.2)
        assert ledger.status()["ops"]["done"] == 12
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and body["status"] == "ready" and body["crms"]["hubspot"]["ready"] is True
        ledger.close()
    finally:
        sandbox.hubspot.set_faults()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        reader.join(timeout=5)
    assert daemon.returncode == 0, "".join(lines)
    waited = [json.loads(line) for line in lines if '"CRM not ready' in line]
    assert waited and waited[0]["crm"] == "hubspot"


def test_daemon_poll_job_leaves_a_vanished_field_out_instead_of_failing(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    from refsync.connector.daemon import Daemon
    from refsync.connector.sync import CycleSettings
    from tests.test_push import import_rows

    import_rows(ledger, tmp_path, 4)
    daemon = Daemon(ledger, crms, CycleSettings(), push_interval=60, poll_interval=60)
    daemon.push_job()
    sandbox.salesforce.remove_field("Opportunity", "Referral_Campaign__c")
    sandbox.salesforce.remove_field("Lead", "Referral_Campaign__c")  # the poll reads it: INVALID_FIELD
    daemon.poll_job()
    [poll] = [r for r in ledger.runs(10) if r["job"] == "poll"]
    assert poll["status"] == "ok", poll
    assert poll["counts"]["per_crm"]["salesforce"]["calls"] > 0
    drift = [a for a in alerts(ledger) if a["kind"] == "mapping_drift"]
    assert sorted(a["message"].split(" was ")[0] for a in drift) == [
        "salesforce Lead.Referral_Campaign__c", "salesforce Opportunity.Referral_Campaign__c"]
