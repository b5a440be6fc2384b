"""A quiet cycle is quiet: right after activity, inside the overlap window, a poll with nothing new
to handle makes one API call per polled object (counted by the emulators themselves), reads no
details of records it already handled, counts no changes, and a new process (a `sync --once`) does
not list HubSpot's archived records again. Over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
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
from tests.conftest import FakeClock, targets_for

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


def test_the_overlap_window_is_listed_again_once_when_it_settles_not_on_every_poll(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path, clock: FakeClock
) -> None:
    """After a burst of writes, polls right after list only what is new; the window is listed
    again once, when HubSpot's index has had time to catch up, and never again after that.
    (Pages of 2 here stand for HubSpot's 200: the window holds several pages of changes.)"""
    _activity(ledger, crms, sandbox, tmp_path)
    hubspot = crms["hubspot"].adapter
    hubspot.search_page = 2  # type: ignore[attr-defined]
    for referral in ledger.referrals():  # reps touch every record, one at a time
        for link in referral["links"]:
            if link["crm"] == "hubspot" and link["state"] == "active":
                name = "firstname" if link["object"] == "contacts" else "dealname"
                sandbox.hubspot.set_field(str(link["object"]), str(link["record_id"]), name, "touched")
                time.sleep(0.002)
    clock.advance(seconds=5)
    assert poll_target(ledger, crms["hubspot"]).changes == 6
    for _ in range(3):  # polls seconds apart, inside the window
        clock.advance(seconds=20)
        before = _calls(sandbox)
        assert poll_target(ledger, crms["hubspot"]).changes == 0
        assert _since(before, sandbox)["hubspot"] == {"search": 2}
    clock.advance(minutes=5)  # the window has settled: listed once more, nothing in it handled again
    before = _calls(sandbox)
    settling = poll_target(ledger, crms["hubspot"])
    assert settling.changes == 0 and _since(before, sandbox)["hubspot"]["search"] > 2
    for _ in range(2):  # and from then on a quiet poll is one search per object, however long it stays quiet
        clock.advance(minutes=10)
        before = _calls(sandbox)
        assert poll_target(ledger, crms["hubspot"]).changes == 0
        assert _since(before, sandbox)["hubspot"] == {"search": 2}


def test_a_change_indexed_late_is_handled_by_the_poll_that_settles_its_window(
    ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path, clock: FakeClock
) -> None:
    """HubSpot's search can index a change after a later one (crm-api/hubspot/README.md: search is
    eventually consistent). A poll right after lists only what is new, so it does not see the late
    one yet; the poll that settles the window does, and the deal's stage move reaches the ledger."""
    _activity(ledger, crms, sandbox, tmp_path)
    hub = sandbox.hubspot
    late, early = ledger.referrals()[:2]
    deal_of = {r["id"]: next(str(lk["record_id"]) for lk in r["links"]
                             if lk["crm"] == "hubspot" and lk["object"] == "deals" and lk["state"] == "active")
               for r in (late, early)}
    hub.configure(indexing_lag_ms=3000)
    hub.move_stage(deal_of[late["id"]], "Closed Won", amount=1200)  # indexed three seconds from now
    time.sleep(0.05)
    hub.configure(indexing_lag_ms=1)
    hub.set_field("deals", deal_of[early["id"]], "dealname", "renamed by a rep")  # later, indexed at once
    time.sleep(0.05)
    clock.advance(seconds=10)
    assert poll_target(ledger, crms["hubspot"]).changes == 1  # the rename
    time.sleep(3.1)
    clock.advance(seconds=10)
    assert poll_target(ledger, crms["hubspot"]).transitions == 0  # the stage move's stamp is behind the cursor
    assert ledger.referral(late["id"])["status"] == "lost"  # type: ignore[index]
    clock.advance(minutes=5)
    settling = poll_target(ledger, crms["hubspot"])
    assert settling.transitions == 1
    shown = ledger.referral(late["id"])
    assert shown is not None and shown["status"] == "won" and shown["outcome"]["amount"] == 1200
