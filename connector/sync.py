"""One sync cycle: plan pushes, push until nothing is due, poll back, and record the run.

The daemon (`refsync run`) calls :func:`run_cycle` on its schedule; `refsync sync --once` calls it
once. Each CRM is handled on its own: a CRM that is rate-limited or down does not hold up another.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from adapters.errors import AuthError, CrmConfigError, CrmError
from connector.logs import get_logger
from connector.poll import PollCounts, poll_target
from connector.push import CrmTarget, PushCounts, push_round
from state.ledger import Ledger
from state.observe import observing
from state.outbox import enqueue_pushes

log = get_logger("refsync.sync")


def worker_id() -> str:
    """This process's name as a lease owner: host and pid, so an operator can tell replicas apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class CycleSettings:
    batch_size: int = 200
    lease_seconds: int = 300
    max_attempts: int = 8
    max_rounds: int = 10_000
    poll: bool = True


@dataclass
class CycleReport:
    planned: dict[str, int] = field(default_factory=dict)
    push: dict[str, PushCounts] = field(default_factory=dict)
    poll: dict[str, PollCounts] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

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
    for _ in range(settings.max_rounds):
        counts = push_round(ledger, target, owner, limit=settings.batch_size,
                            lease=timedelta(seconds=settings.lease_seconds), max_attempts=settings.max_attempts)
        total.add(counts)
        attempted = counts.pushed + counts.failed + counts.dead + counts.released
        if attempted == 0 or counts.released:
            break
    return total


def over_budget(ledger: Ledger, target: CrmTarget, report: CycleReport) -> bool:
    """Stop calling a CRM whose API budget is spent, and say so once (a deduplicated alert)."""
    reason = target.over_budget()
    if reason is None:
        return False
    report.errors.append(f"{target.name}: API budget reached: {reason}")
    with observing(ledger, target.name) as ob:
        ob.raise_alert("api_budget_exhausted", f"api_budget_exhausted:{target.name}",
                       f"{target.name}: {reason}. Writes and polls wait; nothing is lost.")
    log.warning("API budget reached; this CRM waits", crm=target.name, reason=reason)
    return True


def run_cycle(ledger: Ledger, targets: dict[str, CrmTarget], settings: CycleSettings) -> CycleReport:
    """Plan and push for every CRM, recording the run with its counts."""
    report = CycleReport()
    owner = worker_id()
    with ledger.transaction() as txn:
        run_id = txn.start_run("sync")
    for name, target in targets.items():
        report.planned[name] = enqueue_pushes(ledger, name)
        target.start_run(ledger.calls_today(name))
        try:
            report.push[name] = push_all(ledger, target, settings, owner)
            if over_budget(ledger, target, report):
                continue
            if settings.poll:
                report.poll[name] = poll_target(ledger, target)
                # What the poll found (a converted lead's new opportunity, a repair) goes out now.
                report.push[name].add(push_all(ledger, target, settings, owner))
        except (AuthError, CrmConfigError) as exc:
            report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log.error("CRM refused our credentials or setup; its work waits", crm=name, error=str(exc))
        except CrmError as exc:
            report.errors.append(f"{name}: {exc}")
            log.warning("CRM failed this cycle; will retry", crm=name, error=str(exc))
    with ledger.transaction() as txn:
        txn.finish_run(run_id, "failed" if report.errors else "ok", report.counts(),
                       "; ".join(report.errors) or None)
    log.info("sync cycle finished", **{k: v for k, v in report.counts().items() if k != "per_crm"})
    return report
