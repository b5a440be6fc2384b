"""Push: claimed ops -> mapping -> diff against the CRM -> batched writes -> per-record outcomes.

The decisions (which fields to write to an existing record, whether a value already matches) are
pure functions at the top of this module; :func:`push_round` does the I/O through the adapter
contract and the ledger's outbox operations only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from refsync.adapters.base import (
    CrmAdapter,
    CrmRecord,
    FieldSchema,
    ObjectSchema,
    RecordError,
    RecordErrorKind,
    RecordUpdate,
    RecordUpsert,
    Stage,
    WriteResult,
)
from refsync.adapters.errors import AuthError, CrmConfigError, RateLimited, RetriableError
from refsync.connector import retry
from refsync.connector import schemas as schema_cache
from refsync.connector.budget import BudgetLimits, exhausted
from refsync.connector.logs import get_logger
from refsync.connector.mapping import LoadedMapping, MappingFile, ObjectMap, field_values, maps_commission
from refsync.state.commissions import add_deal_values
from refsync.state.ledger import Ledger
from refsync.state.observe import observing
from refsync.state.outbox import OpOutcome, land_outcomes, preview_pushes, push_inputs

log = get_logger("refsync.push")
T = TypeVar("T")
MAPPING_CHANGE = "mapping-change"  # state/rollout.ACTOR: the op reason of a mapping change's re-push


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def as_instant(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or len(value) < 19 or value[4] != "-":
        return None
    text = value.replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":  # Salesforce: +0000
        text = text[:-2] + ":" + text[-2:]
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _as_day(value: Any) -> datetime | None:
    """``YYYY-MM-DD`` (how HubSpot returns a ``date`` property) as midnight UTC."""
    if not isinstance(value, str) or len(value) != 10 or value[4] != "-":
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        return None


def _as_epoch_ms(value: Any) -> datetime | None:
    """Epoch milliseconds (an ``epoch_ms`` transform, or what HubSpot took as a timestamp)."""
    text = str(value)
    if not text.isdigit() or not 11 <= len(text) <= 14:
        return None
    return datetime.fromtimestamp(int(text) / 1000, UTC)


def as_moment(value: Any) -> datetime | None:
    """A CRM timestamp, ISO 8601 (any offset form) or epoch milliseconds, as an aware datetime."""
    moment = as_instant(value) or _as_epoch_ms(value)
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def same_value(ours: Any, theirs: Any) -> bool:
    """Whether the CRM already holds our value: blanks as equal, times as instants in whichever
    form we wrote them (ISO, ``YYYY-MM-DD``, epoch ms) against the form the CRM returns (HubSpot
    v3 returns datetimes as ISO 8601 and dates as ``YYYY-MM-DD``; crm-api/hubspot/README.md)."""
    if _blank(ours) and _blank(theirs):
        return True
    if ours == theirs or str(ours) == str(theirs):
        return True
    # An amount: 12750.0 against HubSpot's "12750" (v3 returns every property value as a string:
    # SimplePublicObject.properties is additionalProperties {type: string}, crm-api/hubspot/Deals_r424_v3_deals.json).
    if isinstance(ours, float) and not _blank(theirs):
        try:
            return Decimal(str(ours)) == Decimal(str(theirs))
        except InvalidOperation:
            return False
    a, b = as_instant(ours) or _as_day(ours), as_instant(theirs) or _as_day(theirs)
    if a is None and b is not None:
        a = _as_epoch_ms(ours)
    elif b is None and a is not None:
        b = _as_epoch_ms(theirs)
    return a is not None and b is not None and a == b


def changes_for_existing(obj: ObjectMap, desired: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """Fields to write to a record that exists: protected ones that differ, fill_blank ones still empty."""
    changes: dict[str, Any] = {}
    for name, mapped in obj.fields.items():
        if name not in desired or _blank(desired[name]):
            continue
        if mapped.rule == "protect" and not same_value(desired[name], current.get(name)):
            changes[name] = desired[name]
        elif mapped.rule == "fill_blank" and _blank(current.get(name)):
            changes[name] = desired[name]
    return changes


def _whole_batch_refused(results: Sequence[WriteResult]) -> bool:
    """Whether the CRM failed a batch as a whole, for something only some of its records cause: a
    conflict (HubSpot answers some batch conflicts with one 409) or a value it could not parse
    (Salesforce JSON_PARSER_ERROR, ``RecordError.whole_request``)."""
    errors = [r.error for r in results]
    if any(e is None for e in errors):
        return False
    return all(e is not None and e.kind is RecordErrorKind.CONFLICT for e in errors) or all(
        e is not None and e.whole_request for e in errors)


def write_with_split(write: Callable[[Sequence[T]], list[WriteResult]], items: Sequence[T]) -> list[WriteResult]:
    """Write a batch; when the CRM fails the whole batch for something one record causes, split it
    until only the offending records are held back (each gets the CRM's error; the rest land)."""
    results = write(items)
    if len(items) <= 1 or not _whole_batch_refused(results):
        return results
    middle = len(items) // 2
    return write_with_split(write, items[:middle]) + write_with_split(write, items[middle:])


@dataclass
class CrmTarget:
    """One configured CRM: its adapter, its mapping and the schemas of the mapped objects.

    A target is *not ready* (``not_ready`` holds why) while its CRM is down, refuses our
    credentials or its schema cannot be read: it is left waiting and every other CRM syncs
    (connector/crms.ensure_ready tries again before each job). Schemas and stages come from the
    ledger's cache (connector/schemas) and are read again when stale or when a call fails on them."""

    name: str
    adapter: CrmAdapter
    mapping: MappingFile
    schemas: dict[str, ObjectSchema]
    paused_until: datetime | None = None
    stages: list[Stage] | None = None  # the deal stages (cached in the ledger; they change rarely)
    limits: BudgetLimits = field(default_factory=BudgetLimits)
    calls_before_run: int = 0  # API calls recorded today before this run started
    calls_at_run_start: int = 0  # the adapter's own count when this run started
    loaded: LoadedMapping | None = None  # the mapping file, for problems with file and line
    not_ready: str | None = None  # why this CRM waits (None: ready)
    not_ready_since: datetime | None = None
    misconfigured: bool = False  # not ready because the CRM refused our credentials or setup: fix the config
    schema_read_at: datetime | None = None  # when the schemas held were read from the CRM
    schema_refresh: timedelta = timedelta(hours=1)
    seen: dict[str, dict[str, FieldSchema]] = field(default_factory=dict)  # object -> mapped fields seen valid
    drift: set[tuple[str, str]] = field(default_factory=set)  # (object, field) left out: drifted
    # The daemon runs push, poll and reconcile in scheduler threads at the same time. A target is
    # not safe to share between them (paused_until, the run's call counts, drift notes, readiness,
    # schema refreshes), so they serialise per CRM: whoever works with a CRM holds its lock
    # (connector/daemon.py). One CRM's work never waits for another's, nor for webhooks.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def ready(self) -> bool:
        return self.not_ready is None

    def paused(self, now: datetime) -> bool:
        """Whether a rate limit told us to leave this CRM alone until later (no push, no poll)."""
        return self.paused_until is not None and now < self.paused_until

    def pause(self, exc: RateLimited, now: datetime) -> float:
        """A rate limit too long to wait out in the call: leave this CRM alone (no push, no poll)
        for as long as it asks (a minute when it does not say); returns the seconds."""
        wait = exc.retry_after if exc.retry_after is not None else 60.0
        self.paused_until = now + timedelta(seconds=wait)
        log.warning("rate limited; pausing this CRM", crm=self.name, seconds=wait)
        return wait

    def fields_of(self, obj: ObjectMap) -> list[str]:
        """The mapped fields of ``obj`` the CRM still has (reads naming a vanished field would fail)."""
        return self.present(obj.name, obj.fields)

    def present(self, object_name: str, names: Iterable[str]) -> list[str]:
        """Those of ``names`` the object's schema has (all of them while the schema is unknown): an
        org without a field refsync can do without (Opportunity.ContactId) must not fail every read."""
        schema = self.schemas.get(object_name)
        return [f for f in dict.fromkeys(names) if schema is None or f in schema.fields]

    def start_run(self, recorded_today: int) -> None:
        self.calls_before_run = recorded_today
        self.calls_at_run_start = self.adapter.budget().total_calls

    def over_budget(self) -> str | None:
        """Why this CRM must not be called again today, or None."""
        budget = self.adapter.budget()
        today = self.calls_before_run + budget.total_calls - self.calls_at_run_start
        return exhausted(self.limits, today, budget.used_today, budget.limit_today)


def each_locked(targets: Mapping[str, CrmTarget]) -> Iterator[tuple[str, CrmTarget]]:
    """The targets one by one, each held under its :attr:`CrmTarget.lock` while the caller's loop
    body runs for it (released when the loop moves on, breaks or raises: the generator closes)."""
    for name, target in targets.items():
        with target.lock:
            yield name, target


@dataclass
class PushCounts:
    pushed: int = 0
    created: int = 0
    unchanged: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    calls: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: PushCounts) -> None:
        for name in ("pushed", "created", "unchanged", "failed", "dead", "released", "calls"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors


@dataclass
class _Work:
    op: dict[str, Any]
    referral: dict[str, Any]
    outcome: OpOutcome
    # Other ops of the same referral claimed in this batch: they share this op's outcome (a batch
    # carries each record once: Salesforce fails an external id sent twice, DUPLICATE_EXTERNAL_ID).
    siblings: list[OpOutcome] = field(default_factory=list)
    converted_leads: list[str] = field(default_factory=list)  # converted leads this push followed
    poison: RecordError | None = None  # this record made the CRM refuse a whole request (a value)
    loss_accepted: bool = False  # its record is gone and a person accepted it: nothing to write
    # Every op of this work is on its first claim, none failed before (``attempts`` counts claims;
    # a take-back or a lease run out leaves it counted): no earlier push of this referral can have
    # sent a create whose answer was lost, so no record carries its id yet (_push_unlinked).
    first_try: bool = False


@dataclass(frozen=True)
class _Person:
    """Where a prospect already lives as a contact: a converted lead's contact (and opportunity), a
    Contact found by the match keys, or the record a duplicate rule named."""

    work: _Work
    contact_id: str
    opportunity_id: str | None = None


def _fail(work: _Work, kind: str, code: str | None, message: str, now: datetime, max_attempts: int,
          retry_after: float | None = None) -> None:
    decision = retry.decide(kind, work.op["attempts"], max_attempts, now, retry_after)
    work.outcome.state = "failed" if decision.retry else "dead"
    work.outcome.next_attempt_at = decision.at
    work.outcome.error_class, work.outcome.error_code, work.outcome.error_message = kind, code, message


def _apply(work: _Work, result: WriteResult, obj: ObjectMap, values: dict[str, Any], now: datetime,
           max_attempts: int) -> None:
    if result.ok:
        if result.record_id:
            # the first record written leads the links: the audit event names it, and the poll guards
            # what was pushed onto it (a converted lead's opportunity, not the contact linked before it)
            link = (obj.name, result.record_id, obj.role)
            if values and not work.outcome.written:
                work.outcome.links.insert(0, link)
            else:
                work.outcome.links.append(link)
        work.outcome.written.update(values)
        work.outcome.created = work.outcome.created or result.created
        return
    error = result.error
    assert error is not None
    if error.kind is RecordErrorKind.CONVERTED:
        # Converted since we looked (CANNOT_UPDATE_CONVERTED_LEAD): the next attempt finds the lead
        # converted and follows it to its contact and opportunity.
        _fail(work, "transient", error.code, f"{obj.name} was converted meanwhile: {error.message}", now,
              max_attempts)
        return
    if error.whole_request:
        work.poison = error
    _fail(work, error.kind.value, error.code, error.message, now, max_attempts)


def _plan(target: CrmTarget, works: list[_Work]) -> tuple[
        dict[str, list[tuple[_Work, str]]], list[_Work]]:
    """Split work into (object -> [(work, linked record id)]) and referrals without a lead record.

    A referral already linked to a contact (it was a customer, or its lead was converted) keeps
    that link in its outcome: nothing is written to a contact, the link is the record of it."""
    linked: dict[str, list[tuple[_Work, str]]] = {}
    unlinked: list[_Work] = []
    mapping = target.mapping
    names = {mapping.lead.name, mapping.deal.name}
    people = set(mapping.match_objects()) - names
    for work in works:
        links = work.referral["links"]
        for link in links:
            if link["state"] != "active":
                continue
            if link["object"] in names:
                linked.setdefault(link["object"], []).append((work, link["record_id"]))
            elif link["object"] in people:
                work.outcome.links.append((link["object"], link["record_id"], link["role"]))
        # A converted lead is not written any more (its opportunity is), nor looked for again; a
        # contact without an opportunity yet is looked at again (one may have been opened).
        has_lead = any(lk["object"] == mapping.lead.name and lk["state"] not in ("deleted", "lost") for lk in links)
        has_deal = any(lk["object"] == mapping.deal.name and lk["state"] == "active" for lk in links)
        deleted = [lk for lk in links if lk["object"] in names and lk["state"] == "deleted"]
        if deleted and not has_lead and not has_deal and not work.outcome.links:
            # Someone deleted its record in the CRM (the poll raised orphaned_link): refsync never
            # re-creates it behind their back; the op waits, dead, for a restore and `refsync retry`.
            work.outcome.state, work.outcome.error_class = "dead", "deleted"
            work.outcome.error_code = "ENTITY_IS_DELETED"
            work.outcome.error_message = (f"{deleted[0]['object']} {deleted[0]['record_id']} was deleted in "
                                          f"{target.name}; restore it from the recycle bin, then `refsync retry`")
        elif not has_lead and not has_deal:
            # A record whose loss a person accepted (`refsync alerts accept`) is not created again.
            work.loss_accepted = any(lk["object"] in names and lk["state"] == "lost" for lk in links)
            if not work.loss_accepted:
                unlinked.append(work)
    return linked, unlinked


def _push_linked(target: CrmTarget, obj: ObjectMap, pairs: list[tuple[_Work, str]], now: datetime,
                 max_attempts: int) -> None:
    schema = target.schemas.get(obj.name)
    fields = target.fields_of(obj)
    current = target.adapter.read(obj.name, [rid for _, rid in pairs], fields)
    updates: list[tuple[_Work, RecordUpdate]] = []
    for work, record_id in pairs:
        record = current.get(record_id)
        if record is None:
            # The poll marks the link deleted and raises orphaned_link; this op cannot write anything.
            _fail(work, "deleted", "ENTITY_IS_DELETED", f"{obj.name} {record_id} no longer exists in {target.name}",
                  now, max_attempts)
            continue
        _attach(work, obj, schema, record, updates)
    _write_updates(target, obj, updates, now, max_attempts)


def _attach(work: _Work, obj: ObjectMap, schema: ObjectSchema | None, record: CrmRecord,
            updates: list[tuple[_Work, RecordUpdate]]) -> None:
    """Give an existing record the referral's attribution: an update of what differs, or just the link."""
    desired = field_values(obj, work.referral, schema, rules=("protect", "fill_blank"))
    changes = changes_for_existing(obj, desired, record.fields)
    if changes:
        updates.append((work, RecordUpdate(record.id, changes)))
    else:
        work.outcome.links.append((obj.name, record.id, obj.role))


def _write_updates(target: CrmTarget, obj: ObjectMap, updates: list[tuple[_Work, RecordUpdate]], now: datetime,
                   max_attempts: int) -> None:
    for start in range(0, len(updates), target.adapter.max_batch):
        chunk = updates[start:start + target.adapter.max_batch]
        results = write_with_split(lambda items: target.adapter.update(obj.name, items), [u for _, u in chunk])
        for (work, upd), result in zip(chunk, results, strict=True):
            _apply(work, result, obj, upd.values, now, max_attempts)


def _best_record(obj: ObjectMap, work: _Work, records: list[CrmRecord]) -> CrmRecord:
    """Among the lead-like records found for a referral: the one carrying its id, else a live
    (not converted) one, else a converted one (to follow)."""
    def rank(record: CrmRecord) -> tuple[bool, bool]:
        return (record.fields.get(obj.id_field) != work.referral["id"], bool(record.fields.get("IsConverted")))
    return min(records, key=rank)


def _place(target: CrmTarget, work: _Work, records: list[CrmRecord], updates: list[tuple[_Work, RecordUpdate]],
           people: list[_Person]) -> bool:
    """Give a referral the existing record it matched; False when ``records`` holds none to use."""
    obj = target.mapping.lead
    if not records:
        return False
    record = _best_record(obj, work, records) if records[0].object == obj.name else records[0]
    if record.object != obj.name:  # a Contact: the person is a customer already
        people.append(_Person(work, record.id))
        return True
    if not record.fields.get("IsConverted"):
        _attach(work, obj, target.schemas.get(obj.name), record, updates)
        return True
    # A converted Lead stays queryable and refuses writes (CANNOT_UPDATE_CONVERTED_LEAD): the
    # person lives on as ConvertedContactId, with ConvertedOpportunityId when one was opened.
    contact = record.fields.get("ConvertedContactId")
    if not contact:
        return False
    work.converted_leads.append(record.id)
    opportunity = record.fields.get("ConvertedOpportunityId")
    people.append(_Person(work, str(contact), str(opportunity) if opportunity else None))
    return True


def _source_of(obj: ObjectMap, key: str) -> str:
    return obj.fields[key].source if key in obj.fields else "prospect_email"


def _push_unlinked(target: CrmTarget, works: list[_Work], now: datetime, max_attempts: int) -> None:
    """Referrals without a lead record: find the prospect (match keys over the mapping's match
    objects, then a record carrying the referral id), else create a lead; follow what was found
    or what a duplicate rule named to its contact and open opportunity."""
    obj = target.mapping.lead
    fields = target.fields_of(obj)
    remaining = list(works)
    updates: list[tuple[_Work, RecordUpdate]] = []
    people: list[_Person] = []
    for key in obj.match_keys:
        source = _source_of(obj, key)
        for name in target.mapping.match_objects():
            values = sorted({str(w.referral[source]) for w in remaining if w.referral.get(source)})
            if not values:
                break
            found = target.adapter.find(name, key, values, fields if name == obj.name else [])
            found_lower = {k.lower(): v for k, v in found.items()}
            remaining = [w for w in remaining if not _place(
                target, w, found_lower.get(str(w.referral.get(source) or "").lower(), []), updates, people)]
    retried = [w for w in remaining if not w.first_try]
    if retried:
        # A create whose answer was lost carries our id already: an upsert would overwrite its
        # create_only fields (a rep may have edited them since), so it is updated like any match.
        # Only a referral whose push was tried before can have one: a first push asks nothing more
        # (a quarter of a first cycle's HubSpot calls). Were a record to carry the id all the same
        # (a ledger restored from an old backup), the create is an upsert on that id, which
        # updates it (Salesforce ``PATCH composite/sobjects/{Object}/{ExternalIdField}``,
        # crm-api/salesforce/README.md; HubSpot ``batch/upsert`` by ``idProperty``,
        # crm-api/hubspot/Contacts_r424_v3_contacts.json): never a duplicate.
        found = target.adapter.find(obj.name, obj.id_field, [w.referral["id"] for w in retried], fields)
        remaining = [w for w in remaining
                     if w.first_try or not _place(target, w, found.get(w.referral["id"], []), updates, people)]
    blocked: list[tuple[_Work, RecordError]] = []
    if obj.create:
        blocked = _create(target, remaining, now, max_attempts)
    if blocked:
        _place_duplicates(target, blocked, updates, people, now, max_attempts)
    _write_updates(target, obj, updates, now, max_attempts)
    if people:
        _follow_people(target, people, now, max_attempts)


def _create(target: CrmTarget, works: list[_Work], now: datetime, max_attempts: int) -> list[tuple[_Work, RecordError]]:
    """Create lead records; returns the creates a duplicate rule blocked, with the CRM's error."""
    obj = target.mapping.lead
    schema = target.schemas.get(obj.name)
    blocked: list[tuple[_Work, RecordError]] = []
    creates = [(w, RecordUpsert(w.referral["id"], field_values(obj, w.referral, schema))) for w in works]
    for start in range(0, len(creates), target.adapter.max_batch):
        chunk = creates[start:start + target.adapter.max_batch]
        results = write_with_split(lambda items: target.adapter.upsert(
            obj.name, obj.id_field, items, save_duplicates=obj.allow_duplicate_save), [c for _, c in chunk])
        for (work, ups), result in zip(chunk, results, strict=True):
            if result.error is not None and result.error.kind is RecordErrorKind.DUPLICATE:
                blocked.append((work, result.error))
            else:
                _apply(work, result, obj, ups.values, now, max_attempts)
    return blocked


def _place_duplicates(target: CrmTarget, blocked: list[tuple[_Work, RecordError]],
                      updates: list[tuple[_Work, RecordUpdate]], people: list[_Person], now: datetime,
                      max_attempts: int) -> None:
    """A create the duplicate rule blocked (DUPLICATES_DETECTED) links the referral to the record
    the rule named, as a match would have; without a name to follow it is a dead op with an alert."""
    obj = target.mapping.lead
    lead_ids = sorted({m.id for _, error in blocked for m in error.matches if m.object == obj.name})
    leads = target.adapter.find(obj.name, "Id", lead_ids, target.fields_of(obj)) if lead_ids else {}
    by_id = {r.id: r for records in leads.values() for r in records}
    for work, error in blocked:
        records = [by_id[m.id] for m in error.matches if m.id in by_id]
        contacts = [m.id for m in error.matches if m.object != obj.name]
        if _place(target, work, records, updates, people):
            continue
        if contacts:
            people.append(_Person(work, contacts[0]))
            continue
        _fail(work, "rejected", error.code, f"{target.name}'s duplicate rule refused a new {obj.name} and named no "
              f"record refsync can follow ({error.message}); merge the duplicates, or set "
              "lead.allow_duplicate_save = true in the mapping", now, max_attempts)


def _open_for(deal: ObjectMap, record: CrmRecord, referral: Mapping[str, Any]) -> bool:
    """Whether an opportunity can take this referral's attribution: open, and not another referral's."""
    holder = record.fields.get(deal.id_field)
    return not record.fields.get("IsClosed") and (_blank(holder) or holder == referral["id"])


def _follow_people(target: CrmTarget, people: list[_Person], now: datetime, max_attempts: int) -> None:
    """Link each referral to its contact, and to the contact's open opportunity when there is one
    (which receives the attribution under the usual rules). Without one the referral waits: the poll
    links the next opportunity opened on that contact."""
    deal = target.mapping.deal
    fields = target.present(deal.name, [*deal.fields, "IsClosed", "CreatedDate", "ContactId"])
    # Opportunity.ContactId: the opportunity's primary contact (recorded Opportunity describe:
    # reference to Contact, filterable); lead conversion sets it to the converted contact.
    by_contact = target.adapter.find(deal.name, "ContactId", sorted({p.contact_id for p in people}), fields) \
        if "ContactId" in fields else {}
    known = {r.id: r for records in by_contact.values() for r in records}
    missing = sorted({p.opportunity_id for p in people if p.opportunity_id and p.opportunity_id not in known})
    if missing:
        known.update({r.id: r for records in target.adapter.find(deal.name, "Id", missing, fields).values()
                      for r in records})
    updates: list[tuple[_Work, RecordUpdate]] = []
    schema = target.schemas.get(deal.name)
    for person in people:
        person.work.outcome.links.append(("Contact", person.contact_id, "contact"))
        newest_first = sorted(by_contact.get(person.contact_id, []), key=lambda r: str(r.fields.get("CreatedDate")),
                              reverse=True)
        candidates = [known[person.opportunity_id]] if person.opportunity_id in known else []
        opportunity = next((r for r in [*candidates, *newest_first] if _open_for(deal, r, person.work.referral)),
                           None)
        if opportunity is not None:
            _attach(person.work, deal, schema, opportunity, updates)
    _write_updates(target, deal, updates, now, max_attempts)


def _push_works(target: CrmTarget, works: list[_Work], now: datetime, max_attempts: int) -> None:
    linked, unlinked = _plan(target, works)
    for obj in target.mapping.objects():
        if linked.get(obj.name):
            _push_linked(target, obj, linked[obj.name], now, max_attempts)
    if unlinked:
        _push_unlinked(target, unlinked, now, max_attempts)


def one_work_per_referral(ops: Sequence[dict[str, Any]], inputs: Mapping[str, dict[str, Any]]) -> list[_Work]:
    """One unit of work per referral: ops of one referral claimed together (two revisions, a push
    and a restore) push its current attribution once, and every one of them gets that outcome."""
    works: dict[str, _Work] = {}
    for op in ops:
        referral_id = op["referral_id"]
        if referral_id not in inputs:
            continue
        first_try = op.get("attempts") == 1 and not op.get("last_error")
        if referral_id in works:
            works[referral_id].siblings.append(OpOutcome(op["id"], referral_id, "done"))
            works[referral_id].first_try &= first_try
        else:
            works[referral_id] = _Work(op, inputs[referral_id], OpOutcome(op["id"], referral_id, "done"),
                                       first_try=first_try)
        payload = op.get("payload") or {}
        if payload.get("reason") == MAPPING_CHANGE:
            # a mapping change's planned re-push: its writes are recorded as that, with the mapping's hash
            outcome = works[referral_id].outcome
            outcome.actor, outcome.note = MAPPING_CHANGE, {"mapping_hash": payload.get("mapping_hash")}
    return list(works.values())


UNLINKED_CODES = frozenset({"NOT_LINKED", "ENTITY_IS_DELETED", "CANNOT_UPDATE_CONVERTED_LEAD", "DUPLICATES_DETECTED"})


def settle(work: _Work, now: datetime, max_attempts: int) -> None:
    """The op's final outcome, shared by its siblings. An op never ends ``done`` without the
    record it wrote (or found) being linked: that would lose the referral without a trace."""
    outcome = work.outcome
    outcome.links = list(dict.fromkeys(outcome.links))
    if outcome.state == "done" and not outcome.links and not work.loss_accepted:
        _fail(work, "unlinked", "NOT_LINKED", outcome.error_message or "the push ended without a CRM record to link "
              "the referral to", now, max_attempts)
    for sibling in work.siblings:
        sibling.state, sibling.next_attempt_at = outcome.state, outcome.next_attempt_at
        sibling.error_class, sibling.error_code = outcome.error_class, outcome.error_code
        sibling.error_message = outcome.error_message
        sibling.unchanged = True  # the links, fields and audit event land once, with the first op


def _record_follow_ups(ledger: Ledger, target: CrmTarget, works: list[_Work]) -> None:
    """What landing an outcome does not record: converted leads the push followed (linked as
    ``converted``), and an alert for each referral a push could not link."""
    followed = [w for w in works if w.outcome.state == "done" and w.converted_leads]
    lost = [w for w in works if w.outcome.state in ("failed", "dead") and w.outcome.error_code in UNLINKED_CODES]
    poisoned = [w for w in works if w.outcome.state in ("failed", "dead") and w.poison is not None]
    if not followed and not lost and not poisoned:
        return
    lead = target.mapping.lead
    with observing(ledger, target.name) as ob:
        for work in followed:
            referral_id = work.referral["id"]
            for lead_id in work.converted_leads:
                ob.link(referral_id, lead.name, lead_id, lead.role).state = "converted"
                ob.audit(referral_id, "lead_converted", "followed_conversion", obj=lead.name, record_id=lead_id,
                         detail={"links": [list(link) for link in work.outcome.links]})
            log.info("prospect's lead was converted; followed it", referral_id=referral_id, crm=target.name,
                     converted_leads=work.converted_leads, links=[list(link) for link in work.outcome.links])
        for work in lost:
            outcome = work.outcome
            ob.raise_alert(
                "push_unlinked", f"push_unlinked:{target.name}:{outcome.referral_id}",
                f"referral {outcome.referral_id} could not be linked to a {target.name} record ({outcome.error_code}: "
                f"{outcome.error_message}); refsync " + ("retries it" if outcome.state == "failed" else
                                                          "gave up: fix the cause, then `refsync ops retry`") + ".",
                referral_id=outcome.referral_id)
        for work in poisoned:
            # One record whose value made the CRM refuse the whole request: the batch was split
            # until it was found, every other record landed; it waits, dead, for a fix.
            outcome = work.outcome
            ob.raise_alert(
                "poison_record", f"poison_record:{target.name}:{outcome.referral_id}",
                f"{target.name} refused every request carrying referral {outcome.referral_id} ({outcome.error_code}: "
                f"{outcome.error_message}); the other referrals of its batch were written. Correct the referral's "
                "values (e.g. its submitted_at), then `refsync retry`.", referral_id=outcome.referral_id)


def note_drift(ledger: Ledger, target: CrmTarget) -> bool:
    """A call failed on the schema (a field gone or read-only): read the schemas again at once,
    leave drifted fields out with a ``mapping_drift`` alert each (connector/schemas). True when
    some field is drifted (so the work can go ahead without it)."""
    schema_cache.load(ledger, target, target.schema_refresh, force=True)
    problems = schema_cache.reckon(ledger, target)
    if problems:
        log.error("mapping no longer matches the CRM", crm=target.name, problems=problems)
    return bool(target.drift)


def push_round(ledger: Ledger, target: CrmTarget, owner: str, *, limit: int, lease: timedelta,
               max_attempts: int, dry_run: bool = False) -> PushCounts:
    """Claim up to ``limit`` due push ops for one CRM and push them; returns what happened.

    ``dry_run``: look at the ops that are due without claiming them and land nothing (the target's
    adapter is then a :class:`connector.dryrun.DryRunAdapter`, which sends no write)."""
    counts = PushCounts()
    now = ledger.clock()
    if target.paused(now):
        return counts
    reason = target.over_budget()
    if reason:
        counts.errors.append(f"API budget reached: {reason}")
        target.paused_until = now + timedelta(minutes=15)
        with observing(ledger, target.name) as ob:
            ob.raise_alert("api_budget_exhausted", f"api_budget_exhausted:{target.name}",
                           f"{target.name}: {reason}. Writes and polls wait; nothing is lost.")
        log.warning("API budget reached; this CRM waits", crm=target.name, reason=reason)
        return counts
    if dry_run:
        ops = preview_pushes(ledger, target.name, limit)
    else:
        ops = [op for op in ledger.claim_ops(owner, target.name, limit, lease) if op["kind"] == "push"]
    if not ops:
        return counts
    inputs = push_inputs(ledger, [op["referral_id"] for op in ops], target.name)
    if maps_commission(target.mapping):  # the deal shows the referral's commission too
        add_deal_values(ledger, inputs)
    works = one_work_per_referral(ops, inputs)
    # A referral that lost credit (a duplicate, or merged into another) writes nothing any more:
    # its queued ops end here, so they can never overwrite the credited referral's attribution.
    idle = [w for w in works if not w.referral["credited"]]
    works = [w for w in works if w.referral["credited"]]
    before = target.adapter.budget().total_calls
    try:
        try:
            _push_works(target, works, now, max_attempts)
        except CrmConfigError:
            # A mapped field may have vanished while we run: re-read the schemas, leave drifted
            # fields out with an alert, and try once more; any other config error stands.
            if not note_drift(ledger, target):
                raise
            pending = [w for w in works if w.outcome.state == "done" and not w.outcome.links]
            _push_works(target, pending, now, max_attempts)
    except RateLimited as exc:
        target.pause(exc, now)
        for work in works:
            if work.outcome.state == "done" and not work.outcome.links:
                work.outcome.state, work.outcome.next_attempt_at = "released", target.paused_until
    except RetriableError as exc:
        for work in works:
            if work.outcome.state == "done" and not work.outcome.links:
                _fail(work, "transient", exc.code, str(exc), now, max_attempts, exc.retry_after)
    except (AuthError, CrmConfigError) as exc:
        # The CRM's setup, not these records: released un-counted (an outage of credentials or
        # mapping must not kill ops), but each op keeps why it waits (`refsync ops` shows it).
        kind = "auth" if isinstance(exc, AuthError) else "config"
        for work in works:
            if work.outcome.state == "done" and not work.outcome.links:
                work.outcome.state, work.outcome.next_attempt_at = "released", now + timedelta(minutes=5)
                work.outcome.error_class, work.outcome.error_code = kind, exc.code
                work.outcome.error_message = str(exc)
        if not dry_run:
            land_outcomes(ledger, target.name, owner, [w.outcome for w in works])
        raise exc
    for work in works:
        settle(work, now, max_attempts)
    for work in works + idle:
        work.outcome.unchanged = work.outcome.state == "done" and not work.outcome.written
    if not dry_run:
        land_outcomes(ledger, target.name, owner, [o for w in works + idle for o in (w.outcome, *w.siblings)])
        _record_follow_ups(ledger, target, works)
        for work in works:
            outcome = work.outcome
            if outcome.state in ("failed", "dead"):
                (log.error if outcome.state == "dead" else log.warning)(
                    "push " + ("gave up" if outcome.state == "dead" else "will retry"), referral_id=outcome.referral_id,
                    crm=target.name, op_id=outcome.op_id, code=outcome.error_code, error=outcome.error_message,
                    next_attempt_at=outcome.next_attempt_at.isoformat() if outcome.next_attempt_at else None)
    counts.calls = target.adapter.budget().total_calls - before
    for outcome in [o for w in works for o in (w.outcome, *w.siblings)]:
        if outcome.state == "done":
            counts.pushed += 1
            counts.created += outcome.created
            counts.unchanged += not outcome.written
        else:
            setattr(counts, outcome.state, getattr(counts, outcome.state) + 1)
    return counts
