"""One sync cycle: plan pushes, push until nothing is due, poll back, and record the run.

The daemon (`refsync run`) calls :func:`run_cycle` on its schedule; `refsync sync --once` calls it
once. Each CRM is handled on its own: a CRM that is rate-limited, down or refusing our credentials does not
hold up another (connector/crms.ensure_ready keeps each CRM's readiness).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from refsync.adapters.errors import AuthError, CrmConfigError, CrmError, RateLimited
from refsync.connector.alerting import Sink, announce, build_sinks
from refsync.connector.commission import TermsBook
from refsync.connector.compensate import compensate
from refsync.connector.config import Config
from refsync.connector.crms import ensure_ready
from refsync.connector.expire import expire_referrals
from refsync.connector.logs import get_logger
from refsync.connector.mapping import maps_commission
from refsync.connector.notify import DeliverySettings, deliver_all
from refsync.connector.poll import PollCounts, poll_target
from refsync.connector.push import CrmTarget, PushCounts, note_drift, push_round
from refsync.connector.reconcile import ReconcileSettings, reconcile
from refsync.connector.rollout import roll_out
from refsync.connector.terms import load_terms
from refsync.state.crmstate import remember_counts
from refsync.state.ledger import PUSHED_TABLES, Ledger
from refsync.state.outbox import enqueue_pushes
from refsync.state.workers import process_worker_id

log = get_logger("refsync.sync")
# A push of this many ops (planned, or landed) refreshes PostgreSQL's statistics of the tables it grew.
STATISTICS_AFTER = 5_000


def worker_id() -> str:
    """This process's name as a lease owner: ``host:pid:suffix`` (state/workers.py), so an operator
    can tell replicas apart and a restarted process (same host, same pid 1) is a new owner."""
    return process_worker_id()


@dataclass
class CycleSettings:
    batch_size: int = 200
    lease_seconds: int = 300
    max_attempts: int = 8
    max_rounds: int = 10_000
    poll: bool = True
    # The steps after the poll; each is skipped while its settings are None (see settings_from_config).
    expire_after_days: int | None = None
    policy_version: str = "unknown"
    delivery: DeliverySettings | None = None
    sinks: list[Sink] | None = None
    storm_threshold: int = 50
    reconcile: ReconcileSettings | None = None
    terms: TermsBook | None = None  # compensation ([compensation] in the config)


def settings_from_config(config: Config, *, with_reconcile: bool = False) -> CycleSettings:
    """Cycle settings with expiry, alert sinks and webhook delivery as the config describes them."""
    daemon, alerts, notes = config.daemon, config.alerts, config.notifications
    base = config.base_dir
    delivery = DeliverySettings(
        statuses=frozenset(notes.statuses), enabled=notes.enabled, timeout=notes.timeout_seconds,
        max_attempts=notes.max_attempts, base_dir=base, allow_private_targets=notes.allow_private_targets,
        include_prospect_email=notes.include_prospect_email,
        alert_url=lambda: alerts.resolved_url(base),
        alert_secret=lambda: alerts.webhook_secret.resolve("alerts.webhook_secret", base)
        if alerts.webhook_secret else None)
    return CycleSettings(
        daemon.batch_size, daemon.lease_seconds, daemon.max_attempts,
        expire_after_days=config.attribution.expire_after_days, policy_version=config.attribution.version(),
        delivery=delivery, sinks=build_sinks(alerts.webhook_url is not None, alerts.format),
        storm_threshold=alerts.storm_threshold,
        reconcile=ReconcileSettings(alerts.stale_after_days, alerts.won_lookback_days) if with_reconcile else None,
        terms=load_terms(config.compensation.terms_path(base)) if config.compensation else None)


@dataclass
class CycleReport:
    planned: dict[str, int] = field(default_factory=dict)
    push: dict[str, PushCounts] = field(default_factory=dict)
    poll: dict[str, PollCounts] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    after: dict[str, Any] = field(default_factory=dict)  # expired, reconcile, alerts_announced, webhooks

    def counts(self) -> dict[str, Any]:
        total = PushCounts()
        for counts in self.push.values():
            total.add(counts)
        return {
            "planned": sum(self.planned.values()),
            "pushed": total.pushed,
            "created": total.created,
            "unchanged": total.unchanged,
            "failed": total.failed,
            "dead": total.dead,
            "transitions": sum(p.transitions for p in self.poll.values()),
            "repairs": sum(p.repairs for p in self.poll.values()),
            "conflicts": sum(p.conflicts for p in self.poll.values()),
            "api_calls": total.calls + sum(p.calls for p in self.poll.values()),
            "per_crm": {
                name: {**{k: v for k, v in asdict(c).items() if k != "errors"},
                       "calls": c.calls + (self.poll[name].calls if name in self.poll else 0)}
                for name, c in self.push.items()
            },
        }


def push_all(ledger: Ledger, target: CrmTarget, settings: CycleSettings, owner: str) -> PushCounts:
    """Push rounds for one CRM until no op is due (or the CRM pauses us)."""
    total = PushCounts()
    for number in range(1, settings.max_rounds + 1):
        counts = push_round(ledger, target, owner, limit=settings.batch_size,
                            lease=timedelta(seconds=settings.lease_seconds), max_attempts=settings.max_attempts)
        total.add(counts)
        if counts.pushed and (number in (2, 10) or number % 50 == 0):
            # the links and ops grow by orders of magnitude early in a first push: the claims and
            # the poll's prefetch must be planned on their indexes (PostgreSQL)
            ledger.refresh_statistics(PUSHED_TABLES)
        attempted = counts.pushed + counts.failed + counts.dead + counts.released
        if attempted == 0 or counts.released:
            break
    return total


def over_budget(ledger: Ledger, target: CrmTarget, report: CycleReport) -> bool:
    """Whether a CRM's API budget is spent (push_round raised the alert): then it is not polled."""
    reason = target.over_budget()
    if reason is None:
        return False
    report.errors.append(f"{target.name}: API budget reached: {reason}")
    return True


def poll_with_drift(ledger: Ledger, target: CrmTarget) -> PollCounts:
    """Poll one CRM; when a read fails on the schema (a mapped field vanished), read the schemas
    again, leave the drifted field out with an alert, and poll once more without it."""
    try:
        return poll_target(ledger, target)
    except CrmConfigError:
        if not note_drift(ledger, target):
            raise
        return poll_target(ledger, target)


def run_cycle(ledger: Ledger, targets: dict[str, CrmTarget], settings: CycleSettings) -> CycleReport:
    """Plan and push for every CRM, recording the run with its counts. A CRM that is not ready
    (down, credentials refused) or paused by a rate limit is reported and skipped; the others sync."""
    report = CycleReport()
    owner = worker_id()
    with ledger.transaction() as txn:
        run_id = txn.start_run("sync")
    for name, target in targets.items():
        with target.lock:
            roll_out(ledger, target)  # a mapping file changed since the last run: its re-push is planned
        report.planned[name] = enqueue_pushes(ledger, name)
        if report.planned[name] >= STATISTICS_AFTER:
            ledger.refresh_statistics(PUSHED_TABLES)  # the claims read what was just planned
        with target.lock:
            ensure_ready(ledger, target)
        if not target.ready:
            report.errors.append(f"{name}: not ready: {target.not_ready}")
            continue
        target.start_run(ledger.calls_today(name))
        try:
            report.push[name] = push_all(ledger, target, settings, owner)
            if report.push[name].pushed >= STATISTICS_AFTER:
                ledger.refresh_statistics(PUSHED_TABLES)  # the poll's prefetch reads the new links
            if over_budget(ledger, target, report):
                continue
            if _paused(ledger, target, report):
                continue
            if settings.poll:
                report.poll[name] = poll_with_drift(ledger, target)
                # What the poll found (a converted lead's new opportunity, a repair) goes out now.
                report.push[name].add(push_all(ledger, target, settings, owner))
        except (AuthError, CrmConfigError) as exc:
            report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log.error("CRM refused our credentials or setup; its work waits", crm=name, error=str(exc))
        except RateLimited as exc:
            target.pause(exc, ledger.clock())
            _paused(ledger, target, report)
        except CrmError as exc:
            report.errors.append(f"{name}: {exc}")
            log.warning("CRM failed this cycle; will retry", crm=name, error=str(exc))
    ready = {name: t for name, t in targets.items() if t.ready}
    _after_poll(ledger, ready, settings, owner, report)
    with ledger.transaction() as txn:
        txn.finish_run(run_id, "failed" if report.errors else "ok", report.counts(),
                       "; ".join(report.errors) or None)
    remember_counts(ledger, "sync", report.counts()["per_crm"])
    log.info("sync cycle finished", **{k: v for k, v in report.counts().items() if k != "per_crm"})
    return report


def _paused(ledger: Ledger, target: CrmTarget, report: CycleReport) -> bool:
    """Whether a rate limit paused this CRM (then it is not polled either); reported as a problem."""
    if not target.paused(ledger.clock()):
        return False
    assert target.paused_until is not None
    report.errors.append(f"{target.name}: rate limited; paused until {target.paused_until.isoformat()}")
    return True


def _after_poll(ledger: Ledger, targets: dict[str, CrmTarget], settings: CycleSettings, owner: str,
                report: CycleReport) -> None:
    """Expiry, reconcile, compensation, alert sinks and webhook deliveries, each when configured."""
    if settings.expire_after_days is not None:
        report.after["expired"] = expire_referrals(ledger, settings.expire_after_days,
                                                   settings.policy_version).expired
    if settings.terms is not None:
        paid = compensate(ledger, settings.terms)
        report.after["commissions"] = {k: v for k, v in asdict(paid).items() if k != "skipped"}
        if paid.created or paid.held or paid.adjusted or paid.voided or paid.clawbacks:
            # a deal mapping commission_amount / commission_status shows the change now, not a cycle later
            for name, target in targets.items():
                if name in report.push and maps_commission(target.mapping):
                    report.planned[name] = report.planned.get(name, 0) + enqueue_pushes(ledger, name)
                    report.push[name].add(push_all(ledger, target, settings, owner))
    if settings.reconcile is not None:
        result = reconcile(ledger, targets, settings.reconcile)
        report.after["reconcile"] = {k: v for k, v in result.counts().items() if k != "errors"}
        report.errors += result.errors
        for name, target in targets.items():  # repairs reconcile planned go out now
            if name in report.push:
                report.push[name].add(push_all(ledger, target, settings, owner))
    if settings.sinks is not None:
        announced = announce(ledger, settings.sinks, settings.storm_threshold)
        report.after["alerts_announced"] = announced.alerts
    if settings.delivery is not None:
        delivered = deliver_all(ledger, owner, settings.delivery)
        report.after["webhooks"] = {"delivered": delivered.delivered, "failed": delivered.failed,
                                    "dead": delivered.dead, "skipped": delivered.skipped}
