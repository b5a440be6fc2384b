"""A quiet cycle is quiet: right after activity, inside the overlap window, a poll with nothing new
to handle makes one API call per polled object (counted by the emulators themselves), reads no
details of records it already handled, counts no changes, and a new process (a `sync --once`) does
not list HubSpot's archived records again. Over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.config import load_config
from refsync.connector.crms import build_targets
from refsync.connector.imports import import_file
from refsync.connector.poll import poll_target
from refsync.connector.push import CrmTarget
from refsync.connector.sync import CycleSettings, run_cycle
from refsync.state.ledger import Ledger
from tests.conftest import targets_for

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
SETTINGS = CycleSettings(batch_size=200, lease_seconds=60, max_attempts=5)


@pytest.fixture
def crms(sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, CrmTarget]:
    targets = targets_for(sandbox, tmp_path, monkeypatch)
    # A second adapter in this process does not know the first one's searches of the last second
    # (two processes a second apart); waiting out a 429 is not what these tests count.
    sandbox.hubspot.configure(search_per_second=None)
    return targets


def _calls(sandbox: RunningSandbox) -> dict[str, dict[str, int]]:
    return {"salesforce": sandbox.salesforce.calls(), "hubspot": sandbox.hubspot.calls()}


def _since(before: dict[str, dict[str, int]], sandbox: RunningSandbox) -> dict[str, dict[str, int]]:
    after = _calls(sandbox)
    return {crm: {k: v - before[crm].get(k, 0) for k, v in after[crm].items() if v - before[crm].get(k, 0)}
            for crm in after}


def _activity(ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Referrals pushed, then a rep converts them into deals and closes them; refsync polls that and
    writes the attribution onto the new deals, and the next cycle sees those writes. What follows
    runs seconds later, well inside the overlap window."""
    path = tmp_path / "r.csv"
    rows = [f"acme,p{i}@quiet.example,Quiet {i},P {i},,,,2026-10-01T09:00:00Z,,q{i}" for i in range(3)]
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    assert import_file(ledger, path, Policy("first_touch", "flag", 365, "q"), datetime.now(UTC)).rejected == []
    assert run_cycle(ledger, crms, SETTINGS).errors == []
    for referral in ledger.referrals():
        links = {(lk["crm"], lk["object"]): lk["record_id"] for lk in referral["links"]}
        opportunity = sandbox.salesforce.convert_lead(links[("salesforce", "Lead")])["opportunity"]
        sandbox.salesforce.move_stage(opportunity, "Closed Lost")
        deal = sandbox.hubspot.convert_lead(links[("hubspot", "contacts")])["deal"]
        sandbox.hubspot.move_stage(deal, "Closed Lost")
    handled = run_cycle(ledger, crms, SETTINGS)
    assert handled.errors == [] and handled.counts()["transitions"] >= 3
    assert handled.counts()["pushed"] == 6  # the new deals got the attribution: they changed again
    assert run_cycle(ledger, crms, SETTINGS).counts()["pushed"] == 0


def test_a_daemon_poll_right_after_activity_makes_one_call_per_object_and_counts_no_change(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _activity(ledger, crms, sandbox, tmp_path)
    before = _calls(sandbox)
    polls = {name: poll_target(ledger, target) for name, target in crms.items()}
    # no association reads, no batch reads with stage history, no OpportunityHistory query
    assert _since(before, sandbox) == {"salesforce": {"query": 2}, "hubspot": {"search": 2}}
    assert {name: (p.calls, p.changes, p.transitions) for name, p in polls.items()} == {
        "salesforce": (2, 0, 0), "hubspot": (2, 0, 0)}


def test_a_new_sync_once_right_after_activity_makes_at_most_six_calls_per_crm(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    _activity(ledger, crms, sandbox, tmp_path)
    events = len(ledger.referral(ledger.referrals()[0]["id"])["timeline"])  # type: ignore[index]
    config = load_config(tmp_path / "refsync.toml")
    assert build_targets(config, ledger)[1] == []  # the process that saw the activity cached the schemas
    before = _calls(sandbox)
    fresh, problems = build_targets(config, ledger)  # a new process: only what the ledger remembers
    assert problems == []
    report = run_cycle(ledger, fresh, SETTINGS)
    calls = _since(before, sandbox)
    assert report.errors == [] and report.counts()["transitions"] == 0
    assert all(poll.changes == 0 for poll in report.poll.values())
    assert sum(calls["salesforce"].values()) <= 6 and sum(calls["hubspot"].values()) <= 6, calls
    # one call per polled object: no describe, no pipelines, no account details (cached in the
    # ledger), archived records not listed again, nothing read twice about records already handled
    assert calls == {"salesforce": {"query": 2}, "hubspot": {"search": 2}}
    assert len(ledger.referral(ledger.referrals()[0]["id"])["timeline"]) == events  # type: ignore[index]


def test_a_change_inside_the_overlap_window_is_still_handled_after_a_restart(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Skipping handled records must not skip a record that changed again."""
    _activity(ledger, crms, sandbox, tmp_path)
    referral = ledger.referrals()[0]
    links = {(lk["crm"], lk["object"]): lk["record_id"] for lk in referral["links"] if lk["state"] == "active"}
    sandbox.salesforce.move_stage(links[("salesforce", "Opportunity")], "Closed Won", amount=900,
                                  close_date="2026-11-20")
    fresh, _problems = build_targets(load_config(tmp_path / "refsync.toml"))
    report = run_cycle(ledger, fresh, SETTINGS)
    assert report.errors == []
    assert report.poll["salesforce"].changes == 1 and report.poll["hubspot"].changes == 0
    shown = ledger.referral(referral["id"])
    assert shown is not None and shown["status"] == "won" and shown["outcome"]["amount"] == 900
