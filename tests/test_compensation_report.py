"""Compensation reports: what finance reads per partner and period, and the payout liability forecast
(open pipeline x win rate x terms); pure aggregations over plain rows."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from refsync.connector.compensation_report import earned, forecast, period_label, win_rates
from refsync.connector.terms import parse_terms
from refsync.state.reports import ReportRow

SUBMITTED = datetime(2026, 6, 1, tzinfo=UTC)


def entry(partner: str, status: str, amount: int, closed: str, kind: str = "commission",
          currency: str = "USD") -> dict[str, Any]:
    return {"partner": partner, "status": status, "amount_minor": amount, "closed_on": closed, "kind": kind,
            "currency": currency, "created_at": closed + "T00:00:00+00:00"}


def test_earned_sums_each_state_per_partner_period_and_currency_never_mixing_currencies() -> None:
    rows = [entry("acme", "paid", 100_000, "2026-10-03"), entry("acme", "approved", 50_000, "2026-11-20"),
            entry("acme", "held", 7_000, "2026-12-01"), entry("acme", "void", 9_999, "2026-12-02"),
            entry("acme", "rejected", 1_000, "2026-12-03"), entry("acme", "clawback", -100_000, "2026-10-03",
                                                                  kind="clawback"),
            entry("acme", "pending", 2_000, "2026-10-09", currency="EUR")]
    lines = earned(rows, "quarter")
    assert [(line["period"], line["currency"]) for line in lines] == [("2026-Q4", "EUR"), ("2026-Q4", "USD")]
    usd = lines[1]
    assert {k: usd[k] for k in ("earned", "pending", "approved", "paid", "clawed_back", "entries")} == {
        "earned": "1570.00", "pending": "70.00", "approved": "500.00", "paid": "1000.00", "clawed_back": "-1000.00",
        "entries": 6}
    assert [line["period"] for line in earned(rows, "month") if line["currency"] == "USD"] == [
        "2026-10", "2026-11", "2026-12"]


def test_period_labels() -> None:
    assert [period_label(date(2026, 4, 1), p) for p in ("month", "quarter", "year")] == ["2026-04", "2026-Q2", "2026"]


def row(partner: str, status: str, pipeline: str | None = None, currency: str | None = "USD") -> ReportRow:
    return ReportRow("r", partner, None, None, None, status, SUBMITTED, None,
                     Decimal(pipeline) if pipeline else None, currency, None, frozenset({status}), None)


def test_a_partner_with_few_closed_deals_gets_the_programs_win_rate() -> None:
    rows = [row("acme", "won")] * 3 + [row("acme", "lost")] * 2 + [row("new", "won")] + [row("bb", "lost")] * 3
    own, program = win_rates(rows)
    assert own == {"acme": Decimal("0.6")} and program == Decimal(4) / 9


def test_forecast_prices_open_deals_with_their_terms_times_the_win_rate() -> None:
    book = parse_terms('[program]\ncurrency = "USD"\npercent = 10\nflat = 100\nhold_days = 0\n'
                       '[partner.acme]\ncurrency = "USD"\npercent = 20\nhold_days = 0\n')
    rows = ([row("acme", "won")] * 4 + [row("acme", "lost")] * 1
            + [row("acme", "proposal", "10000.00"), row("acme", "qualified", "5000.00"),
               row("acme", "lost", "99999.00"), row("acme", "negotiation", "100.00", currency="EUR"),
               row("bb", "negotiation", "1000.00")])
    lines = {(line["partner"], line["currency"]): line for line in forecast(rows, book, date(2026, 12, 7))}
    acme = lines[("acme", "USD")]
    # 20 % of 15,000.00 = 3,000.00, at acme's win rate of 4 won in 6 closed (the lost deal's amount is no pipeline)
    assert (acme["open_deals"], acme["open_pipeline"], acme["win_rate"], acme["expected_commission"]) == (
        2, "15000.00", 0.6667, "2000.00")
    assert lines[("acme", "EUR")]["unpriced_deals"] == 1  # no terms pay in EUR: counted, not converted
    # bb has no closed deals: the program's rate (4 of 6) and terms (10 % + 100 flat): 200.00 x 2/3
    assert lines[("bb", "USD")]["expected_commission"] == "133.33"
