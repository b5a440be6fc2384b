"""Live-org behaviour (issue 10, HubSpot items and the stage history of both CRMs), end to end: the
real adapters over real HTTP against the sandbox emulators, on SQLite and PostgreSQL ledgers.

What a partner manager would notice: every stage a deal passed through, at the time the CRM
recorded it; an old deal of a referred contact never becomes a new referral's deal; refsync never
blames a rep for its own write that search has not indexed yet; a date property keeps the value
refsync wrote; a merge records the referral that lost credit the same way on both CRMs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.imports import import_file
from refsync.connector.mapping import load_mapping
from refsync.connector.push import CrmTarget
from refsync.connector.sync import CycleSettings, run_cycle
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts
from tests.conftest import FakeClock

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
SETTINGS = CycleSettings(batch_size=200, lease_seconds=60, max_attempts=5)
ROOT = Path(__file__).resolve().parents[1]


def _import(ledger: Ledger, tmp_path: Path, rows: list[str]) -> None:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    report = import_file(ledger, path, Policy("first_touch", "flag", 365, "e2e"), datetime.now(UTC))
    assert report.rejected == []


def _active(ledger: Ledger, referral_id: str, crm: str, obj: str) -> list[str]:
    referral = ledger.referral(referral_id)
    assert referral is not None
    return [str(lk["record_id"]) for lk in referral["links"]
            if lk["crm"] == crm and lk["object"] == obj and lk["state"] == "active"]


def _at(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _history(ledger: Ledger, referral_id: str) -> list[tuple[str, datetime]]:
    shown = ledger.referral(referral_id)
    assert shown is not None
    return [(h["status"], _at(h["at"])) for h in shown["status_history"] if h["source"] == "crm_poll"]


def _only(crms: dict[str, CrmTarget], name: str) -> dict[str, CrmTarget]:
    return {name: crms[name]}


# -- 6. stage history ---------------------------------------------------------------------------
def test_hubspot_deal_moved_twice_between_polls_records_both_stages_at_hubspot_times(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    hub = sandbox.hubspot
    _import(ledger, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    targets = _only(crms, "hubspot")
    run_cycle(ledger, targets, SETTINGS)
    [referral] = ledger.referrals()
    [contact] = _active(ledger, referral["id"], "hubspot", "contacts")
    deal = hub.convert_lead(contact)["deal"]
    run_cycle(ledger, targets, SETTINGS)
    assert _active(ledger, referral["id"], "hubspot", "deals") == [deal]
    hub.move_stage(deal, "Contract Sent")
    time.sleep(0.01)
    hub.move_stage(deal, "Closed Won", amount=5000)
    time.sleep(0.01)
    hub.set_field("deals", deal, "dealname", "touched later", by="rep")  # the deal's last change is later
    run_cycle(ledger, targets, SETTINGS)
    moves = {e["value"]: _at(e["timestamp"]) for e in hub.store.records["deals"][deal].history["dealstage"]}
    assert _history(ledger, referral["id"])[-2:] == [("negotiation", moves["contractsent"]),
                                                     ("won", moves["closedwon"])]


def test_salesforce_opportunity_moved_twice_between_polls_records_both_stages_at_history_times(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    sf = sandbox.salesforce
    _import(ledger, tmp_path, ["acme,dana@northwind.example,Northwind,Dana,,,,2026-10-01T09:00:00Z,,e1"])
    targets = _only(crms, "salesforce")
    run_cycle(ledger, targets, SETTINGS)
    [referral] = ledger.referrals()
    [lead] = _active(ledger, referral["id"], "salesforce", "Lead")
    opportunity = sf.convert_lead(lead)["opportunity"]
    run_cycle(ledger, targets, SETTINGS)
    sf.move_stage(opportunity, "Negotiation/Review")
    sf.move_stage(opportunity, "Closed Won", amount=125000, close_date="2026-11-20")
    sf.set_field("Opportunity", opportunity, "Description", "touched later")
    run_cycle(ledger, targets, SETTINGS)
    rows = [r for r in sf.store.records["OpportunityHistory"].values() if r["OpportunityId"] == opportunity]
    at = {r["StageName"]: _at(r["CreatedDate"].replace("+0000", "+00:00")) for r in rows}
    assert _history(ledger, referral["id"])[-2:] == [("negotiation", at["Negotiation/Review"]),
                                                     ("won", at["Closed Won"])]


# -- 7. old deals on a referred contact -----------------------------------------------------------
def test_old_deal_of_a_referred_contact_never_becomes_the_new_referrals_deal(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    hub = sandbox.hubspot
    contact = hub.create_record("contacts", {"email": "dana@northwind.example"})
    old = hub.create_record("deals", {"dealname": "2024 licence", "dealstage": "closedwon", "amount": 90000})
    hub.associate("contacts", contact, "deals", old)
    time.sleep(0.01)
    _import(ledger, tmp_path, [f"acme,dana@northwind.example,,,,,,{datetime.now(UTC).isoformat()},,e1"])
    targets = _only(crms, "hubspot")
    run_cycle(ledger, targets, SETTINGS)
    [referral] = ledger.referrals()
    assert _active(ledger, referral["id"], "hubspot", "contacts") == [contact]
    hub.set_field("deals", old, "dealname", "2024 licence (renewal flag)", by="workflow")  # a workflow touches it
    run_cycle(ledger, targets, SETTINGS)
    shown = ledger.referral(referral["id"])
    assert shown is not None and shown["status"] != "won" and shown["outcome"]["amount"] is None
    assert _active(ledger, referral["id"], "hubspot", "deals") == []
    assert not (hub.get_record("deals", old) or {}).get("refsync_referral_id")
    renewal = hub.create_record("deals", {"dealname": "renewal", "pipeline": "75431234"})  # pipeline not mapped
    hub.associate("contacts", contact, "deals", renewal)
    first = hub.convert_lead(contact)["deal"]
    time.sleep(0.01)
    second = hub.convert_lead(contact, "second deal")["deal"]
    run_cycle(ledger, targets, SETTINGS)
    assert _active(ledger, referral["id"], "hubspot", "deals") == [first]  # the earliest created
    deal = hub.get_record("deals", first)
    assert deal is not None and deal["refsync_referral_id"] == referral["id"]
    contested = [a for a in alerts(ledger) if a["kind"] == "deal_contested"]
    assert [a["record_id"] for a in contested] == [second]
    assert not (hub.get_record("deals", renewal) or {}).get("refsync_referral_id")


# -- 9. search lags writes ------------------------------------------------------------------------
def test_a_poll_right_after_refsyncs_restore_does_not_blame_a_rep_for_a_stale_search(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path, clock: FakeClock
) -> None:
    hub = sandbox.hubspot
    clock.now = datetime.now(UTC)
    _import(ledger, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    targets = _only(crms, "hubspot")
    run_cycle(ledger, targets, SETTINGS)
    [referral] = ledger.referrals()
    [contact] = _active(ledger, referral["id"], "hubspot", "contacts")
    hub.configure(indexing_lag_ms=1500)  # search answers with old values for 1.5 s after a write
    hub.set_field("contacts", contact, "referral_partner", "someone-else", by="rep")
    time.sleep(1.6)
    for _ in range(4):  # the first cycle restores; the next ones run before search indexed the restore
        clock.now = datetime.now(UTC)
        run_cycle(ledger, targets, SETTINGS)
    assert (hub.get_record("contacts", contact) or {})["referral_partner"] == "acme"
    timeline = ledger.referral(referral["id"])["timeline"]  # type: ignore[index]
    assert [e["kind"] for e in timeline].count("restore_planned") == 1
    assert "attribution_conflict" not in [a["kind"] for a in alerts(ledger)]
    [overwritten] = [a for a in alerts(ledger) if a["kind"] == "attribution_overwritten"]
    assert overwritten["count"] == 1  # raised once, not again per stale poll


# -- 10. date properties and epoch_ms -------------------------------------------------------------
def test_epoch_ms_and_date_values_read_back_as_the_same_value_and_are_not_restored(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    text = (ROOT / "mappings" / "hubspot.toml").read_text().replace(
        'referral_submitted_at = { from = "submitted_at", rule = "protect", transform = { format = "datetime" } }',
        'referral_submitted_at = { from = "submitted_at", rule = "protect", transform = { format = "epoch_ms" } }\n'
        'referral_submitted_on = { from = "submitted_at", rule = "protect", transform = { format = "date" } }', 1)
    path = tmp_path / "hubspot.toml"
    path.write_text(text)
    targets = _only(crms, "hubspot")
    targets["hubspot"].mapping = load_mapping(path).mapping
    _import(ledger, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:30:00Z,,e1"])
    for _ in range(4):
        run_cycle(ledger, targets, SETTINGS)
    [referral] = ledger.referrals()
    [contact] = _active(ledger, referral["id"], "hubspot", "contacts")
    record = sandbox.hubspot.get_record("contacts", contact) or {}
    assert record["referral_submitted_at"] == "2026-10-01T09:30:00.000Z"  # HubSpot answers ISO, not epoch ms
    assert record["referral_submitted_on"] == "2026-10-01"
    timeline = ledger.referral(referral["id"])["timeline"]  # type: ignore[index]
    assert "restore_planned" not in [e["kind"] for e in timeline]
    assert [a["kind"] for a in alerts(ledger)] == []


# -- 12. merges -----------------------------------------------------------------------------------
@pytest.mark.parametrize("crm,obj", [("salesforce", "Lead"), ("hubspot", "contacts")])
def test_the_referral_that_lost_credit_in_a_merge_is_recorded_alike_on_both_crms(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path, crm: str, obj: str
) -> None:
    _import(ledger, tmp_path, [
        "acme,dana@northwind.example,Northwind,Dana,,,,2026-10-01T09:00:00Z,,e1",
        "bluebird,dana.lee@northwind.example,Northwind,Dana,,,,2026-10-03T09:00:00Z,,e2",
    ])
    targets = _only(crms, crm)
    run_cycle(ledger, targets, SETTINGS)
    first, second = ledger.referrals()
    [first_record] = _active(ledger, first["id"], crm, obj)
    [second_record] = _active(ledger, second["id"], crm, obj)
    admin = sandbox.salesforce if crm == "salesforce" else sandbox.hubspot
    survivor = admin.merge(obj, second_record, first_record) or second_record  # sales keeps the later record
    for _ in range(3):
        run_cycle(ledger, targets, SETTINGS)
    first_after, second_after = ledger.referral(first["id"]), ledger.referral(second["id"])
    assert first_after is not None and second_after is not None
    assert second_after["attribution"]["merged_into"] == first["id"]
    states = {lk["record_id"]: lk["state"] for lk in second_after["links"] if lk["crm"] == crm}
    assert states[survivor] == "superseded"
    assert "active" not in states.values()
    assert _active(ledger, first["id"], crm, obj) == [survivor]

