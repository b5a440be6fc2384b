"""Commissions as pure decisions: which terms apply, what a won deal earns, which fraud holds it gets,
and what a change of the deal does to the commission entries already recorded. No I/O here.

Money is an ``int`` of minor units (cents) in one currency; rates are ``Decimal`` percents. The one
rounding step is the percentage part, rounded half up to the minor unit (12.345 -> 12.35); flat fees,
minimums and caps are exact minor units. Nothing is ever converted between currencies: a deal in
another currency than its terms is held for a person to settle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

# the money helpers live below the engine (the ledger's views use them too); re-exported here
from refsync.state.money import as_decimal_text as as_decimal_text
from refsync.state.money import minor_digits as minor_digits
from refsync.state.money import to_minor as to_minor

OPEN_STATES = ("pending", "held", "approved")
STATES = ("pending", "held", "approved", "rejected", "paid", "void", "clawback")


@dataclass(frozen=True)
class Tier:
    from_minor: int  # deal amount or period volume where this rate starts
    percent: Decimal


@dataclass(frozen=True)
class Terms:
    """One version of a partner's (or the program's) agreement terms, amounts in minor units."""

    version: str
    scope: str  # "program" or "partner:CODE"
    effective_from: date
    currency: str
    percent: Decimal | None = None
    flat_minor: int = 0
    tiers: tuple[Tier, ...] = ()
    tier_basis: str = "deal"  # or "volume": the partner's won amount in the period, this deal included
    period: str = "quarter"  # month, quarter, year: for volume tiers and cap_per_period
    min_deal_minor: int | None = None
    cap_per_deal_minor: int | None = None
    cap_per_period_minor: int | None = None
    hold_days: int = 0


@dataclass(frozen=True)
class HoldRules:
    burst_window_hours: int = 24
    burst_factor: Decimal = Decimal(5)
    burst_min_referrals: int = 10
    baseline_days: int = 90
    duplicate_window_days: int = 30
    min_hours_to_close: Decimal = Decimal(24)


@dataclass(frozen=True)
class TermsBook:
    """Every version of every partner's terms and of the program's, and the fraud-hold rules."""

    applies_to: str  # "submitted" or "won": which date picks the version
    program: tuple[Terms, ...]
    partners: dict[str, tuple[Terms, ...]]
    domains: dict[str, tuple[str, ...]]
    holds: HoldRules = HoldRules()

    def terms_for(self, partner: str, submitted_on: date, won_on: date) -> Terms | None:
        """The version in effect for this referral: the partner's own if it has one in effect on the
        deciding date, else the program's; None when no terms were in effect then."""
        on = submitted_on if self.applies_to == "submitted" else won_on
        for versions in (self.partners.get(partner, ()), self.program):
            in_effect = [t for t in versions if t.effective_from <= on]
            if in_effect:
                return in_effect[-1]
        return None

    def version(self, version: str) -> Terms | None:
        for versions in (self.program, *self.partners.values()):
            for terms in versions:
                if terms.version == version:
                    return terms
        return None


@dataclass(frozen=True)
class Outcome:
    """A won deal as the ledger recorded it."""

    amount_minor: int
    currency: str
    closed_on: date


@dataclass(frozen=True)
class Computation:
    amount_minor: int
    currency: str
    terms_version: str
    percent: Decimal | None  # the rate applied (after tiers), None when only a flat fee
    notes: tuple[str, ...] = ()  # below_min_deal, capped_per_deal, capped_per_period
    blocked: str | None = None  # why no amount could be computed (the commission is held)


def period_bounds(on: date, period: str) -> tuple[date, date]:
    """The first day of the period holding ``on`` and the first day of the next one."""
    if period == "year":
        return date(on.year, 1, 1), date(on.year + 1, 1, 1)
    months = 3 if period == "quarter" else 1
    first = (on.month - 1) // months * months + 1
    start = date(on.year, first, 1)
    nxt = first + months
    return start, date(on.year + (nxt > 12), (nxt - 1) % 12 + 1, 1)


def rate_for(terms: Terms, deal_minor: int, period_volume_minor: int) -> Decimal | None:
    """The percent this deal earns: the tier reached (by deal amount, or by the partner's period volume
    including this deal), else the flat percent. The whole amount earns the tier's rate."""
    if not terms.tiers:
        return terms.percent
    basis = deal_minor if terms.tier_basis == "deal" else period_volume_minor + deal_minor
    return [t for t in terms.tiers if t.from_minor <= basis][-1].percent


def compute(terms: Terms, outcome: Outcome, *, period_volume_minor: int = 0,
            period_earned_minor: int = 0) -> Computation:
    """What a won deal earns under ``terms``. ``period_volume_minor``: the partner's other won deals in
    this deal's period (volume tiers); ``period_earned_minor``: what its other commissions of the
    period already earned (cap_per_period). Both in the terms' currency."""
    if outcome.currency != terms.currency:
        return Computation(0, outcome.currency, terms.version, None, blocked=(
            f"deal is in {outcome.currency} but the terms ({terms.version}) pay in {terms.currency}; refsync "
            "converts no currency: settle it by hand and reject, or add terms in that currency"))
    if terms.min_deal_minor is not None and outcome.amount_minor < terms.min_deal_minor:
        return Computation(0, terms.currency, terms.version, None, ("below_min_deal",))
    notes: list[str] = []
    rate = rate_for(terms, outcome.amount_minor, period_volume_minor)
    share = Decimal(0)
    if rate is not None:
        share = (Decimal(outcome.amount_minor) * rate / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    amount = int(share) + terms.flat_minor
    if terms.cap_per_deal_minor is not None and amount > terms.cap_per_deal_minor:
        amount = terms.cap_per_deal_minor
        notes.append("capped_per_deal")
    if terms.cap_per_period_minor is not None:
        room = max(0, terms.cap_per_period_minor - period_earned_minor)
        if amount > room:
            amount = room
            notes.append("capped_per_period")
    return Computation(amount, terms.currency, terms.version, rate, tuple(notes))


@dataclass(frozen=True)
class HoldFacts:
    """What the fraud checks look at, gathered from the ledger for one referral."""

    prospect_domain: str | None
    partner_domains: tuple[str, ...]
    submitted_at: datetime
    won_at: datetime
    referrals_in_window: int  # the partner's referrals submitted in the burst window ending at this one
    referrals_in_baseline: int  # ... in the baseline_days before that window
    other_partners: tuple[str, ...]  # other partners who referred the same prospect within the window


@dataclass(frozen=True)
class Hold:
    code: str  # self_referral, referral_burst, multiple_partners, fast_close, currency_mismatch, manual
    detail: str


def _own_domain(domain: str, owned: Sequence[str]) -> str | None:
    domain = domain.lower().rstrip(".")
    return next((d for d in owned if domain == d or domain.endswith("." + d)), None)


def hold_reasons(facts: HoldFacts, rules: HoldRules) -> list[Hold]:
    """Every fraud safeguard this referral trips; an empty list lets the commission go to pending."""
    holds = []
    owned = _own_domain(facts.prospect_domain, facts.partner_domains) if facts.prospect_domain else None
    if owned:
        holds.append(Hold("self_referral", f"the prospect's domain {facts.prospect_domain} is the partner's own "
                                           f"({owned})"))
    windows = Decimal(facts.referrals_in_baseline) * rules.burst_window_hours / (rules.baseline_days * 24)
    usual = max(Decimal(rules.burst_min_referrals), rules.burst_factor * windows)
    if facts.referrals_in_window > usual:
        holds.append(Hold("referral_burst", (
            f"{facts.referrals_in_window} referrals from this partner within {rules.burst_window_hours}h of this one, "
            f"above its usual rate ({windows.quantize(Decimal('0.1'))} per {rules.burst_window_hours}h over "
            f"{rules.baseline_days} days; hold above {usual.quantize(Decimal('0.1'))})")))
    if facts.other_partners:
        holds.append(Hold("multiple_partners", (
            f"the same prospect was referred by {', '.join(sorted(facts.other_partners))} within "
            f"{rules.duplicate_window_days} days")))
    hours = Decimal((facts.won_at - facts.submitted_at).total_seconds()) / 3600
    if hours < rules.min_hours_to_close:
        holds.append(Hold("fast_close", (
            f"won {hours.quantize(Decimal('0.1'))}h after submission, under the {rules.min_hours_to_close}h "
            "a real sale takes")))
    return holds


@dataclass(frozen=True)
class Entry:
    """A commission entry already in the ledger, as the planner needs it."""

    id: int
    kind: str  # commission or clawback
    status: str
    amount_minor: int
    currency: str
    basis: tuple[int, str, date] | None  # (deal amount, currency, close date) it was computed from
    terms_version: str | None


@dataclass(frozen=True)
class Step:
    """One change to make: create (a commission), adjust or void (an open one), clawback, not_due."""

    action: str
    entry_id: int | None = None
    amount_minor: int = 0
    reason: str = ""


def settled_minor(entries: Sequence[Entry]) -> int:
    """What the partner keeps for this referral so far: paid commissions minus clawbacks."""
    return sum(e.amount_minor for e in entries if e.status == "paid" or e.kind == "clawback")


def plan(entries: Sequence[Entry], outcome: Outcome | None, computation: Computation | None,
         status: str) -> list[Step]:
    """What a referral's current state does to its commission entries. ``outcome`` and
    ``computation`` are None unless the deal is won and credited; ``status`` is the referral's status,
    or a phrase saying why it no longer earns (``referral merged into ...``). Idempotent: planning
    again after applying the steps gives no step. A rejected commission is final while the deal
    stays won."""
    open_ = [e for e in entries if e.status in OPEN_STATES]
    current = open_[-1] if open_ else None
    settled = settled_minor(entries)
    if outcome is None:
        why = f"deal is {status} now" if " " not in status else status
        steps = [Step("void", current.id, reason=why)] if current else []
        if settled > 0:
            steps.append(Step("clawback", amount_minor=-settled, reason=f"{why}, after payment"))
        return steps
    basis = (outcome.amount_minor, outcome.currency, outcome.closed_on)
    commissions = [e for e in entries if e.kind == "commission"]
    if commissions and commissions[-1].status == "rejected":
        return []
    standing = [e for e in entries if e.status != "void"]
    if standing and standing[-1].basis == basis:
        return []
    assert computation is not None
    if computation.blocked:
        if current is None and not standing:
            return [Step("create", amount_minor=0, reason=computation.blocked)]
        return []
    owed = computation.amount_minor - settled
    changed = "deal amount or close date changed" if standing else "deal won"
    if current is not None:
        if owed <= 0:
            steps = [Step("void", current.id, reason=f"{changed}; nothing more is due")]
            return steps + ([Step("clawback", amount_minor=owed, reason=changed)] if owed < 0 else [])
        return [Step("adjust", current.id, owed, reason=changed)]
    if owed > 0:
        return [Step("create", amount_minor=owed, reason=changed)]
    if owed < 0:
        return [Step("clawback", amount_minor=owed, reason=f"{changed} after payment")]
    if not standing:
        return [Step("not_due", reason=",".join(computation.notes) or "zero")]
    return []


def payable_after(won_at: datetime, hold_days: int) -> datetime:
    return won_at + timedelta(days=hold_days)
