"""Crash recovery: ops and the poller lease of a dead worker come back in seconds, not when the lease
runs out; a live worker keeps what it holds. On SQLite and PostgreSQL (the ``ledger`` fixture)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner

from refsync.state import workers
from refsync.state.ledger import Ledger
from refsync.state.workers import Liveness, WorkerView
from tests.conftest import FakeClock

LEASE = timedelta(minutes=5)
HERE = "this-host"
GONE_PID = 4242


@pytest.fixture
def here(ledger: Ledger) -> Ledger:
    """The ledger, judging workers as if this process ran on HERE, where only GONE_PID is gone."""
    ledger.liveness = Liveness(timedelta(seconds=30), HERE, lambda pid: pid != GONE_PID)
    return ledger


def enqueue(ledger: Ledger, count: int, crm: str = "salesforce") -> None:
    for n in range(count):
        ledger.enqueue_op("push", f"k{crm}{n}", crm)


def test_ops_of_a_worker_whose_beats_stopped_come_back_after_the_timeout(here: Ledger, clock: FakeClock) -> None:
    enqueue(here, 5)
    workers.register(here, "a", host="elsewhere", pid=7)
    workers.register(here, "b", host="elsewhere", pid=8)
    assert len(here.claim_ops("a", "salesforce", 10, LEASE)) == 5
    clock.advance(seconds=20)
    workers.beat(here, "b")
    assert here.claim_ops("b", "salesforce", 10, LEASE) == []  # a missed a few beats: not dead yet
    clock.advance(seconds=15)  # 35 s without a beat from a: dead, though its lease has minutes left
    workers.beat(here, "b")
    taken = here.claim_ops("b", "salesforce", 10, LEASE)
    assert len(taken) == 5 and {op["lease_owner"] for op in taken} == {"b"}
    assert {op["attempts"] for op in taken} == {2}


def test_a_beating_worker_keeps_its_ops(here: Ledger, clock: FakeClock) -> None:
    enqueue(here, 3)
    workers.register(here, "a", host="elsewhere", pid=7)
    here.claim_ops("a", "salesforce", 10, LEASE)
    for _ in range(10):  # 100 s, beating every 10 s
        clock.advance(seconds=10)
        workers.beat(here, "a")
        assert here.take_back_ops("b") == {} and here.claim_ops("b", "salesforce", 10, LEASE) == []


def test_ops_of_a_process_gone_from_this_host_come_back_at_once(here: Ledger) -> None:
    enqueue(here, 4)
    workers.register(here, "dead", host=HERE, pid=GONE_PID)  # kill -9: it never left
    here.claim_ops("dead", "salesforce", 10, LEASE)
    workers.register(here, "b", host=HERE, pid=100)
    assert here.take_back_ops("b") == {"dead": 4}
    assert len(here.claim_ops("b", "salesforce", 10, LEASE)) == 4


def test_a_restart_reusing_the_pid_frees_the_old_workers_ops(here: Ledger, clock: FakeClock) -> None:
    enqueue(here, 2)
    workers.register(here, f"{HERE}:1:old", host=HERE, pid=1)  # pid 1 of a container ...
    here.claim_ops(f"{HERE}:1:old", "salesforce", 10, LEASE)
    clock.advance(seconds=2)
    workers.register(here, f"{HERE}:1:new", host=HERE, pid=1)  # ... restarted: same host, same pid
    assert len(here.claim_ops(f"{HERE}:1:new", "salesforce", 10, LEASE)) == 2


def test_an_unregistered_owner_is_dead_so_a_clean_exit_frees_at_once(here: Ledger) -> None:
    enqueue(here, 2)
    workers.register(here, "a", host="elsewhere", pid=7)
    here.claim_ops("a", "salesforce", 10, LEASE)
    assert here.claim_ops("b", "salesforce", 10, LEASE) == []
    workers.leave(here, "a")
    assert len(here.claim_ops("b", "salesforce", 10, LEASE)) == 2


def test_a_claimer_never_takes_back_its_own_ops(here: Ledger) -> None:
    """Its threads (push and notify in one daemon) share one id, registered or not."""
    enqueue(here, 2)
    assert len(here.claim_ops("solo", "salesforce", 1, LEASE)) == 1
    assert len(here.claim_ops("solo", "salesforce", 1, LEASE)) == 1
    assert here.claim_ops("solo", "salesforce", 1, LEASE) == []
    assert here.status()["ops"]["in_flight"] == 2


def test_poller_lease_passes_from_a_dead_worker_at_once_and_from_a_live_one_never(here: Ledger) -> None:
    ttl = timedelta(minutes=5)
    workers.register(here, "live", host="elsewhere", pid=7)
    workers.register(here, "dead", host=HERE, pid=GONE_PID)
    workers.register(here, "b", host=HERE, pid=100)
    assert here.hold_lease("poller", "live", ttl)
    assert not here.hold_lease("poller", "b", ttl)
    here.release_lease("poller", "live")
    assert here.hold_lease("poller", "dead", ttl)
    assert here.hold_lease("poller", "b", ttl)  # dead's lease has minutes left: taken back
    assert not here.hold_lease("poller", "live", ttl)


def test_replicas_taking_back_together_claim_each_op_once(ledger_url: str, clock: FakeClock) -> None:
    setup = Ledger.open(ledger_url, clock=clock)
    enqueue(setup, 120)
    while setup.claim_ops("ghost", "salesforce", 50, LEASE):  # a crashed worker that never registered
        pass
    for n in range(4):
        workers.register(setup, f"w{n}", host="elsewhere", pid=n + 1)
    claimed: dict[str, list[int]] = {}
    taken: dict[str, dict[str, int]] = {}

    def replica(name: str) -> None:
        mine = Ledger.open(ledger_url, clock=clock)
        taken[name] = mine.take_back_ops(name)
        got: list[int] = []
        while batch := mine.claim_ops(name, "salesforce", 7, LEASE):
            got.extend(op["id"] for op in batch)
        claimed[name] = got
        mine.close()

    threads = [threading.Thread(target=replica, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [op_id for ids in claimed.values() for op_id in ids]
    assert len(every) == 120 and len(set(every)) == 120
    assert sum(t.get("ghost", 0) for t in taken.values()) == 120  # each take-back counted once
    setup.close()


def test_dead_rule_is_pure() -> None:
    now = FakeClock()()
    liveness = Liveness(timedelta(seconds=30), HERE, lambda pid: pid != GONE_PID)

    def worker(worker_id: str, host: str, pid: int, started: int = 0, beat: int = 0) -> WorkerView:
        return WorkerView(worker_id, host, pid, now - timedelta(seconds=100 - started), now - timedelta(seconds=beat))

    found = workers.dead_workers([
        worker("fresh", "elsewhere", 1, beat=29), worker("silent", "elsewhere", 2, beat=31),
        worker("gone", HERE, GONE_PID), worker("old", HERE, 5, started=0), worker("new", HERE, 5, started=10),
        worker("mine", HERE, 6),
    ], now, liveness)
    assert found == {"silent", "gone", "old"}
    assert workers.dead_owners({"fresh", "never-registered"}, [worker("fresh", "elsewhere", 1)], now, liveness) == {
        "never-registered"}


def test_worker_ids_are_unique_per_process_start() -> None:
    first, second = workers.new_worker_id("h", 1), workers.new_worker_id("h", 1)
    assert first.startswith("h:1:") and second.startswith("h:1:") and first != second
    assert workers.process_worker_id() == workers.process_worker_id()


def test_long_dead_workers_are_pruned_and_a_pruned_worker_registers_again(ledger: Ledger, clock: FakeClock) -> None:
    workers.register(ledger, "a", host="elsewhere", pid=1)
    clock.advance(hours=2)
    workers.register(ledger, "b", host="elsewhere", pid=2)
    assert [w["id"] for w in workers.workers_view(ledger)] == ["b"]
    assert workers.beat(ledger, "a", host="elsewhere", pid=1) is False  # it was only paused: back in
    assert {w["id"] for w in workers.workers_view(ledger)} == {"a", "b"}


def test_status_exits_1_while_ops_are_stuck_and_lists_workers(ledger_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from refsync.connector.cli import cli

    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n[logging]\nformat = "json"\n')
    real = Ledger.open(ledger_url)
    enqueue(real, 3)

    def status() -> tuple[int, dict]:
        result = CliRunner().invoke(cli, ["--config", str(config), "status", "--json"], catch_exceptions=False)
        return result.exit_code, json.loads(result.stdout)

    code, view = status()
    assert code == 0 and view["stuck"] == {"in_flight": 0, "failed": 0} and view["workers"] == []
    workers.register(real, "live", host="elsewhere", pid=1)
    real.claim_ops("live", "salesforce", 1, LEASE)
    code, view = status()
    assert code == 0 and view["ops"]["in_flight"] == 1
    [listed] = view["workers"]
    assert listed["id"] == "live" and listed["alive"] is True and set(listed) == {
        "id", "host", "pid", "started_at", "heartbeat_at", "alive"}
    real.claim_ops("crashed", "salesforce", 1, LEASE)  # never registered: dead
    code, view = status()
    assert code == 1 and view["stuck"]["in_flight"] == 1
    workers.leave(real, "live")
    code, view = status()
    assert code == 1 and view["stuck"]["in_flight"] == 2
    real.take_back_ops("someone")  # the next claimer takes them back: nothing stuck any more
    code, view = status()
    assert code == 0 and view["stuck"] == {"in_flight": 0, "failed": 0}
    [op] = real.claim_ops("x", "salesforce", 1, LEASE)
    from refsync.state.outbox import OpOutcome, land_outcomes

    land_outcomes(real, "salesforce", "x", [OpOutcome(op["id"], None, "failed",
                                                      next_attempt_at=real.clock() - timedelta(minutes=14))])
    assert status()[0] == 0  # overdue, but within the grace: a retry is on its way
    [op2] = real.claim_ops("x", "salesforce", 1, LEASE)
    land_outcomes(real, "salesforce", "x", [OpOutcome(op2["id"], None, "failed",
                                                      next_attempt_at=real.clock() - timedelta(minutes=16))])
    code, view = status()
    assert code == 1 and view["stuck"] == {"in_flight": 0, "failed": 1}
    real.close()


def test_a_hanging_webhook_round_delays_neither_a_crm_job_nor_a_stop(sqlite_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import time

    from refsync.connector import daemon as daemon_module
    from refsync.connector.daemon import Daemon
    from refsync.connector.sync import CycleSettings

    monkeypatch.setattr(daemon_module, "NOTIFY_STOP_WAIT", 0.2)
    ledger = Ledger.open(sqlite_url)
    daemon = Daemon(ledger, {}, CycleSettings(), push_interval=1, poll_interval=1)
    release, rounds = threading.Event(), []
    monkeypatch.setattr(daemon, "notify_job", lambda: (rounds.append(1), release.wait(30)))
    started = time.monotonic()
    daemon._notify_detached()  # the scheduled job returns at once: its pool thread is free
    daemon._notify_detached()  # one round at a time: the hanging one is not doubled
    assert time.monotonic() - started < 0.5 and rounds == [1]
    daemon._let_notify_go()  # a stop waits only NOTIFY_STOP_WAIT for it
    assert time.monotonic() - started < 1.5
    release.set()
    ledger.close()


def test_push_and_poll_of_one_crm_take_turns() -> None:
    from refsync.connector.push import each_locked

    class Target:
        def __init__(self) -> None:
            self.lock = threading.RLock()

    targets = {"salesforce": Target(), "hubspot": Target()}
    for name, target in each_locked(targets):  # type: ignore[arg-type]
        other = threading.Thread(target=lambda t=target: setattr(t, "free", t.lock.acquire(timeout=0.05)))
        other.start()
        other.join()
        assert not target.free, name  # held by this loop body: another job waits for it
    assert all(t.lock.acquire(timeout=0.05) for t in targets.values())  # released once the loop moved on


def test_the_replica_that_takes_or_loses_the_poller_lease_says_so(here: Ledger, clock: FakeClock) -> None:
    from structlog.testing import capture_logs

    from refsync.connector.daemon import Daemon
    from refsync.connector.sync import CycleSettings

    first, second = (Daemon(here, {}, CycleSettings(lease_seconds=60), push_interval=1, poll_interval=1)
                     for _ in range(2))
    first.owner, second.owner = "replica-a", "replica-b"
    for owner in (first.owner, second.owner):
        workers.register(here, owner, host="elsewhere", pid=1)
    with capture_logs() as logs:
        assert first._lead() and first._lead()  # took it once, then renews quietly
        assert not second._lead()
        assert here.lease_holder() == {"worker": "replica-a", "until": (clock.now + timedelta(seconds=60)).isoformat()}
        clock.advance(seconds=61)  # replica-a is alive (it beats) but stopped renewing: the lease runs out
        for owner in (first.owner, second.owner):
            workers.beat(here, owner)
        assert second._lead() and not first._lead()
    said = [(e["event"], e["worker"], e.get("leader")) for e in logs if "poller lease" in e["event"]]
    assert said == [("took the poller lease", "replica-a", None), ("took the poller lease", "replica-b", None),
                    ("lost the poller lease", "replica-a", "replica-b")]
    assert here.lease_holder()["worker"] == "replica-b"
