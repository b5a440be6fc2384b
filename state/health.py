"""What the program dashboard shows about syncing, per CRM: the last push and poll (from the job
runs), the backlog and dead ops of the outbox, today's API calls, and open alerts by kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from refsync.state.ledger import Ledger
from refsync.state.models import Alert, JobRun, Partner, Referral, SyncOp

# Which job runs push and which poll: the daemon runs them apart, `sync --once` does both.
PUSH_JOBS = ("push", "sync")
POLL_JOBS = ("poll", "sync")
RUNS_LOOKED_AT = 200  # the latest runs searched for each CRM's last push and poll


@dataclass
class CrmHealth:
    crm: str
    last_push: dict[str, Any] | None = None  # {"at", "status", "counts", "error"}
    last_poll: dict[str, Any] | None = None
    backlog: int = 0  # ops pending, failed (to retry) or in flight
    dead: int = 0
    calls_today: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _run(run: JobRun, crm: str) -> dict[str, Any]:
    return {"at": run.finished_at or run.started_at, "status": run.status,
            "counts": ((run.counts or {}).get("per_crm") or {}).get(crm, {}), "error": run.error}


def crm_health(ledger: Ledger, crms: Sequence[str]) -> list[CrmHealth]:
    """Each CRM's sync health; ``crms`` are the configured ones (a CRM only the outbox knows, such
    as the webhook deliveries, is left out)."""
    found = {name: CrmHealth(name) for name in crms}
    with ledger.reading() as session:
        for crm, state, count in session.execute(
                select(SyncOp.crm, SyncOp.state, func.count()).where(SyncOp.crm.in_(list(crms)))
                .group_by(SyncOp.crm, SyncOp.state)):
            if state in ("pending", "failed", "in_flight"):
                found[crm].backlog += int(count)
            elif state == "dead":
                found[crm].dead += int(count)
        runs = session.scalars(select(JobRun).where(JobRun.job.in_(set(PUSH_JOBS + POLL_JOBS)))
                                   .order_by(JobRun.id.desc()).limit(RUNS_LOOKED_AT))
        for run in runs:
            per_crm = (run.counts or {}).get("per_crm") or {}
            for name, health in found.items():
                if name not in per_crm:
                    continue
                if run.job in PUSH_JOBS and health.last_push is None:
                    health.last_push = _run(run, name)
                if run.job in POLL_JOBS and health.last_poll is None:
                    health.last_poll = _run(run, name)
    for name, health in found.items():
        health.calls_today = ledger.calls_today(name)
    return list(found.values())


def open_alerts_by_kind(ledger: Ledger, examples: int = 3) -> dict[str, dict[str, Any]]:
    """Open alerts grouped by kind: how many, and the newest few (message, referral, when)."""
    grouped: dict[str, dict[str, Any]] = {}
    with ledger.reading() as session:
        for alert in session.scalars(select(Alert).where(Alert.resolved_at.is_(None))
                                         .order_by(Alert.last_seen.desc(), Alert.id.desc())):
            entry = grouped.setdefault(alert.kind, {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < examples:
                entry["examples"].append({"message": alert.message, "referral_id": alert.referral_id,
                                          "crm": alert.crm, "last_seen": alert.last_seen})
    return dict(sorted(grouped.items(), key=lambda item: -item[1]["count"]))


def duplicates_to_decide(ledger: Ledger, limit: int = 100) -> list[dict[str, Any]]:
    """Open ``duplicate_referral`` alerts, oldest first, with the flagged referral and the one holding
    credit (partner, prospect, submitted): what a person needs to decide who gets the credit."""
    found: list[dict[str, Any]] = []
    with ledger.reading() as session:
        rows = session.execute(select(Alert, Referral, Partner.code).join(Referral, Alert.referral_id == Referral.id)
                               .join(Partner, Referral.partner_id == Partner.id)
                               .where(Alert.kind == "duplicate_referral", Alert.resolved_at.is_(None))
                               .order_by(Alert.first_seen, Alert.id).limit(limit))
        for alert, referral, code in rows:
            holder = session.execute(select(Referral, Partner.code).join(Partner, Referral.partner_id == Partner.id)
                                     .where(Referral.id == referral.duplicate_of)).first() \
                if referral.duplicate_of else None
            found.append({
                "alert_id": alert.id, "referral_id": referral.id, "partner": code, "status": referral.status,
                "prospect": referral.prospect_email or referral.prospect_company or referral.prospect_name,
                "submitted_at": referral.submitted_at, "first_seen": alert.first_seen,
                "holder_id": holder[0].id if holder else None, "holder_partner": holder[1] if holder else None,
                "holder_submitted_at": holder[0].submitted_at if holder else None})
    return found


def referrals_per_month(rows: Sequence[datetime]) -> list[tuple[str, int]]:
    """Counts per calendar month (``YYYY-MM``), every month between the first and last included."""
    if not rows:
        return []
    counts: dict[str, int] = {}
    for at in rows:
        key = f"{at.year:04d}-{at.month:02d}"
        counts[key] = counts.get(key, 0) + 1
    first, last = min(rows), max(rows)
    months: list[tuple[str, int]] = []
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        key = f"{year:04d}-{month:02d}"
        months.append((key, counts.get(key, 0)))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months

