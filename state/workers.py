"""Workers: the refsync processes that may hold op leases and the poller lease.

A worker registers at start, beats while it runs and leaves at a clean exit, so the ledger can tell
a live lease owner from a dead one long before the lease itself runs out. Modelled on
procrastinate's workers table (github.com/procrastinate-org/procrastinate):
``procrastinate/sql/schema.sql`` (table ``procrastinate_workers`` with ``last_heartbeat``, and the
functions ``procrastinate_register_worker_v1``, ``procrastinate_update_heartbeat_v1``,
``procrastinate_unregister_worker_v1``, ``procrastinate_prune_stalled_workers_v1``),
``procrastinate/worker.py`` (``Worker.run`` prunes stalled workers then registers; the
``_update_heartbeat`` side task beats every ``update_heartbeat_interval``; the worker unregisters
when it stops) and ``procrastinate/sql/queries.sql`` (``select_stalled_jobs_by_heartbeat``: a job
whose worker is absent or stalled is stalled). Two things procrastinate does not need and we do: a
worker id unique per process start that names the host and pid for operators, and the at-once rule
for an owner on this host whose process is gone.

The rule for "dead" (:func:`dead_workers`, :func:`dead_owners`) is pure; the rest is the repository.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from refsync.state.models import SyncOp, Worker

if TYPE_CHECKING:
    from refsync.state.ledger import Ledger

# A worker row silent this long is deleted (its leases count as dead either way: an owner that is not
# registered is dead). Kept a while so `refsync status` can show an operator which worker died.
PRUNE_AFTER = timedelta(hours=1)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without signalling)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


@dataclass(frozen=True)
class Liveness:
    """How a worker is judged dead: its beats stopped for ``timeout``, or it was a process on
    ``host`` (this host) that ``alive`` says is gone."""

    timeout: timedelta = timedelta(seconds=30)
    host: str = field(default_factory=socket.gethostname)
    alive: Callable[[int], bool] = pid_alive


@dataclass(frozen=True)
class WorkerView:
    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime


def new_worker_id(host: str, pid: int) -> str:
    """``host:pid:suffix``: host and pid tell an operator which process it is; the random suffix makes
    it unique per process start (a restarted container's pid 1 has the same host and pid)."""
    return f"{host[:100]}:{pid}:{secrets.token_hex(4)}"


_process_id: tuple[int, str] | None = None


def process_worker_id() -> str:
    """This process's worker id, made once per process start (a forked child gets its own)."""
    global _process_id
    pid = os.getpid()
    if _process_id is None or _process_id[0] != pid:
        _process_id = (pid, new_worker_id(socket.gethostname(), pid))
    return _process_id[1]


def dead_workers(workers: Sequence[WorkerView], now: datetime, liveness: Liveness) -> set[str]:
    """The registered workers that are dead: no beat for ``liveness.timeout``; or on this host with
    their pid gone, or their pid taken by a worker that started later (a restart reusing the pid)."""
    dead = {w.id for w in workers if w.heartbeat_at < now - liveness.timeout}
    local = [w for w in workers if w.host == liveness.host]
    newest: dict[int, WorkerView] = {}
    for worker in local:
        if worker.pid not in newest or (worker.started_at, worker.id) > (newest[worker.pid].started_at,
                                                                          newest[worker.pid].id):
            newest[worker.pid] = worker
    for worker in local:
        if newest[worker.pid].id != worker.id or not liveness.alive(worker.pid):
            dead.add(worker.id)
    return dead


def dead_owners(owners: Collection[str], workers: Sequence[WorkerView], now: datetime,
                liveness: Liveness) -> set[str]:
    """The lease owners among ``owners`` that are dead: not registered (they left, were pruned or
    never registered, like procrastinate's jobs without a worker) or registered but dead."""
    registered = {w.id for w in workers}
    dead = dead_workers(workers, now, liveness)
    return {o for o in owners if o not in registered or o in dead}


def _view(worker: Worker) -> WorkerView:
    return WorkerView(worker.id, worker.host, worker.pid, worker.started_at, worker.heartbeat_at)


def registered(session: Session) -> list[WorkerView]:
    """Every registered worker (a handful of rows: one per running refsync process)."""
    return [_view(w) for w in session.scalars(select(Worker).order_by(Worker.started_at, Worker.id))]


def register(ledger: Ledger, worker_id: str, *, host: str | None = None, pid: int | None = None) -> None:
    """Record ``worker_id`` as a live worker, and prune workers silent for :data:`PRUNE_AFTER`."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        txn.session.execute(delete(Worker).where(Worker.heartbeat_at < now - PRUNE_AFTER))
        txn.session.merge(Worker(id=worker_id, host=host or socket.gethostname(),
                                 pid=os.getpid() if pid is None else pid, started_at=now, heartbeat_at=now))


def beat(ledger: Ledger, worker_id: str, *, host: str | None = None, pid: int | None = None) -> bool:
    """Renew ``worker_id``'s heartbeat; False when its row was gone (pruned while the process was
    stopped or cut off), in which case it is registered again."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        result = txn.session.execute(update(Worker).where(Worker.id == worker_id).values(heartbeat_at=now))
        if getattr(result, "rowcount", 1):
            return True
    register(ledger, worker_id, host=host, pid=pid)
    return False


def leave(ledger: Ledger, worker_id: str) -> None:
    """Unregister ``worker_id`` at a clean exit: whatever it still holds is free at once."""
    with ledger.transaction() as txn:
        txn.session.execute(delete(Worker).where(Worker.id == worker_id))


def workers_view(ledger: Ledger) -> list[dict[str, Any]]:
    """The registered workers in the ``status --json`` shape, each with ``alive``."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        rows = registered(txn.session)
    dead = dead_workers(rows, now, ledger.liveness)
    return [{"id": w.id, "host": w.host, "pid": w.pid, "started_at": w.started_at.isoformat(),
             "heartbeat_at": w.heartbeat_at.isoformat(), "alive": w.id not in dead} for w in rows]


def stuck_ops(ledger: Ledger, grace: timedelta) -> dict[str, int]:
    """Ops no worker is working on: ``in_flight`` under a dead owner or past their lease, and
    ``failed`` more than ``grace`` past their next attempt (no process is retrying them)."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        session = txn.session
        held = session.execute(
            select(SyncOp.lease_owner, func.count(),
                   func.sum(case((SyncOp.lease_expires_at < now, 1), else_=0)))
            .where(SyncOp.state == "in_flight").group_by(SyncOp.lease_owner)).all()
        dead = dead_owners({owner or "" for owner, _, _ in held}, registered(session), now, ledger.liveness)
        failed = session.scalar(select(func.count()).select_from(SyncOp).where(
            SyncOp.state == "failed", SyncOp.next_attempt_at < now - grace)) or 0
    in_flight = sum(count if (owner or "") in dead else int(expired or 0) for owner, count, expired in held)
    return {"in_flight": in_flight, "failed": int(failed)}
