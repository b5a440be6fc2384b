"""A running `refsync run` picks up an edited mapping file: a good edit is applied and rolled out
(on SIGHUP), a broken one (seen by the file watch) is refused with an alert and a log line naming
file and line while the previous mapping keeps syncing, and the next good edit resolves the alert.
A real daemon subprocess against the sandbox over HTTP, on a real SQLite ledger."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.imports import import_file
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts
from tests.test_mapping_live import HEADER, PARTNER, REFSYNC, copy_mappings, edit, write_config

DAEMON = '[daemon]\npush_interval_seconds = 1\npoll_interval_seconds = 2\n[http]\nlisten = "127.0.0.1:0"\n' \
         '[logging]\nformat = "json"\n'
POLICY = Policy("first_touch", "flag", 365, "t")


def wait_for(what: str, check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def add_referral(ledger: Ledger, tmp_path: Path, email: str) -> str:
    path = tmp_path / f"{email}.csv"
    path.write_text(f"{HEADER}\nacme,{email},,,partner,,,,,{email}\n")
    assert import_file(ledger, path, POLICY, datetime.now(UTC)).rejected == []
    [referral] = [r for r in ledger.referrals() if r["external_id"] == email]
    return str(referral["id"])


def partner_on_lead(ledger: Ledger, sandbox: RunningSandbox, referral_id: str) -> str | None:
    referral = ledger.referral(referral_id)
    leads = [lk for lk in referral["links"] if lk["crm"] == "salesforce" and lk["object"] == "Lead"] if referral else []
    record = sandbox.salesforce.get_record("Lead", leads[0]["record_id"]) if leads else None
    return record.get("Referral_Partner__c") if record else None


def open_rejections(ledger: Ledger) -> list[dict]:
    return [a for a in alerts(ledger) if a["kind"] == "mapping_rejected" and a["resolved_at"] is None]


def test_running_daemon_applies_a_good_edit_on_sighup_and_refuses_a_broken_one_keeping_the_old_mapping(
    sqlite_url: str, sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.salesforce.reset()
    sandbox.hubspot.reset()
    monkeypatch.setenv("T_SF_SESSION", sandbox.salesforce.session_id)
    monkeypatch.setenv("T_HS_TOKEN", sandbox.hubspot.access_token)
    mappings = copy_mappings(tmp_path)
    sf = mappings / "salesforce.toml"
    config = write_config(tmp_path / "refsync.toml", sandbox, mappings, sqlite_url, DAEMON)
    ledger = Ledger.open(sqlite_url)
    first = add_referral(ledger, tmp_path, "dana@northwind.example")
    daemon = subprocess.Popen([REFSYNC, "--config", str(config), "run"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the first push", lambda: partner_on_lead(ledger, sandbox, first) == "acme")

        # A good edit, announced with SIGHUP: applied and rolled out onto the existing lead.
        digest = edit(sf, PARTNER, 'Referral_Partner__c = { from = "partner", rule = "protect", transform = { '
                                   'values = { "acme" = "ACME Corp" } } }')
        daemon.send_signal(signal.SIGHUP)
        wait_for("the re-push of the good edit, landed", lambda: any(
            e["kind"] == "pushed" and e["actor"] == "mapping-change" and e["detail"]["mapping_hash"] == digest
            for e in ledger.referral(first)["timeline"]))  # type: ignore[index]
        assert partner_on_lead(ledger, sandbox, first) == "ACME Corp"

        # A broken edit (a field the org does not have), noticed by the file watch without a signal.
        good = sf.read_text()
        edit(sf, "[lead.fields]\n", '[lead.fields]\nReferral_Nope__c = { from = "source", rule = "protect" }\n')
        line = next(n for n, text in enumerate(sf.read_text().splitlines(), 1) if text.startswith("Referral_Nope__c"))
        wait_for("the mapping_rejected alert", lambda: bool(open_rejections(ledger)))
        [alert] = open_rejections(ledger)
        assert alert["crm"] == "salesforce" and f"{sf}:{line}: lead.fields.Referral_Nope__c" in alert["message"]
        # ... and the previous (good) mapping keeps syncing new work.
        second = add_referral(ledger, tmp_path, "sam@contoso.example")
        wait_for("a push under the previous mapping", lambda: partner_on_lead(ledger, sandbox, second) == "ACME Corp")

        # A later good edit resolves the alert and is rolled out.
        sf.write_text(good.replace('"ACME Corp"', '"Acme Partners"'))
        daemon.send_signal(signal.SIGHUP)
        wait_for("the alert's resolution", lambda: not open_rejections(ledger))
        wait_for("the second rollout", lambda: partner_on_lead(ledger, sandbox, first) == "Acme Partners"
                 and partner_on_lead(ledger, sandbox, second) == "Acme Partners")
        assert not [a for a in alerts(ledger) if a["kind"] in ("attribution_overwritten", "attribution_conflict")]
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
        ledger.close()
    assert daemon.returncode == 0, err
    logged = [json.loads(text) for text in err.splitlines() if text.startswith("{")]
    [refused] = [e for e in logged if e["event"].startswith("mapping file refused")]
    assert refused["level"] == "error" and refused["file"] == str(sf) and refused["line"] == line
    assert len([e for e in logged if e["event"] == "mapping file reloaded"]) == 2
