"""Push: claimed ops -> mapping -> diff against the CRM -> batched writes -> per-record outcomes.

The decisions (which fields to write to an existing record, whether a value already matches) are
pure functions at the top of this module; :func:`push_round` does the I/O through the adapter
contract and the ledger's outbox operations only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from adapters.base import (
    CrmAdapter,
    CrmRecord,
    FieldSchema,
    ObjectSchema,
    RecordErrorKind,
    RecordUpdate,
    RecordUpsert,
    Stage,
    WriteResult,
)
from adapters.errors import AuthError, CrmConfigError, RateLimited, RetriableError
from connector import retry
from connector import schemas as schema_cache
from connector.budget import BudgetLimits, exhausted
from connector.logs import get_logger
from connector.mapping import LoadedMapping, MappingFile, ObjectMap, field_values
from state.ledger import Ledger
from state.observe import observing
from state.outbox import OpOutcome, land_outcomes, preview_pushes, push_inputs

log = get_logger("refsync.push")
T = TypeVar("T")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _as_instant(value: Any) -> datetime | None:
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


def same_value(ours: Any, theirs: Any) -> bool:
    """Whether the CRM already holds our value (times compared as instants, blanks as equal)."""
    if _blank(ours) and _blank(theirs):
        return True
    if ours == theirs or str(ours) == str(theirs):
        return True
    a, b = _as_instant(ours), _as_instant(theirs)
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


def write_with_split(write: Callable[[Sequence[T]], list[WriteResult]], items: Sequence[T]) -> list[WriteResult]:
    """Write a batch; when the CRM fails the whole batch for a conflict, split it until only the
    conflicting records are held back (HubSpot answers some batch conflicts with one 409)."""
    results = write(items)
    whole_batch_conflict = len(items) > 1 and all(
        r.error is not None and r.error.kind is RecordErrorKind.CONFLICT for r in results)
    if not whole_batch_conflict:
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
    schema_read_at: datetime | None = None  # when the schemas held were read from the CRM
    schema_refresh: timedelta = timedelta(hours=1)
    seen: dict[str, dict[str, FieldSchema]] = field(default_factory=dict)  # object -> mapped fields seen valid
    drift: set[tuple[str, str]] = field(default_factory=set)  # (object, field) left out: drifted
    # The daemon's push and poll jobs may run at once in threads: readiness and schema refreshes
    # of one target happen under this lock (the adapters themselves are thread-safe).
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def ready(self) -> bool:
        return self.not_ready is None

    def paused(self, now: datetime) -> bool:
        """Whether a rate limit told us to leave this CRM alone until later (no push, no poll)."""
        return self.paused_until is not None and now < self.paused_until

    def fields_of(self, obj: ObjectMap) -> list[str]:
        """The mapped fields of ``obj`` the CRM still has (reads naming a vanished field would fail)."""
        schema = self.schemas.get(obj.name)
        return [f for f in obj.fields if schema is None or f in schema.fields]

    def start_run(self, recorded_today: int) -> None:
        self.calls_before_run = recorded_today
        self.calls_at_run_start = self.adapter.budget().total_calls

    def over_budget(self) -> str | None:
        """Why this CRM must not be called again today, or None."""
        budget = self.adapter.budget()
        today = self.calls_before_run + budget.total_calls - self.calls_at_run_start
        return exhausted(self.limits, today, budget.used_today, budget.limit_today)


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
            work.outcome.links.append((obj.name, result.record_id, obj.role))
        work.outcome.written.update(values)
        work.outcome.created = work.outcome.created or result.created
        return
    error = result.error
    assert error is not None
    if error.kind in (RecordErrorKind.CONVERTED, RecordErrorKind.DELETED):
        # Not a failure of this push: the poll follows the conversion or records the deletion.
        work.outcome.error_class, work.outcome.error_code = error.kind.value, error.code
        work.outcome.error_message = error.message
        return
    _fail(work, error.kind.value, error.code, error.message, now, max_attempts)


def _plan(target: CrmTarget, works: list[_Work]) -> tuple[
        dict[str, list[tuple[_Work, str]]], list[_Work]]:
    """Split work into (object -> [(work, linked record id)]) and referrals without a lead record."""
    linked: dict[str, list[tuple[_Work, str]]] = {}
    unlinked: list[_Work] = []
    names = {target.mapping.lead.name, target.mapping.deal.name}
    for work in works:
        links = [lk for lk in work.referral["links"] if lk["object"] in names]
        for link in links:
            if link["state"] == "active":
                linked.setdefault(link["object"], []).append((work, link["record_id"]))
        # A converted lead is not written any more (its opportunity is), nor looked for again.
        if not any(lk["object"] == target.mapping.lead.name for lk in links):
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
            work.outcome.error_class, work.outcome.error_code = "deleted", "ENTITY_IS_DELETED"
            work.outcome.error_message = f"{obj.name} {record_id} no longer exists in {target.name}"
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


def _push_unlinked(target: CrmTarget, works: list[_Work], now: datetime, max_attempts: int) -> None:
    obj = target.mapping.lead
    schema = target.schemas.get(obj.name)
    fields = target.fields_of(obj)
    remaining = list(works)
    updates: list[tuple[_Work, RecordUpdate]] = []
    for key in obj.match_keys:
        source = obj.fields[key].source if key in obj.fields else "prospect_email"
        values = sorted({str(w.referral[source]) for w in remaining if w.referral.get(source)})
        if not values:
            continue
        found = target.adapter.find(obj.name, key, values, fields)
        found_lower = {k.lower(): v for k, v in found.items()}
        still: list[_Work] = []
        for work in remaining:
            value = work.referral.get(source)
            records = found_lower.get(str(value).lower(), []) if value else []
            if not records:
                still.append(work)
                continue
            record = next((r for r in records if r.fields.get(obj.id_field) == work.referral["id"]), records[0])
            _attach(work, obj, schema, record, updates)
        remaining = still
    _write_updates(target, obj, updates, now, max_attempts)
    if not obj.create:
        return
    creates = [(w, RecordUpsert(w.referral["id"], field_values(obj, w.referral, schema))) for w in remaining]
    for start in range(0, len(creates), target.adapter.max_batch):
        chunk = creates[start:start + target.adapter.max_batch]
        results = write_with_split(lambda items: target.adapter.upsert(obj.name, obj.id_field, items),
                                   [c for _, c in chunk])
        for (work, ups), result in zip(chunk, results, strict=True):
            _apply(work, result, obj, ups.values, now, max_attempts)


def _push_works(target: CrmTarget, works: list[_Work], now: datetime, max_attempts: int) -> None:
    linked, unlinked = _plan(target, works)
    for obj in target.mapping.objects():
        if linked.get(obj.name):
            _push_linked(target, obj, linked[obj.name], now, max_attempts)
    if unlinked:
        _push_unlinked(target, unlinked, now, max_attempts)


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
    works = [_Work(op, inputs[op["referral_id"]], OpOutcome(op["id"], op["referral_id"], "done"))
             for op in ops if op["referral_id"] in inputs]
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
        wait = exc.retry_after if exc.retry_after is not None else 60.0
        target.paused_until = now + timedelta(seconds=wait)
        log.warning("rate limited; pausing this CRM", crm=target.name, seconds=wait)
        for work in works:
            if work.outcome.state == "done" and not work.outcome.links:
                work.outcome.state, work.outcome.next_attempt_at = "released", target.paused_until
    except RetriableError as exc:
        for work in works:
            if work.outcome.state == "done" and not work.outcome.links:
                _fail(work, "transient", exc.code, str(exc), now, max_attempts, exc.retry_after)
    except (AuthError, CrmConfigError) as exc:
        for work in works:
            if work.outcome.state == "done" and not work.outcome.links:
                work.outcome.state, work.outcome.next_attempt_at = "released", now + timedelta(minutes=5)
        if not dry_run:
            land_outcomes(ledger, target.name, owner, [w.outcome for w in works])
        raise exc
    for work in works + idle:
        work.outcome.unchanged = work.outcome.state == "done" and not work.outcome.written
    if not dry_run:
        land_outcomes(ledger, target.name, owner, [w.outcome for w in works + idle])
        for work in works:
            outcome = work.outcome
            if outcome.state in ("failed", "dead"):
                (log.error if outcome.state == "dead" else log.warning)(
                    "push " + ("gave up" if outcome.state == "dead" else "will retry"), referral_id=outcome.referral_id,
                    crm=target.name, op_id=outcome.op_id, code=outcome.error_code, error=outcome.error_message,
                    next_attempt_at=outcome.next_attempt_at.isoformat() if outcome.next_attempt_at else None)
    counts.calls = target.adapter.budget().total_calls - before
    for work in works:
        outcome = work.outcome
        if outcome.state == "done":
            counts.pushed += 1
            counts.created += outcome.created
            counts.unchanged += not outcome.written
        else:
            setattr(counts, outcome.state, getattr(counts, outcome.state) + 1)
    return counts
