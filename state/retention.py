"""Retention: finished work older than its keep-for is deleted, a small batch at a time.

Done CRM ops, delivered webhook ops (partner notifications and alert webhooks, ``crm = "webhook"``)
and job runs pile up at every round; audit events and status transitions are the evidence behind
every decision and are never deleted here. Each batch is its own short transaction found by a walk
along the primary key, so a prune never holds a lock for long (intake and pushes go on meanwhile)
and one stopped midway has lost nothing.

Kept whatever their age: the done push op of each referral's current revision (its dedupe key is
what stops ``outbox.enqueue_pushes`` from planning that push again) and the last run of each job
(``refsync status`` and the metrics show it). Dead, failed and pending ops are never pruned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from refsync.state.ledger import Ledger
from refsync.state.models import JobRun, Referral, SyncOp
from refsync.state.notifications import WEBHOOK
from refsync.state.outbox import push_key

BATCH = 500  # rows per transaction: a few milliseconds of lock on either database
# Seconds between two batches on SQLite, whose one write lock a prune taking it again at once would
# keep from a waiting writer: SQLite's busy handler looks again only every 100 ms once it has waited
# a while (sqlite3 source, ``sqliteDefaultBusyCallback``: delays 1, 2, 5, ... 50, 100 ms). PostgreSQL
# locks rows, and no writer of new work waits for the deleted ones.
SQLITE_PAUSE = 0.12


@dataclass(frozen=True)
class Cutoffs:
    """Rows older than these are pruned; None keeps that kind forever."""

    done_ops: datetime | None
    job_runs: datetime | None
    delivered_notifications: datetime | None


def prune(ledger: Ledger, cutoffs: Cutoffs, *, dry_run: bool = False, batch: int = BATCH) -> dict[str, int]:
    """Delete (or with ``dry_run`` only count) what ``cutoffs`` lets go; how many of each kind."""
    pause = SQLITE_PAUSE if ledger.engine.dialect.name == "sqlite" and not dry_run else 0.0
    return {
        "done_ops": _prune_ops(ledger, cutoffs.done_ops, webhooks=False, dry_run=dry_run, batch=batch, pause=pause),
        "delivered_notifications": _prune_ops(ledger, cutoffs.delivered_notifications, webhooks=True,
                                              dry_run=dry_run, batch=batch, pause=pause),
        "job_runs": _prune_runs(ledger, cutoffs.job_runs, dry_run=dry_run, batch=batch, pause=pause),
    }


def _current_pushes(session: Session, rows: Sequence[tuple[int, str, str, str | None]]) -> set[int]:
    """The ids among ``rows`` (id, crm, dedupe key, referral id) that are the push op of their
    referral's current revision."""
    referral_ids = sorted({r for _id, _crm, _key, r in rows if r})
    revisions = dict(session.execute(select(Referral.id, Referral.revision).where(
        Referral.id.in_(referral_ids))).all()) if referral_ids else {}
    return {op_id for op_id, crm, key, referral_id in rows
            if referral_id in revisions and key == push_key(crm, referral_id, revisions[referral_id])}


def _prune_ops(ledger: Ledger, before: datetime | None, *, webhooks: bool, dry_run: bool, batch: int,
               pause: float) -> int:
    if before is None:
        return 0
    finished = func.coalesce(SyncOp.done_at, SyncOp.updated_at)
    kind = SyncOp.crm == WEBHOOK if webhooks else SyncOp.crm != WEBHOOK
    total, after = 0, 0
    while True:
        with ledger.transaction() as txn:
            rows: list[tuple[int, str, str, str | None]] = [
                (int(i), str(crm), str(key), referral_id) for i, crm, key, referral_id in txn.session.execute(
                    select(SyncOp.id, SyncOp.crm, SyncOp.dedupe_key, SyncOp.referral_id)
                    .where(SyncOp.id > after, SyncOp.state == "done", finished < before, kind)
                    .order_by(SyncOp.id).limit(batch))]
            if not rows:
                return total
            after = rows[-1][0]
            keep = set() if webhooks else _current_pushes(txn.session, rows)
            ids = [r[0] for r in rows if r[0] not in keep]
            if ids and not dry_run:
                txn.session.execute(delete(SyncOp).where(SyncOp.id.in_(ids), SyncOp.state == "done")
                                    .execution_options(synchronize_session=False))
            total += len(ids)
        time.sleep(pause)


def _prune_runs(ledger: Ledger, before: datetime | None, *, dry_run: bool, batch: int, pause: float) -> int:
    if before is None:
        return 0
    with ledger.transaction() as txn:
        last = set(txn.session.scalars(select(func.max(JobRun.id)).group_by(JobRun.job)))
    total, after = 0, 0
    while True:
        with ledger.transaction() as txn:
            found = list(txn.session.scalars(select(JobRun.id).where(JobRun.id > after, JobRun.started_at < before)
                                             .order_by(JobRun.id).limit(batch)))
            if not found:
                return total
            after = found[-1]
            ids = [i for i in found if i not in last]
            if ids and not dry_run:
                txn.session.execute(delete(JobRun).where(JobRun.id.in_(ids))
                                    .execution_options(synchronize_session=False))
            total += len(ids)
        time.sleep(pause)
