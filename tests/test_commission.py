"""What a won deal earns, which holds it gets, and what later changes do: pure functions, table-driven."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from refsync.connector.commission import (
    Entry,
    HoldFacts,
    HoldRules,
    Outcome,
    Step,
    Terms,
    TermsBook,
    Tier,
    as_decimal_text,
    compute,
    hold_reasons,
    period_bounds,
    plan,
    to_minor,
)

CLOSED = date(2026, 5, 15)


def terms(**kw: object) -> Terms:
    values: dict[str, object] = {"version": "v1", "scope": "program", "effective_from": date(2026, 1, 1),
                                 "currency": "USD"}
    values.update(kw)
    return Terms(**values)  # type: ignore[arg-type]


def won(amount_minor: int, currency: str = "USD", closed_on: date = CLOSED) -> Outcome:
    return Outcome(amount_minor, currency, closed_on)


@pytest.mark.parametrize(("kw", "deal", "volume", "earned", "expected", "notes"), [
    ({"percent": Decimal(10)}, 1_000_000, 0, 0, 100_000, ()),  # 10 % of 10,000.00
    ({"flat": None, "flat_minor": 50_000}, 1_000_000, 0, 0, 50_000, ()),  # flat 500.00 only
    ({"percent": Decimal(10), "flat_minor": 50_000}, 1_000_000, 0, 0, 150_000, ()),  # both add up
    ({"percent": Decimal("2.5")}, 12_345, 0, 0, 309, ()),  # 308.625 cents rounds half up to 309
    ({"percent": Decimal("2.5")}, 12_346, 0, 0, 309, ()),  # 308.65 -> 309
    ({"percent": Decimal(1)}, 50, 0, 0, 1, ()),  # 0.5 cent rounds up, never down
    ({"percent": Decimal(1)}, 49, 0, 0, 0, ()),  # 0.49 cent rounds down
    ({"percent": Decimal(10), "min_deal_minor": 500_000}, 499_999, 0, 0, 0, ("below_min_deal",)),
    ({"percent": Decimal(10), "min_deal_minor": 500_000}, 500_000, 0, 0, 50_000, ()),  # the minimum itself earns
    ({"percent": Decimal(10), "cap_per_deal_minor": 80_000}, 1_000_000, 0, 0, 80_000, ("capped_per_deal",)),
    ({"percent": Decimal(10), "cap_per_period_minor": 300_000}, 1_000_000, 0, 250_000, 50_000,
     ("capped_per_period",)),
    ({"percent": Decimal(10), "cap_per_period_minor": 300_000}, 1_000_000, 0, 300_000, 0, ("capped_per_period",)),
    ({"percent": Decimal(10), "cap_per_period_minor": 300_000}, 1_000_000, 0, 100_000, 100_000, ()),
    ({"percent": Decimal(10), "flat_minor": 10_000, "cap_per_deal_minor": 100_000}, 1_000_000, 0, 0, 100_000,
     ("capped_per_deal",)),  # the cap applies to percent and flat together
])
def test_compute_pays_percent_flat_minimum_and_caps_in_minor_units(
    kw: dict[str, object], deal: int, volume: int, earned: int, expected: int, notes: tuple[str, ...]
) -> None:
    result = compute(terms(**{k: v for k, v in kw.items() if k != "flat"}), won(deal),
                     period_volume_minor=volume, period_earned_minor=earned)
    assert (result.amount_minor, result.notes, result.currency, result.terms_version) == (expected, notes, "USD", "v1")
    assert isinstance(result.amount_minor, int)


DEAL_TIERS = (Tier(0, Decimal(10)), Tier(5_000_000, Decimal(12)))


@pytest.mark.parametrize(("deal", "expected"), [
    (4_999_999, 500_000),  # 49,999.99 at 10 % = 4,999.999 -> 5,000.00
    (5_000_000, 600_000),  # 50,000.00 reaches the 12 % tier: the whole amount at 12 %
    (10_000_000, 1_200_000),
])
def test_deal_size_tiers_give_the_rate_of_the_tier_the_amount_reaches(deal: int, expected: int) -> None:
    assert compute(terms(tiers=DEAL_TIERS), won(deal)).amount_minor == expected


def test_volume_tiers_count_the_partners_other_won_deals_of_the_period_plus_this_one() -> None:
    volume_terms = terms(tiers=(Tier(0, Decimal(5)), Tier(10_000_000, Decimal(8))), tier_basis="volume")
    assert compute(volume_terms, won(2_000_000), period_volume_minor=7_000_000).amount_minor == 100_000
    assert compute(volume_terms, won(3_000_000), period_volume_minor=7_000_000).amount_minor == 240_000
    assert compute(volume_terms, won(3_000_000), period_volume_minor=0).amount_minor == 150_000


@pytest.mark.parametrize(("on", "period", "bounds"), [
    (date(2026, 3, 31), "quarter", (date(2026, 1, 1), date(2026, 4, 1))),
    (date(2026, 4, 1), "quarter", (date(2026, 4, 1), date(2026, 7, 1))),  # across the boundary: a new quarter
    (date(2026, 12, 31), "quarter", (date(2026, 10, 1), date(2027, 1, 1))),
    (date(2026, 12, 5), "month", (date(2026, 12, 1), date(2027, 1, 1))),
    (date(2026, 2, 28), "month", (date(2026, 2, 1), date(2026, 3, 1))),
    (date(2026, 7, 4), "year", (date(2026, 1, 1), date(2027, 1, 1))),
])
def test_period_bounds(on: date, period: str, bounds: tuple[date, date]) -> None:
    assert period_bounds(on, period) == bounds


def test_a_deal_in_another_currency_than_its_terms_is_blocked_never_converted() -> None:
    result = compute(terms(percent=Decimal(10)), won(1_000_000, "EUR"))
    assert result.amount_minor == 0 and result.blocked and "EUR" in result.blocked and "USD" in result.blocked


@pytest.mark.parametrize(("currency", "amount", "minor", "text"), [
    ("USD", Decimal("1234.5"), 123_450, "1234.50"),
    ("JPY", Decimal("1500"), 1500, "1500"),
    ("KWD", Decimal("1.2345"), 1235, "1.235"),
    ("USD", Decimal("0.005"), 1, "0.01"),
    ("USD", Decimal("-12.30"), -1230, "-12.30"),
])
def test_minor_units_follow_the_currencys_decimals(currency: str, amount: Decimal, minor: int, text: str) -> None:
    assert to_minor(amount, currency) == minor
    assert as_decimal_text(minor, currency) == text


def _book(applies_to: str) -> TermsBook:
    old, new = terms(version="p-2026", percent=Decimal(10)), terms(version="p-jul", percent=Decimal(15),
                                                                   effective_from=date(2026, 7, 1))
    acme = terms(version="acme-sep", scope="partner:acme", percent=Decimal(20), effective_from=date(2026, 9, 1))
    return TermsBook(applies_to, (old, new), {"acme": (acme,)}, {})


@pytest.mark.parametrize(("applies_to", "partner", "submitted", "won_on", "version"), [
    ("submitted", "bluebird", date(2026, 6, 30), date(2026, 7, 15), "p-2026"),  # submitted before the change
    ("won", "bluebird", date(2026, 6, 30), date(2026, 7, 15), "p-jul"),  # won after it
    ("submitted", "bluebird", date(2026, 7, 1), date(2026, 7, 2), "p-jul"),  # effective_from is inclusive
    ("submitted", "acme", date(2026, 8, 1), date(2026, 9, 5), "p-jul"),  # its own terms start later
    ("submitted", "acme", date(2026, 9, 1), date(2026, 9, 5), "acme-sep"),
    ("submitted", "bluebird", date(2025, 12, 31), date(2026, 2, 1), None),  # before any terms
])
def test_the_version_in_effect_on_the_deciding_date_applies(
    applies_to: str, partner: str, submitted: date, won_on: date, version: str | None
) -> None:
    found = _book(applies_to).terms_for(partner, submitted, won_on)
    assert (found.version if found else None) == version


T0 = datetime(2026, 5, 1, 9, tzinfo=UTC)


def facts(**kw: object) -> HoldFacts:
    values: dict[str, object] = {"prospect_domain": "northwind.example", "partner_domains": ("acme.example",),
                                 "submitted_at": T0, "won_at": T0 + timedelta(days=20), "referrals_in_window": 1,
                                 "referrals_in_baseline": 30, "other_partners": ()}
    values.update(kw)
    return HoldFacts(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "codes"), [
    ({}, []),
    ({"prospect_domain": "acme.example"}, ["self_referral"]),
    ({"prospect_domain": "sales.acme.example"}, ["self_referral"]),  # a subdomain is still its own
    ({"prospect_domain": "notacme.example"}, []),
    ({"referrals_in_window": 10}, []),  # at the floor of 10: not a burst
    ({"referrals_in_window": 11}, ["referral_burst"]),
    ({"referrals_in_window": 40, "referrals_in_baseline": 90 * 8}, []),  # 8 a day usually, 5x = 40
    ({"referrals_in_window": 41, "referrals_in_baseline": 90 * 8}, ["referral_burst"]),
    ({"other_partners": ("bluebird",)}, ["multiple_partners"]),
    ({"won_at": T0 + timedelta(hours=23)}, ["fast_close"]),
    ({"won_at": T0 + timedelta(hours=24)}, []),
    ({"prospect_domain": "acme.example", "won_at": T0 + timedelta(hours=2)}, ["self_referral", "fast_close"]),
])
def test_each_fraud_safeguard_holds_with_its_reason(kw: dict[str, object], codes: list[str]) -> None:
    holds = hold_reasons(facts(**kw), HoldRules())
    assert [h.code for h in holds] == codes
    assert all(h.detail for h in holds)


BASIS = (1_000_000, "USD", CLOSED)


def entry(id_: int, status: str, amount: int, kind: str = "commission",
          basis: tuple[int, str, date] | None = BASIS) -> Entry:
    return Entry(id_, kind, status, amount, "USD", basis, "v1")


def test_plan_creates_a_commission_for_a_newly_won_deal_and_nothing_the_second_time() -> None:
    outcome = won(1_000_000)
    result = compute(terms(percent=Decimal(10)), outcome)
    assert plan([], outcome, result, "won") == [Step("create", amount_minor=100_000, reason="deal won")]
    assert plan([entry(1, "pending", 100_000)], outcome, result, "won") == []


@pytest.mark.parametrize("status", ["pending", "held", "approved"])
def test_plan_voids_an_unpaid_commission_when_the_deal_reopens_or_is_lost(status: str) -> None:
    assert plan([entry(1, status, 100_000)], None, None, "negotiation") == [
        Step("void", 1, reason="deal is negotiation now")]


def test_plan_adjusts_an_unpaid_commission_when_the_amount_changes() -> None:
    outcome = won(2_000_000)
    steps = plan([entry(1, "approved", 100_000)], outcome, compute(terms(percent=Decimal(10)), outcome), "won")
    assert steps == [Step("adjust", 1, 200_000, reason="deal amount or close date changed")]


def test_plan_claws_back_a_paid_commission_when_the_deal_is_lost_and_only_once() -> None:
    paid = [entry(1, "paid", 100_000)]
    assert plan(paid, None, None, "lost") == [Step("clawback", amount_minor=-100_000,
                                                   reason="deal is lost now, after payment")]
    settled = [*paid, entry(2, "clawback", -100_000, kind="clawback", basis=None)]
    assert plan(settled, None, None, "lost") == []
    assert plan(paid, None, None, "referral merged into 01M9X") == [
        Step("clawback", amount_minor=-100_000, reason="referral merged into 01M9X, after payment")]


def test_plan_after_payment_claws_back_a_decrease_and_tops_up_an_increase() -> None:
    paid = [entry(1, "paid", 100_000)]
    lower, higher = won(600_000), won(1_500_000)
    percent = terms(percent=Decimal(10))
    assert plan(paid, lower, compute(percent, lower), "won") == [
        Step("clawback", amount_minor=-40_000, reason="deal amount or close date changed after payment")]
    assert plan(paid, higher, compute(percent, higher), "won") == [
        Step("create", amount_minor=50_000, reason="deal amount or close date changed")]


def test_plan_pays_again_after_a_void_when_the_deal_is_won_again() -> None:
    outcome = won(1_000_000)
    steps = plan([entry(1, "void", 100_000)], outcome, compute(terms(percent=Decimal(10)), outcome), "won")
    assert steps == [Step("create", amount_minor=100_000, reason="deal won")]


def test_plan_keeps_a_rejection_while_the_deal_stays_won() -> None:
    outcome = won(2_000_000)
    assert plan([entry(1, "rejected", 100_000)], outcome, compute(terms(percent=Decimal(10)), outcome), "won") == []


def test_plan_records_a_deal_that_earns_nothing_instead_of_a_zero_commission() -> None:
    outcome = won(100)
    result = compute(terms(percent=Decimal(10), min_deal_minor=500_000), outcome)
    assert plan([], outcome, result, "won") == [Step("not_due", reason="below_min_deal")]


def test_plan_holds_a_blocked_deal_for_a_person_instead_of_dropping_it() -> None:
    outcome = won(1_000_000, "EUR")
    result = compute(terms(percent=Decimal(10)), outcome)
    [step] = plan([], outcome, result, "won")
    assert step.action == "create" and step.amount_minor == 0 and "EUR" in step.reason
