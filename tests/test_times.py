"""refsync.times writes every datetime exactly as the isoformat-based code it replaced: what the
CRMs receive, the ``--json`` shapes and SQLite's stored text must not change by a character."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from refsync.times import iso_text, iso_utc_ms, sqlite_utc

ZONES = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)),
                         timezone(timedelta(seconds=-3601)), timezone(timedelta(hours=14))])


def _reference_iso_utc(moment: datetime) -> str:
    if moment.tzinfo is not None and moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:23] + "Z"


@settings(max_examples=3000, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=ZONES))
def test_every_datetime_is_written_as_isoformat_would(moment: datetime) -> None:
    assert iso_text(moment) == moment.isoformat()
    assert iso_utc_ms(moment) == _reference_iso_utc(moment)
    if moment.tzinfo is not None:
        utc = moment.astimezone(UTC)
        assert sqlite_utc(utc) == utc.isoformat(sep=" ", timespec="microseconds")[:26]


def test_the_edges_of_the_format() -> None:
    # four year digits always (glibc's strftime writes year 1 as "1"); the fraction only when
    # there is one for isoformat, always (to the millisecond, the microsecond) for the others
    first = datetime(1, 1, 1, tzinfo=UTC)
    assert iso_text(first) == "0001-01-01T00:00:00+00:00"
    assert iso_utc_ms(first) == "0001-01-01T00:00:00.000Z"
    assert sqlite_utc(first) == "0001-01-01 00:00:00.000000"
    late = datetime(2026, 10, 1, 23, 59, 59, 999999, tzinfo=UTC)
    assert iso_text(late) == "2026-10-01T23:59:59.999999+00:00"
    assert iso_utc_ms(late) == "2026-10-01T23:59:59.999Z"  # cut, not rounded into the next day
    assert sqlite_utc(late) == "2026-10-01 23:59:59.999999"
    assert iso_text(datetime(2026, 10, 1, 12, 0, 0, 1000)) == "2026-10-01T12:00:00.001000"  # naive: no offset
    assert iso_utc_ms(datetime(2026, 10, 1, 12)) == "2026-10-01T12:00:00.000Z"  # naive is UTC
    assert iso_text(date(2026, 10, 1)) == "2026-10-01"
    assert iso_text(None) is None
