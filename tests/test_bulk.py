"""Bulk writes (state/bulk.py) store exactly what the ORM stores, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from refsync.state.bulk import among, insert_rows, update_rows
from refsync.state.ledger import Ledger
from refsync.state.models import AuditEvent, CrmLink, Partner, Referral

EVENTS = cast(Table, AuditEvent.__table__)
LINKS = cast(Table, CrmLink.__table__)


def event(kind: str, detail: Any, at: datetime, **extra: Any) -> dict[str, Any]:
    return {"referral_id": None, "at": at, "actor": "test", "kind": kind, "reason_code": "r", "crm": None,
            "object": None, "record_id": None, "detail": detail, **extra}


def stored(ledger: Ledger, kind: str) -> list[tuple[Any, ...]]:
    with ledger.transaction() as txn:
        return [(e.kind, e.at, e.detail, e.crm, e.record_id, e.policy_version) for e in txn.session.scalars(
            select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id))]


def test_inserted_rows_read_back_as_the_orm_writes_them(ledger: Ledger) -> None:
    """Times in any zone come back as the same instant in UTC, JSON (nested, empty, null) and text
    with quotes survive, and a left-out column gets its default."""
    at = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
    elsewhere = at.astimezone(timezone(timedelta(hours=-5)))
    details = [{"fields": {"Email": "o'neil@x.example", "n": 3}, "list": [1, None, "é"]}, {}, None]
    with ledger.transaction() as txn:
        insert_rows(txn.session, EVENTS, [event("bulk", detail, elsewhere, crm="hubspot", record_id=f"r{n}")
                                          for n, detail in enumerate(details)])
        txn.session.add_all([AuditEvent(kind="orm", at=at, actor="test", reason_code="r", crm="hubspot",
                                        record_id=f"r{n}", detail=detail) for n, detail in enumerate(details)])
    bulk, orm = stored(ledger, "bulk"), stored(ledger, "orm")
    assert [row[1:] for row in bulk] == [row[1:] for row in orm]
    assert bulk[0][1] == at and bulk[0][1].tzinfo is not None and bulk[0][2]["fields"]["Email"] == "o'neil@x.example"


def test_naive_times_are_refused_as_the_orm_refuses_them(ledger: Ledger) -> None:
    with pytest.raises(Exception, match="naive datetime"), ledger.transaction() as txn:
        insert_rows(txn.session, EVENTS, [event("naive", {}, datetime(2026, 3, 1))])
    assert stored(ledger, "naive") == []


def a_partner(session: Session) -> int:
    partner = Partner(code="p1")
    session.add(partner)
    session.flush()
    return partner.id


def test_updated_rows_change_only_their_own_columns_and_rows(ledger: Ledger, clock: Any) -> None:
    now = clock()
    with ledger.transaction() as txn:
        partner_id = a_partner(txn.session)
        txn.session.add_all([Referral(id=f"ref{n}", fingerprint=f"f{n}", partner_id=partner_id, submitted_at=now,
                                      attribution_model="first_touch", policy_version="v", attribution_reason="r")
                             for n in range(3)])
        txn.session.flush()
        insert_rows(txn.session, LINKS, [
            {"referral_id": f"ref{n}", "crm": "hubspot", "object": "contacts", "record_id": str(n), "role": "lead",
             "created_at": now, "updated_at": now} for n in range(3)])
    with ledger.transaction() as txn:
        ids = {link.record_id: link.id for link in txn.session.scalars(select(CrmLink))}
        later = now + timedelta(minutes=5)
        update_rows(txn.session, LINKS, "id", [{"id": ids["0"], "owner_id": "o-0", "last_seen_at": later},
                                               {"id": ids["2"], "owner_id": None, "last_seen_at": later}])
    with ledger.transaction() as txn:
        links = {link.record_id: link for link in txn.session.scalars(select(CrmLink))}
        assert (links["0"].owner_id, links["0"].last_seen_at) == ("o-0", later)
        assert (links["2"].owner_id, links["2"].last_seen_at) == (None, later)
        assert (links["1"].owner_id, links["1"].last_seen_at) == (None, None)
        assert {link.state for link in links.values()} == {"active"}  # the column's default, given by nobody
        found = txn.session.scalars(select(CrmLink.record_id).where(
            among(txn.session, CrmLink.id, [ids["0"], ids["2"], 10**9]))).all()
        assert sorted(found) == ["0", "2"]
        assert txn.session.scalars(select(CrmLink.id).where(among(txn.session, CrmLink.record_id, []))).all() == []
        links["1"].record_id = "r" * 64  # the column's full width: a longer value must not match it cut
        txn.session.flush()
        def matching(value: str) -> list[int]:
            return list(txn.session.scalars(select(CrmLink.id).where(among(txn.session, CrmLink.record_id, [value]))))

        assert matching("r" * 70) == [] and matching("r" * 64) == [links["1"].id]


def test_a_value_too_long_for_its_column_is_never_cut(ledger: Ledger) -> None:
    """PostgreSQL refuses it, as it refuses the ORM's insert; SQLite keeps it whole, as it keeps
    the ORM's. A silent cut would change an audit trail's record id."""
    long_id = "x" * 80  # record_id holds 64
    if ledger.engine.dialect.name == "postgresql":
        with pytest.raises(Exception, match="too long"), ledger.transaction() as txn:
            insert_rows(txn.session, EVENTS, [event("long", {}, datetime.now(UTC), record_id=long_id)])
        assert stored(ledger, "long") == []
    else:
        with ledger.transaction() as txn:
            insert_rows(txn.session, EVENTS, [event("long", {}, datetime.now(UTC), record_id=long_id)])
        assert stored(ledger, "long")[0][4] == long_id


def test_numbers_dates_and_flags_read_back_as_written(ledger: Ledger, clock: Any) -> None:
    now = clock()
    with ledger.transaction() as txn:
        partner_id = a_partner(txn.session)
        insert_rows(txn.session, cast(Table, Referral.__table__), [
            {"id": f"ref{n}", "fingerprint": f"f{n}", "partner_id": partner_id, "submitted_at": now,
             "attribution_model": "first_touch", "policy_version": "v", "attribution_reason": "r",
             "credited": n == 0, "outcome_amount": Decimal("1234.50") if n == 0 else None,
             "outcome_close_date": date(2026, 2, 28) if n == 0 else None} for n in range(2)])
    with ledger.transaction() as txn:
        first, second = txn.session.scalars(select(Referral).order_by(Referral.id)).all()
        assert (first.credited, first.outcome_amount, first.outcome_close_date) == (
            True, Decimal("1234.50"), date(2026, 2, 28))
        assert (second.credited, second.outcome_amount, second.outcome_close_date) == (False, None, None)
        assert first.status == "submitted" and first.revision == 1 and first.submitted_at == now  # defaults


@pytest.mark.parametrize("at", [
    datetime(1, 1, 1, tzinfo=UTC),                                         # a four-digit year 0001
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 1, 9, 30, 15, tzinfo=timezone(timedelta(hours=5, minutes=45))),  # no microseconds
    datetime(2026, 3, 1, 9, 30, 15, 1, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
], ids=["year-1", "year-9999", "offset-whole-second", "offset-one-microsecond"])
def test_times_at_the_edges_read_back_as_the_same_instant_as_the_orm_stores(ledger: Ledger, at: datetime) -> None:
    # PostgreSQL receives a batch's times as orjson writes them inside its one JSON parameter;
    # SQLite as its DATETIME text. Either way the instant read back is the ORM's, in UTC.
    with ledger.transaction() as txn:
        insert_rows(txn.session, EVENTS, [event("bulk", None, at, record_id="edge")])
        txn.session.add(AuditEvent(kind="orm", at=at, actor="test", reason_code="r", record_id="edge", detail=None))
    [bulk], [orm] = stored(ledger, "bulk"), stored(ledger, "orm")
    assert bulk[1] == orm[1] == at and bulk[1].utcoffset() == timedelta(0)
