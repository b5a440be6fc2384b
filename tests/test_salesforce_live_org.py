"""What live Salesforce orgs do that a naive connector loses referrals to (issue 10, items 1-5):
converted prospects, duplicate rules, field lengths, replays after a lost answer, one referral twice
in a batch. The real adapter over real HTTP against the sandbox org, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.cli import cli
from refsync.connector.imports import import_file
from refsync.connector.mapping import load_mapping
from refsync.connector.push import CrmTarget, push_round
from refsync.connector.sync import CycleSettings, run_cycle
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts
from refsync.state.outbox import enqueue_pushes
from tests.conftest import ROOT, FakeClock

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
SETTINGS = CycleSettings(batch_size=200, lease_seconds=60, max_attempts=5)


def _import(ledger: Ledger, tmp_path: Path, *rows: str) -> list[dict[str, Any]]:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    assert import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime.now(UTC)).rejected == []
    return ledger.referrals()


def _links(ledger: Ledger, referral_id: str) -> set[tuple[str, str, str, str]]:
    shown = ledger.referral(referral_id)
    assert shown is not None
    return {(lk["object"], lk["record_id"], lk["role"], lk["state"]) for lk in shown["links"]
            if lk["crm"] == "salesforce"}


def _sf_ops(ledger: Ledger) -> dict[str, int]:
    return {k: v for k, v in ledger.status()["ops"].items() if v}


def _leads(sandbox: RunningSandbox, email: str) -> list[dict[str, Any]]:
    store = sandbox.salesforce.store
    with store.lock:
        return [dict(r) for r in store.live("Lead") if str(r.get("Email") or "").lower() == email]


def _mapping(crms: dict[str, CrmTarget], tmp_path: Path, extra: str) -> None:
    """The shipped Salesforce mapping with ``extra`` lines added to its [lead] table."""
    shipped = (ROOT / "mappings" / "salesforce.toml").read_text().splitlines()
    keys = {line.split("=")[0].strip() for line in extra.splitlines()}
    kept = "\n".join(line for line in shipped if line.split("=")[0].strip() not in keys) + "\n"
    text = kept.replace("[lead]\n", "[lead]\n" + extra + "\n", 1)
    path = tmp_path / "salesforce.toml"
    path.write_text(text)
    crms["salesforce"].mapping = load_mapping(path).mapping


def test_a_converted_prospect_is_linked_to_its_contact_and_open_opportunity_which_gets_the_attribution(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    sf = sandbox.salesforce
    lead = sf.create_record("Lead", {"LastName": "Lee", "Company": "Northwind", "Email": "dana@northwind.example"})
    converted = sf.convert_lead(lead)
    [referral] = _import(ledger, tmp_path, "acme,dana@northwind.example,Northwind,Dana Lee,,,,2026-10-01T09:00:00Z,,e1")
    run_cycle(ledger, crms, SETTINGS)
    assert _links(ledger, referral["id"]) == {
        ("Contact", converted["contact"], "contact", "active"),
        ("Opportunity", converted["opportunity"], "opportunity", "active"),
        ("Lead", lead, "lead", "converted")}
    opportunity = sf.get_record("Opportunity", converted["opportunity"])
    assert opportunity is not None and opportunity["Referral_Id__c"] == referral["id"]
    assert opportunity["Referral_Partner__c"] == "acme"
    assert _sf_ops(ledger).keys() <= {"done"}
    kinds = [e["kind"] for e in ledger.referral(referral["id"])["timeline"]]  # type: ignore[index]
    assert "lead_converted" in kinds and "pushed" in kinds


def test_a_converted_prospect_without_an_open_opportunity_waits_for_the_next_one_on_its_contact(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    sf = sandbox.salesforce
    lead = sf.create_record("Lead", {"LastName": "Ortiz", "Company": "Contoso", "Email": "sam@contoso.example"})
    converted = sf.convert_lead(lead)
    sf.move_stage(converted["opportunity"], "Closed Lost")  # last year's deal
    [referral] = _import(ledger, tmp_path, "acme,sam@contoso.example,Contoso,Sam,,,,2026-10-01T09:00:00Z,,e1")
    run_cycle(ledger, crms, SETTINGS)
    assert _links(ledger, referral["id"]) == {("Contact", converted["contact"], "contact", "active"),
                                              ("Lead", lead, "lead", "converted")}
    assert _sf_ops(ledger).keys() <= {"done"}
    assert sf.get_record("Opportunity", converted["opportunity"])["Referral_Id__c"] is None  # type: ignore[index]
    new = sf.create_record("Opportunity", {"Name": "Contoso renewal", "ContactId": converted["contact"],
                                           "AccountId": converted["account"]})
    for _ in range(2):  # the poll links it, the next push writes it
        run_cycle(ledger, crms, SETTINGS)
    assert ("Opportunity", new, "opportunity", "active") in _links(ledger, referral["id"])
    assert sf.get_record("Opportunity", new)["Referral_Id__c"] == referral["id"]  # type: ignore[index]
    # another one opened later on the same contact does not take the referral: a human decides
    later = sf.create_record("Opportunity", {"Name": "Contoso upsell", "ContactId": converted["contact"],
                                             "AccountId": converted["account"]})
    run_cycle(ledger, crms, SETTINGS)
    assert sf.get_record("Opportunity", later)["Referral_Id__c"] is None  # type: ignore[index]
    [contested] = [a for a in alerts(ledger) if a["kind"] == "deal_contested"]
    assert contested["record_id"] == later and new in contested["message"]


def test_a_customer_contact_is_found_and_its_open_opportunity_gets_the_attribution_without_a_new_lead(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    sf = sandbox.salesforce
    contact = sf.create_record("Contact", {"LastName": "Kim", "Email": "jo@fabrikam.example"})
    opportunity = sf.create_record("Opportunity", {"Name": "Fabrikam expansion", "ContactId": contact})
    [referral] = _import(ledger, tmp_path, "acme,Jo@Fabrikam.example,Fabrikam,Jo Kim,,,,2026-10-01T09:00:00Z,,e1")
    run_cycle(ledger, crms, SETTINGS)
    assert _leads(sandbox, "jo@fabrikam.example") == []
    assert _links(ledger, referral["id"]) == {("Contact", contact, "contact", "active"),
                                              ("Opportunity", opportunity, "opportunity", "active")}
    assert sf.get_record("Opportunity", opportunity)["Referral_Id__c"] == referral["id"]  # type: ignore[index]
    assert _sf_ops(ledger).keys() <= {"done"}


def test_a_create_blocked_by_the_duplicate_rule_is_linked_to_the_record_the_rule_names(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _mapping(crms, tmp_path, 'match_objects = ["Lead"]')  # refsync itself does not look among Contacts
    contact = sandbox.salesforce.create_record("Contact", {"LastName": "Ng", "Email": "al@litware.example"})
    [referral] = _import(ledger, tmp_path, "acme,al@litware.example,Litware,Al Ng,,,,2026-10-01T09:00:00Z,,e1")
    run_cycle(ledger, crms, SETTINGS)
    assert _leads(sandbox, "al@litware.example") == []
    assert _links(ledger, referral["id"]) == {("Contact", contact, "contact", "active")}
    assert _sf_ops(ledger).keys() <= {"done"}


def test_an_admin_may_let_refsync_save_past_the_duplicate_rule(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _mapping(crms, tmp_path, 'match_objects = ["Lead"]\nallow_duplicate_save = true')
    sandbox.salesforce.create_record("Contact", {"LastName": "Ng", "Email": "al@litware.example"})
    [referral] = _import(ledger, tmp_path, "acme,al@litware.example,Litware,Al Ng,,,,2026-10-01T09:00:00Z,,e1")
    run_cycle(ledger, crms, SETTINGS)
    [lead] = _leads(sandbox, "al@litware.example")
    assert _links(ledger, referral["id"]) == {("Lead", lead["Id"], "lead", "active")}


def test_a_name_longer_than_last_name_holds_is_cut_to_80_characters_at_creation(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    name = "Maximilian " + "Oppenheimer-Wittgenstein" * 5  # 131 characters: the import takes up to 255
    [referral] = _import(ledger, tmp_path, f"acme,max@long.example,Long GmbH,{name},,,,2026-10-01T09:00:00Z,,e1")
    run_cycle(ledger, crms, SETTINGS)
    [lead] = _leads(sandbox, "max@long.example")
    assert lead["LastName"] == name[:80] and lead["Referral_Id__c"] == referral["id"]
    assert _sf_ops(ledger).keys() <= {"done"}


def test_the_emulator_refuses_a_too_long_last_name_as_salesforce_does(sandbox: RunningSandbox) -> None:
    sandbox.salesforce.reset()
    [result] = sandbox.salesforce.store.collection_upsert(
        "Lead", "Referral_Id__c", [{"attributes": {"type": "Lead"}, "Referral_Id__c": "R1", "LastName": "x" * 81,
                                    "Company": "c"}], False, False, lambda: False)
    assert result["success"] is False and result["errors"][0]["statusCode"] == "STRING_TOO_LONG"
    assert result["errors"][0]["fields"] == ["LastName"]


def test_a_replay_after_a_lost_answer_keeps_what_a_rep_edited_meanwhile(
    ledger: Ledger, clock: FakeClock, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    target = crms["salesforce"]
    [referral] = _import(ledger, tmp_path, "acme,,Adatum,Pat Doe,,,,2026-10-01T09:00:00Z,,e1")  # no email to match
    enqueue_pushes(ledger, "salesforce")
    sandbox.salesforce.set_faults(lost_answer=1.0)
    counts = push_round(ledger, target, "w1", limit=10, lease=timedelta(minutes=1), max_attempts=5)
    sandbox.salesforce.set_faults()
    assert counts.failed == 1  # Salesforce created the lead, refsync never heard
    with sandbox.salesforce.store.lock:
        [lead] = [r["Id"] for r in sandbox.salesforce.store.live("Lead") if r["Referral_Id__c"] == referral["id"]]
    sandbox.salesforce.set_field("Lead", lead, "LastName", "Doe-Smith")  # a rep fixes the name
    clock.advance(hours=2)
    counts = push_round(ledger, target, "w1", limit=10, lease=timedelta(minutes=1), max_attempts=5)
    assert counts.pushed == 1
    assert sandbox.salesforce.get_record("Lead", lead)["LastName"] == "Doe-Smith"  # type: ignore[index]
    assert _links(ledger, referral["id"]) == {("Lead", lead, "lead", "active")}


def test_only_a_push_tried_before_looks_for_a_record_carrying_the_referral_id(
    ledger: Ledger, clock: FakeClock, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    # A referral pushed for the first time cannot have a record carrying its id: with no email to
    # match, its push only creates. Once a push was tried and its answer lost, the next one asks
    # for a record carrying the id, and links the one the lost answer created.
    target = crms["salesforce"]
    [referral] = _import(ledger, tmp_path, "acme,,Adatum,Pat Doe,,,,2026-10-01T09:00:00Z,,e1")
    enqueue_pushes(ledger, "salesforce")
    before = sandbox.salesforce.calls().get("query", 0)
    sandbox.salesforce.set_faults(lost_answer=1.0)
    assert push_round(ledger, target, "w1", limit=10, lease=timedelta(minutes=1), max_attempts=5).failed == 1
    sandbox.salesforce.set_faults()
    assert sandbox.salesforce.calls().get("query", 0) == before
    clock.advance(hours=2)
    assert push_round(ledger, target, "w1", limit=10, lease=timedelta(minutes=1), max_attempts=5).pushed == 1
    assert sandbox.salesforce.calls().get("query", 0) == before + 1
    with sandbox.salesforce.store.lock:
        [lead] = [r["Id"] for r in sandbox.salesforce.store.live("Lead") if r["Referral_Id__c"] == referral["id"]]
    assert _links(ledger, referral["id"]) == {("Lead", lead, "lead", "active")}


def test_two_ops_of_one_referral_in_one_batch_push_it_once_and_both_end_done(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    referrals = _import(ledger, tmp_path, *(f"acme,p{n}@batch.example,Batch {n},P {n},,,,2026-10-01T09:00:00Z,,e{n}"
                                            for n in range(3)))
    enqueue_pushes(ledger, "salesforce")
    twice = referrals[0]["id"]
    assert ledger.enqueue_op("push", f"push:salesforce:{twice}:again", "salesforce", referral_id=twice)
    counts = push_round(ledger, crms["salesforce"], "w1", limit=10, lease=timedelta(minutes=1), max_attempts=5)
    assert counts.pushed == 4 and counts.failed == counts.dead == 0
    assert _sf_ops(ledger) == {"done": 4}
    for referral in referrals:
        [lead] = _leads(sandbox, referral["prospect_email"])
        assert _links(ledger, referral["id"]) == {("Lead", lead["Id"], "lead", "active")}


def test_an_op_that_ends_without_a_linked_record_fails_with_an_alert(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    target = crms["salesforce"]
    no_create = target.mapping.lead.model_copy(update={"create": False})
    target.mapping = target.mapping.model_copy(update={"lead": no_create})
    [referral] = _import(ledger, tmp_path, "acme,nobody@void.example,Void,No One,,,,2026-10-01T09:00:00Z,,e1")
    enqueue_pushes(ledger, "salesforce")
    counts = push_round(ledger, target, "w1", limit=10, lease=timedelta(minutes=1), max_attempts=5)
    assert counts.pushed == 0 and counts.dead == 1
    [alert] = [a for a in alerts(ledger) if a["kind"] == "push_unlinked"]
    assert alert["referral_id"] == referral["id"] and "NOT_LINKED" in alert["message"]


def test_mappings_check_warns_when_a_mapped_field_is_shorter_than_the_ledger_may_hold(
    crms: dict[str, CrmTarget], tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "refsync.toml"), "mappings", "check"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "lead.fields.LastName: holds 80 characters, prospect_name may hold 255; longer values are cut" in \
        result.stderr
    assert "lead.fields.Email: holds 80 characters, prospect_email may hold 320" in result.stderr
    assert "salesforce: mapping OK" in result.stdout


@pytest.mark.parametrize("version", ["45.0", "v30.0", "sixty"])
def test_an_api_version_without_collection_upserts_is_a_config_error(tmp_path: Path, version: str) -> None:
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "sqlite:///{tmp_path}/l.db"\n[crm.salesforce]\n'
                      'instance_url = "https://acme.my.salesforce.com"\nsession_id = "env:X"\n'
                      f'api_version = "{version}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "status"], catch_exceptions=False)
    assert result.exit_code == 2
    assert f"{config}:6: crm.salesforce.api_version" in result.stderr


def test_an_org_without_opportunity_contact_id_still_follows_a_conversion_and_polls(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    sf = sandbox.salesforce
    sf.remove_field("Opportunity", "ContactId")  # an org (or an older API version) without it
    target = crms["salesforce"]
    target.schemas["Opportunity"] = target.adapter.describe("Opportunity")
    lead = sf.create_record("Lead", {"LastName": "Lee", "Company": "Northwind", "Email": "dana@northwind.example"})
    converted = sf.convert_lead(lead)
    [referral] = _import(ledger, tmp_path, "acme,dana@northwind.example,Northwind,Dana Lee,,,,2026-10-01T09:00:00Z,,e1")
    for _ in range(2):
        report = run_cycle(ledger, {"salesforce": target}, SETTINGS)
        assert report.errors == []
    assert ("Opportunity", converted["opportunity"], "opportunity", "active") in _links(ledger, referral["id"])
    sf.move_stage(converted["opportunity"], "Closed Won", amount=1200)
    assert run_cycle(ledger, {"salesforce": target}, SETTINGS).errors == []
    assert ledger.referral(referral["id"])["status"] == "won"  # type: ignore[index]
