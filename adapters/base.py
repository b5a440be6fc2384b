"""The CRM adapter contract: what the sync engine may ask of any CRM.

A third CRM is added by implementing :class:`CrmAdapter`; the engine never imports a concrete
adapter. All values crossing this boundary are plain data (dataclasses, dicts of field values),
so the engine's decisions stay pure functions over them.

Rules every adapter follows:
- Batch methods return exactly one result per input, in input order. A record the CRM left out of
  its answer is a failed result (``RecordErrorKind.MISSING``), never a silent success.
- Whole-call failures raise a :mod:`adapters.errors` class (rate limited, transient, auth,
  configuration). Per-record failures come back inside the results, classified by ``kind``.
- Every API call goes through the one retry policy the engine hands the adapter
  (:class:`adapters.retrying.CallPolicy`, from the ``[retry]`` config): transient failures and short
  rate limits are retried in place with backoff, and what outlives them is raised as above. Calls
  must therefore be safe to repeat (writes are upserts by external id or updates by record id).
  Besides that, an adapter re-authenticates once on an expired session.
- ``budget()`` reflects the calls this adapter made and what the CRM says is left.
- ``change_pages`` remembers nothing between processes itself: what a poll must carry over (which
  records it already handled inside the overlap window, an adapter's own positions such as
  HubSpot's deletion check) the caller keeps in the ledger and hands back (see ``change_pages``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, runtime_checkable

import orjson

from refsync.times import iso_utc_ms

FieldValues = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class FieldSchema:
    """One CRM field as the describe / properties API reports it."""

    name: str
    type: str  # normalised: string, text, email, date, datetime, number, boolean, enum, id, reference
    label: str = ""
    length: int | None = None  # max characters for string-like fields, when the CRM has a limit
    updateable: bool = True
    createable: bool = True
    unique: bool = False
    external_id: bool = False
    options: tuple[str, ...] = ()  # picklist / enumeration values


@dataclass(frozen=True)
class ObjectSchema:
    """The fields of one CRM object, keyed by API name."""

    name: str
    fields: Mapping[str, FieldSchema]


@dataclass(frozen=True)
class CrmRecord:
    """A record as read from the CRM. ``id`` is the CRM's current id (the survivor after a merge)."""

    object: str
    id: str
    fields: FieldValues
    modified_at: datetime | None = None
    owner_id: str | None = None
    modified_by: str | None = None  # the user/integration that made the last change, when known


class RecordErrorKind(enum.StrEnum):
    """How the engine must react to one record's failure."""

    TRANSIENT = "transient"  # e.g. UNABLE_TO_LOCK_ROW: retry this record later
    REJECTED = "rejected"  # the CRM refuses this record for good: dead op with the CRM's code
    DELETED = "deleted"  # ENTITY_IS_DELETED / 404: the record is gone
    CONVERTED = "converted"  # CANNOT_UPDATE_CONVERTED_LEAD: follow the conversion
    CONFIG = "config"  # INVALID_FIELD etc.: a mapping problem, not this record's
    MISSING = "missing"  # the CRM answered 2xx but left this record out of its results
    CONFLICT = "conflict"  # a duplicate / uniqueness conflict (HubSpot 409)
    DUPLICATE = "duplicate"  # a duplicate rule blocked a create: ``matches`` names the existing records


@dataclass(frozen=True)
class RecordMatch:
    """An existing record a CRM's duplicate rule matched a new one against."""

    object: str
    id: str


@dataclass(frozen=True)
class RecordError:
    kind: RecordErrorKind
    code: str  # the CRM's own code, e.g. UNABLE_TO_LOCK_ROW, VALIDATION_ERROR
    message: str
    fields: tuple[str, ...] = ()
    matches: tuple[RecordMatch, ...] = ()  # DUPLICATE: the records the CRM says this one duplicates
    # The CRM refused the whole request for a value in *some* record (Salesforce JSON_PARSER_ERROR):
    # every record of the request carries this error; the engine splits the batch to find the one.
    whole_request: bool = False


@dataclass(frozen=True)
class WriteResult:
    """The outcome of writing one record of a batch."""

    key: str  # the referral id (upsert) or record id (update) the caller passed in
    ok: bool
    record_id: str | None = None
    created: bool = False
    error: RecordError | None = None


@dataclass(frozen=True)
class RecordUpdate:
    """An update of an existing record by CRM id."""

    record_id: str
    values: FieldValues


@dataclass(frozen=True)
class RecordUpsert:
    """An upsert keyed by our external id (the referral id) in ``id_field``."""

    external_id: str
    values: FieldValues


class ChangeKind(enum.StrEnum):
    UPDATED = "updated"  # created or changed; ``record`` holds its current fields
    DELETED = "deleted"  # deleted (and not merged)
    MERGED = "merged"  # merged away; ``merged_into`` is the survivor's id
    CONVERTED = "converted"  # a lead converted; ``converted_to`` names the new records


@dataclass(frozen=True)
class StageChange:
    """One stage transition of a deal-like record, from the CRM's history."""

    record_id: str
    stage: str  # the CRM's stage label (HubSpot internal ids are resolved to labels)
    at: datetime  # when the CRM recorded the move (history timestamp), not the record's last change
    amount: float | None = None
    close_date: str | None = None
    changed_by: str | None = None
    pipeline: str | None = None  # the pipeline label the stage belongs to, when the CRM has several


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    object: str
    record_id: str
    at: datetime
    record: CrmRecord | None = None
    merged_into: str | None = None
    converted_to: Mapping[str, str] = field(default_factory=dict)  # role -> id: account, contact, opportunity


@dataclass(frozen=True)
class ChangeSet:
    """One page of changes of one object, and the cursor that is safe to keep once it is handled.

    Pages come in ascending modification order. ``stage_changes`` holds the stage history of the
    page's own records (a record's history travels with the record). ``cursor`` never passes a
    record that is still to come, so a poll stopped after any page resumes from its cursor (minus
    the caller's overlap) without losing anything."""

    changes: Sequence[Change]
    stage_changes: Sequence[StageChange]
    cursor: datetime
    # Adapter-private poll state to keep once this page is handled (None: nothing new), handed back
    # as ``poll_state`` to the next ``change_pages`` of the object. JSON values only. Kept with the
    # page's observations, so a position never moves past changes that were not handled.
    poll_state: Mapping[str, Any] | None = None


def unhandled(changes: Iterable[Change], handled: Mapping[str, datetime] | None) -> list[Change]:
    """The changes whose (record id, stamp) the caller has not handled yet (``change_pages``)."""
    if not handled:
        return list(changes)
    return [c for c in changes if handled.get(c.record_id) != c.at]


def json_answer(data: bytes | str) -> Any:
    """A CRM's JSON answer, decoded by orjson: a first cycle decodes every record it writes and
    reads, and the standard library took a twentieth of refsync's CPU doing it (py-spy, 10,000
    referrals); orjson decodes a 2,000-record query page in about half the time (7.3 against 3.9 ms)
    and encodes one twenty times as fast. What orjson refuses and the standard library takes (a lone
    surrogate escape, ``NaN``) is decoded by the standard library, so no answer reads differently."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def json_body(value: Any) -> bytes:
    """A request body as compact UTF-8 JSON, by orjson (see :func:`json_answer`). A value orjson
    cannot write goes through the standard library, which refuses what neither can write (a
    ``Decimal``, a set) with the same ``TypeError`` as before. One difference: orjson writes a NaN
    or infinite float as ``null`` where requests refused it; refsync sends no such number (a deal
    amount that is not finite is read as no amount, connector/poll.py ``_amount``)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, allow_nan=False).encode()


# ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC, the year always four digits (naive is UTC). Not with
# ``strftime``: glibc's ``strftime('%Y')`` writes year 1 as ``1``, and Salesforce refuses the whole
# request for a value it cannot parse (crm-api/salesforce/README.md, JSON_PARSER_ERROR).
iso_utc = iso_utc_ms


def joined_pages(answers: Iterable[list[T]], size: int) -> Iterator[tuple[list[T], bool]]:
    """Consecutive CRM answers joined into pages of at least ``size`` items (the last page may hold
    fewer), each with whether it is the last: what ``change_pages`` builds its pages from."""
    page: list[T] = []
    remaining = iter(answers)
    answer = next(remaining, None)
    while answer is not None:
        page += answer
        answer = next(remaining, None)
        if page and (len(page) >= size or answer is None):
            yield page, answer is None
            page = []


@dataclass(frozen=True)
class Stage:
    pipeline: str  # pipeline label ("default" where the CRM has one)
    label: str
    internal_id: str
    is_closed: bool = False
    is_won: bool = False
    pipeline_id: str = ""  # the CRM's pipeline id (HubSpot's ``pipeline`` property holds ids, not labels)


@dataclass(frozen=True)
class ApiBudget:
    """API calls this adapter made, by kind, and the CRM's own view of the daily allocation."""

    calls: Mapping[str, int]
    used_today: int | None = None  # as reported by the CRM (Sforce-Limit-Info, X-HubSpot-RateLimit-Daily)
    limit_today: int | None = None

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def remaining_today(self) -> int | None:
        if self.used_today is None or self.limit_today is None:
            return None
        return max(self.limit_today - self.used_today, 0)


@runtime_checkable
class CrmAdapter(Protocol):
    """The contract. ``name`` is the config table's name: ``salesforce``, ``hubspot``."""

    name: str
    max_batch: int  # records per write call (200 Salesforce, 100 HubSpot)
    page_records: int  # changes per page of change_pages (about: a page may end a little past it)
    # How far before ``since`` change_pages looks on its own, for the CRM's own lag (HubSpot's
    # search index trails writes); the caller's overlap comes on top of it.
    lookback: timedelta

    def describe(self, object_name: str) -> ObjectSchema:
        """Fields of ``object_name`` for mapping validation."""
        ...

    def find(
        self, object_name: str, match_field: str, values: Sequence[str], fields: Sequence[str]
    ) -> dict[str, list[CrmRecord]]:
        """Records whose ``match_field`` equals one of ``values`` (case-insensitive for emails).

        Batched internally; the answer maps each value that matched to its records."""
        ...

    def upsert(
        self, object_name: str, id_field: str, records: Sequence[RecordUpsert], *, save_duplicates: bool = False
    ) -> list[WriteResult]:
        """Create or update by our external id; one result per record, in order.

        ``save_duplicates``: ask the CRM to save past its duplicate rules (an admin's choice in the
        mapping); without it a blocked create comes back as ``RecordErrorKind.DUPLICATE``."""
        ...

    def update(self, object_name: str, records: Sequence[RecordUpdate]) -> list[WriteResult]:
        """Update existing records by CRM id; one result per record, in order."""
        ...

    def read(
        self, object_name: str, ids: Sequence[str], fields: Sequence[str]
    ) -> dict[str, CrmRecord | None]:
        """Current records by id; a merged-away id maps to its survivor, a deleted one to None."""
        ...

    def change_pages(self, object_name: str, since: datetime, fields: Sequence[str], *,
                     handled: Mapping[str, datetime] | None = None,
                     poll_state: Mapping[str, Any] | None = None,
                     search_from: datetime | None = None) -> Iterator[ChangeSet]:
        """Everything that changed on ``object_name`` since ``since`` (the caller applies overlap),
        a page at a time (about ``page_records`` changes each), in ascending modification order.

        ``search_from``: the caller has already seen every record whose current modification stamp
        is before it (everything between ``since`` and it has settled on an earlier read): records
        are listed from there only, while what is read about them (stage history, deletions) still
        reaches back to ``since``. A poll right after activity then lists what is new, not again
        everything it listed a moment ago (``connector.poll.PollWindow``).

        Paging follows the CRM's own query cursor or a keyset on (modified time, id), never an
        offset, so records that share one timestamp across a page boundary are neither lost nor
        read forever, however many there are. Memory stays bounded by one page.

        ``handled`` maps record ids to the modification stamp (``Change.at``) the caller already
        handled: a change with that record id and stamp is left out of the pages and nothing more
        is read about it (associations, stage history), so a poll that re-reads its overlap window
        costs one query or search per object. A page left empty by it is not yielded. ``poll_state`` is
        the last ``ChangeSet.poll_state`` the caller kept for this object (None: the adapter keeps
        it in memory, for this process only)."""
        ...

    def stages(self, object_name: str) -> list[Stage]:
        """The deal-like object's stages, for stage mapping."""
        ...

    def budget(self) -> ApiBudget:
        """Calls made so far and the CRM's reported daily usage."""
        ...
