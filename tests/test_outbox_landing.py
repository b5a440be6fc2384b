"""Landing a push batch's outcomes (set-based): op states, links and audit events, on SQLite and
PostgreSQL. Every rule the engine relies on: only ops still leased to the lander are touched, a
released op does not count an attempt, a link is added once, a link whose record refsync wrote
remembers when, and the audit trail says what was pushed and what died."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from refsync.connector.attribution import Policy
from refsync.connector.imports import import_file
from refsync.state.ledger import Ledger
from refsync.state.models import CrmLink
from refsync.state.outbox import OpOutcome, enqueue_pushes, land_outcomes
from refsync.state.workers import beat, register
from tests.conftest import FakeClock

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
LEASE = timedelta(seconds=60)


def _claimed(ledger: Ledger, tmp_path: Path, count: int, owner: str = "w1") -> list[dict]:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\n" + "\n".join(
        f"acme,p{i}@land.example,,,,,,2026-10-01T09:00:00Z,,l{i}" for i in range(count)) + "\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime.now(UTC))
    assert enqueue_pushes(ledger, "salesforce") == count
    return ledger.claim_ops(owner, "salesforce", count, LEASE)


def _written_at(ledger: Ledger) -> dict[str, datetime | None]:
    with ledger.transaction() as txn:
        return {rid: at for rid, at in txn.session.execute(select(CrmLink.record_id, CrmLink.last_written_at))}


def test_a_batch_lands_states_links_and_events_once(ledger: Ledger, clock: FakeClock, tmp_path: Path) -> None:
    done, unchanged, failed, released, dead = _claimed(ledger, tmp_path, 5)
    retry_at = clock.now + timedelta(minutes=5)
    land_outcomes(ledger, "salesforce", "w1", [
        OpOutcome(done["id"], done["referral_id"], "done", links=[("Lead", "00Q1", "lead"), ("Lead", "00Q1", "lead")],
                  written={"Referral_Partner__c": "acme"}, created=True),
        OpOutcome(unchanged["id"], unchanged["referral_id"], "done", links=[("Lead", "00Q2", "lead")], unchanged=True),
        OpOutcome(failed["id"], failed["referral_id"], "failed", next_attempt_at=retry_at,
                  error_class="TransientError", error_code="UNABLE_TO_LOCK_ROW", error_message="locked"),
        OpOutcome(released["id"], released["referral_id"], "released", next_attempt_at=retry_at),
        OpOutcome(dead["id"], dead["referral_id"], "dead", error_class="RecordRejected",
                  error_code="FIELD_CUSTOM_VALIDATION_EXCEPTION", error_message="no"),
    ])
    ops = {op["id"]: op for op in ledger.ops()}
    assert [ops[o["id"]]["state"] for o in (done, unchanged, failed, released, dead)] == [
        "done", "done", "failed", "pending", "dead"]
    assert ops[released["id"]]["attempts"] == 0 and ops[failed["id"]]["attempts"] == 1
    assert all(op["lease_owner"] is None for op in ops.values())
    assert ops[failed["id"]]["last_error"]["code"] == "UNABLE_TO_LOCK_ROW"
    first = ledger.referral(done["referral_id"])
    assert first is not None and [lk["record_id"] for lk in first["links"]] == ["00Q1"]
    assert [(e["kind"], e["reason_code"], e["record_id"]) for e in first["timeline"] if e["kind"] == "pushed"] == [
        ("pushed", "created", "00Q1")]
    second = ledger.referral(unchanged["referral_id"])
    assert second is not None and [lk["record_id"] for lk in second["links"]] == ["00Q2"]
    assert not [e for e in second["timeline"] if e["kind"] == "pushed"]
    gone = ledger.referral(dead["referral_id"])
    assert gone is not None
    assert [e["reason_code"] for e in gone["timeline"] if e["kind"] == "push_dead"] == [
        "FIELD_CUSTOM_VALIDATION_EXCEPTION"]
    assert _written_at(ledger) == {"00Q1": clock.now, "00Q2": None}


def test_a_later_write_to_a_linked_record_moves_last_written_at_and_adds_no_link(
        ledger: Ledger, clock: FakeClock, tmp_path: Path) -> None:
    [op] = _claimed(ledger, tmp_path, 1)
    land_outcomes(ledger, "salesforce", "w1", [OpOutcome(op["id"], op["referral_id"], "done",
                                                         links=[("Lead", "00Q1", "lead")], unchanged=True)])
    ledger.enqueue_op("push", "restore:1", "salesforce", referral_id=op["referral_id"])
    clock.advance(minutes=1)
    [again] = ledger.claim_ops("w1", "salesforce", 10, LEASE)
    land_outcomes(ledger, "salesforce", "w1", [OpOutcome(again["id"], again["referral_id"], "done",
                                                         links=[("Lead", "00Q1", "lead")], written={"X": 1})])
    shown = ledger.referral(op["referral_id"])
    assert shown is not None and len(shown["links"]) == 1
    assert _written_at(ledger) == {"00Q1": clock.now}


def test_ops_no_longer_leased_to_the_lander_are_left_to_their_new_owner(
        ledger: Ledger, clock: FakeClock, tmp_path: Path) -> None:
    ops = _claimed(ledger, tmp_path, 3, owner="w1")
    for worker in ("w1", "w2"):  # both alive: w1 is only slow, so nothing is taken back before its lease ends
        register(ledger, worker, host="elsewhere", pid=1)
    clock.advance(seconds=61)  # w1 stalled past its lease; w2 took two of them over
    beat(ledger, "w1", host="elsewhere", pid=1)
    taken = ledger.claim_ops("w2", "salesforce", 2, LEASE)
    land_outcomes(ledger, "salesforce", "w1", [
        OpOutcome(op["id"], op["referral_id"], "done", links=[("Lead", f"00Q{n}", "lead")], written={"X": 1})
        for n, op in enumerate(ops)])
    states = {op["id"]: (op["state"], op["lease_owner"]) for op in ledger.ops()}
    kept = {op["id"] for op in taken}
    assert all(states[i] == ("in_flight", "w2") for i in kept)
    [mine] = [op for op in ops if op["id"] not in kept]
    assert states[mine["id"]] == ("done", None)
    linked = {lk["record_id"] for r in ledger.referrals() for lk in r["links"]}
    assert len(linked) == 1, "links and events only for the op that was still w1's"
