"""A CRM whose clock is behind refsync's: the stage moves a rep makes right after a referral is
imported still reach the ledger. Stage history carries the CRM's times (OpportunityHistory's
CreatedDate, propertiesWithHistory timestamps: crm-api/*/README.md), while a referral imported a
moment earlier carries refsync's time; comparing the two dropped every move. Over real HTTP
against both emulators, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.imports import import_file
from refsync.connector.push import CrmTarget
from refsync.connector.sync import CycleSettings, run_cycle
from refsync.state.ledger import Ledger
from tests.conftest import FakeClock

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
SETTINGS = CycleSettings(batch_size=200, lease_seconds=60, max_attempts=5)


@pytest.mark.parametrize("crm", ["salesforce", "hubspot"])
def test_a_deal_won_on_a_crm_whose_clock_is_behind_refsyncs_records_every_stage_it_passed(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path, clock: FakeClock,
    crm: str
) -> None:
    clock.now = datetime.now(UTC) + timedelta(minutes=10)  # refsync's clock ten minutes ahead of the CRM's
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\nacme,dana@clock.example,Clock Co,Dana,,,,2026-10-01T09:00:00Z,,c1\n")
    assert import_file(ledger, path, Policy("first_touch", "flag", 365, "c"), clock.now).rejected == []
    targets = {crm: crms[crm]}
    assert run_cycle(ledger, targets, SETTINGS).errors == []
    [referral] = ledger.referrals()
    lead_object = "Lead" if crm == "salesforce" else "contacts"
    [lead] = [str(lk["record_id"]) for lk in referral["links"] if lk["object"] == lead_object]
    emulator = sandbox.salesforce if crm == "salesforce" else sandbox.hubspot
    converted = emulator.convert_lead(lead)
    deal = converted["opportunity"] if crm == "salesforce" else converted["deal"]
    emulator.move_stage(deal, "Negotiation/Review" if crm == "salesforce" else "Contract Sent")
    emulator.move_stage(deal, "Closed Won", amount=4200)
    clock.advance(seconds=30)
    assert run_cycle(ledger, targets, SETTINGS).errors == []
    shown = ledger.referral(referral["id"])
    assert shown is not None
    assert shown["status"] == "won", shown["status_history"]
    assert shown["outcome"]["amount"] == 4200
    # every stage it passed through, in order, at the CRM's times
    moves = [h for h in shown["status_history"] if h["source"] == "crm_poll"]
    assert [h["status"] for h in moves][-2:] == ["negotiation", "won"]
    assert all(datetime.fromisoformat(h["at"]) < clock.now - timedelta(minutes=5) for h in moves)
