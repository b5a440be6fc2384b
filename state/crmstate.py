"""What refsync remembers about each CRM between runs (the ``crm_state`` table).

Small JSON documents keyed per CRM: cached describes and stage lists with the time they were read,
the fields refsync has seen on each object (so a field that later disappears is drift, not a
configuration error), deletion-check positions. One place reads and writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select

from refsync.state.ledger import Ledger
from refsync.state.models import CrmState


def remembered(ledger: Ledger, crm: str, key: str) -> tuple[dict[str, Any], datetime] | None:
    """The value stored under ``key`` for ``crm`` and when it was stored, or None."""
    with ledger.transaction() as txn:
        row = txn.session.get(CrmState, (crm, key))
        return (dict(row.value), row.updated_at) if row is not None else None


def remembered_many(ledger: Ledger, crm: str, keys: Sequence[str]) -> dict[str, tuple[dict[str, Any], datetime]]:
    """Several keys at once (those stored)."""
    with ledger.transaction() as txn:
        rows = txn.session.scalars(select(CrmState).where(CrmState.crm == crm, CrmState.key.in_(list(keys))))
        return {row.key: (dict(row.value), row.updated_at) for row in rows}


def remember(ledger: Ledger, crm: str, key: str, value: dict[str, Any], at: datetime | None = None) -> None:
    """Store ``value`` under ``key`` (replacing what was there)."""
    now = at or ledger.clock()
    with ledger.transaction() as txn:
        row = txn.session.get(CrmState, (crm, key))
        if row is None:
            txn.session.add(CrmState(crm=crm, key=key, value=value, updated_at=now))
        else:
            row.value, row.updated_at = value, now


def forget(ledger: Ledger, crm: str, key: str) -> None:
    with ledger.transaction() as txn:
        txn.session.execute(delete(CrmState).where(CrmState.crm == crm, CrmState.key == key))


def remembered_everywhere(ledger: Ledger, key: str) -> dict[str, tuple[dict[str, Any], datetime]]:
    """The value stored under ``key`` for every CRM that has one, by CRM."""
    with ledger.transaction() as txn:
        rows = txn.session.scalars(select(CrmState).where(CrmState.key == key))
        return {row.crm: (dict(row.value), row.updated_at) for row in rows}
