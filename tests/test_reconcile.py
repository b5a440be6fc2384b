"""Reconcile end to end against the sandbox CRMs: each alert kind is raised, deduplicated (one
alert with a count) and resolved when its condition clears, with batched reads only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.imports import import_file
from refsync.connector.push import CrmTarget
from refsync.connector.reconcile import ReconcileSettings, reconcile
from refsync.connector.sync import CycleSettings, push_all, run_cycle
from refsync.state.ledger import Ledger
from refsync.state.models import AuditEvent
from refsync.state.notifications import alerts

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
SETTINGS = CycleSettings(batch_size=200, lease_seconds=60, max_attempts=5)
RECONCILE = ReconcileSettings(stale_after_days=3650, won_lookback_days=90)
ROOT = Path(__file__).resolve().parents[1]


def _synced(ledger: Ledger, crms: dict[str, CrmTarget], tmp_path: Path, rows: list[str]) -> list[str]:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "e2e"), datetime.now(UTC))
    assert run_cycle(ledger, crms, SETTINGS).errors == []
    return [r["id"] for r in ledger.referrals()]


def _record(ledger: Ledger, referral_id: str, crm: str, obj: str) -> str:
    view = ledger.referral(referral_id)
    assert view is not None
    return next(lk["record_id"] for lk in view["links"] if lk["crm"] == crm and lk["object"] == obj)


def _open(ledger: Ledger, kind: str) -> list[dict]:  # type: ignore[type-arg]
    return alerts(ledger, kind=kind, open_only=True)


def test_clean_ledger_raises_nothing_and_reads_in_batches(
        ledger: Ledger, crms: dict[str, CrmTarget], tmp_path: Path) -> None:
    rows = [f"acme,p{i}@n{i}.example,,,,,,2026-10-01T09:00:00Z,,e{i}" for i in range(250)]
    _synced(ledger, crms, tmp_path, rows)
    report = reconcile(ledger, crms, RECONCILE)
    assert report.errors == [] and report.by_kind == {} and alerts(ledger) == []
    assert report.records_read == 500
    # 250 HubSpot contacts at 100 a call and 250 Salesforce leads in one or two queries, plus describes,
    # stages and recent deals: nowhere near one call per record.
    assert report.api_calls["hubspot"] <= 10 and report.api_calls["salesforce"] <= 10


def test_deleted_record_is_one_orphaned_alert_counted_and_resolved_when_restored(
        ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> None:
    [rid] = _synced(ledger, crms, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    lead = _record(ledger, rid, "salesforce", "Lead")
    sandbox.salesforce.delete_record("Lead", lead)
    reconcile(ledger, crms, RECONCILE)
    reconcile(ledger, crms, RECONCILE)
    [alert] = _open(ledger, "orphaned_link")
    assert alert["count"] == 2 and alert["referral_id"] == rid and alert["record_id"] == lead
    assert alert["crm"] == "salesforce" and "recycle bin" in alert["message"]
    sandbox.salesforce.store.records["Lead"][lead]["IsDeleted"] = False  # restored from the recycle bin
    report = reconcile(ledger, crms, RECONCILE)
    assert report.alerts.resolved == 1 and _open(ledger, "orphaned_link") == []
    assert alerts(ledger, kind="orphaned_link", resolved_only=True)[0]["resolved_at"] is not None


def test_overwritten_field_is_repaired_and_the_alert_resolves(
        ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> None:
    [rid] = _synced(ledger, crms, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    contact = _record(ledger, rid, "hubspot", "contacts")
    sandbox.hubspot.set_field("contacts", contact, "referral_partner", "someone-else", by="rep")
    report = reconcile(ledger, crms, RECONCILE)
    [alert] = _open(ledger, "attribution_overwritten")
    assert alert["record_id"] == contact and "referral_partner" in alert["message"] and report.repairs == 1
    reconcile(ledger, crms, RECONCILE)  # the repair is still queued: the alert stays open, not a second one
    assert len(_open(ledger, "attribution_overwritten")) == 1
    push_all(ledger, crms["hubspot"], SETTINGS, "w1")
    assert sandbox.hubspot.get_record("contacts", contact)["referral_partner"] == "acme"  # type: ignore[index]
    reconcile(ledger, crms, RECONCILE)
    assert _open(ledger, "attribution_overwritten") == []
    assert "restore_planned" in [e["kind"] for e in ledger.referral(rid)["timeline"]]  # type: ignore[index]


def test_writer_that_keeps_overwriting_is_a_conflict_until_it_stops(
        ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> None:
    row = "acme,dana@northwind.example,,,partner,referral,q4,2026-10-01T09:00:00Z,,e1"
    [rid] = _synced(ledger, crms, tmp_path, [row])
    contact = _record(ledger, rid, "hubspot", "contacts")
    with ledger.transaction() as txn:
        for _ in range(3):  # the guard already restored it three times today
            txn.session.add(AuditEvent(referral_id=rid, at=ledger.clock(), actor="refsync", kind="restore_planned",
                                       reason_code="referral_source", crm="hubspot", record_id=contact, detail={}))
    sandbox.hubspot.set_field("contacts", contact, "referral_source", "workflow-value", by="workflow")
    report = reconcile(ledger, crms, RECONCILE)
    [alert] = _open(ledger, "attribution_conflict")
    assert "keeps overwriting" in alert["message"] and report.repairs == 0
    sandbox.hubspot.set_field("contacts", contact, "referral_source", None, by="admin")
    with ledger.transaction() as txn:
        txn.session.query(AuditEvent).filter(AuditEvent.kind == "restore_planned").delete()
    push_all(ledger, crms["hubspot"], SETTINGS, "w1")
    reconcile(ledger, crms, RECONCILE)  # blank now: restore planned, the writer stopped
    push_all(ledger, crms["hubspot"], SETTINGS, "w1")
    reconcile(ledger, crms, RECONCILE)
    assert _open(ledger, "attribution_conflict") == []


def test_closed_deal_of_an_open_referral_is_flagged_until_the_poll_catches_up(
        ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> None:
    [rid] = _synced(ledger, crms, tmp_path, ["acme,dana@northwind.example,Northwind,Dana,,,,2026-10-01T09:00:00Z,,e1"])
    converted = sandbox.salesforce.convert_lead(_record(ledger, rid, "salesforce", "Lead"))
    run_cycle(ledger, crms, SETTINGS)
    sandbox.salesforce.move_stage(converted["opportunity"], "Closed Won", amount=50000, close_date="2026-11-20")
    reconcile(ledger, crms, RECONCILE)
    [alert] = _open(ledger, "ledger_open_crm_closed")
    assert alert["record_id"] == converted["opportunity"] and "Closed Won" in alert["message"]
    run_cycle(ledger, crms, SETTINGS)
    reconcile(ledger, crms, RECONCILE)
    assert _open(ledger, "ledger_open_crm_closed") == []


def test_won_deal_without_attribution_matching_a_referral_is_flagged(
        ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> None:
    [rid] = _synced(ledger, crms, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    contact = sandbox.salesforce.create_record("Contact", {"LastName": "Lee", "Email": "sam@northwind.example"})
    opp = sandbox.salesforce.create_record("Opportunity", {"Name": "Northwind deal", "StageName": "Closed Won",
                                                           "CloseDate": "2026-11-20", "ContactId": contact,
                                                           "Amount": 90000})
    reconcile(ledger, crms, RECONCILE)
    [alert] = _open(ledger, "unattributed_win")
    assert alert["record_id"] == opp and alert["referral_id"] == rid
    assert "company domain northwind.example" in alert["message"] and "Referral_Id__c" in alert["message"]
    sandbox.salesforce.set_field("Opportunity", opp, "Referral_Id__c", rid, by="ops")
    reconcile(ledger, crms, RECONCILE)
    assert _open(ledger, "unattributed_win") == []


def test_removed_field_is_named_and_the_other_fields_are_still_checked(
        ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> None:
    [rid] = _synced(ledger, crms, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    lead = _record(ledger, rid, "salesforce", "Lead")
    sandbox.salesforce.remove_field("Lead", "Referral_Campaign__c")
    sandbox.salesforce.set_field("Lead", lead, "Referral_Partner__c", "other", by="rep")
    report = reconcile(ledger, crms, RECONCILE)
    assert report.errors == []
    [drift] = _open(ledger, "mapping_drift")
    assert "Lead.Referral_Campaign__c" in drift["message"] and drift["crm"] == "salesforce"
    assert [a["record_id"] for a in _open(ledger, "attribution_overwritten")] == [lead]


def test_ledger_checks_raise_and_resolve_duplicates_dead_ops_and_stale_referrals(
        ledger: Ledger, tmp_path: Path, clock) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\nacme,dana@n.example,,,,,,2026-10-01T09:00:00Z,,e1\n"
                    "bluebird,dana@n.example,,,,,,2026-10-05T09:00:00Z,,e2\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), clock())
    ledger.enqueue_op("push", "push:salesforce:x:1", "salesforce")
    with ledger.transaction() as txn:
        txn.session.execute(__import__("sqlalchemy").text("UPDATE sync_ops SET state = 'dead'"))
    settings = ReconcileSettings(stale_after_days=10)
    clock.advance(days=11)
    reconcile(ledger, {}, settings)
    kinds = sorted(a["kind"] for a in alerts(ledger, open_only=True))
    assert kinds == ["dead_op", "duplicate_referral", "stale_referral", "stale_referral"]
    from refsync.state.outbox import retry_dead

    retry_dead(ledger)
    with ledger.transaction() as txn:
        txn.session.execute(__import__("sqlalchemy").text("UPDATE referrals SET review_required = false"))
        txn.session.execute(__import__("sqlalchemy").text("UPDATE referrals SET status_changed_at = :t"),
                            {"t": clock() - timedelta(days=1)})
    report = reconcile(ledger, {}, settings)
    assert report.alerts.resolved == 4 and alerts(ledger, open_only=True) == []


def test_an_accepted_loss_is_neither_alerted_again_nor_re_created_by_the_next_push(
        ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> None:
    from refsync.connector.decisions import accept_loss

    [rid] = _synced(ledger, crms, tmp_path, ["acme,lee@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    lead = _record(ledger, rid, "salesforce", "Lead")
    sandbox.salesforce.delete_record("Lead", lead)
    reconcile(ledger, crms, RECONCILE)
    [alert] = _open(ledger, "orphaned_link")
    assert accept_loss(ledger, alert["id"], "dana", "spam") == 1
    with ledger.transaction() as txn:  # the referral changes: a new revision to push
        referral = txn.referral(rid)
        assert referral is not None
        referral.campaign, referral.revision = "q1", referral.revision + 1
    assert run_cycle(ledger, crms, SETTINGS).errors == []
    assert sandbox.salesforce.count_values("Lead", "Partner_Referral_Id__c").get(rid, 0) == 0
    assert ledger.status()["ops"]["dead"] == 0
    reconcile(ledger, crms, RECONCILE)
    assert _open(ledger, "orphaned_link") == []
