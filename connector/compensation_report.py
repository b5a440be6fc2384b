"""Compensation reports as pure aggregations: per partner, period and currency what was earned,
pending, approved, paid and clawed back; and the payout liability forecast (open pipeline x the
partner's win rate x its terms). Amounts stay integers of minor units until they are shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from refsync.connector.commission import Outcome, TermsBook, as_decimal_text, compute, to_minor
from refsync.state.models import OPEN_STATUSES
from refsync.state.reports import ReportRow

EARNED_COLUMNS = ("entries", "earned", "pending", "approved", "paid", "clawed_back")
FORECAST_COLUMNS = ("open_deals", "open_pipeline", "win_rate", "expected_commission", "unpriced_deals")
MIN_CLOSED_FOR_OWN_RATE = 5  # fewer closed deals than this: the partner gets the program's win rate


def period_label(on: date, period: str) -> str:
    if period == "year":
        return f"{on.year}"
    if period == "quarter":
        return f"{on.year}-Q{(on.month - 1) // 3 + 1}"
    return f"{on.year}-{on.month:02d}"


def earned(rows: Iterable[dict[str, Any]], period: str) -> list[dict[str, Any]]:
    """Commission entries (``state.commissions.commission_rows``) summed per partner, period of the
    deal's close date and currency. ``earned``: every commission not void or rejected."""
    sums: dict[tuple[str, str, str], dict[str, int]] = {}
    for row in rows:
        closed = date.fromisoformat(row["closed_on"] or row["created_at"][:10])
        bucket = sums.setdefault((row["partner"], period_label(closed, period), row["currency"]),
                                 dict.fromkeys(EARNED_COLUMNS, 0))
        _tally(bucket, row["kind"], row["status"], row["amount_minor"])
    return [{"partner": partner, "period": label, "currency": currency, "entries": b["entries"],
             **{k: as_decimal_text(b[k], currency) for k in EARNED_COLUMNS[1:]}}
            for (partner, label, currency), b in sorted(sums.items())]


def _tally(bucket: dict[str, int], kind: str, status: str, amount: int) -> None:
    bucket["entries"] += 1
    if kind == "clawback":
        bucket["clawed_back"] += amount
        return
    if status not in ("void", "rejected"):
        bucket["earned"] += amount
    if status in ("pending", "held"):
        bucket["pending"] += amount
    elif status in ("approved", "paid"):
        bucket[status] += amount


def per_currency(entries: Iterable[tuple[str, str, int, str]]) -> dict[str, dict[str, int]]:
    """Entries ``(kind, status, amount_minor, currency)`` summed per currency over all periods, in
    minor units, with the columns of :func:`earned` (what a partner's portal shows as its totals)."""
    sums: dict[str, dict[str, int]] = {}
    for kind, status, amount, currency in entries:
        _tally(sums.setdefault(currency, dict.fromkeys(EARNED_COLUMNS, 0)), kind, status, amount)
    return dict(sorted(sums.items()))


def win_rates(history: Iterable[ReportRow]) -> tuple[dict[str, Decimal], Decimal]:
    """Per partner won / (won + lost), and the program's; a partner with fewer than
    MIN_CLOSED_FOR_OWN_RATE closed deals is left out (it gets the program's rate)."""
    closed: dict[str, list[int]] = {}
    for row in history:
        if row.status in ("won", "lost"):
            counts = closed.setdefault(row.partner, [0, 0])
            counts[row.status == "lost"] += 1
    won, lost = sum(c[0] for c in closed.values()), sum(c[1] for c in closed.values())
    program = Decimal(won) / (won + lost) if won + lost else Decimal(0)
    own = {p: Decimal(c[0]) / (c[0] + c[1]) for p, c in closed.items() if sum(c) >= MIN_CLOSED_FOR_OWN_RATE}
    return own, program


def forecast(rows: Iterable[ReportRow], book: TermsBook, today: date) -> list[dict[str, Any]]:
    """Expected commissions on today's open pipeline, per partner and currency: each open deal's
    amount priced with the terms in effect for it (as if won today; per-period caps left out), times
    the partner's win rate. A deal in no terms' currency is counted as ``unpriced_deals``."""
    rows = list(rows)
    own, program = win_rates(rows)
    sums: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row.status not in OPEN_STATUSES or row.pipeline_amount is None:
            continue
        terms = book.terms_for(row.partner, row.submitted_at.date(), today)
        currency = (row.pipeline_currency or (terms.currency if terms else "")).upper()
        if not currency:
            continue
        rate = own.get(row.partner, program)
        bucket = sums.setdefault((row.partner, currency), {"open_deals": 0, "open_pipeline": 0, "expected": Decimal(0),
                                                           "unpriced_deals": 0, "win_rate": rate})
        amount = to_minor(row.pipeline_amount, currency)
        bucket["open_deals"] += 1
        bucket["open_pipeline"] += amount
        result = compute(terms, Outcome(amount, currency, today)) if terms else None
        if result is None or result.blocked:
            bucket["unpriced_deals"] += 1
            continue
        bucket["expected"] += result.amount_minor * rate
    return [{"partner": partner, "currency": currency, "open_deals": b["open_deals"],
             "open_pipeline": as_decimal_text(b["open_pipeline"], currency),
             "win_rate": float(b["win_rate"].quantize(Decimal("0.0001"))),
             "expected_commission": as_decimal_text(int(b["expected"].quantize(Decimal(1), ROUND_HALF_UP)), currency),
             "unpriced_deals": b["unpriced_deals"]}
            for (partner, currency), b in sorted(sums.items())]
