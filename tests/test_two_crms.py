"""One referral, a deal in each CRM, and the two deals disagree: refsync follows the latest move
(as it always has) and raises `crm_status_conflict` so that someone decides which deal is right;
a CRM that reopens its own closed deal raises nothing. Over real HTTP against both emulators, on
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.imports import import_file
from refsync.connector.push import CrmTarget
from refsync.connector.sync import CycleSettings, run_cycle
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
SETTINGS = CycleSettings(batch_size=200, lease_seconds=60, max_attempts=5)


def _deals(ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> tuple[str, str, str]:
    """A referral pushed to both CRMs, converted to a deal in each; its id and the two deals."""
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\nacme,dana@two.example,Two Co,Dana,,,,2026-10-01T09:00:00Z,,t1\n")
    assert import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime.now(UTC)).rejected == []
    assert run_cycle(ledger, crms, SETTINGS).errors == []
    [referral] = ledger.referrals()
    links = {(lk["crm"], lk["object"]): str(lk["record_id"]) for lk in referral["links"]}
    opportunity = sandbox.salesforce.convert_lead(links[("salesforce", "Lead")])["opportunity"]
    deal = sandbox.hubspot.convert_lead(links[("hubspot", "contacts")])["deal"]
    assert run_cycle(ledger, crms, SETTINGS).errors == []
    return str(referral["id"]), opportunity, deal


def _conflicts(ledger: Ledger) -> list[dict[str, object]]:
    return [a for a in alerts(ledger) if a["kind"] == "crm_status_conflict"]


def test_deals_in_two_crms_that_disagree_raise_one_conflict_and_the_latest_move_holds(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    referral_id, opportunity, deal = _deals(ledger, crms, sandbox, tmp_path)
    sandbox.salesforce.move_stage(opportunity, "Closed Won", amount=5000)
    assert run_cycle(ledger, {"salesforce": crms["salesforce"]}, SETTINGS).errors == []
    assert (ledger.referral(referral_id) or {})["status"] == "won"
    assert _conflicts(ledger) == []
    sandbox.hubspot.move_stage(deal, "Closed Lost")
    for _ in range(2):
        assert run_cycle(ledger, crms, SETTINGS).errors == []
    assert (ledger.referral(referral_id) or {})["status"] == "lost"
    [conflict] = _conflicts(ledger)
    assert conflict["referral_id"] == referral_id and conflict["crm"] == "hubspot"
    assert "salesforce is won" in str(conflict["message"]) and "to lost" in str(conflict["message"])


def test_a_crm_reopening_its_own_closed_deal_raises_no_conflict(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    referral_id, opportunity, _deal = _deals(ledger, crms, sandbox, tmp_path)
    sandbox.salesforce.move_stage(opportunity, "Closed Won", amount=5000)
    assert run_cycle(ledger, crms, SETTINGS).errors == []
    sandbox.salesforce.move_stage(opportunity, "Negotiation/Review")
    assert run_cycle(ledger, crms, SETTINGS).errors == []
    assert (ledger.referral(referral_id) or {})["status"] == "negotiation"
    assert _conflicts(ledger) == []
