"""Prometheus metrics of one daemon process, served by ``GET /metrics``.

The ledger is the truth, so the gauges (ops by state, unresolved alerts by kind and state,
referrals by status, the last run of each job, who leads) are read from it at scrape time rather
than kept in memory: every replica reports the same numbers and a restart loses nothing. What this
process did (records pushed, API calls, transitions, restores, dead ops, webhooks; the intake; the
HTTP surface itself) are counters that only grow while it runs, so an empty round never shows as a
drop to 0 and ``rate()`` works. Everything lives in a registry of its own, never in
prometheus-client's global one, so two servers in one process (tests) never share or
double-register a metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from refsync.connector.logs import get_logger
from refsync.connector.reconcile import CRM_KINDS, LEDGER_KINDS
from refsync.errors import LedgerError
from refsync.state.alert_states import unresolved_by_state
from refsync.state.crmstate import last_counts
from refsync.state.ledger import Ledger
from refsync.state.models import OP_STATES, STATUSES

if TYPE_CHECKING:
    from refsync.connector.notify import DeliveryCounts
    from refsync.connector.poll import PollCounts
    from refsync.connector.push import PushCounts

log = get_logger("refsync.metrics")

# Every alert kind the engine raises is reported, at 0 when none is open: an alerting rule on
# ``refsync_open_alerts{kind="dead_op",state="open"} > 0`` must see a series, not an absent one.
ALERT_KINDS = (*CRM_KINDS, *LEDGER_KINDS, "api_budget_exhausted", "poison_record", "crm_unavailable",
               "deal_contested", "push_unlinked", "crm_status_conflict")
UNRESOLVED_STATES = ("open", "acknowledged", "silenced")


def _timestamp(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


class LedgerCollector(Collector):
    """Gauges read from the ledger on every scrape; ``refsync_ledger_up`` 0 when it does not answer.
    ``worker``: this process's worker id, for ``refsync_leader`` (None: a process that never leads)."""

    def __init__(self, ledger: Ledger, worker: str | None = None) -> None:
        self.ledger = ledger
        self.worker = worker

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not query the ledger (the metrics are all dynamic)."""
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("refsync_ledger_up", "1 when the ledger answered this scrape, else 0.")
        try:
            status = self.ledger.status()
            alerts = unresolved_by_state(self.ledger)
            leader = self.ledger.lease_holder()
            remembered = last_counts(self.ledger)
        except (LedgerError, SQLAlchemyError) as exc:
            # The scrape still succeeds so the outage itself is visible as refsync_ledger_up 0.
            log.warning("metrics: the ledger did not answer", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield self._by_label("refsync_ops", "Outbound sync ops (CRM writes, webhooks) by state.", "state",
                             OP_STATES, status["ops"])
        yield self._open_alerts(alerts)
        yield self._by_label("refsync_referrals", "Referrals in the ledger by status.", "status",
                             STATUSES, status["referrals"])
        yield from self._last_runs(status["last_runs"], remembered)
        yield from self._leader(leader["worker"])

    def _leader(self, holder: str | None) -> Iterator[Metric]:
        leading = GaugeMetricFamily("refsync_leader", "1 in the replica that holds the poller lease (it polls, "
                                    "expires, reconciles and prunes), else 0.")
        leading.add_metric([], 1.0 if holder is not None and holder == self.worker else 0.0)
        yield leading
        info = GaugeMetricFamily("refsync_leader_info", "The worker holding the poller lease (always 1; absent "
                                 "while no replica holds it).", labels=["worker"])
        if holder is not None:
            info.add_metric([holder], 1.0)
        yield info

    @staticmethod
    def _open_alerts(counts: dict[tuple[str, str], int]) -> Metric:
        # Every known kind in every state, at 0 when none: a rule on {state="open"} sees a series.
        gauge = GaugeMetricFamily("refsync_open_alerts", "Alerts not resolved yet, by kind and state (open: someone "
                                  "should look; acknowledged; silenced).", labels=["kind", "state"])
        values = {**{(k, s): 0 for k in ALERT_KINDS for s in UNRESOLVED_STATES}, **counts}
        for (kind, state), count in sorted(values.items()):
            gauge.add_metric([kind, state], float(count))
        return gauge

    @staticmethod
    def _by_label(name: str, doc: str, label: str, known: Iterable[str], counts: dict[str, Any]) -> Metric:
        gauge = GaugeMetricFamily(name, doc, labels=[label])
        values = {**dict.fromkeys(known, 0), **counts}
        for key in sorted(values):
            gauge.add_metric([str(key)], float(values[key]))
        return gauge

    @staticmethod
    def _last_runs(runs: dict[str, dict[str, Any]],
                   remembered: dict[str, dict[str, dict[str, Any]]] | None = None) -> Iterator[Metric]:
        """The last run of each job; its counts per CRM are those of the last run that did something
        there (``remembered``, state/crmstate.last_counts): an empty round does not reset them to 0."""
        started = GaugeMetricFamily("refsync_last_run_started_timestamp_seconds",
                                    "When the last run of each job started (Unix time).", labels=["job"])
        finished = GaugeMetricFamily("refsync_last_run_finished_timestamp_seconds",
                                     "When the last finished run of each job ended (Unix time).", labels=["job"])
        duration = GaugeMetricFamily("refsync_last_run_duration_seconds",
                                     "How long the last run of each job took.", labels=["job"])
        failed = GaugeMetricFamily("refsync_last_run_failed",
                                   "1 when the last run of the job failed (a CRM or ledger error), else 0.",
                                   labels=["job"])
        info = GaugeMetricFamily("refsync_last_run_info", "The status of the last run of each job (always 1).",
                                 labels=["job", "status"])
        counts = GaugeMetricFamily("refsync_last_run_count",
                                   "What the last run of each job that did something did per CRM (pushed, failed, "
                                   "dead, calls, changes, transitions, repairs); an empty round keeps it.",
                                   labels=["job", "crm", "kind"])
        for job, run in sorted(runs.items()):
            start, end = _timestamp(run["started_at"]), _timestamp(run["finished_at"])
            if start is not None:
                started.add_metric([job], start)
            if end is not None:
                finished.add_metric([job], end)
                if start is not None:
                    duration.add_metric([job], max(end - start, 0.0))
            failed.add_metric([job], 1.0 if run["status"] == "failed" else 0.0)
            info.add_metric([job, str(run["status"])], 1.0)
            per_crm = {**((run.get("counts") or {}).get("per_crm") or {}), **(remembered or {}).get(job, {})}
            for crm, values in sorted(per_crm.items()):
                for kind, value in sorted((values or {}).items()):
                    if isinstance(value, int | float):
                        counts.add_metric([job, crm, kind], float(value))
        yield from (started, finished, duration, failed, info, counts)


class Metrics:
    """The registry of one HTTP server: the ledger gauges plus the counters of this process.
    ``worker``: this process's worker id (``refsync_leader``); ``crms``: the configured CRMs, whose
    counters are present at 0 from the start (a ``rate()`` needs the first sample)."""

    def __init__(self, ledger: Ledger, worker: str | None = None, crms: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(LedgerCollector(ledger, worker))
        crm_counter = self._crm_counter
        self.pushed = crm_counter("refsync_pushed", "Push ops this process landed done (records written, or "
                                  "found already right), by CRM.")
        self.push_failures = crm_counter("refsync_push_failures", "Push attempts that failed and will be "
                                         "retried, by CRM.")
        self.dead_ops = crm_counter("refsync_dead_ops", "Push ops that died (refused for good, or out of "
                                    "attempts), by CRM.")
        self.poll_changes = crm_counter("refsync_poll_changes", "Changed CRM records the poll read, by CRM.")
        self.transitions = crm_counter("refsync_transitions", "Status transitions the poll read back, by CRM.")
        self.restores = crm_counter("refsync_restores", "Overwritten attribution fields planned for restore, by "
                                    "CRM.")
        self.api_calls = Counter("refsync_api_calls", "CRM API calls this process made, by CRM and job (push, "
                                 "poll).", ["crm", "kind"], registry=self.registry)
        self.webhooks = Counter("refsync_webhooks", "Webhook deliveries (partner notifications, alerts), by "
                                "outcome.", ["outcome"], registry=self.registry)
        for crm in crms:
            for counter in (self.pushed, self.push_failures, self.dead_ops, self.poll_changes, self.transitions,
                            self.restores):
                counter.labels(crm)
            for kind in ("push", "poll"):
                self.api_calls.labels(crm, kind)
        for outcome in ("delivered", "failed", "dead", "skipped"):
            self.webhooks.labels(outcome)
        self.intake = Counter("refsync_intake_referrals", "Referrals received by POST /intake, by outcome.",
                              ["outcome"], registry=self.registry)
        self.requests = Counter("refsync_http_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "code"], registry=self.registry)
        for outcome in ("imported", "unchanged", "rejected"):
            self.intake.labels(outcome)  # present at 0 from the start

    def _crm_counter(self, name: str, doc: str) -> Counter:
        return Counter(name, doc, ["crm"], registry=self.registry)

    def count_push(self, crm: str, counts: PushCounts) -> None:
        """Add one push round's counts."""
        self.pushed.labels(crm).inc(counts.pushed)
        self.push_failures.labels(crm).inc(counts.failed)
        self.dead_ops.labels(crm).inc(counts.dead)
        self.api_calls.labels(crm, "push").inc(counts.calls)

    def count_poll(self, crm: str, counts: PollCounts) -> None:
        """Add one poll's counts."""
        self.poll_changes.labels(crm).inc(counts.changes)
        self.transitions.labels(crm).inc(counts.transitions)
        self.restores.labels(crm).inc(counts.repairs)
        self.api_calls.labels(crm, "poll").inc(counts.calls)

    def count_webhooks(self, counts: DeliveryCounts) -> None:
        for outcome in ("delivered", "failed", "dead", "skipped"):
            self.webhooks.labels(outcome).inc(getattr(counts, outcome))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
