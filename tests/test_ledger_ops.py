"""The outbox: idempotent enqueue, leases, and claims that never hand one op to two workers."""

from __future__ import annotations

import threading
from datetime import timedelta

from refsync.state import workers
from refsync.state.ledger import Ledger
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
