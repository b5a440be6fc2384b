"""Datetimes as text, the three ways refsync writes them, each exactly what ``isoformat`` writes.

A first sync cycle formats several datetimes per referral (the ``--json`` op shape, the times the
CRMs receive, SQLite's time columns, the poll's memory of handled records), and ``isoformat`` cost
about a twentieth of its CPU (py-spy, 10,000 referrals). orjson writes an aware UTC or a naive
datetime in RFC 3339 form, four year digits always, the fraction only when there is one, exactly as
``isoformat`` does, in about a third of the time; anything else (another zone, a ``date``) goes
through ``isoformat`` as before. ``tests/test_times.py`` checks each against the ``isoformat``
code it replaced, for datetimes of years 1 to 9999 in several zones.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import orjson

_dumps = orjson.dumps
_UTC_Z = orjson.OPT_UTC_Z


def iso_text(value: datetime | date | None) -> str | None:
    """``value.isoformat()`` (None stays None)."""
    if value is None:
        return None
    if value.__class__ is datetime and (value.tzinfo is UTC or value.tzinfo is None):
        return _dumps(value).decode()[1:-1]
    return value.isoformat()


def iso_utc_ms(moment: datetime) -> str:
    """``moment`` in UTC as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (naive is UTC), what the CRMs take."""
    if moment.__class__ is not datetime:  # a subclass: isoformat's way
        utc = moment if moment.tzinfo is None or moment.tzinfo is UTC else moment.astimezone(UTC)
        return utc.isoformat(timespec="milliseconds")[:23] + "Z"
    tz = moment.tzinfo
    if tz is not UTC:
        moment = moment.replace(tzinfo=UTC) if tz is None else moment.astimezone(UTC)
    text = _dumps(moment, option=_UTC_Z).decode()  # "YYYY-MM-DDTHH:MM:SS[.ffffff]Z", quoted
    return text[1:24] + "Z" if text[20] == "." else text[1:20] + ".000Z"


def sqlite_utc(moment: datetime) -> str:
    """An aware UTC ``moment`` as ``YYYY-MM-DD HH:MM:SS.ffffff``, the text SQLite's DATETIME
    columns hold (SQLAlchemy's own format, so old and new rows sort and compare alike)."""
    if moment.__class__ is not datetime or moment.tzinfo is not UTC:
        return moment.isoformat(sep=" ", timespec="microseconds")[:26]
    text = _dumps(moment, option=_UTC_Z).decode()
    return text[1:11] + " " + (text[12:27] if text[20] == "." else text[12:20] + ".000000")
