"""Retention: done ops, delivered webhooks and job runs older than `[retention]` allows are pruned in
batches (by `refsync prune` and by the daemon's leader); audit events, status transitions, dead or
waiting ops, the push op that stops a re-push and the last run of each job are kept. On SQLite and
PostgreSQL (the ``ledger`` fixture)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from refsync.connector.cli import cli
from refsync.connector.config import RetentionConfig
from refsync.connector.daemon import Daemon
from refsync.connector.retention import prune_ledger
from refsync.connector.sync import CycleSettings
from refsync.state import workers
from refsync.state.ledger import Ledger
from refsync.state.models import AuditEvent, JobRun, Referral, StatusTransition, SyncOp
from refsync.state.outbox import enqueue_pushes, push_key
from tests.conftest import FakeClock
from tests.test_http import start_daemon
from tests.test_push import import_rows

DAY = timedelta(days=1)


@pytest.fixture
def clock() -> FakeClock:
    """Now, so `refsync prune` (which reads the real clock) sees the same ages as the set-up."""
    return FakeClock(datetime.now(UTC))


def op(ledger: Ledger, key: str, state: str, finished: datetime, crm: str = "salesforce") -> None:
    ledger.enqueue_op("notify" if crm == "webhook" else "push", key, crm)
    with ledger.transaction() as txn:
        txn.session.execute(update(SyncOp).where(SyncOp.dedupe_key == key).values(
            state=state, done_at=finished if state == "done" else None, updated_at=finished))


def run(ledger: Ledger, clock: FakeClock, job: str, age: timedelta) -> None:
    now = clock.now
    clock.now = now - age
    with ledger.transaction() as txn:
        txn.finish_run(txn.start_run(job), "ok", {})
    clock.now = now


def seed(ledger: Ledger, clock: FakeClock, tmp_path: Path) -> dict[str, int]:
    """Old and recent work of every kind; the counts a prune with the default retention removes."""
    now = clock.now
    import_rows(ledger, tmp_path, 3)
    enqueue_pushes(ledger, "salesforce")
    with ledger.transaction() as txn:
        first = txn.session.scalars(select(Referral).order_by(Referral.id)).first()
        assert first is not None
        first.revision += 1  # its attribution changed: the revision-1 push is history now
    enqueue_pushes(ledger, "salesforce")
    with ledger.transaction() as txn:  # every push landed 40 days ago
        txn.session.execute(update(SyncOp).values(state="done", done_at=now - 40 * DAY))
    for n in range(7):
        op(ledger, f"restore:salesforce:Lead:00Q{n}:stamp", "done", now - 31 * DAY)
    op(ledger, "restore:salesforce:Lead:recent:stamp", "done", now - 5 * DAY)
    op(ledger, "restore:salesforce:Lead:dead:stamp", "dead", now - 400 * DAY)
    op(ledger, "restore:salesforce:Lead:failed:stamp", "failed", now - 400 * DAY)
    for n in range(4):
        op(ledger, f"notify:r{n}:won:old", "done", now - 45 * DAY, crm="webhook")
    op(ledger, "notify:r:won:recent", "done", now - 2 * DAY, crm="webhook")
    op(ledger, "notify:r:won:dead", "dead", now - 45 * DAY, crm="webhook")
    for _ in range(3):
        run(ledger, clock, "push", 100 * DAY)
    run(ledger, clock, "push", DAY)
    run(ledger, clock, "import", 200 * DAY)  # the last (only) import run: `status` still shows it
    return {"done_ops": 8, "delivered_notifications": 4, "job_runs": 3}


def evidence(ledger: Ledger) -> tuple[int, int]:
    with ledger.transaction() as txn:
        return (txn.session.scalar(select(func.count()).select_from(AuditEvent)) or 0,
                txn.session.scalar(select(func.count()).select_from(StatusTransition)) or 0)


def op_keys(ledger: Ledger) -> set[str]:
    with ledger.transaction() as txn:
        return set(txn.session.scalars(select(SyncOp.dedupe_key)))


def test_prune_deletes_old_finished_work_in_batches_and_keeps_the_evidence(
        ledger: Ledger, clock: FakeClock, tmp_path: Path) -> None:
    expected = seed(ledger, clock, tmp_path)
    before, kept_evidence = op_keys(ledger), evidence(ledger)
    assert kept_evidence[0] > 0 and kept_evidence[1] > 0

    dry = prune_ledger(ledger, RetentionConfig(), dry_run=True, batch=3)
    assert dry["pruned"] == expected and dry["dry_run"] is True
    assert op_keys(ledger) == before  # a dry run deletes nothing

    done = prune_ledger(ledger, RetentionConfig(), batch=3)  # batches of 3: several transactions each
    assert done["pruned"] == expected
    assert done["older_than"]["done_ops"] == (clock.now - 30 * DAY).isoformat()
    left = op_keys(ledger)
    with ledger.transaction() as txn:
        referrals = txn.session.execute(select(Referral.id, Referral.revision).order_by(Referral.id)).all()
    current = {push_key("salesforce", r, revision) for r, revision in referrals}
    assert push_key("salesforce", referrals[0][0], 1) not in left  # superseded: history
    assert current <= left  # each referral's current push stays: nothing is pushed again
    assert enqueue_pushes(ledger, "salesforce") == 0
    assert {"restore:salesforce:Lead:recent:stamp", "restore:salesforce:Lead:dead:stamp",
            "restore:salesforce:Lead:failed:stamp", "notify:r:won:recent", "notify:r:won:dead"} <= left
    assert not {k for k in left if k.startswith(("restore:salesforce:Lead:00Q", "notify:r0", "notify:r3"))}
    assert evidence(ledger) == kept_evidence  # audit events and status transitions are kept forever
    last_runs = ledger.status()["last_runs"]
    assert set(last_runs) == {"push", "import", "prune"}
    assert last_runs["prune"]["counts"] == expected and last_runs["prune"]["status"] == "ok"
    with ledger.transaction() as txn:
        assert txn.session.scalar(select(func.count()).select_from(JobRun).where(JobRun.job == "push")) == 1

    again = prune_ledger(ledger, RetentionConfig())
    assert again["pruned"] == {"done_ops": 0, "delivered_notifications": 0, "job_runs": 0}


def test_zero_days_keeps_that_kind_forever(ledger: Ledger, clock: FakeClock, tmp_path: Path) -> None:
    seed(ledger, clock, tmp_path)
    keep = RetentionConfig(done_ops_days=0, job_runs_days=0, delivered_notifications_days=2)
    assert prune_ledger(ledger, keep)["pruned"] == {"done_ops": 0, "delivered_notifications": 4, "job_runs": 0}
    assert prune_ledger(ledger, RetentionConfig(done_ops_days=3))["pruned"]["done_ops"] == 9  # the 5-day one too


def test_refsync_prune_dry_run_then_prune(ledger: Ledger, ledger_url: str, clock: FakeClock, tmp_path: Path) -> None:
    expected = seed(ledger, clock, tmp_path)
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n[retention]\ndone_ops_days = 30\njob_runs_days = 0\n')
    runner = CliRunner()
    dry = runner.invoke(cli, ["--config", str(config), "prune", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    shown = json.loads(dry.stdout)
    assert shown["dry_run"] is True and shown["older_than"]["job_runs"] is None
    assert shown["pruned"] == {**expected, "job_runs": 0}
    done = runner.invoke(cli, ["--config", str(config), "prune"])
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines() == [
        f"done ops: deleted {expected['done_ops']} (older than 30 days)",
        f"delivered webhook notifications: deleted {expected['delivered_notifications']} (older than 30 days)",
        "job runs: kept forever (retention.job_runs_days = 0)"]
    assert json.loads(runner.invoke(cli, ["--config", str(config), "prune", "--dry-run", "--json"]).stdout)[
        "pruned"] == {"done_ops": 0, "delivered_notifications": 0, "job_runs": 0}


def test_only_the_leader_prunes(ledger: Ledger, clock: FakeClock, tmp_path: Path) -> None:
    expected = seed(ledger, clock, tmp_path)
    daemon = Daemon(ledger, {}, CycleSettings(), push_interval=60, poll_interval=60, retention=RetentionConfig())
    workers.register(ledger, "other-replica", host="elsewhere", pid=1)
    workers.register(ledger, daemon.owner)
    assert ledger.hold_lease("poller", "other-replica", timedelta(minutes=5))
    daemon.prune_job()
    assert "prune" not in ledger.status()["last_runs"]  # the other replica leads: it prunes
    ledger.release_lease("poller", "other-replica")
    daemon.prune_job()
    assert ledger.status()["last_runs"]["prune"]["counts"] == expected


def test_refsync_run_prunes_at_start(sqlite_url: str, clock: FakeClock, tmp_path: Path) -> None:
    ledger = Ledger.open(sqlite_url, clock=clock)
    expected = seed(ledger, clock, tmp_path)
    daemon, _port = start_daemon(sqlite_url, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "prune" not in ledger.status()["last_runs"] and time.monotonic() < deadline:
            time.sleep(0.1)
        prune = ledger.status()["last_runs"]["prune"]
        while prune["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
            prune = ledger.status()["last_runs"]["prune"]
        assert prune["counts"] == expected
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        ledger.close()
