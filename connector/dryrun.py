"""`sync --once --dry-run`: what a push would write, per record and field, writing nothing.

The real push code runs against a :class:`DryRunAdapter`, which reads from the CRM as usual and
records writes instead of sending them; the ledger is only read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from refsync.adapters.base import (
    ApiBudget,
    ChangeSet,
    CrmAdapter,
    CrmRecord,
    ObjectSchema,
    RecordUpdate,
    RecordUpsert,
    Stage,
    WriteResult,
)


@dataclass
class PlannedWrite:
    crm: str
    object: str
    action: str  # create-or-update (upsert by referral id) | update
    key: str  # referral id (upsert) or record id (update)
    values: dict[str, Any]


@dataclass
class DryRunAdapter:
    """Reads pass through; writes are recorded and reported as successful."""

    inner: CrmAdapter
    planned: list[PlannedWrite] = field(default_factory=list)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def max_batch(self) -> int:  # type: ignore[override]
        return self.inner.max_batch

    def describe(self, object_name: str) -> ObjectSchema:
        return self.inner.describe(object_name)

    def find(self, object_name: str, match_field: str, values: Sequence[str],
             fields: Sequence[str]) -> dict[str, list[CrmRecord]]:
        return self.inner.find(object_name, match_field, values, fields)

    def read(self, object_name: str, ids: Sequence[str], fields: Sequence[str]) -> dict[str, CrmRecord | None]:
        return self.inner.read(object_name, ids, fields)

    @property
    def page_records(self) -> int:  # type: ignore[override]
        return self.inner.page_records

    @property
    def lookback(self) -> timedelta:  # type: ignore[override]
        return self.inner.lookback

    def change_pages(self, object_name: str, since: datetime, fields: Sequence[str], *,
                     handled: Mapping[str, datetime] | None = None,
                     poll_state: Mapping[str, Any] | None = None,
                     search_from: datetime | None = None) -> Iterator[ChangeSet]:
        return self.inner.change_pages(object_name, since, fields, handled=handled, poll_state=poll_state,
                                       search_from=search_from)

    def stages(self, object_name: str) -> list[Stage]:
        return self.inner.stages(object_name)

    def budget(self) -> ApiBudget:
        return self.inner.budget()

    def upsert(self, object_name: str, id_field: str, records: Sequence[RecordUpsert], *,
               save_duplicates: bool = False) -> list[WriteResult]:
        for record in records:
            self.planned.append(PlannedWrite(self.name, object_name, "create-or-update", record.external_id,
                                             dict(record.values)))
        return [WriteResult(r.external_id, True) for r in records]

    def update(self, object_name: str, records: Sequence[RecordUpdate]) -> list[WriteResult]:
        for record in records:
            self.planned.append(PlannedWrite(self.name, object_name, "update", record.record_id, dict(record.values)))
        return [WriteResult(r.record_id, True, record_id=r.record_id) for r in records]
