"""The outbox: idempotent enqueue, leases, and claims that never hand one op to two workers."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select, update

from refsync.state import workers
from refsync.state.ledger import Ledger
from refsync.state.models import SyncOp
from tests.conftest import FakeClock


def live(ledger: Ledger, *ids: str) -> None:
    """Register (or beat for) replicas on another host: only their beats tell whether they live."""
    for pid, worker_id in enumerate(ids, start=1):
        workers.beat(ledger, worker_id, host="replica-host", pid=pid)


def test_enqueue_is_idempotent_by_dedupe_key(ledger: Ledger) -> None:
    assert ledger.enqueue_op("push", "push:r1:salesforce:1", "salesforce", payload={"a": 1})
    assert not ledger.enqueue_op("push", "push:r1:salesforce:1", "salesforce", payload={"a": 2})
    [op] = ledger.ops()
    assert op["payload"] == {"a": 1} and op["state"] == "pending"


def test_claimed_op_is_not_claimed_again_until_its_lease_expires(ledger: Ledger, clock: FakeClock) -> None:
    ledger.enqueue_op("push", "k1", "hubspot")
    live(ledger, "worker-a", "worker-b")
    [claimed] = ledger.claim_ops("worker-a", "hubspot", 10, timedelta(seconds=60))
    assert claimed["lease_owner"] == "worker-a" and claimed["attempts"] == 1
    assert ledger.claim_ops("worker-b", "hubspot", 10, timedelta(seconds=60)) == []
    clock.advance(seconds=61)  # worker-a beats but hangs: its lease runs out all the same (the upper bound)
    live(ledger, "worker-a", "worker-b")
    [again] = ledger.claim_ops("worker-b", "hubspot", 10, timedelta(seconds=60))
    assert again["id"] == claimed["id"] and again["lease_owner"] == "worker-b" and again["attempts"] == 2


def test_claims_are_per_crm(ledger: Ledger) -> None:
    ledger.enqueue_op("push", "k1", "hubspot")
    assert ledger.claim_ops("w", "salesforce", 10, timedelta(seconds=60)) == []
    assert len(ledger.claim_ops("w", "hubspot", 10, timedelta(seconds=60))) == 1


def test_a_claim_takes_the_earliest_due_ops_of_every_state_and_nothing_else(ledger: Ledger, clock: FakeClock) -> None:
    """Pending, failed and expired in-flight ops compete on one order (when each was due, then id);
    ops not due yet and live leases are left alone (SQLite reads each state on its own)."""
    for key in ("pending-late", "failed-early", "failed-not-due", "lease-expired", "lease-live", "pending-early"):
        ledger.enqueue_op("push", key, "hubspot")
    now = clock()
    plan = {"pending-early": ("pending", -50, None), "failed-early": ("failed", -40, None),
            "lease-expired": ("in_flight", -30, -1), "pending-late": ("pending", -10, None),
            "failed-not-due": ("failed", 60, None), "lease-live": ("in_flight", -45, 120)}
    live(ledger, "worker-a", "worker-b")
    with ledger.transaction() as txn:
        for key, (state, due, lease) in plan.items():
            txn.session.execute(update(SyncOp).where(SyncOp.dedupe_key == key).values(
                state=state, next_attempt_at=now + timedelta(seconds=due),
                lease_owner="worker-b" if lease is not None else None,
                lease_expires_at=now + timedelta(seconds=lease) if lease is not None else None))
    with ledger.transaction() as txn:
        keys: dict[int, str] = {op_id: key for op_id, key in txn.session.execute(select(SyncOp.id, SyncOp.dedupe_key))}
    first = ledger.claim_ops("worker-a", "hubspot", 2, timedelta(seconds=60))
    assert [keys[op["id"]] for op in first] == ["pending-early", "failed-early"]
    rest = ledger.claim_ops("worker-a", "hubspot", 10, timedelta(seconds=60))
    assert [keys[op["id"]] for op in rest] == ["lease-expired", "pending-late"]


def test_concurrent_claimers_never_share_an_op(ledger_url: str, clock: FakeClock) -> None:
    ledger = Ledger.open(ledger_url, clock=clock)
    for n in range(200):
        ledger.enqueue_op("push", f"k{n}", "salesforce")
    claimed: dict[str, list[int]] = {}

    live(ledger, *(f"w{i}" for i in range(4)))

    def worker(name: str) -> None:
        mine = Ledger.open(ledger_url, clock=clock)
        got: list[int] = []
        while batch := mine.claim_ops(name, "salesforce", 7, timedelta(minutes=5)):
            got.extend(op["id"] for op in batch)
        claimed[name] = got
        mine.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [op_id for ids in claimed.values() for op_id in ids]
    assert len(every) == 200 and len(set(every)) == 200
    ledger.close()


def test_one_leader_holds_the_poller_lease_until_it_expires(ledger: Ledger, clock: FakeClock) -> None:
    ttl = timedelta(seconds=30)
    live(ledger, "replica-a", "replica-b")
    assert ledger.hold_lease("poller", "replica-a", ttl)
    assert not ledger.hold_lease("poller", "replica-b", ttl)
    assert ledger.hold_lease("poller", "replica-a", ttl)  # renewal
    clock.advance(seconds=31)  # replica-a hangs (it beats, but its lease ran out)
    live(ledger, "replica-a", "replica-b")
    assert ledger.hold_lease("poller", "replica-b", ttl)
    assert not ledger.hold_lease("poller", "replica-a", ttl)
    ledger.release_lease("poller", "replica-b")
    assert ledger.hold_lease("poller", "replica-a", ttl)
