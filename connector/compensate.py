"""The compensation step of every sync cycle: bring each referral's commission entries in line with
its deal and the agreement terms.

A won deal gets a commission (pending in its hold period, or held by a fraud safeguard); a deal that
reopens, is lost or changes amount before payment adjusts or voids it; after payment it creates a
clawback against the partner's next payout. The decisions are :func:`connector.commission.plan`;
this module gathers their facts from the ledger and applies the steps, one referral per transaction.
Running it again changes nothing: it is safe in `sync --once`, the daemon and on several replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from refsync.connector.commission import (
    Computation,
    Entry,
    HoldFacts,
    Outcome,
    Step,
    Terms,
    TermsBook,
    compute,
    hold_reasons,
    payable_after,
    period_bounds,
    plan,
    to_minor,
)
from refsync.connector.logs import get_logger
from refsync.state import commissions as repo
from refsync.state.ledger import Ledger, LedgerTxn
from refsync.state.models import Commission, Referral

ACTOR = "refsync:compensation"
log = get_logger("refsync.compensate")


@dataclass
class CompensationCounts:
    created: int = 0
    held: int = 0
    adjusted: int = 0
    voided: int = 0
    clawbacks: int = 0
    not_due: int = 0
    no_terms: int = 0
    skipped: list[str] = field(default_factory=list)  # referral ids another replica was changing


def _entry(c: Commission) -> Entry:
    basis = (c.deal_amount_minor, c.deal_currency, c.closed_on) if c.deal_amount_minor is not None else None
    return Entry(c.id, c.kind, c.status, c.amount_minor, c.currency, basis,  # type: ignore[arg-type]
                 c.terms_version)


def won_at(referral: Referral) -> datetime:
    return referral.status_changed_at


def outcome_of(referral: Referral, terms_currency: str) -> Outcome | None:
    """The won deal as the commission sees it; a CRM without currencies gives the terms' currency."""
    if referral.status != "won" or referral.outcome_amount is None:
        return None
    currency = (referral.outcome_currency or terms_currency).upper()
    closed_on = referral.outcome_close_date or won_at(referral).date()
    return Outcome(to_minor(referral.outcome_amount, currency), currency, closed_on)


def _computation(txn: LedgerTxn, referral: Referral, terms: Terms, outcome: Outcome) -> Computation:
    start, end = period_bounds(outcome.closed_on, terms.period)
    volume = 0
    if terms.tier_basis == "volume":
        volume = to_minor(repo.won_volume(txn, referral.partner_id, terms.currency, start, end, referral.id,
                                          terms.currency == outcome.currency), terms.currency)
    spent = repo.earned(txn, referral.partner_id, terms.currency, start, end, referral.id) \
        if terms.cap_per_period_minor is not None else 0
    return compute(terms, outcome, period_volume_minor=volume, period_earned_minor=spent)


def _holds(txn: LedgerTxn, referral: Referral, book: TermsBook) -> list[dict[str, str]]:
    rules = book.holds
    submitted = referral.submitted_at
    window = timedelta(hours=rules.burst_window_hours)
    dup = timedelta(days=rules.duplicate_window_days)
    domain = referral.prospect_domain or (referral.prospect_email or "").rpartition("@")[2] or None
    facts = HoldFacts(
        prospect_domain=domain, partner_domains=book.domains.get(referral.partner.code, ()),
        submitted_at=submitted, won_at=won_at(referral),
        referrals_in_window=repo.submitted_between(txn, referral.partner_id, submitted - window, submitted),
        referrals_in_baseline=repo.submitted_between(
            txn, referral.partner_id, submitted - window - timedelta(days=rules.baseline_days), submitted - window),
        other_partners=tuple(repo.other_partners(txn, referral, submitted - dup, submitted + dup)))
    return [{"code": h.code, "detail": h.detail} for h in hold_reasons(facts, rules)]


def _apply(txn: LedgerTxn, referral: Referral, steps: list[Step], book: TermsBook, terms: Terms | None,
           outcome: Outcome | None, computation: Computation | None, counts: CompensationCounts) -> None:
    rows = {c.id: c for c in repo.entries(txn, referral.id)}
    basis: dict[str, object] = {"facts": repo.facts_key(referral)}
    if outcome is not None:
        basis.update(deal_amount_minor=outcome.amount_minor, deal_currency=outcome.currency,
                     closed_on=outcome.closed_on)
    notes = ",".join(computation.notes) or None if computation else None
    for step in steps:
        if step.action == "not_due":
            assert terms is not None
            counts.not_due += repo.note_not_due(txn, referral, step.reason, terms.version, ACTOR)
        elif step.action == "void":
            repo.change(txn, rows[step.entry_id or 0], "commission_voided", step.reason, ACTOR, status="void",
                        reason=step.reason)
            counts.voided += 1
        elif step.action == "adjust":
            entry = rows[step.entry_id or 0]
            status = "pending" if entry.status == "approved" else entry.status
            repo.change(txn, entry, "commission_adjusted", step.reason + (
                "; approval withdrawn, approve the new amount" if entry.status == "approved" else ""), ACTOR,
                status=status, amount_minor=step.amount_minor, notes=notes,
                terms_version=computation.terms_version if computation else entry.terms_version, **basis)
            counts.adjusted += 1
        elif step.action == "clawback":
            currency = outcome.currency if outcome else next(iter(rows.values())).currency
            repo.add_entry(txn, referral, kind="clawback", status="clawback", amount_minor=step.amount_minor,
                           currency=currency, actor=ACTOR, reason=step.reason,
                           terms_version=next((c.terms_version for c in reversed(rows.values())), None), **basis)
            counts.clawbacks += 1
        elif step.action == "create":
            assert terms is not None and outcome is not None and computation is not None
            holds = _holds(txn, referral, book)
            if computation.blocked:
                holds.insert(0, {"code": "currency_mismatch", "detail": computation.blocked})
            repo.add_entry(txn, referral, kind="commission", status="held" if holds else "pending",
                           amount_minor=step.amount_minor, currency=computation.currency, actor=ACTOR,
                           reason=step.reason, terms_version=computation.terms_version, holds=holds, notes=notes,
                           won_at=won_at(referral), payable_after=payable_after(won_at(referral), terms.hold_days),
                           **basis)
            counts.held += bool(holds)
            counts.created += not holds


def compensate_referral(txn: LedgerTxn, referral_id: str, book: TermsBook, counts: CompensationCounts) -> None:
    """Plan and apply one referral's commission steps inside ``txn`` (its row locked)."""
    referral = repo.lock_referral(txn, referral_id)
    if referral is None:
        return
    entries = [_entry(c) for c in repo.entries(txn, referral.id)]
    terms = computation = outcome = None
    earns = referral.status == "won" and referral.credited and referral.merged_into is None
    if earns and referral.outcome_amount is None:
        # the CRM has no amount for the won deal (yet): nothing to compute, nothing to undo
        if not entries and repo.note_not_due(txn, referral, "deal_has_no_amount", "none", ACTOR):
            counts.not_due += 1
        return
    if earns:
        recorded = next((e.terms_version for e in reversed(entries) if e.terms_version), None)
        submitted_on = referral.submitted_at.date()
        closed_on = referral.outcome_close_date or won_at(referral).date()
        terms = (book.version(recorded) if recorded else None) or book.terms_for(
            referral.partner.code, submitted_on, closed_on)
        if terms is None:
            if repo.note_not_due(txn, referral, "no_terms_in_effect", "none", ACTOR):
                counts.no_terms += 1
            return
        outcome = outcome_of(referral, terms.currency)
        assert outcome is not None
        computation = _computation(txn, referral, terms, outcome)
    status = referral.status
    if status == "won" and (referral.merged_into or not referral.credited):
        status = (f"referral merged into {referral.merged_into}" if referral.merged_into
                  else "referral no longer holds the credit")
    steps = plan(entries, outcome, computation, status)
    if steps:
        _apply(txn, referral, steps, book, terms, outcome, computation, counts)


def needs_review(standing: repo.Standing) -> bool:
    """Whether a referral's entries may be out of line with its deal: the outcome changed since its last
    entry (or its "not due" note), or it has open or paid entries and no longer earns. Most won
    referrals are settled, and are passed over without a write transaction."""
    live = [e for e in standing.entries if e[0] != "void"]
    if not standing.earns:
        settled = sum(amount for status, kind, amount, _ in live if status == "paid" or kind == "clawback")
        return settled > 0 or any(e[0] in repo.OPEN for e in live)
    if live:
        return live[-1][3] != standing.facts
    return standing.facts not in standing.noted


def compensate(ledger: Ledger, book: TermsBook, chunk: int = 100) -> CompensationCounts:
    """Bring every won (or formerly won and paid) referral's commissions in line with its deal; one
    write transaction per ``chunk`` referrals that need it, each referral in its own savepoint."""
    counts = CompensationCounts()
    due = [s.referral_id for s in repo.standings(ledger) if needs_review(s)]
    for start in range(0, len(due), chunk):
        with ledger.transaction() as txn:
            for referral_id in due[start:start + chunk]:
                try:
                    with txn.savepoint():
                        compensate_referral(txn, referral_id, book, counts)
                except IntegrityError:
                    # another replica added this referral's entry first; the next cycle sees it
                    counts.skipped.append(referral_id)
                    log.info("commission changed by another worker; left to it", referral_id=referral_id)
    return counts
