"""The outbox side of the ledger: planning push ops from referral changes and landing their results.

A push op is keyed ``push:{crm}:{referral_id}:{revision}``: each revision of a referral's
attribution is pushed to each CRM once, whatever crashes or replays happen in between.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any
from typing import cast as typed

from sqlalchemy import Select, String, Table, and_, bindparam, cast, exists, insert, literal, select, update
from sqlalchemy.orm import Session

from refsync.state.bulk import among, among_bound, bound_list, core_columns, insert_rows
from refsync.state.ledger import Ledger
from refsync.state.models import AuditEvent, CrmLink, Partner, Referral, SyncOp

CHUNK = 500  # ids per IN list: well under every driver's bound-parameter limit
# The tables themselves, for landing: a statement on a Table runs as plain Core (one executemany,
# no ORM bulk-persistence pass per row), which is most of what landing a batch used to cost. Column
# defaults and ``onupdate`` are the table's own, so they apply all the same.
_OPS = typed(Table, SyncOp.__table__)
_LINKS = typed(Table, CrmLink.__table__)
_EVENTS = typed(Table, AuditEvent.__table__)
_REFERRALS = typed(Table, Referral.__table__)
_PARTNERS = typed(Table, Partner.__table__)


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def push_key(crm: str, referral_id: str, revision: int) -> str:
    return f"push:{crm}:{referral_id}:{revision}"


def enqueue_pushes(ledger: Ledger, crm: str) -> int:
    """One set-based statement: a push op for every credited referral revision not yet planned."""
    now = ledger.clock()
    key = literal(f"push:{crm}:") + Referral.id + literal(":") + cast(Referral.revision, String)
    pending = (
        select(
            literal("push"), key, Referral.id, literal(crm), literal("pending"), literal(0), literal(now),
            literal(now), literal(now), literal({}, type_=SyncOp.__table__.c.payload.type),
        )
        .where(Referral.credited.is_(True), Referral.merged_into.is_(None),
               Referral.status.not_in(("declined",)),
               ~exists().where(SyncOp.dedupe_key == key))
    )
    statement = insert(SyncOp).from_select(
        ["kind", "dedupe_key", "referral_id", "crm", "state", "attempts", "next_attempt_at", "created_at",
         "updated_at", "payload"],
        pending,
    ).returning(SyncOp.id)
    with ledger.transaction() as txn:
        return len(txn.session.execute(statement).all())


def preview_pushes(ledger: Ledger, crm: str, limit: int) -> list[dict[str, Any]]:
    """Read-only stand-ins for the push ops a cycle would claim now (for dry runs)."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        due = txn.session.scalars(select(SyncOp.referral_id).where(
            SyncOp.crm == crm, SyncOp.kind == "push", SyncOp.state.in_(("pending", "failed")),
            SyncOp.next_attempt_at <= now).limit(limit))
        referral_ids = list(dict.fromkeys(r for r in due if r))
        key = literal(f"push:{crm}:") + Referral.id + literal(":") + cast(Referral.revision, String)
        unplanned = txn.session.scalars(select(Referral.id).where(
            Referral.credited.is_(True), Referral.merged_into.is_(None), Referral.status.not_in(("declined",)),
            ~exists().where(SyncOp.dedupe_key == key)).limit(max(limit - len(referral_ids), 0)))
        referral_ids += [r for r in unplanned if r not in referral_ids]
    return [{"id": 0, "kind": "push", "referral_id": r, "attempts": 0} for r in referral_ids]


# The links a push writes through, repairs, or (deleted, lost) must not re-create.
PUSH_LINK_STATES = ("active", "converted", "deleted", "lost")


def push_inputs(ledger: Ledger, referral_ids: Sequence[str], crm: str) -> dict[str, dict[str, Any]]:
    """What the push needs of each referral: its attributes and its active links on ``crm``.

    Two Core selects of the needed columns per chunk of ids (no ORM objects: a first cycle reads
    every referral here once per CRM)."""
    found: dict[str, dict[str, Any]] = {}
    with ledger.transaction() as txn:
        session = txn.session
        referrals_of, links_of = _push_input_statements(session.get_bind().dialect.name)
        for chunk in _chunks(list(dict.fromkeys(referral_ids))):
            ids = bound_list(chunk)
            for (rid, partner, source, medium, campaign, submitted_at, email, company, name, external_id,
                 status, code, revision, credited, merged_into) in session.execute(referrals_of, {"ids": ids}):
                found[rid] = {
                    "id": rid, "partner": partner, "source": source, "medium": medium, "campaign": campaign,
                    "submitted_at": submitted_at, "prospect_email": email, "prospect_company": company,
                    "prospect_name": name, "external_id": external_id, "status": status, "referral_code": code,
                    "revision": revision, "credited": credited and merged_into is None, "links": []}
            for rid, obj, record_id, role, state in session.execute(links_of, {"ids": ids, "crm": crm}):
                found[rid]["links"].append({"object": obj, "record_id": record_id, "role": role, "state": state})
    return found


@cache
def _push_input_statements(dialect: str) -> tuple[Select[Any], Select[Any]]:
    """push_inputs' two selects, built once per dialect, their values bound at each run: the
    referrals' columns (the tables' own: plain Core rows, without the ORM's compile and loading
    steps), and their links on one CRM (``ids``, ``crm``)."""
    columns = core_columns(Referral.id, Partner.code, Referral.source, Referral.medium, Referral.campaign,
                           Referral.submitted_at, Referral.prospect_email, Referral.prospect_company,
                           Referral.prospect_name, Referral.external_id, Referral.status, Referral.referral_code,
                           Referral.revision, Referral.credited, Referral.merged_into)
    referrals, partners, link = _REFERRALS, _PARTNERS, _LINKS.c
    return (select(*columns).join(partners, partners.c.id == referrals.c.partner_id)
            .where(among_bound(dialect, referrals.c.id, "ids")),
            select(link.referral_id, link.object, link.record_id, link.role, link.state)
            .where(among_bound(dialect, link.referral_id, "ids"), link.crm == bindparam("crm", type_=link.crm.type),
                   link.state.in_(PUSH_LINK_STATES)).order_by(link.id))


@dataclass
class OpOutcome:
    """How one claimed op ended, and what it taught us about the CRM."""

    op_id: int
    referral_id: str | None
    state: str  # done, failed (retry at next_attempt_at), dead, released (not attempted)
    next_attempt_at: datetime | None = None
    error_class: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    links: list[tuple[str, str, str]] = field(default_factory=list)  # (object, record_id, role)
    written: dict[str, Any] = field(default_factory=dict)
    created: bool = False
    unchanged: bool = False
    actor: str = "refsync"  # who the audit trail names for the write (mapping-change: a planned re-push)
    note: dict[str, Any] = field(default_factory=dict)  # added to the audit event's detail


def _op_values(outcome: OpOutcome, now: datetime) -> dict[str, Any]:
    """The columns an outcome sets on its op (``attempts`` as an expression for a release)."""
    values: dict[str, Any] = {"state": outcome.state, "updated_at": now, "lease_owner": None,
                              "lease_expires_at": None}
    if outcome.state == "done":
        values["done_at"] = now
    if outcome.state in ("failed", "released") and outcome.next_attempt_at is not None:
        values["next_attempt_at"] = outcome.next_attempt_at
    if outcome.state == "released":
        values["state"] = "pending"
        values["attempts"] = _OPS.c.attempts - 1  # never attempted: does not count
    if outcome.error_class:
        values.update(last_error_class=outcome.error_class, last_error_code=outcome.error_code,
                      last_error_message=(outcome.error_message or "")[:2000])
    return values


def _land_ops(session: Session, owner: str, outcomes: Sequence[OpOutcome], now: datetime) -> set[int]:
    """Set the ops' states, one UPDATE per distinct set of values (a batch has a handful: done,
    released, a few failures), each only where the op is still leased to ``owner``; the ids that
    were, as the database saw them under that condition."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    values_of: dict[tuple[Any, ...], dict[str, Any]] = {}
    for outcome in outcomes:
        # What _op_values reads of an outcome, so equal keys mean equal values (built once a key).
        retry_at = outcome.next_attempt_at if outcome.state in ("failed", "released") else None
        error = (outcome.error_class, outcome.error_code, outcome.error_message) if outcome.error_class else None
        key = (outcome.state, retry_at, error)
        if key not in values_of:
            values_of[key] = _op_values(outcome, now)
        groups.setdefault(key, []).append(outcome.op_id)
    landed: set[int] = set()
    for key, ids in groups.items():
        for chunk in _chunks(ids):
            landed.update(session.scalars(update(_OPS).where(
                among(session, _OPS.c.id, chunk), _OPS.c.lease_owner == owner).values(**values_of[key])
                .returning(_OPS.c.id)))
    return landed


def _land_links(session: Session, crm: str, outcomes: Sequence[OpOutcome], now: datetime) -> None:
    """New links inserted once (in bulk), and ``last_written_at`` set on the links of done ops that
    wrote fields (the poll must not judge such a record by an older search)."""
    wanted: dict[tuple[str, str, str], tuple[str, bool]] = {}  # (referral, object, record) -> (role, wrote)
    for outcome in outcomes:
        wrote = outcome.state == "done" and bool(outcome.written)
        for obj, record_id, role in outcome.links:
            key = (str(outcome.referral_id), obj, record_id)
            known_role, known_wrote = wanted.get(key, (role, False))
            wanted[key] = (known_role, known_wrote or wrote)
    if not wanted:
        return
    existing: dict[tuple[str, str, str], int] = {}
    referral_ids = sorted({key[0] for key in wanted})
    known = _known_links(session.get_bind().dialect.name)
    for chunk in _chunks(referral_ids):
        rows = session.execute(known, {"crm": crm, "ids": bound_list(chunk)})
        existing.update(((r, o, rec), link_id) for r, o, rec, link_id in rows)
    new = [{"referral_id": r, "crm": crm, "object": o, "record_id": rec, "role": role, "state": "active",
            "created_at": now, "updated_at": now, "last_written_at": now if wrote else None}
           for (r, o, rec), (role, wrote) in wanted.items() if (r, o, rec) not in existing]
    if new:
        insert_rows(session, _LINKS, new)
    written = [existing[key] for key, (_role, wrote) in wanted.items() if wrote and key in existing]
    for chunk in _chunks(written):
        session.execute(update(_LINKS).where(among(session, _LINKS.c.id, chunk)).values(last_written_at=now,
                                                                                  updated_at=now))


@cache
def _known_links(dialect: str) -> Select[Any]:
    """The links of some referrals on one CRM (``crm``, ``ids``), built once per dialect."""
    link = _LINKS.c
    return select(link.referral_id, link.object, link.record_id, link.id).where(
        link.crm == bindparam("crm", type_=link.crm.type), among_bound(dialect, link.referral_id, "ids"))


def _audit_rows(crm: str, outcomes: Sequence[OpOutcome], now: datetime) -> list[dict[str, Any]]:
    """The audit events of landed outcomes: what was pushed where, and which ops died."""
    rows: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.state == "done" and not outcome.unchanged:
            for obj, record_id, _role in outcome.links[:1]:
                rows.append({"referral_id": outcome.referral_id, "at": now, "actor": outcome.actor, "kind": "pushed",
                             "reason_code": "created" if outcome.created else "updated", "crm": crm, "object": obj,
                             "record_id": record_id,
                             "detail": {"fields": outcome.written, "op_id": outcome.op_id, **outcome.note}})
        elif outcome.state == "dead":
            rows.append({"referral_id": outcome.referral_id, "at": now, "actor": "refsync", "kind": "push_dead",
                         "reason_code": outcome.error_code or outcome.error_class or "dead", "crm": crm,
                         "object": None, "record_id": None,
                         "detail": {"message": outcome.error_message, "op_id": outcome.op_id}})
    return rows


def land_outcomes(ledger: Ledger, crm: str, owner: str, outcomes: Sequence[OpOutcome]) -> None:
    """Record op states, new links and audit events in one transaction, with a few set-based
    statements whatever the batch size (a first cycle lands hundreds of thousands of ops).

    Only ops still leased to ``owner`` are touched: a replica whose lease ran out does not
    overwrite the work of the one that took over; links and events of other ops are left out too.
    """
    now = ledger.clock()
    with ledger.transaction() as txn:
        session = txn.session
        landed = _land_ops(session, owner, outcomes, now)
        mine = [o for o in outcomes if o.op_id in landed and o.referral_id is not None]
        _land_links(session, crm, mine, now)
        events = _audit_rows(crm, mine, now)
        if events:
            insert_rows(session, _EVENTS, events)


def op_states(ledger: Ledger, op_ids: Sequence[int]) -> dict[int, str]:
    """The state of each of these ops the ledger knows (unknown ids are missing)."""
    with ledger.transaction() as txn:
        return {op_id: state for op_id, state in txn.session.execute(
            select(SyncOp.id, SyncOp.state).where(SyncOp.id.in_(list(op_ids))))}


def retry_dead(ledger: Ledger, op_ids: Sequence[int] | None = None) -> int:
    """Requeue dead ops (all, or these ids) after a fix; returns how many."""
    now = ledger.clock()
    condition = SyncOp.state == "dead"
    if op_ids:
        condition = and_(condition, SyncOp.id.in_(list(op_ids)))
    with ledger.transaction() as txn:
        result = txn.session.execute(update(SyncOp).where(condition).values(
            state="pending", attempts=0, next_attempt_at=now, updated_at=now))
        return int(getattr(result, "rowcount", 0) or 0)
