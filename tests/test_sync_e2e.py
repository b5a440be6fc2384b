"""The sync engine end to end: the real adapters over real HTTP against the sandbox emulators,
with a real ledger (SQLite and PostgreSQL). What a partner manager would notice: attribution lands
on the CRM, stays there through owner changes, conversions and merges, and stages come back."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from refsync.adapters.base import ChangeSet
from refsync.adapters.errors import TransientError
from refsync.adapters.hubspot import HubSpotAdapter
from refsync.adapters.salesforce import SalesforceAdapter
from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.imports import import_file
from refsync.connector.push import CrmTarget
from refsync.connector.sync import CycleSettings, run_cycle
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts
from refsync.state.observe import cursor
from tests.conftest import targets_for

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
SETTINGS = CycleSettings(batch_size=200, lease_seconds=60, max_attempts=5)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def crms(sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, CrmTarget]:
    targets = targets_for(sandbox, tmp_path, monkeypatch)
    assert isinstance(targets["salesforce"].adapter, SalesforceAdapter)
    assert isinstance(targets["hubspot"].adapter, HubSpotAdapter)
    return targets


def _import(ledger: Ledger, tmp_path: Path, rows: list[str]) -> None:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    report = import_file(ledger, path, Policy("first_touch", "flag", 365, "e2e"), datetime.now(UTC))
    assert report.rejected == []


def _lead(ledger: Ledger, referral_id: str, crm: str, obj: str) -> str:
    referral = ledger.referral(referral_id)
    assert referral is not None
    [link] = [lk for lk in referral["links"] if lk["crm"] == crm and lk["object"] == obj and lk["state"] == "active"]
    return str(link["record_id"])


def test_push_lands_attribution_on_both_crms_and_a_second_cycle_writes_nothing(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _import(ledger, tmp_path, [
        "acme,dana@northwind.example,Northwind,Dana Lee,partner,referral,q4,2026-10-01T09:00:00Z,,e1",
        "bluebird,sam@contoso.example,Contoso,Sam Ortiz,event,booth,summit,2026-10-02T09:00:00Z,,e2",
    ])
    report = run_cycle(ledger, crms, SETTINGS)
    assert report.errors == []
    assert report.counts()["pushed"] == 4 and report.counts()["dead"] == 0
    dana = ledger.referrals(partner="acme")[0]
    lead_id = _lead(ledger, dana["id"], "salesforce", "Lead")
    lead = sandbox.salesforce.get_record("Lead", lead_id)
    assert lead is not None and lead["Referral_Id__c"] == dana["id"] and lead["Referral_Partner__c"] == "acme"
    contact_id = _lead(ledger, dana["id"], "hubspot", "contacts")
    contact = sandbox.hubspot.get_record("contacts", contact_id)
    assert contact is not None and contact["referral_partner"] == "acme"
    sf_before = sum(v for k, v in sandbox.salesforce.calls().items() if "composite" in k)
    again = run_cycle(ledger, crms, SETTINGS)
    assert again.counts()["pushed"] == 0
    assert sum(v for k, v in sandbox.salesforce.calls().items() if "composite" in k) == sf_before


def test_existing_lead_of_the_prospect_receives_attribution_instead_of_a_duplicate(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    existing = sandbox.salesforce.create_record("Lead", {"Email": "dana@northwind.example", "LastName": "Lee",
                                                        "Company": "Northwind"})
    _import(ledger, tmp_path, ["acme,Dana@Northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    run_cycle(ledger, crms, SETTINGS)
    [referral] = ledger.referrals()
    assert _lead(ledger, referral["id"], "salesforce", "Lead") == existing
    record = sandbox.salesforce.get_record("Lead", existing)
    assert record is not None and record["Referral_Id__c"] == referral["id"]


def test_blanked_protected_field_is_restored_and_owner_change_recorded(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _import(ledger, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    run_cycle(ledger, crms, SETTINGS)
    [referral] = ledger.referrals()
    lead_id = _lead(ledger, referral["id"], "salesforce", "Lead")
    sandbox.salesforce.change_owner("Lead", lead_id, "005OTHERREP0001")
    sandbox.salesforce.set_field("Lead", lead_id, "Referral_Partner__c", None, by="005REP")
    report = run_cycle(ledger, crms, SETTINGS)
    assert report.counts()["repairs"] >= 1
    record = sandbox.salesforce.get_record("Lead", lead_id)
    assert record is not None and record["Referral_Partner__c"] == "acme"
    kinds = [a["kind"] for a in alerts(ledger)]
    assert "attribution_overwritten" in kinds
    timeline = [e["kind"] for e in ledger.referral(referral["id"])["timeline"]]  # type: ignore[index]
    assert "owner_changed" in timeline and "restore_planned" in timeline


def test_converted_lead_gives_its_opportunity_the_attribution_and_stages_come_back(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _import(ledger, tmp_path, ["acme,dana@northwind.example,Northwind,Dana,,,,2026-10-01T09:00:00Z,,e1"])
    run_cycle(ledger, crms, SETTINGS)
    [referral] = ledger.referrals()
    lead_id = _lead(ledger, referral["id"], "salesforce", "Lead")
    converted = sandbox.salesforce.convert_lead(lead_id)
    run_cycle(ledger, crms, SETTINGS)
    opportunity = sandbox.salesforce.get_record("Opportunity", converted["opportunity"])
    assert opportunity is not None and opportunity["Referral_Id__c"] == referral["id"]
    assert opportunity["Referral_Partner__c"] == "acme"
    sandbox.salesforce.move_stage(converted["opportunity"], "Negotiation/Review")
    sandbox.salesforce.move_stage(converted["opportunity"], "Closed Won", amount=125000, close_date="2026-11-20")
    run_cycle(ledger, crms, SETTINGS)
    shown = ledger.referral(referral["id"])
    assert shown is not None and shown["status"] == "won"
    assert [h["status"] for h in shown["status_history"]][-2:] == ["negotiation", "won"]
    assert shown["outcome"]["amount"] == 125000 and shown["outcome"]["close_date"] == "2026-11-20"
    sandbox.salesforce.move_stage(converted["opportunity"], "Negotiation/Review")  # the deal reopens
    run_cycle(ledger, crms, SETTINGS)
    reopened = ledger.referral(referral["id"])
    assert reopened is not None and reopened["status"] == "negotiation"
    assert [h["status"] for h in reopened["status_history"]][-3:] == ["negotiation", "won", "negotiation"]
    assert all(h["source"] == "crm_poll" for h in reopened["status_history"][-3:])


def test_merge_of_two_referred_leads_keeps_the_first_referral(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _import(ledger, tmp_path, [
        "acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1",
        "bluebird,dana.lee@northwind.example,,,,,,2026-10-03T09:00:00Z,,e2",
    ])
    run_cycle(ledger, crms, SETTINGS)
    first, second = ledger.referrals()
    first_lead = _lead(ledger, first["id"], "salesforce", "Lead")
    second_lead = _lead(ledger, second["id"], "salesforce", "Lead")
    sandbox.salesforce.merge("Lead", second_lead, first_lead)  # sales keeps the later lead's record
    run_cycle(ledger, crms, SETTINGS)
    first_after = ledger.referral(first["id"])
    second_after = ledger.referral(second["id"])
    assert first_after is not None and second_after is not None
    assert second_after["attribution"]["merged_into"] == first["id"]
    survivor = sandbox.salesforce.get_record("Lead", second_lead)
    assert survivor is not None and survivor["Referral_Id__c"] == first["id"]
    on_survivor = {(lk["record_id"], lk["state"]) for lk in second_after["links"] if lk["object"] == "Lead"}
    assert on_survivor == {(second_lead, "superseded")}
    assert (second_lead, "active") in {(lk["record_id"], lk["state"]) for lk in first_after["links"]}
    assert (first_lead, "merged") in {(lk["record_id"], lk["state"]) for lk in first_after["links"]}


def test_deleted_record_raises_orphaned_link_and_is_not_recreated(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _import(ledger, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    run_cycle(ledger, crms, SETTINGS)
    [referral] = ledger.referrals()
    lead_id = _lead(ledger, referral["id"], "salesforce", "Lead")
    sandbox.salesforce.delete_record("Lead", lead_id)
    run_cycle(ledger, crms, SETTINGS)
    assert "orphaned_link" in [a["kind"] for a in alerts(ledger)]
    links = ledger.referral(referral["id"])["links"]  # type: ignore[index]
    assert [lk["state"] for lk in links if lk["crm"] == "salesforce"] == ["deleted"]
    # a later change of the referral (a new revision to push) does not re-create the lead either
    assert ledger.enqueue_op("push", "push:salesforce:again", "salesforce", referral_id=referral["id"])
    run_cycle(ledger, crms, SETTINGS)
    assert sandbox.salesforce.count_values("Lead", "Referral_Id__c").get(referral["id"], 0) == 0
    assert [lk["state"] for lk in ledger.referral(referral["id"])["links"]  # type: ignore[index]
            if lk["crm"] == "salesforce"] == ["deleted"]


def test_hubspot_deal_associated_with_a_referred_contact_gets_the_attribution(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _import(ledger, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    run_cycle(ledger, crms, SETTINGS)
    [referral] = ledger.referrals()
    contact_id = _lead(ledger, referral["id"], "hubspot", "contacts")
    created = sandbox.hubspot.convert_lead(contact_id)
    run_cycle(ledger, crms, SETTINGS)
    deal = sandbox.hubspot.get_record("deals", created["deal"])
    assert deal is not None and deal["refsync_referral_id"] == referral["id"]
    sandbox.hubspot.move_stage(created["deal"], "Closed Lost")
    run_cycle(ledger, crms, SETTINGS)
    assert ledger.referral(referral["id"])["status"] == "lost"  # type: ignore[index]



def _two_referred_contacts_of_one_person(ledger: Ledger, crms: dict[str, CrmTarget],
                                         tmp_path: Path) -> tuple[dict, dict, str, str]:
    """Two partners' referrals of one person (two emails), pushed to HubSpot only: (first, second,
    first's contact, second's contact)."""
    _import(ledger, tmp_path, [
        "acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1",
        "bluebird,dana.lee@northwind.example,,,,,,2026-10-03T09:00:00Z,,e2",
    ])
    del crms["salesforce"]
    run_cycle(ledger, crms, SETTINGS)
    first, second = ledger.referrals()
    return (first, second, _lead(ledger, first["id"], "hubspot", "contacts"),
            _lead(ledger, second["id"], "hubspot", "contacts"))


def test_hubspot_merge_minting_a_new_id_is_followed_and_first_touch_keeps_credit(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    first, second, first_contact, second_contact = _two_referred_contacts_of_one_person(ledger, crms, tmp_path)
    merged = sandbox.hubspot.merge("contacts", second_contact, first_contact)
    assert merged not in (first_contact, second_contact)  # HubSpot minted a new id
    run_cycle(ledger, crms, SETTINGS)
    assert _lead(ledger, first["id"], "hubspot", "contacts") == merged
    second_after = ledger.referral(second["id"])
    assert second_after is not None and second_after["attribution"]["merged_into"] == first["id"]
    record = sandbox.hubspot.get_record("contacts", merged)
    assert record is not None and record["refsync_referral_id"] == first["id"]
    assert record["referral_partner"] == "acme"


@pytest.mark.parametrize("winner_first", [True, False])
def test_the_referral_that_lost_a_hubspot_merge_stays_superseded_whatever_order_the_merged_ids_come_in(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path, winner_first: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second, first_contact, second_contact = _two_referred_contacts_of_one_person(ledger, crms, tmp_path)
    merged = sandbox.hubspot.merge("contacts", second_contact, first_contact)
    # hs_merged_object_ids carries no documented order: the winner's old id may be handled first
    adapter = crms["hubspot"].adapter
    pages = adapter.change_pages

    def reordered(object_name: str, since: datetime, fields: Sequence[str], **kw: object) -> Iterator[ChangeSet]:
        for page in pages(object_name, since, fields, **kw):  # type: ignore[arg-type]
            merges = sorted((c for c in page.changes if c.kind == "merged"),
                            key=lambda c: (c.record_id != first_contact) == winner_first)
            rest = [c for c in page.changes if c.kind != "merged"]
            yield ChangeSet([*rest, *merges], page.stage_changes, page.cursor)

    monkeypatch.setattr(adapter, "change_pages", reordered)
    run_cycle(ledger, crms, SETTINGS)
    loser = ledger.referral(second["id"])
    assert loser is not None and loser["attribution"]["merged_into"] == first["id"]
    assert [lk["state"] for lk in loser["links"] if lk["record_id"] == merged] == ["superseded"]
    assert _lead(ledger, first["id"], "hubspot", "contacts") == merged


def test_a_writer_that_keeps_overwriting_wins_after_the_limit_with_a_conflict_alert(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _import(ledger, tmp_path, ["acme,dana@northwind.example,,,,,,2026-10-01T09:00:00Z,,e1"])
    del crms["hubspot"]
    run_cycle(ledger, crms, SETTINGS)
    [referral] = ledger.referrals()
    lead_id = _lead(ledger, referral["id"], "salesforce", "Lead")
    limit = crms["salesforce"].mapping.restore_limit
    for n in range(limit + 1):
        sandbox.salesforce.set_field("Lead", lead_id, "Referral_Partner__c", f"other-{n}", by="005INTEGRATION")
        run_cycle(ledger, crms, SETTINGS)
    record = sandbox.salesforce.get_record("Lead", lead_id)
    assert record is not None and record["Referral_Partner__c"] == f"other-{limit}"  # refsync stopped fighting
    [conflict] = [a for a in alerts(ledger) if a["kind"] == "attribution_conflict"]
    writer = record["LastModifiedById"]  # the user the CRM names as the last writer
    assert writer in conflict["message"] and conflict["record_id"] == lead_id


def test_a_poll_over_many_pages_repairs_every_record_and_resumes_after_the_last_page_it_finished(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    _import(ledger, tmp_path, [f"acme,p{i}@pages.example,,,,,,2026-10-01T09:00:00Z,,e{i}" for i in range(12)])
    run_cycle(ledger, crms, SETTINGS)
    adapter = crms["hubspot"].adapter
    assert isinstance(adapter, HubSpotAdapter)
    monkeypatch.setattr(adapter, "page_records", 4)
    monkeypatch.setattr(adapter, "search_page", 4)
    contacts = [_lead(ledger, r["id"], "hubspot", "contacts") for r in ledger.referrals()]
    for contact in contacts:
        sandbox.hubspot.set_field("contacts", contact, "referral_partner", None, by="rep")
    before = cursor(ledger, "hubspot", "contacts")
    real = adapter.change_pages
    handled: list[datetime] = []

    def cut_after_one_page(object_name: str, since: datetime, fields: Sequence[str],
                           **memory: Any) -> Iterator[ChangeSet]:
        for page in real(object_name, since, fields, **memory):
            if handled:
                raise TransientError("connection reset by peer", crm="hubspot")
            handled.append(page.cursor)
            yield page

    monkeypatch.setattr(adapter, "change_pages", cut_after_one_page)
    failed = run_cycle(ledger, crms, SETTINGS)
    assert failed.errors, "the cut poll is reported"
    kept = cursor(ledger, "hubspot", "contacts")
    assert before is not None and kept is not None and before < kept == handled[0]
    monkeypatch.setattr(adapter, "change_pages", real)
    run_cycle(ledger, crms, SETTINGS)
    run_cycle(ledger, crms, SETTINGS)
    values = [(sandbox.hubspot.get_record("contacts", c) or {}).get("referral_partner") for c in contacts]
    assert values == ["acme"] * 12


@pytest.mark.postgres
def test_a_large_first_push_on_postgresql_refreshes_the_statistics_the_poll_is_planned_on(
    pg_url: str, clock: Any, crms: dict[str, CrmTarget], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the statistics of empty tables (autovacuum off, or not run yet), PostgreSQL planned the
    # poll's prefetch as a filter over every link of the CRM, for each 500 records it observes: a
    # first cycle of 100,000 referrals spent most of its time there. A push that planned or landed
    # many ops refreshes the statistics of the tables it grew (the threshold is lowered here to
    # keep the test small: on a table this small the planner rightly scans, so the plan itself is
    # not what is checked).
    from sqlalchemy import create_engine, text

    from refsync.connector import sync

    monkeypatch.setattr(sync, "STATISTICS_AFTER", 5)
    ledger = Ledger.open(pg_url, clock=clock)
    _import(ledger, tmp_path, [f"acme,p{n}@co{n}.example,Co {n},P {n},partner,referral,q4,2026-10-01T09:00:00Z,,e{n}"
                               for n in range(12)])
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    counts = ("SELECT relname, analyze_count FROM pg_stat_user_tables "
              "WHERE relname IN ('crm_links', 'sync_ops', 'audit_events')")
    with engine.connect() as conn:
        before = dict(conn.execute(text(counts)).all())
        report = run_cycle(ledger, crms, SETTINGS)
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        after = dict(conn.execute(text(counts)).all())
    engine.dispose()
    ledger.close()
    assert report.counts()["pushed"] == 24
    assert all(after[table] > before.get(table, 0) for table in ("crm_links", "sync_ops", "audit_events")), after
