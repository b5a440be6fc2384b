"""The ledger repository: the one way the engine and the CLI reach the database.

Read operations return plain dicts and dataclasses (never live ORM objects); write operations run
inside :meth:`Ledger.transaction`, whose :class:`LedgerTxn` offers named operations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Engine, Integer, Table, Update, and_, bindparam, delete, func, or_, select, union_all, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from refsync.errors import LedgerError
from refsync.state import db, workers
from refsync.state.bulk import among
from refsync.state.models import (
    OP_STATES,
    AuditEvent,
    Cursor,
    JobRun,
    Lease,
    Partner,
    Referral,
    StatusTransition,
    SyncOp,
    utcnow,
)
from refsync.state.views import OP_COLUMNS, audit_json, claim_order, op_json, op_row_json, referral_json
from refsync.state.workers import Liveness

Clock = Callable[[], datetime]
log = structlog.get_logger("refsync.ledger")
POLLER_LEASE = "poller"  # the lease of the replica that polls, expires, reconciles and prunes (the leader)


class LedgerTxn:
    """Named write operations inside one database transaction."""

    def __init__(self, session: Session, clock: Clock) -> None:
        self.session = session
        self.clock = clock
        self._partners: dict[str, int] = {}

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: a failure inside rolls back only what was done inside."""
        with self.session.begin_nested():
            yield

    def known_fingerprints(self, fingerprints: Sequence[str], external_ids: Sequence[str]) -> set[str]:
        """Which of these rows (by fingerprint or external id) the ledger already holds."""
        found: set[str] = set()
        if fingerprints:
            found.update(self.session.scalars(select(Referral.fingerprint).where(
                among(self.session, Referral.fingerprint, fingerprints))))
        if external_ids:
            for fp, ext in self.session.execute(select(Referral.fingerprint, Referral.external_id).where(
                    among(self.session, Referral.external_id, external_ids))):
                found.add(fp)
                found.add(f"ext:{ext}")
        return found

    def know_partners(self, codes: Collection[str]) -> None:
        """Look up these partners' ids with one query (an import batch names dozens), so that
        :meth:`partner_id` answers them without one."""
        wanted = sorted(set(codes) - self._partners.keys())
        if wanted:
            self._partners.update((code, partner_id) for code, partner_id in self.session.execute(
                select(Partner.code, Partner.id).where(among(self.session, Partner.code, wanted))))

    def partner_id(self, code: str) -> int:
        """The partner's id; a new code creates the partner."""
        if code in self._partners:
            return self._partners[code]
        partner_id = self.session.scalar(select(Partner.id).where(Partner.code == code))
        if partner_id is None:
            partner = Partner(code=code, created_at=self.clock())
            self.session.add(partner)
            self.session.flush()
            partner_id = partner.id
        self._partners[code] = partner_id
        return partner_id

    def credit_holders(self, emails: Collection[str], companies: Collection[str],
                       blank_email_companies: Collection[str] = ()) -> list[Referral]:
        """Referrals holding credit for any of these prospect emails or company keys; for the keys in
        ``blank_email_companies`` only the holders without an email (the only ones a prospect with an
        email can collide with by company: loading every colleague of a big company for each batch
        would grow the import's memory with the ledger).

        Separate indexed lookups rather than one OR: PostgreSQL would scan the table for the OR."""
        live = (Referral.credited.is_(True), Referral.merged_into.is_(None),
                Referral.status.not_in(("declined", "expired")))
        found: dict[str, Referral] = {}
        lookups = ((among(self.session, Referral.prospect_email, sorted(emails)),) if emails else (),
                   (among(self.session, Referral.company_key, sorted(companies)),) if companies else (),
                   (among(self.session, Referral.company_key, sorted(blank_email_companies)),
                    or_(Referral.prospect_email.is_(None), Referral.prospect_email == ""))
                   if blank_email_companies else ())
        for where in lookups:
            if where:
                for referral in self.session.scalars(select(Referral).where(*where, *live)):
                    found[referral.id] = referral
        return list(found.values())

    def add_transition(
        self, referral_id: str, from_status: str | None, to_status: str, at: datetime, source: str,
        crm: str | None = None, owner_id: str | None = None, detail: str | None = None,
    ) -> None:
        self.session.add(StatusTransition(
            referral_id=referral_id, from_status=from_status, to_status=to_status, at=at, source=source,
            crm=crm, owner_id=owner_id, detail=detail,
        ))

    def add_audit(
        self, referral_id: str | None, kind: str, reason_code: str, actor: str, *,
        policy_version: str | None = None, crm: str | None = None, object: str | None = None,
        record_id: str | None = None, detail: dict[str, Any] | None = None,
    ) -> None:
        self.session.add(AuditEvent(
            referral_id=referral_id, at=self.clock(), actor=actor, kind=kind, reason_code=reason_code,
            policy_version=policy_version, crm=crm, object=object, record_id=record_id, detail=detail or {},
        ))

    def referral(self, referral_id: str) -> Referral | None:
        return self.session.get(Referral, referral_id)

    def start_run(self, job: str) -> int:
        run = JobRun(job=job, started_at=self.clock())
        self.session.add(run)
        self.session.flush()
        return run.id

    def finish_run(self, run_id: int, status: str, counts: dict[str, Any], error: str | None = None) -> None:
        self.session.execute(update(JobRun).where(JobRun.id == run_id).values(
            finished_at=self.clock(), status=status, counts=counts, error=error))


@functools.cache
def _claim_statement(dialect: str) -> Update:
    """The claim (:meth:`Ledger.claim_ops`) for ``dialect``, built once: its values are bound
    parameters (``claim_crm``, ``claim_now``, ``claim_limit``, ``claim_owner``, ``claim_expires``;
    an UPDATE keeps column names for itself), so every claim runs the same statement instead of
    building and keying a new one. What it claims and how replicas are kept apart: :meth:`Ledger.claim_ops`."""
    ops_table = cast(Table, SyncOp.__table__)  # a Core statement on the table: plain rows, no ORM pass
    c = ops_table.c
    now = bindparam("claim_now", type_=c.updated_at.type)
    limit = bindparam("claim_limit", type_=Integer)
    crm = bindparam("claim_crm", type_=c.crm.type)
    due = ((c.state == "pending", c.next_attempt_at <= now),
           (c.state == "failed", c.next_attempt_at <= now),
           (c.state == "in_flight", c.lease_expires_at < now))
    if dialect == "postgresql":
        due_ids = (
            select(c.id).where(c.crm == crm, or_(*(and_(*condition) for condition in due)))
            .order_by(c.next_attempt_at, c.id).limit(limit).with_for_update(skip_locked=True)
        )
    else:
        # SQLite runs an OR as index searches and sorts every due op to keep ``limit`` of them:
        # 17 ms a claim with 100,000 ops due, most of a first cycle's claiming. Each state on
        # its own reads at most ``limit`` entries in index order (the rowid ends each entry),
        # and only those are sorted. (PostgreSQL refuses FOR UPDATE beside UNION, and sorts in
        # its own process.)
        parts = [select(c.id, c.next_attempt_at).where(c.crm == crm, *condition)
                 .order_by(c.next_attempt_at, c.id).limit(limit).subquery() for condition in due]
        each = union_all(*(select(part.c.id, part.c.next_attempt_at) for part in parts)).subquery()
        due_ids = select(each.c.id).order_by(each.c.next_attempt_at, each.c.id).limit(limit)
    # One UPDATE ... RETURNING: atomic on SQLite too, where a SELECT then UPDATE would race.
    return (
        update(ops_table)
        .where(c.id.in_(due_ids.scalar_subquery()))
        .values(state="in_flight", lease_owner=bindparam("claim_owner", type_=c.lease_owner.type),
                lease_expires_at=bindparam("claim_expires", type_=c.lease_expires_at.type),
                attempts=c.attempts + 1, updated_at=now)
        .returning(*(c[column.key] for column in OP_COLUMNS))
    )


# The tables an import grows, and those a push grows: :meth:`Ledger.refresh_statistics`.
IMPORTED_TABLES = ("referrals", "audit_events", "status_transitions")
PUSHED_TABLES = ("sync_ops", "crm_links", "audit_events")


class Ledger:
    """The ledger of referrals, links, ops, cursors, audit events and alerts."""

    def __init__(self, engine: Engine, clock: Clock = utcnow, liveness: Liveness | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.liveness = liveness or Liveness()  # when a lease owner counts as dead (state/workers.py)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # Reads start deferred on SQLite (writes take the write lock at BEGIN: state/db.py).
        self._readers = sessionmaker(db.for_reading(engine), expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, clock: Clock = utcnow, require_current: bool = True,
             worker_timeout: timedelta | None = None) -> Ledger:
        """Connect to the ledger; refuses an uninitialised or outdated schema unless told not to.
        ``worker_timeout``: a lease owner silent this long is dead (``[daemon] worker_timeout_seconds``)."""
        ledger = cls(db.make_engine(url), clock, Liveness(worker_timeout) if worker_timeout else None)
        if require_current:
            db.ensure_current(ledger.engine)
        return ledger

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[LedgerTxn]:
        try:
            with self._sessions.begin() as session:
                yield LedgerTxn(session, self.clock)
        except OperationalError as exc:
            raise LedgerError(f"the ledger refused the operation: {exc.orig}") from exc

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self._readers() as session:
                yield session
        except OperationalError as exc:
            raise LedgerError(f"cannot read the ledger: {exc.orig}") from exc

    def reading(self) -> AbstractContextManager[Session]:
        """A session for reads only: on SQLite it never takes the write lock (web pages read on
        every request while the daemon writes)."""
        return self._read()

    def refresh_statistics(self, tables: Sequence[str] = IMPORTED_TABLES) -> None:
        """Let PostgreSQL's planner see tables that grew fast (a large import, a first push): with
        the stats of an empty table it scans instead of using the indexes (seen: a poll's prefetch
        reading every link of 100,000 for each 500 records, with autovacuum off or not yet run)."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "ANALYZE " + ", ".join(tables))

    def referrals(
        self, partner: str | None = None, status: str | None = None, since: datetime | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Referrals in submission order, in the contract's ``referrals list --json`` shape."""
        query = (
            select(Referral)
            .options(selectinload(Referral.transitions), selectinload(Referral.links))
            .order_by(Referral.submitted_at, Referral.id)
        )
        if partner:
            query = query.join(Partner).where(Partner.code == partner)
        if status:
            query = query.where(Referral.status == status)
        if since:
            query = query.where(Referral.submitted_at >= since)
        if limit:
            query = query.limit(limit)
        with self._read() as session:
            return [referral_json(r) for r in session.scalars(query)]

    def referral(self, referral_id: str) -> dict[str, Any] | None:
        """One referral with its whole audit timeline (``timeline``), or None."""
        with self._read() as session:
            referral = session.scalar(
                select(Referral)
                .options(selectinload(Referral.transitions), selectinload(Referral.links))
                .where(Referral.id == referral_id)
            )
            if referral is None:
                return None
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.referral_id == referral_id).order_by(AuditEvent.id)
            )
            view = referral_json(referral)
            view["timeline"] = [audit_json(e) for e in events]
            return view

    def partners(self) -> list[dict[str, Any]]:
        """Partners with their referral counts by status."""
        with self._read() as session:
            counts: dict[int, dict[str, int]] = {}
            for partner_id, status, count in session.execute(
                select(Referral.partner_id, Referral.status, func.count()).group_by(
                    Referral.partner_id, Referral.status)
            ):
                counts.setdefault(partner_id, {})[status] = count
            return [
                {
                    "code": p.code,
                    "name": p.name,
                    "created_at": p.created_at.isoformat(),
                    "referrals": sum(counts.get(p.id, {}).values()),
                    "by_status": counts.get(p.id, {}),
                }
                for p in session.scalars(select(Partner).order_by(Partner.code))
            ]

    def status(self) -> dict[str, Any]:
        """Op counts by state, cursors and the last run of each job (the ``status --json`` shape)."""
        with self._read() as session:
            ops = dict.fromkeys(OP_STATES, 0)
            ops.update(dict(session.execute(select(SyncOp.state, func.count()).group_by(SyncOp.state)).all()))
            cursors = [
                {"crm": c.crm, "object": c.object, "position": c.position.isoformat(),
                 "updated_at": c.updated_at.isoformat()}
                for c in session.scalars(select(Cursor).order_by(Cursor.crm, Cursor.object))
            ]
            latest = select(JobRun.job, func.max(JobRun.id).label("id")).group_by(JobRun.job).subquery()
            runs = {
                run.job: {
                    "started_at": run.started_at.isoformat(),
                    "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                    "status": run.status,
                    "counts": run.counts,
                    "error": run.error,
                }
                for run in session.scalars(select(JobRun).join(latest, JobRun.id == latest.c.id))
            }
            referrals = dict(session.execute(
                select(Referral.status, func.count()).group_by(Referral.status)).all())
            return {"ops": ops, "cursors": cursors, "last_runs": runs, "referrals": referrals}

    def hold_lease(self, name: str, owner: str, ttl: timedelta) -> bool:
        """Take or renew the named lease (leader election for the pollers); False while another
        live owner holds it. The holder is replaced once its lease ran out, or at once when it is
        dead (state/workers.py: silent, gone from this host, or unregistered). A lease row works the
        same on SQLite and PostgreSQL; the UPDATE names the holder it replaces, so two takers never
        both win."""
        now = self.clock()
        with self.transaction() as txn:
            lease = txn.session.get(Lease, name)
            if lease is None:
                try:
                    with txn.session.begin_nested():
                        txn.session.add(Lease(name=name, owner=owner, expires_at=now + ttl))
                except IntegrityError:
                    return False
                return True
            holder, expired = lease.owner, lease.expires_at < now
            if holder != owner and not expired and not workers.dead_owners(
                    {holder}, workers.registered(txn.session), now, self.liveness):
                return False
            taken = txn.session.execute(
                update(Lease).where(Lease.name == name, Lease.owner == holder)
                .values(owner=owner, expires_at=now + ttl).execution_options(synchronize_session=False))
            if not getattr(taken, "rowcount", 0):
                return False
        if holder != owner:
            log.warning("lease taken over" if expired else "lease taken back from a dead worker", lease=name,
                        dead_worker=holder, owner=owner)
        return True

    def lease_holder(self, name: str = POLLER_LEASE) -> dict[str, str | None]:
        """Who holds the named lease and until when (``{"worker", "until"}``, both None when nobody
        does: never taken, released at a clean stop, or run out)."""
        now = self.clock()
        with self._read() as session:
            lease = session.get(Lease, name)
            if lease is None or lease.expires_at < now:
                return {"worker": None, "until": None}
            return {"worker": lease.owner, "until": lease.expires_at.isoformat()}

    def release_lease(self, name: str, owner: str) -> None:
        with self.transaction() as txn:
            txn.session.execute(delete(Lease).where(Lease.name == name, Lease.owner == owner))

    def calls_today(self, crm: str) -> int:
        """API calls recorded against ``crm`` by the runs that started today (UTC)."""
        now = self.clock()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        with self._read() as session:
            counts = session.scalars(select(JobRun.counts).where(JobRun.started_at >= midnight))
            return sum(int((c or {}).get("per_crm", {}).get(crm, {}).get("calls", 0)) for c in counts)

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent job runs, newest first."""
        with self._read() as session:
            return [
                {"id": r.id, "job": r.job, "started_at": r.started_at.isoformat(),
                 "finished_at": r.finished_at.isoformat() if r.finished_at else None, "status": r.status,
                 "counts": r.counts, "error": r.error}
                for r in session.scalars(select(JobRun).order_by(JobRun.id.desc()).limit(limit))
            ]

    def ops(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(SyncOp).order_by(SyncOp.id).limit(limit)
        if state:
            query = query.where(SyncOp.state == state)
        with self._read() as session:
            return [op_json(op) for op in session.scalars(query)]

    def claim_ops(self, owner: str, crm: str, limit: int, lease: timedelta) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due ops of ``crm`` to ``owner``.

        PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so replicas never claim the same op. SQLite has one
        writer at a time, so the claiming transaction itself serialises claimers. Ops whose lease
        expired are due again; ops held by a dead worker are taken back first (:meth:`take_back_ops`).
        """
        self.take_back_ops(owner)
        now = self.clock()
        claim = _claim_statement(self.engine.dialect.name)
        params = {"claim_crm": crm, "claim_now": now, "claim_limit": limit, "claim_owner": owner,
                  "claim_expires": now + lease}
        with self.transaction() as txn:
            ops = sorted(txn.session.execute(claim, params), key=claim_order)
            return [op_row_json(op) for op in ops]

    def take_back_ops(self, claimer: str) -> dict[str, int]:
        """Return the in-flight ops of dead workers (state/workers.py) to ``pending``, at once rather
        than when their lease runs out; returns how many per dead worker, and logs each take-back.

        ``claimer`` never counts as dead: its own threads share its id. Set-based, one UPDATE per
        dead worker; on PostgreSQL the rows are locked with ``SKIP LOCKED`` so replicas taking back
        at the same time neither wait nor deadlock, and each counts only what it took."""
        now = self.clock()
        taken: dict[str, int] = {}
        with self.transaction() as txn:
            session = txn.session
            owners = set(session.scalars(select(SyncOp.lease_owner).where(SyncOp.state == "in_flight").distinct()))
            owners -= {claimer, None}
            if not owners:
                return taken
            dead = workers.dead_owners(owners, workers.registered(session), now, self.liveness)  # type: ignore[arg-type]
            for owner in sorted(dead):
                held = select(SyncOp.id).where(SyncOp.state == "in_flight", SyncOp.lease_owner == owner)
                if self.engine.dialect.name == "postgresql":
                    held = held.with_for_update(skip_locked=True)
                ids = session.scalars(
                    update(SyncOp).where(SyncOp.id.in_(held.scalar_subquery()))
                    .values(state="pending", lease_owner=None, lease_expires_at=None, updated_at=now)
                    .returning(SyncOp.id).execution_options(synchronize_session=False)).all()
                if ids:
                    taken[owner] = len(ids)
        for owner, count in taken.items():
            log.warning("ops taken back from a dead worker", dead_worker=owner, ops=count, claimer=claimer)
        return taken

    def enqueue_op(
        self, kind: str, dedupe_key: str, crm: str, *, referral_id: str | None = None,
        object: str | None = None, record_id: str | None = None, payload: dict[str, Any] | None = None,
    ) -> bool:
        """Add an op unless one with ``dedupe_key`` exists; True when it was added."""
        with self.transaction() as txn:
            exists = txn.session.scalar(select(SyncOp.id).where(SyncOp.dedupe_key == dedupe_key))
            if exists is not None:
                return False
            now = self.clock()
            txn.session.add(SyncOp(
                kind=kind, dedupe_key=dedupe_key, crm=crm, referral_id=referral_id, object=object,
                record_id=record_id, payload=payload or {}, next_attempt_at=now, created_at=now, updated_at=now,
            ))
            return True
