"""`refsync run`: the daemon. APScheduler 3.x runs the push and poll jobs on their intervals.

Every replica pushes (ops are claimed under leases, so replicas never share an op); only the
replica holding the ``poller`` lease (the leader) polls, expires, reconciles and prunes, so cursors
advance once. Every replica tries the lease every ``min(heartbeat_seconds, lease_seconds / 3)``: the
leader renews it, and another takes it at once from a leader that left or died on this host, after
``worker_timeout_seconds`` from one that went silent elsewhere, and after ``lease_seconds`` at the
latest (state/ledger.hold_lease, state/workers.py). Taking and losing it are info log lines.
SIGTERM and SIGINT stop the scheduler after the running job's round: claimed ops are either landed
or, at worst, taken back by the next claimer as soon as this worker has left (connector/worker.py). The jobs run in
scheduler threads at the same time: push, poll and reconcile serialise per CRM on the target's
lock (CrmTarget.lock); webhook and alert deliveries run on a thread of their own that neither a
CRM's job nor a stop waits for. The HTTP surface (health, readiness, metrics, intake) is served from a
background thread while the scheduler runs; readiness turns false as soon as a stop is asked.
The main thread watches the mapping files (connector/reload.py): every MAPPING_WATCH_SECONDS, and
at once on SIGHUP, an edited file is validated and, when good, swapped in under the CRM's lock.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from refsync.adapters.errors import AuthError, CrmError, RateLimited, TransientError
from refsync.connector import sdnotify
from refsync.connector.alerting import announce
from refsync.connector.compensate import compensate
from refsync.connector.config import RetentionConfig
from refsync.connector.crms import answered_again, ensure_ready, failed_round, readiness
from refsync.connector.expire import expire_referrals
from refsync.connector.logs import RepeatedErrors, get_logger
from refsync.connector.notify import deliver_all
from refsync.connector.push import CrmTarget, each_locked
from refsync.connector.reconcile import ReconcileSettings, reconcile
from refsync.connector.reload import MappingWatch
from refsync.connector.retention import keeps_everything, prune_ledger
from refsync.connector.sync import CycleSettings, poll_with_drift, push_all, worker_id
from refsync.connector.web.app import HttpServer, HttpSettings
from refsync.connector.web.metrics import Metrics
from refsync.errors import LedgerError, RefsyncError
from refsync.state.crmstate import remember_counts
from refsync.state.ledger import POLLER_LEASE, Ledger
from refsync.state.outbox import enqueue_pushes

log = get_logger("refsync.daemon")
NOTIFY_STOP_WAIT = 3.0  # seconds a stop waits for a running webhook/alert round before leaving it
MAPPING_WATCH_SECONDS = 1.0  # how often the mapping files' mtime and size are looked at
REPEAT_LOG_SECONDS = 600.0  # an error repeated every round is logged again (with its count) this often


class Daemon:
    def __init__(self, ledger: Ledger, targets: dict[str, CrmTarget], settings: CycleSettings,
                 push_interval: int, poll_interval: int, reconcile_cron: str | None = None,
                 reconcile_settings: ReconcileSettings | None = None, http: HttpSettings | None = None,
                 heartbeat_seconds: float = 5.0, retention: RetentionConfig | None = None) -> None:
        self.ledger = ledger
        self.targets = targets
        self.settings = settings
        self.push_interval = push_interval
        self.poll_interval = poll_interval
        self.owner = worker_id()
        self.lease = timedelta(seconds=settings.lease_seconds)
        self.lease_every = min(heartbeat_seconds, settings.lease_seconds / 3)  # how often the lease is tried
        self.leading = False  # whether this replica held the poller lease at its last try
        self._leading_lock = threading.Lock()
        self.retention = retention
        self.metrics = Metrics(ledger, self.owner, list(targets))
        self.reconcile_cron = reconcile_cron
        self.reconcile_settings = reconcile_settings or ReconcileSettings()
        self.stopping = threading.Event()
        self._wake = threading.Event()  # a stop or a SIGHUP: the main thread looks at once
        self._hangup = threading.Event()
        self.watch = MappingWatch(ledger, targets)
        self._notifier: threading.Thread | None = None
        self.repeats = RepeatedErrors(log, REPEAT_LOG_SECONDS)
        self.failed_rounds: dict[str, int] = {}  # per ready CRM: rounds in a row its calls failed
        self.answered: set[str] = set()
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        # No server when [http] listen = "": the operator turned the HTTP surface off.
        self.http = HttpServer(ledger, http, self._scheduling, lambda: readiness(self.targets), self.metrics) \
            if http is not None and http.listen else None

    def _scheduling(self) -> bool:
        """Whether the jobs run: the readiness probe's view of the scheduler."""
        return bool(self.scheduler.running) and not self.stopping.is_set()

    def push_job(self) -> None:
        per_crm: dict[str, dict[str, int]] = {}
        errors: list[str] = []
        with self.ledger.transaction() as txn:
            run_id = txn.start_run("push")
        for name, target in each_locked(self.targets):  # push and poll of one CRM never overlap
            if self.stopping.is_set():
                break
            enqueue_pushes(self.ledger, name)  # a CRM that waits keeps its work queued
            if not self._ready(target):
                errors.append(f"{name}: not ready: {target.not_ready}")
                continue
            target.start_run(self.ledger.calls_today(name))  # the API budget counts every run of today
            try:
                counts = push_all(self.ledger, target, self.settings, self.owner)
                per_crm[name] = {"pushed": counts.pushed, "failed": counts.failed, "dead": counts.dead,
                                 "calls": counts.calls}
                self.metrics.count_push(name, counts)
                errors += counts.errors
                self.repeats.clear(f"push:{name}", "push", crm=name)
                if counts.pushed:
                    self._answered(target)
                if counts.pushed or counts.failed or counts.dead:
                    log.info("push round", crm=name, pushed=counts.pushed, failed=counts.failed, dead=counts.dead,
                             api_calls=counts.calls)
            except CrmError as exc:
                errors.append(f"{name}: {exc}")
                self.repeats.error(f"push:{name}", "push failed; will retry on the next round", str(exc), crm=name,
                                   code=exc.code)
                self._failed(target, exc)
        with self.ledger.transaction() as txn:
            txn.finish_run(run_id, "failed" if errors else "ok", {"per_crm": per_crm}, "; ".join(errors) or None)
        remember_counts(self.ledger, "push", per_crm)

    def poll_job(self) -> None:
        if not self._lead():
            log.debug("another replica polls", owner=self.owner)
            return
        per_crm: dict[str, dict[str, int]] = {}
        errors: list[str] = []
        with self.ledger.transaction() as txn:
            run_id = txn.start_run("poll")
        for name, target in each_locked(self.targets):
            if self.stopping.is_set():
                break
            if not self._ready(target):
                errors.append(f"{name}: not ready: {target.not_ready}")
                continue
            if target.paused(self.ledger.clock()):
                continue  # a rate limit paused this CRM: polls wait for it too
            target.start_run(self.ledger.calls_today(name))
            if target.over_budget():
                continue  # the push job raised the alert; polls wait for the budget too
            try:
                counts = poll_with_drift(self.ledger, target)
                per_crm[name] = {"changes": counts.changes, "transitions": counts.transitions,
                                 "repairs": counts.repairs, "calls": counts.calls}
                self.metrics.count_poll(name, counts)
                log.info("poll", crm=name, changes=counts.changes, transitions=counts.transitions,
                         repairs=counts.repairs, api_calls=counts.calls)
                self.repeats.clear(f"poll:{name}", "poll", crm=name)
                self._answered(target)
            except RateLimited as exc:
                wait = target.pause(exc, self.ledger.clock())
                errors.append(f"{name}: rate limited for {wait:.0f} s")
            except CrmError as exc:
                errors.append(f"{name}: {exc}")
                self.repeats.error(f"poll:{name}", "poll failed; will retry on the next round", str(exc), crm=name,
                                   code=exc.code)
                self._failed(target, exc)
        run_counts: dict[str, Any] = {"per_crm": per_crm}
        if self.settings.terms is not None and not self.stopping.is_set():
            # won, reopened and changed deals the poll recorded get their commissions now (on the leader)
            paid = compensate(self.ledger, self.settings.terms)
            run_counts["commissions"] = {"created": paid.created, "held": paid.held, "adjusted": paid.adjusted,
                                         "voided": paid.voided, "clawbacks": paid.clawbacks}
        with self.ledger.transaction() as txn:
            txn.finish_run(run_id, "failed" if errors else "ok", run_counts, "; ".join(errors) or None)
        remember_counts(self.ledger, "poll", per_crm)

    def _failed(self, target: CrmTarget, exc: CrmError) -> None:
        """Count a round the CRM did not answer or refused our credentials (a rate limit or a
        mapping problem is no outage)."""
        if not isinstance(exc, AuthError | TransientError):
            return
        failures = self.failed_rounds.get(target.name, 0) + 1
        self.failed_rounds[target.name] = failures
        failed_round(self.ledger, target, failures, str(exc))

    def _answered(self, target: CrmTarget) -> None:
        # Once per process too: an alert an earlier process left open resolves at the first answer.
        if self.failed_rounds.pop(target.name, 0) >= 1 or target.name not in self.answered:
            self.answered.add(target.name)
            answered_again(self.ledger, target)

    def _ready(self, target: CrmTarget) -> bool:
        """Try to make a CRM that waits ready (and refresh a ready one's schemas when stale).
        Push and poll may run at once: readiness and schemas change under the target's lock."""
        with target.lock:
            ensure_ready(self.ledger, target)
        return target.ready

    def notify_job(self) -> None:
        """Tell the alert sinks what is new and deliver due webhooks (every replica may deliver:
        ops are leased)."""
        try:
            if self.settings.sinks is not None:
                announce(self.ledger, self.settings.sinks, self.settings.storm_threshold)
            if self.settings.delivery is not None:
                counts = deliver_all(self.ledger, self.owner, self.settings.delivery)
                self.metrics.count_webhooks(counts)
                if counts.delivered or counts.failed or counts.dead:
                    log.info("webhooks", delivered=counts.delivered, failed=counts.failed, dead=counts.dead)
            self.repeats.clear("notify", "webhook round")
        except LedgerError as exc:
            self.repeats.error("notify", "webhook round failed; will retry on the next round", str(exc))

    def _notify_detached(self) -> None:
        """The scheduled notify job: run :meth:`notify_job` on a daemon thread of its own, so a
        hanging webhook or alert sink never holds a scheduler thread, a CRM's push or poll, or a
        stop (the scheduler's shutdown waits for its pool threads, and so does the interpreter's
        exit; a daemon thread is waited for only up to NOTIFY_STOP_WAIT). One round at a time."""
        if self._notifier is not None and self._notifier.is_alive():
            return
        self._notifier = threading.Thread(target=self._guarded("notify", self.notify_job), name="refsync-notify",
                                          daemon=True)
        self._notifier.start()

    def _let_notify_go(self) -> None:
        if self._notifier is None:
            return
        self._notifier.join(timeout=NOTIFY_STOP_WAIT)
        if self._notifier.is_alive():
            # Its claimed webhook ops are taken back at once: this worker leaves the ledger as it exits.
            log.warning("a webhook or alert delivery is still running; stopping without it",
                        waited_seconds=NOTIFY_STOP_WAIT)

    def _lead(self) -> bool:
        """Take or renew the poller lease: whether this replica leads now. Every job only the leader
        runs asks first, and the ``lease`` job asks every :attr:`lease_every` seconds, so a leader
        keeps it and a successor is found that often. Taking and losing it are logged once each."""
        with self._leading_lock:  # one try at a time: two jobs racing to insert the lease row would disagree
            try:
                held = self.ledger.hold_lease(POLLER_LEASE, self.owner, self.lease)
            except LedgerError as exc:  # unknown: skip the leader's work this time, and try again
                log.warning("could not take or renew the poller lease", worker=self.owner, error=str(exc))
                return False
            changed, self.leading = held != self.leading, held
        if changed and held:
            log.info("took the poller lease", worker=self.owner, lease_seconds=self.lease.total_seconds())
        elif changed:
            try:
                leader = self.ledger.lease_holder()["worker"]
            except LedgerError:  # the line still says that we lost it; who has it shows in `refsync status`
                leader = None
            log.info("lost the poller lease", worker=self.owner, leader=leader)
        return held

    def lease_job(self) -> None:
        self._lead()

    def expire_job(self) -> None:
        if self.settings.expire_after_days is None or not self._lead():
            return
        expire_referrals(self.ledger, self.settings.expire_after_days, self.settings.policy_version)

    def prune_job(self) -> None:
        """Delete finished work older than ``[retention]`` allows (the leader, once a day)."""
        if self.retention is None or keeps_everything(self.retention) or not self._lead():
            return
        try:
            prune_ledger(self.ledger, self.retention)
        except LedgerError as exc:
            log.error("prune failed; will retry tomorrow", error=str(exc))

    def reconcile_job(self) -> None:
        if not self._lead():
            return
        with ExitStack() as held:  # reconcile reads every CRM: it holds each one's lock, in one order
            for name in sorted(self.targets):
                held.enter_context(self.targets[name].lock)
            ready = {name: t for name, t in self.targets.items() if self._ready(t)}
            report = reconcile(self.ledger, ready, self.reconcile_settings)
        log.info("reconcile", **{k: v for k, v in report.counts().items() if k != "errors"})

    def _guarded(self, job: str, work: Callable[[], None]) -> Callable[[], None]:
        """``work`` as a scheduled job: an error that escapes it (the ledger down, a bug) is logged
        once with its text and then counted (RepeatedErrors), not logged by the scheduler with a
        full traceback every round; the traceback goes to the debug log."""

        @functools.wraps(work)
        def run() -> None:
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - reported here; the next round retries
                if self.repeats.error(f"job:{job}", f"{job} job failed; will retry on the next round",
                                      f"{type(exc).__name__}: {exc}", job=job):
                    log.debug(f"{job} job failed", exc_info=True)
                return
            self.repeats.clear(f"job:{job}", f"{job} job", job=job)

        return run

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("stopping: finishing the running round", signal=signal.Signals(signum).name)
        self.stopping.set()
        self._wake.set()

    def _hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._hangup.set()
        self._wake.set()

    def watch_mappings(self) -> None:
        """Until a stop: look at the mapping files every few seconds, at once on SIGHUP."""
        while not self.stopping.is_set():
            self._wake.wait(timeout=MAPPING_WATCH_SECONDS)
            self._wake.clear()
            if self.stopping.is_set():
                return
            forced = self._hangup.is_set()
            self._hangup.clear()
            if forced:
                log.info("SIGHUP: reading the mapping files again")
            try:
                self.watch.check(forced=forced)
            except (RefsyncError, OSError) as exc:  # the watch must outlive a ledger or CRM hiccup
                log.error("mapping file check failed; tried again shortly", error=str(exc))

    def run(self) -> None:
        """Run until SIGTERM/SIGINT. The HTTP server binds first, so an address in use stops the
        start-up (ConfigError) before any job runs; it closes after the scheduler's last round."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._hup)
        self.watch.start()  # a mapping changed while refsync was stopped is rolled out before any push
        self.scheduler.add_job(self._guarded("push", self.push_job), "interval", seconds=self.push_interval,
                               id="push", next_run_time=self.ledger.clock())
        self.scheduler.add_job(self._guarded("poll", self.poll_job), "interval", seconds=self.poll_interval,
                               id="poll", next_run_time=self.ledger.clock())
        self.scheduler.add_job(self._notify_detached, "interval", seconds=self.push_interval, id="notify",
                               next_run_time=self.ledger.clock())
        self.scheduler.add_job(self._guarded("lease", self.lease_job), "interval", seconds=self.lease_every, id="lease",
                               next_run_time=self.ledger.clock())
        self.scheduler.add_job(self._guarded("expire", self.expire_job), "interval", hours=24, id="expire",
                               next_run_time=self.ledger.clock())
        self.scheduler.add_job(self._guarded("prune", self.prune_job), "interval", hours=24, id="prune",
                               next_run_time=self.ledger.clock())
        if self.reconcile_cron:
            self.scheduler.add_job(self._guarded("reconcile", self.reconcile_job),
                                   CronTrigger.from_crontab(self.reconcile_cron, timezone="UTC"), id="reconcile")
        if self.http is not None:
            self.http.start()
        try:
            self.scheduler.start()
            log.info("refsync running", owner=self.owner, crms=list(self.targets), push_every=self.push_interval,
                     poll_every=self.poll_interval, lease_seconds=self.lease.total_seconds(),
                     waiting={n: t.not_ready for n, t in self.targets.items() if not t.ready})
            sdnotify.notify("READY=1")  # systemd Type=notify: serving, jobs scheduled
            self.watch_mappings()  # until a stop
            sdnotify.notify("STOPPING=1")
            self.scheduler.shutdown(wait=True)  # the CRM jobs finish their round; notify is not waited for
            self._let_notify_go()
        finally:
            if self.http is not None:
                self.http.stop()
        self.ledger.release_lease(POLLER_LEASE, self.owner)
        if self.leading:
            log.info("released the poller lease", worker=self.owner)
        log.info("refsync stopped", owner=self.owner)
