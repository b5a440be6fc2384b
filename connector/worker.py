"""This process as a worker: registered in the ledger while it may hold leases, beating from a
background thread, leaving when it exits. `refsync run` and the one-off commands that claim ops
(`sync --once`, `notify`, `reconcile`) share :func:`registered_worker`.

A process killed with ``kill -9`` cannot leave; the ledger then judges it by its beats and, on its
own host, by its pid (state/workers.py), and whoever claims next takes its ops back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from refsync.connector.logs import get_logger
from refsync.errors import LedgerError
from refsync.state import workers
from refsync.state.ledger import Ledger

log = get_logger("refsync.worker")


def _beat_until(ledger: Ledger, worker_id: str, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            if not workers.beat(ledger, worker_id):
                log.warning("this worker's registration was gone (pruned while it was silent); registered again",
                            worker=worker_id)
        except LedgerError as exc:  # the next beat tries again; missing a few is what the timeout allows
            log.warning("heartbeat failed", worker=worker_id, error=str(exc))


@contextmanager
def registered_worker(ledger: Ledger, heartbeat_seconds: float) -> Iterator[str]:
    """Register this process (:func:`state.workers.process_worker_id`) and beat every
    ``heartbeat_seconds`` until the block ends; then leave, so what it still holds is free at once."""
    worker_id = workers.process_worker_id()
    workers.register(ledger, worker_id)
    stop = threading.Event()
    beating = threading.Thread(target=_beat_until, args=(ledger, worker_id, heartbeat_seconds, stop),
                               name="refsync-heartbeat", daemon=True)
    beating.start()
    log.debug("worker registered", worker=worker_id)
    try:
        yield worker_id
    finally:
        stop.set()
        beating.join(timeout=10)
        try:
            workers.leave(ledger, worker_id)
        except LedgerError as exc:  # the ledger is unreachable: the beats stop, and the timeout frees our ops
            log.warning("could not unregister this worker", worker=worker_id, error=str(exc))
