"""What refsync remembers about each CRM between runs (the ``crm_state`` table).

Small JSON documents keyed per CRM: cached describes and stage lists with the time they were read,
the fields refsync has seen on each object (so a field that later disappears is drift, not a
configuration error), deletion-check positions. One place reads and writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

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
    """Store ``value`` under ``key`` (replacing what was there). Replicas starting together store the
    same schemas at once: the one that inserts second updates instead of failing."""
    now = at or ledger.clock()
    with ledger.transaction() as txn:
        row = txn.session.get(CrmState, (crm, key))
        if row is not None:
            row.value, row.updated_at = value, now
            return
        try:
            with txn.session.begin_nested():
                txn.session.add(CrmState(crm=crm, key=key, value=value, updated_at=now))
        except IntegrityError:
            txn.session.execute(update(CrmState).where(CrmState.crm == crm, CrmState.key == key)
                                .values(value=value, updated_at=now))


def forget(ledger: Ledger, crm: str, key: str) -> None:
    with ledger.transaction() as txn:
        txn.session.execute(delete(CrmState).where(CrmState.crm == crm, CrmState.key == key))


def remembered_everywhere(ledger: Ledger, key: str) -> dict[str, tuple[dict[str, Any], datetime]]:
    """The value stored under ``key`` for every CRM that has one, by CRM."""
    with ledger.transaction() as txn:
        rows = txn.session.scalars(select(CrmState).where(CrmState.key == key))
        return {row.crm: (dict(row.value), row.updated_at) for row in rows}


LAST_COUNTS = "last_counts:"  # + job: what the last run of that job that did something did on this CRM


def did_something(values: dict[str, Any]) -> bool:
    """Whether a run's counts for one CRM hold any non-zero number besides its API calls (a poll that
    found nothing still made calls: it is an empty round all the same)."""
    return any(isinstance(v, int | float) and not isinstance(v, bool) and v
               for k, v in values.items() if k != "calls")


def remember_counts(ledger: Ledger, job: str, per_crm: dict[str, dict[str, Any]]) -> None:
    """Keep each CRM's counts of this run of ``job`` when they are not all zero, so the metrics show
    the last round that did something rather than 0 after every empty round."""
    for crm, values in per_crm.items():
        if did_something(values):
            remember(ledger, crm, LAST_COUNTS + job, dict(values))


def last_counts(ledger: Ledger) -> dict[str, dict[str, dict[str, Any]]]:
    """By job, then CRM: the counts :func:`remember_counts` kept."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    with ledger.transaction() as txn:
        for row in txn.session.scalars(select(CrmState).where(CrmState.key.startswith(LAST_COUNTS, autoescape=True))):
            found.setdefault(row.key[len(LAST_COUNTS):], {})[row.crm] = dict(row.value)
    return found
