"""`refsync report`: referral outcomes per partner or per source/medium/campaign over a date range.

Funnel columns count referrals that ever reached the stage (a lost deal that was qualified counts
as qualified): ``accepted`` is anything past submitted (declined and expired excluded),
``qualified`` is qualified or any later stage. ``conversion_rate`` is won / referrals. Open
pipeline value sums the linked deal amounts reconcile last read for open referrals; won revenue
sums the outcome amounts of won ones; median days to close runs from submission to won.
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
COLUMNS = ("referrals", "accepted", "qualified", "won", "lost", "expired", "conversion_rate",
           "open_pipeline_value", "won_revenue", "median_days_to_close")


@dataclass
class Line:
    key: dict[str, str | None]
    referrals: int = 0
    accepted: int = 0
    qualified: int = 0
    won: int = 0
    lost: int = 0
    expired: int = 0
    open_pipeline_value: Decimal = Decimal(0)
    won_revenue: Decimal = Decimal(0)
    days_to_close: list[float] = field(default_factory=list)
    currencies: set[str] = field(default_factory=set)

    def add(self, row: ReportRow) -> None:
        self.referrals += 1
        self.accepted += bool(row.reached & ACCEPTED)
        self.qualified += bool(row.reached & QUALIFIED)
        self.won += row.status == "won"
        self.lost += row.status == "lost"
        self.expired += row.status == "expired"
        if row.currency:
            self.currencies.add(row.currency)
        if row.status in OPEN_STATUSES and row.pipeline_amount is not None:
            self.open_pipeline_value += row.pipeline_amount
        if row.status == "won":
            self.won_revenue += row.outcome_amount or 0
            if row.closed_at is not None:
                self.days_to_close.append((row.closed_at - row.submitted_at).total_seconds() / 86400)

    def as_json(self) -> dict[str, Any]:
        return {**self.key, "referrals": self.referrals, "accepted": self.accepted, "qualified": self.qualified,
                "won": self.won, "lost": self.lost, "expired": self.expired,
                "conversion_rate": round(self.won / self.referrals, 4) if self.referrals else 0.0,
                "open_pipeline_value": float(self.open_pipeline_value), "won_revenue": float(self.won_revenue),
                "median_days_to_close": round(median(self.days_to_close), 1) if self.days_to_close else None,
                "currency": ",".join(sorted(self.currencies)) or None}


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


def to_csv(report: list[dict[str, Any]], by: str) -> str:
    """The report as CSV; every text cell goes through :func:`spreadsheet_safe`, because source,
    medium and campaign come from partners and tracking links. Lines end in CRLF (RFC 4180): the
    csv module quotes a field only for the characters of its line terminator, so with a bare LF a
    carriage return inside a value would go out unquoted and split the record."""
    out = io.StringIO()
    writer = csv.DictWriter(out, [*key_of_names(by), *COLUMNS, "currency"], lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({name: spreadsheet_safe(value) for name, value in line.items()} for line in report)
    return out.getvalue()
