"""`refsync run`: the daemon. APScheduler 3.x runs the push and poll jobs on their intervals.

Every replica pushes (ops are claimed under leases, so replicas never share an op); only the
replica holding the ``poller`` lease polls, so cursors advance once. SIGTERM and SIGINT stop the
scheduler after the running job's round: claimed ops are either landed or, at worst, come back
when their lease runs out.
"""

from __future__ import annotations

import signal
import threading
from datetime import timedelta
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from adapters.errors import CrmError
from connector.logs import get_logger
from connector.poll import poll_target
from connector.push import CrmTarget
from connector.sync import CycleSettings, push_all, worker_id
from state.ledger import Ledger
from state.outbox import enqueue_pushes

log = get_logger("refsync.daemon")
POLLER_LEASE = "poller"


class Daemon:
    def __init__(self, ledger: Ledger, targets: dict[str, CrmTarget], settings: CycleSettings,
                 push_interval: int, poll_interval: int) -> None:
        self.ledger = ledger
        self.targets = targets
        self.settings = settings
        self.push_interval = push_interval
        self.poll_interval = poll_interval
        self.owner = worker_id()
        self.stopping = threading.Event()
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})

    def push_job(self) -> None:
        for name, target in self.targets.items():
            if self.stopping.is_set():
                return
            try:
                enqueue_pushes(self.ledger, name)
                counts = push_all(self.ledger, target, self.settings, self.owner)
                if counts.pushed or counts.failed or counts.dead:
                    log.info("push round", crm=name, pushed=counts.pushed, failed=counts.failed, dead=counts.dead,
                             api_calls=counts.calls)
            except CrmError as exc:
                log.error("push failed; will retry on the next round", crm=name, error=str(exc))

    def poll_job(self) -> None:
        lease = timedelta(seconds=max(self.poll_interval * 3, 60))
        if not self.ledger.hold_lease(POLLER_LEASE, self.owner, lease):
            log.debug("another replica polls", owner=self.owner)
            return
        for name, target in self.targets.items():
            if self.stopping.is_set():
                return
            try:
                counts = poll_target(self.ledger, target)
                log.info("poll", crm=name, changes=counts.changes, transitions=counts.transitions,
                         repairs=counts.repairs, api_calls=counts.calls)
            except CrmError as exc:
                log.error("poll failed; will retry on the next round", crm=name, error=str(exc))

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("stopping: finishing the running round", signal=signal.Signals(signum).name)
        self.stopping.set()

    def run(self) -> None:
        """Run until SIGTERM/SIGINT."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.scheduler.add_job(self.push_job, "interval", seconds=self.push_interval, id="push",
                               next_run_time=self.ledger.clock())
        self.scheduler.add_job(self.poll_job, "interval", seconds=self.poll_interval, id="poll",
                               next_run_time=self.ledger.clock())
        self.scheduler.start()
        log.info("refsync running", owner=self.owner, crms=list(self.targets), push_every=self.push_interval,
                 poll_every=self.poll_interval)
        self.stopping.wait()
        self.scheduler.shutdown(wait=True)
        self.ledger.release_lease(POLLER_LEASE, self.owner)
        log.info("refsync stopped", owner=self.owner)
