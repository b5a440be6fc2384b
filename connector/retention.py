"""Retention of finished work: which rows are old enough to go (pure), and one prune recorded as a run.

The daemon's leader prunes once a day (connector/daemon.py); `refsync prune` does it on demand and
`--dry-run` only counts. What is kept and how the batches go: state/retention.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from refsync.connector.config import RetentionConfig
from refsync.connector.logs import get_logger
from refsync.state.ledger import Ledger
from refsync.state.retention import BATCH, Cutoffs, prune

log = get_logger("refsync.retention")


def cutoffs(retention: RetentionConfig, now: datetime) -> Cutoffs:
    """The time before which each kind of row goes (None: kept forever, the setting is 0)."""

    def before(days: int) -> datetime | None:
        return now - timedelta(days=days) if days > 0 else None

    return Cutoffs(before(retention.done_ops_days), before(retention.job_runs_days),
                   before(retention.delivered_notifications_days))


def keeps_everything(retention: RetentionConfig) -> bool:
    return not (retention.done_ops_days or retention.job_runs_days or retention.delivered_notifications_days)


def prune_ledger(ledger: Ledger, retention: RetentionConfig, *, dry_run: bool = False,
                 batch: int = BATCH) -> dict[str, Any]:
    """Prune (or count, with ``dry_run``) what ``[retention]`` lets go. A real prune is recorded as a
    ``prune`` run with its counts (``refsync runs``, ``status``) and logged; returns the
    ``prune --json`` shape."""
    limits = cutoffs(retention, ledger.clock())
    run_id = None
    if not dry_run:
        with ledger.transaction() as txn:
            run_id = txn.start_run("prune")
    try:
        counts = prune(ledger, limits, dry_run=dry_run, batch=batch)
    except Exception as exc:
        if run_id is not None:
            with ledger.transaction() as txn:
                txn.finish_run(run_id, "failed", {}, str(exc))
        raise
    if run_id is not None:
        with ledger.transaction() as txn:
            txn.finish_run(run_id, "ok", dict(counts))
        if any(counts.values()):
            log.info("pruned finished work", **counts)
    return {"dry_run": dry_run, "pruned": counts,
            "older_than": {name: value.isoformat() if value else None
                           for name, value in (("done_ops", limits.done_ops), ("job_runs", limits.job_runs),
                                               ("delivered_notifications", limits.delivered_notifications))}}
