"""The ledger side of poll-back and the attribution guard: cursors, links, transitions, alerts.

Everything an observed CRM change does to the ledger goes through :class:`Observation`, one
transaction per batch of changes, so a crash mid-poll replays the batch from the old cursor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, NamedTuple, cast

from sqlalchemy import Select, Table, bindparam, delete, func, select
from sqlalchemy.orm import load_only
from sqlalchemy.orm.attributes import set_committed_value

from refsync.state.bulk import among, among_bound, bound_list, core_columns, update_rows
from refsync.state.ledger import Ledger, LedgerTxn
from refsync.state.models import (
    AuditEvent,
    CrmLink,
    CrmState,
    Cursor,
    Partner,
    Referral,
    StatusTransition,
    SyncOp,
    as_utc,
)
from refsync.state.notifications import AlertSpec, enqueue_status_notice, raise_alert
from refsync.times import iso_text

# crm_state keys of a poll's memory of one object: the adapter's poll state, and the records the
# poll handled inside the overlap window, one row per observed batch, keyed by the batch's page
# cursor (fixed-width UTC, so rows older than the window are one range delete).
POLL_STATE = "poll_state:{obj}"
POLL_WINDOW = "poll_window:{obj}"  # the engine's own: where the next poll lists from (connector.poll)
HANDLED = "handled:{obj}:"
STAMP = "%Y%m%dT%H%M%S.%fZ"
# The referral columns a poll reads (the guard's view of the attribution, status, credit): loading
# only these halves the cost of a prefetch; any other column still loads when first touched.
OBSERVED_COLUMNS = (Referral.id, Referral.partner_id, Referral.referral_code, Referral.prospect_email,
                    Referral.prospect_company, Referral.prospect_name, Referral.source, Referral.medium,
                    Referral.campaign, Referral.submitted_at, Referral.status, Referral.status_changed_at,
                    Referral.credited, Referral.merged_into, Referral.external_id)


@dataclass(slots=True)
class ReferralView:
    """What a poll reads of a referral it only looks at (a lead-like record's referral: the guard
    and the owner check change nothing on it), from a plain row: building ORM objects for the
    100,000 referrals of a large poll cost more than the rest of observing them."""

    id: str
    partner_code: str
    referral_code: str | None
    prospect_email: str | None
    prospect_company: str | None
    prospect_name: str | None
    source: str | None
    medium: str | None
    campaign: str | None
    submitted_at: datetime
    status: str
    status_changed_at: datetime
    credited: bool
    merged_into: str | None
    external_id: str | None
    revision: int  # the commission guard asks whether this revision was pushed


VIEW_COLUMNS = (Referral.id, Partner.code, Referral.referral_code, Referral.prospect_email, Referral.prospect_company,
                Referral.prospect_name, Referral.source, Referral.medium, Referral.campaign, Referral.submitted_at,
                Referral.status, Referral.status_changed_at, Referral.credited, Referral.merged_into,
                Referral.external_id, Referral.revision)


@dataclass(slots=True)
class LinkView:
    """A prefetched link, from a plain row, for reading and :meth:`Observation.seen` alone; every
    change to a link goes through the ORM objects of :meth:`Observation.links`."""

    id: int
    referral_id: str
    object: str
    record_id: str
    role: str
    state: str
    owner_id: str | None
    last_seen_at: datetime | None
    last_written_at: datetime | None


LINK_COLUMNS = (CrmLink.id, CrmLink.referral_id, CrmLink.object, CrmLink.record_id, CrmLink.role, CrmLink.state,
                CrmLink.owner_id, CrmLink.last_seen_at, CrmLink.last_written_at)
# The same as the tables' own columns: a Core select of them returns plain rows without the ORM's
# compile and loading steps (a poll prefetches every record it reads; py-spy: a tenth of prefetching).
_LINK_ROW, _VIEW_ROW = core_columns(*LINK_COLUMNS), core_columns(*VIEW_COLUMNS)
_LINK_TABLE, _REFERRAL_TABLE, _PARTNER_TABLE, _AUDIT_TABLE = (cast(Table, m.__table__)
                                                             for m in (CrmLink, Referral, Partner, AuditEvent))


_STATE_TABLE = cast(Table, CrmState.__table__)
_STATE_KEYS = _STATE_TABLE.c
_FORGET_HANDLED = delete(_STATE_TABLE).where(
    _STATE_KEYS.crm == bindparam("crm", type_=_STATE_KEYS.crm.type),
    _STATE_KEYS.key >= bindparam("first", type_=_STATE_KEYS.key.type),
    _STATE_KEYS.key < bindparam("before", type_=_STATE_KEYS.key.type))


class _Prefetch(NamedTuple):
    links: Select[Any]  # the active links of records (crm, obj, record_ids)
    views: Select[Any]  # the referrals, as ReferralView rows (referral_ids)
    pushed: Select[Any]  # (referral, record) pairs with a "pushed" event (crm, referral_ids, record_ids)


@cache
def _prefetch_statements(dialect: str) -> _Prefetch:
    """The prefetch's three selects, built once per dialect with their values bound at each run
    (a poll of 100,000 records runs each 200 times; building them was a tenth of prefetching)."""
    links, referrals, events = _LINK_TABLE.c, _REFERRAL_TABLE.c, _AUDIT_TABLE.c
    crm = bindparam("crm", type_=links.crm.type)
    return _Prefetch(
        links=select(*_LINK_ROW).where(
            links.crm == crm, links.object == bindparam("obj", type_=links.object.type),
            among_bound(dialect, links.record_id, "record_ids"), links.state.in_(("active", "converted")))
        .order_by(links.id),
        views=select(*_VIEW_ROW).join(_PARTNER_TABLE, _PARTNER_TABLE.c.id == referrals.partner_id)
        .where(among_bound(dialect, referrals.id, "referral_ids")),
        pushed=select(events.referral_id, events.record_id).where(
            among_bound(dialect, events.referral_id, "referral_ids"), events.kind == "pushed", events.crm == crm,
            among_bound(dialect, events.record_id, "record_ids")))


def cursor(ledger: Ledger, crm: str, obj: str) -> datetime | None:
    with ledger.transaction() as txn:
        row = txn.session.get(Cursor, (crm, obj))
        return row.position if row else None


@dataclass
class PollMemory:
    """What the last polls of one object left for the next (``CrmAdapter.change_pages``)."""

    handled: dict[str, datetime] = field(default_factory=dict)  # record id -> modification stamp handled
    state: dict[str, Any] = field(default_factory=dict)  # the adapter's poll state
    window: dict[str, Any] = field(default_factory=dict)  # the engine's listing window


def poll_memory(ledger: Ledger, crm: str, obj: str) -> PollMemory:
    """The handled records and adapter state kept for ``obj`` on ``crm`` (across processes)."""
    prefix = HANDLED.format(obj=obj)
    memory = PollMemory()
    with ledger.transaction() as txn:
        window = POLL_WINDOW.format(obj=obj)
        ours = CrmState.key.in_((POLL_STATE.format(obj=obj), window)) | CrmState.key.startswith(prefix,
                                                                                                  autoescape=True)
        rows = txn.session.execute(
            select(CrmState.key, CrmState.value).where(CrmState.crm == crm, ours).order_by(CrmState.key))
        for key, value in rows:
            if key.startswith(prefix):
                memory.handled.update((rid, datetime.fromisoformat(at)) for rid, at in value.items())
            elif key == window:
                memory.window = dict(value)
            else:
                memory.state = dict(value)
    return memory


def keep_poll_window(ledger: Ledger, crm: str, obj: str, value: Mapping[str, Any]) -> None:
    """Where the next poll of ``obj`` lists from, kept once a poll has read all its pages."""
    key = POLL_WINDOW.format(obj=obj)
    with ledger.transaction() as txn:
        row = txn.session.get(CrmState, (crm, key))
        if row is None:
            txn.session.add(CrmState(crm=crm, key=key, value=dict(value), updated_at=txn.clock()))
        else:
            row.value, row.updated_at = dict(value), txn.clock()


class Observation:
    """Named ledger writes for what a poll observed, inside one transaction."""

    def __init__(self, txn: LedgerTxn, crm: str) -> None:
        self.txn = txn
        self.session = txn.session
        self.crm = crm
        self.now = txn.clock()
        # Prefetched links as plain rows; a record whose links are read through the ORM
        # (:meth:`links`, to change them) is dropped from here, so it is never read stale.
        self._links: dict[tuple[str, str], list[LinkView]] = {}
        self._pushed: set[tuple[str, str]] = set()
        # Held here: the session's identity map is weak, so prefetched rows it alone held would be
        # collected and read again one at a time. Once a referral is loaded as an ORM object (to be
        # changed), its view gives way to it, so what is read afterwards includes the change.
        self._referrals: dict[str, Referral] = {}
        self._views: dict[str, ReferralView] = {}
        self._seen: dict[int, tuple[str | None, datetime]] = {}  # link id -> (owner, at), for land_sightings

    def prefetch(self, obj: str, record_ids: Sequence[str], *, editable: bool = True) -> None:
        """Load the links, referrals and push history of many records at once (a poll of 100,000
        changes must not cost three queries per record). ``editable``: the referrals are loaded as
        ORM objects (a deal's poll moves statuses and outcomes); otherwise as :class:`ReferralView`
        rows, which cost a fraction."""
        ids = list(dict.fromkeys(record_ids))
        statements = _prefetch_statements(self.session.get_bind().dialect.name)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            found: dict[str, list[LinkView]] = {}
            for row in self.session.execute(statements.links, {"crm": self.crm, "obj": obj,
                                                               "record_ids": bound_list(chunk)}):
                found.setdefault(row.record_id, []).append(LinkView(*row))
            for record_id in chunk:
                self._links[(obj, record_id)] = found.get(record_id, [])
            referral_ids = {lk.referral_id for links in found.values() for lk in links}
            if not referral_ids:
                continue
            if editable:
                self._referrals.update((r.id, r) for r in self.session.scalars(
                    select(Referral).options(load_only(*OBSERVED_COLUMNS))
                    .where(among(self.session, Referral.id, referral_ids))))
            else:
                self._views.update((row[0], ReferralView(*row)) for row in self.session.execute(
                    statements.views, {"referral_ids": bound_list(referral_ids)}))
            # A link refsync wrote through has its time of writing, landed with the write's "pushed"
            # event (state/outbox.py): the events are read only for the other links (found by
            # discovery, or linked to a record that already held every value).
            unsure: set[str] = set()
            for links_of_record in found.values():
                for lk in links_of_record:
                    if lk.last_written_at is not None:
                        self._pushed.add((lk.referral_id, lk.record_id))
                    else:
                        unsure.add(lk.referral_id)
            if not unsure:
                continue
            # By referral id (indexed; audit_events has no index on record_id, and a scan of every
            # event per chunk cost more than the rest of the poll): was_pushed only ever asks about
            # a record's linked referrals, and asks the database about any pair not found here.
            pushed = self.session.execute(statements.pushed, {"crm": self.crm, "referral_ids": bound_list(unsure),
                                                              "record_ids": bound_list(chunk)})
            self._pushed.update((str(r), str(rec)) for r, rec in pushed)

    def seen(self, link: CrmLink | LinkView, owner_id: str | None) -> None:
        """The record of ``link`` was seen now, owned by ``owner_id``. Every link of a poll batch is
        seen: they are written together by :meth:`land_sightings` (one executemany), rather than as
        one dirty ORM object each; the link reads the new values at once all the same."""
        if isinstance(link, CrmLink):
            set_committed_value(link, "owner_id", owner_id)
            set_committed_value(link, "last_seen_at", self.now)
        else:
            link.owner_id, link.last_seen_at = owner_id, self.now
        self._seen[link.id] = (owner_id, self.now)

    def land_sightings(self) -> None:
        """Write what :meth:`seen` noted, in one bulk update."""
        if not self._seen:
            return
        update_rows(self.session, cast(Table, CrmLink.__table__), "id",
                    [{"id": link_id, "owner_id": owner, "last_seen_at": at, "updated_at": self.now}
                     for link_id, (owner, at) in self._seen.items()])
        self._seen.clear()

    def record_links(self, obj: str, record_id: str) -> list[CrmLink] | list[LinkView]:
        """Links of one record, to read: from the prefetch when there was one."""
        cached = self._links.get((obj, record_id))
        return list(cached) if cached is not None else self.links(obj, [record_id]).get(record_id, [])

    def set_cursor(self, obj: str, position: datetime) -> None:
        row = self.session.get(Cursor, (self.crm, obj))
        if row is None:
            self.session.add(Cursor(crm=self.crm, object=obj, position=position, updated_at=self.now))
        elif position > row.position:
            row.position = position
            row.updated_at = self.now

    def remember_handled(self, obj: str, handled: dict[str, datetime], page_cursor: datetime, part: int,
                         forget_before: datetime) -> None:
        """Keep the (record id, stamp) pairs this batch handled, so later polls that re-read the
        overlap window skip them; drop those of pages wholly older than ``forget_before``."""
        prefix = HANDLED.format(obj=obj)
        # the keys from ``prefix`` (inclusive) to ``prefix`` + the stamp are exactly those that
        # start with ``prefix`` and sort before it: one range, a statement built once
        self.session.execute(_FORGET_HANDLED, {"crm": self.crm, "first": prefix,
                                               "before": prefix + as_utc(forget_before).strftime(STAMP)})
        if not handled:
            return
        key = f"{prefix}{as_utc(page_cursor).strftime(STAMP)}:{part}"
        value = {rid: iso_text(as_utc(at)) for rid, at in handled.items()}
        row = self.session.get(CrmState, (self.crm, key))
        if row is None:
            self.session.add(CrmState(crm=self.crm, key=key, value=value, updated_at=self.now))
        else:  # the same page cursor again (a replay, or late-indexed records at the same stamp)
            row.value, row.updated_at = {**row.value, **value}, self.now

    def keep_poll_state(self, obj: str, state: Mapping[str, Any]) -> None:
        """The adapter's poll state for ``obj`` (e.g. HubSpot's deletion-check position)."""
        key = POLL_STATE.format(obj=obj)
        row = self.session.get(CrmState, (self.crm, key))
        if row is None:
            self.session.add(CrmState(crm=self.crm, key=key, value=dict(state), updated_at=self.now))
        else:
            row.value, row.updated_at = dict(state), self.now

    def links(self, obj: str, record_ids: Sequence[str]) -> dict[str, list[CrmLink]]:
        """Active (and converted) links of these records, by record id, as ORM objects to change."""
        found: dict[str, list[CrmLink]] = {}
        if not record_ids:
            return found
        for record_id in record_ids:
            self._links.pop((obj, record_id), None)
        for link in self.session.scalars(select(CrmLink).where(
                CrmLink.crm == self.crm, CrmLink.object == obj, CrmLink.record_id.in_(list(record_ids)),
                CrmLink.state.in_(("active", "converted")))):
            if link.id in self._seen:  # seen in this batch through its prefetched row
                owner_id, at = self._seen[link.id]
                set_committed_value(link, "owner_id", owner_id)
                set_committed_value(link, "last_seen_at", at)
            found.setdefault(link.record_id, []).append(link)
        return found

    def links_of_referrals(self, referral_ids: Sequence[str]) -> list[CrmLink]:
        return list(self.session.scalars(select(CrmLink).where(
            CrmLink.crm == self.crm, CrmLink.referral_id.in_(list(referral_ids)), CrmLink.state == "active")))

    def referral(self, referral_id: str) -> Referral | None:
        """The referral as an ORM object, to change (kept, so later reads in the batch see it)."""
        cached = self._referrals.get(referral_id)
        if cached is not None:
            return cached
        found = self.session.get(Referral, referral_id)
        if found is not None:
            self._referrals[referral_id] = found
            self._views.pop(referral_id, None)
        return found

    def referral_view(self, referral_id: str) -> Referral | ReferralView | None:
        """The referral, to read: its ORM object once loaded, else its prefetched view."""
        cached = self._referrals.get(referral_id)
        if cached is not None:
            return cached
        return self._views.get(referral_id) or self.referral(referral_id)

    def link(self, referral_id: str, obj: str, record_id: str, role: str, owner_id: str | None = None) -> CrmLink:
        """The active link of a referral to a record, created when missing."""
        existing = self.session.scalar(select(CrmLink).where(
            CrmLink.referral_id == referral_id, CrmLink.crm == self.crm, CrmLink.object == obj,
            CrmLink.record_id == record_id))
        if existing is not None:
            if existing.state != "active" and existing.state != "converted":
                existing.state = "active"
            return existing
        link = CrmLink(referral_id=referral_id, crm=self.crm, object=obj, record_id=record_id, role=role,
                       owner_id=owner_id, last_seen_at=self.now, created_at=self.now, updated_at=self.now)
        self.session.add(link)
        self.session.flush()
        self._links.pop((obj, record_id), None)
        self.audit(referral_id, "linked", role, obj=obj, record_id=record_id)
        return link

    def audit(self, referral_id: str | None, kind: str, reason: str, *, actor: str = "refsync",
              obj: str | None = None, record_id: str | None = None, detail: dict[str, Any] | None = None) -> None:
        self.session.add(AuditEvent(referral_id=referral_id, at=self.now, actor=actor, kind=kind, reason_code=reason,
                                    crm=self.crm, object=obj, record_id=record_id, detail=detail or {}))

    def transition(self, referral: Referral, to_status: str, at: datetime, owner_id: str | None,
                   detail: str | None = None) -> bool:
        """Move a referral to ``to_status`` as observed on the CRM; False when it is already there."""
        if referral.status == to_status:
            return False
        self.txn.add_transition(referral.id, referral.status, to_status, at, "crm_poll", crm=self.crm,
                                owner_id=owner_id, detail=detail)
        # The timeline (`referrals show`) carries every transition, and the partner hears of it.
        self.audit(referral.id, "status_changed", to_status, actor=f"crm:{self.crm}",
                   detail={"from": referral.status, "to": to_status, "at": at.isoformat(), "owner_id": owner_id,
                           **({"note": detail} if detail else {})})
        enqueue_status_notice(self.session, referral, referral.status, to_status, at, "crm_poll", self.now)
        referral.status = to_status
        referral.status_changed_at = at
        return True

    def last_crm_move(self, referral_id: str) -> datetime | None:
        """When (on this CRM's clock) the last status move this CRM's polls recorded happened."""
        found = self.session.scalar(select(func.max(StatusTransition.at)).where(
            StatusTransition.referral_id == referral_id, StatusTransition.source == "crm_poll",
            StatusTransition.crm == self.crm))
        return as_utc(found) if found is not None else None

    def last_move_crm(self, referral_id: str) -> str | None:
        """The CRM whose poll recorded the referral's latest status move (None: none did)."""
        return self.session.scalar(
            select(StatusTransition.crm).where(StatusTransition.referral_id == referral_id,
                                               StatusTransition.source == "crm_poll")
            .order_by(StatusTransition.id.desc()).limit(1))

    def outcome(self, referral: Referral, amount: float | None, currency: str | None, close_date: date | None,
                reason: str | None) -> None:
        referral.outcome_amount = Decimal(str(amount)) if amount is not None else None
        referral.outcome_currency = currency
        referral.outcome_close_date = close_date
        referral.outcome_reason = reason

    def pipeline(self, referral: Referral, amount: float | None, currency: str | None) -> None:
        """The open deal's amount and currency as last read (open pipeline value in reports)."""
        referral.pipeline_amount = Decimal(str(amount)) if amount is not None else None
        referral.pipeline_currency = currency

    def enqueue_restore(self, referral_id: str, obj: str, record_id: str, stamp: str) -> bool:
        key = f"restore:{self.crm}:{obj}:{record_id}:{stamp}"
        if self.session.scalar(select(SyncOp.id).where(SyncOp.dedupe_key == key)) is not None:
            return False
        self.session.add(SyncOp(kind="push", dedupe_key=key, referral_id=referral_id, crm=self.crm, object=obj,
                                record_id=record_id, payload={"reason": "restore"}, next_attempt_at=self.now,
                                created_at=self.now, updated_at=self.now))
        return True

    def enqueue_push(self, referral_id: str, reason: str) -> None:
        """A push of the referral's attribution to this CRM (e.g. onto a newly linked deal)."""
        key = f"push:{self.crm}:{referral_id}:{reason}"
        if self.session.scalar(select(SyncOp.id).where(SyncOp.dedupe_key == key)) is None:
            self.session.add(SyncOp(kind="push", dedupe_key=key, referral_id=referral_id, crm=self.crm,
                                    payload={"reason": reason}, next_attempt_at=self.now, created_at=self.now,
                                    updated_at=self.now))

    def rolling_out(self, referral_id: str) -> bool:
        """Whether a mapping change's re-push of this referral has not landed yet (state/rollout.py):
        its record holds the old mapping's values on purpose, which is nobody's overwrite."""
        return self.session.scalar(select(SyncOp.id).where(
            SyncOp.crm == self.crm, SyncOp.referral_id == referral_id, SyncOp.kind == "push",
            SyncOp.state.in_(("pending", "in_flight", "failed", "dead")),
            SyncOp.dedupe_key.like(f"push:{self.crm}:{referral_id}:mapping:%")).limit(1)) is not None

    def revision_pushed(self, referral_id: str, revision: int) -> bool:
        """Whether this referral's current revision has been pushed to this CRM: until then the
        record may hold what refsync wrote before (a commission approved since), nobody's overwrite."""
        return self.session.scalar(select(SyncOp.id).where(
            SyncOp.dedupe_key == f"push:{self.crm}:{referral_id}:{revision}", SyncOp.state == "done")) is not None

    def was_pushed(self, referral_id: str, record_id: str) -> bool:
        """Whether refsync already wrote this referral's attribution onto this record."""
        if (referral_id, record_id) in self._pushed:
            return True
        return self.session.scalar(select(AuditEvent.id).where(
            AuditEvent.referral_id == referral_id, AuditEvent.kind == "pushed", AuditEvent.crm == self.crm,
            AuditEvent.record_id == record_id).limit(1)) is not None

    def restores_since(self, record_id: str, field: str, window: timedelta) -> int:
        return self.session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.kind == "restore_planned", AuditEvent.crm == self.crm, AuditEvent.record_id == record_id,
            AuditEvent.reason_code == field, AuditEvent.at >= self.now - window)) or 0

    def raise_alert(self, kind: str, key: str, message: str, *, referral_id: str | None = None,
                    record_id: str | None = None) -> None:
        """Raise an alert, or count it again when the same problem is already open."""
        raise_alert(self.session, AlertSpec(kind, key, message, self.crm, referral_id, record_id), self.now)


@contextmanager
def observing(ledger: Ledger, crm: str) -> Iterator[Observation]:
    with ledger.transaction() as txn, txn.session.no_autoflush:
        observation = Observation(txn, crm)
        yield observation
        observation.land_sightings()

