"""`refsync report`: referral outcomes per partner or per source/medium/campaign over a date range.

Funnel columns count referrals that ever reached the stage (a lost deal that was qualified counts
as qualified): ``accepted`` is anything past submitted (declined and expired excluded),
``qualified`` is qualified or any later stage. ``conversion_rate`` is won / referrals. Open
pipeline value sums the amounts of open referrals' deals as the poll (or the nightly reconcile)
last read them; won revenue sums the outcome amounts of won ones; both per currency, never added
across currencies (an amount whose deal has no currency is counted under ``unknown``). Median days
to close runs from submission to won.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from statistics import median
from typing import Any

from refsync.state.models import OPEN_STATUSES, STATUSES
from refsync.state.reports import ReportRow

GROUPINGS = ("partner", "source", "medium", "campaign", "channel")
ACCEPTED = set(STATUSES[1:9])  # accepted .. lost
QUALIFIED = set(STATUSES[3:8])  # qualified .. won
COUNTS = ("referrals", "accepted", "qualified", "won", "lost", "expired", "conversion_rate")
AMOUNTS = ("open_pipeline_value", "won_revenue")  # {currency: amount}, one figure per currency
COLUMNS = (*COUNTS, *AMOUNTS, "median_days_to_close")
NO_CURRENCY = "unknown"  # an amount read from a deal that carries no currency (no currency_field mapped)


@dataclass
class Line:
    key: dict[str, str | None]
    referrals: int = 0
    accepted: int = 0
    qualified: int = 0
    won: int = 0
    lost: int = 0
    expired: int = 0
    open_pipeline_value: dict[str, Decimal] = field(default_factory=dict)
    won_revenue: dict[str, Decimal] = field(default_factory=dict)
    days_to_close: list[float] = field(default_factory=list)

    def add(self, row: ReportRow) -> None:
        self.referrals += 1
        self.accepted += bool(row.reached & ACCEPTED)
        self.qualified += bool(row.reached & QUALIFIED)
        self.won += row.status == "won"
        self.lost += row.status == "lost"
        self.expired += row.status == "expired"
        if row.status in OPEN_STATUSES and row.pipeline_amount is not None:
            _add(self.open_pipeline_value, row.pipeline_currency, row.pipeline_amount)
        if row.status == "won":
            if row.outcome_amount is not None:
                _add(self.won_revenue, row.currency, row.outcome_amount)
            if row.closed_at is not None:
                self.days_to_close.append((row.closed_at - row.submitted_at).total_seconds() / 86400)

    def as_json(self) -> dict[str, Any]:
        return {**self.key, "referrals": self.referrals, "accepted": self.accepted, "qualified": self.qualified,
                "won": self.won, "lost": self.lost, "expired": self.expired,
                "conversion_rate": round(self.won / self.referrals, 4) if self.referrals else 0.0,
                "open_pipeline_value": _figures(self.open_pipeline_value), "won_revenue": _figures(self.won_revenue),
                "median_days_to_close": round(median(self.days_to_close), 1) if self.days_to_close else None}


def _add(amounts: dict[str, Decimal], currency: str | None, amount: Decimal) -> None:
    key = (currency or "").strip().upper() or NO_CURRENCY
    amounts[key] = amounts.get(key, Decimal(0)) + amount


def _figures(amounts: dict[str, Decimal]) -> dict[str, float]:
    return {currency: float(amounts[currency]) for currency in sorted(amounts)}


def key_of(row: ReportRow, by: str) -> dict[str, str | None]:
    if by == "channel":
        return {"source": row.source, "medium": row.medium, "campaign": row.campaign}
    return {by: getattr(row, by)}


def build(rows: Iterable[ReportRow], by: str) -> list[dict[str, Any]]:
    """One line per group (sorted by referrals, most first) and a final ``total`` line."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by}; use one of {', '.join(GROUPINGS)}")
    lines: dict[tuple[str | None, ...], Line] = {}
    total = Line({name: "(total)" if i == 0 else None for i, name in enumerate(key_of_names(by))})
    for row in rows:
        key = key_of(row, by)
        line = lines.setdefault(tuple(key.values()), Line(key))
        line.add(row)
        total.add(row)
    ordered = sorted(lines.values(), key=lambda line: (-line.referrals, [str(v) for v in line.key.values()]))
    return [line.as_json() for line in ordered] + [total.as_json()]


def key_of_names(by: str) -> list[str]:
    return ["source", "medium", "campaign"] if by == "channel" else [by]


# OWASP, CSV Injection (https://owasp.org/www-community/attacks/CSV_Injection): a spreadsheet runs a
# cell that begins with one of these as a formula; a leading single quote makes it plain text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell a spreadsheet would read as a formula gets a leading ``'``; numbers, None and
    harmless text pass unchanged (a negative amount is a number, not a formula)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def currencies(report: list[dict[str, Any]]) -> list[str]:
    """Every currency an amount of the report is in, sorted."""
    return sorted({c for line in report for column in AMOUNTS for c in line[column]})


def excluded_note(excluded: dict[str, int]) -> str:
    """One line saying which referrals the report leaves out and why (empty when none)."""
    why = {"other_partner": "of other partners", "outside_period": "submitted outside the period",
           "merged": "merged into another referral (counted there)"}
    parts = [f"{n} {why.get(reason, reason)}" for reason, n in excluded.items() if n]
    return f"left out: {sum(excluded.values())} referrals of the ledger ({'; '.join(parts)})" if parts else ""


def to_csv(report: list[dict[str, Any]], by: str) -> str:
    """The report as CSV, amounts in one column per currency (``won_revenue_USD``, ...); every text
    cell goes through :func:`spreadsheet_safe`, because source, medium and campaign come from
    partners and tracking links. Lines end in CRLF (RFC 4180): the csv module quotes a field only
    for the characters of its line terminator, so with a bare LF a carriage return inside a value
    would go out unquoted and split the record."""
    found = currencies(report)
    amount_columns = [f"{column}_{currency}" for column in AMOUNTS for currency in found]
    out = io.StringIO()
    writer = csv.DictWriter(out, [*key_of_names(by), *COUNTS, *amount_columns, "median_days_to_close"],
                            lineterminator="\r\n")
    writer.writeheader()
    for line in report:
        flat = {name: value for name, value in line.items() if name not in AMOUNTS}
        for column in AMOUNTS:
            for currency in found:
                flat[f"{column}_{currency}"] = line[column].get(currency, 0.0)
        writer.writerow({name: spreadsheet_safe(value) for name, value in flat.items()})
    return out.getvalue()
