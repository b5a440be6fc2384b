"""What the partner portal reads: one partner's referrals, never another's.

Every function takes the partner's id and puts it in its WHERE clause: a referral of another
partner is indistinguishable from one that does not exist (the pages answer 404 for both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, func, or_, select

from refsync.state.ledger import Ledger
from refsync.state.models import Commission, Referral, StatusTransition

PAGE = 50


@dataclass(frozen=True)
class Step:
    status: str
    at: datetime
    source: str  # import, crm_poll, expiry, manual, attribution
    previous: str | None


@dataclass(frozen=True)
class PartnerReferral:
    id: str
    prospect_name: str | None
    prospect_email: str | None
    prospect_company: str | None
    status: str
    submitted_at: datetime
    status_changed_at: datetime
    credited: bool
    review_required: bool
    merged: bool
    outcome_amount: Decimal | None
    outcome_currency: str | None
    outcome_close_date: date | None
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True)
class PartnerCommission:
    """What a partner may know of one of its commission entries: no hold reasons, no approver,
    no free-text reason (those can name internal checks or other partners)."""

    id: int
    referral_id: str
    kind: str  # commission, clawback
    status: str  # pending, held, approved, rejected, paid, void, clawback
    amount_minor: int
    currency: str
    payable_after: datetime | None
    paid_reference: str | None  # the payout that paid it (or, for a clawback, that deducted it)
    paid_at: datetime | None
    created_at: datetime


def _view(r: Referral, steps: Sequence[Step] = ()) -> PartnerReferral:
    return PartnerReferral(r.id, r.prospect_name, r.prospect_email, r.prospect_company, r.status, r.submitted_at,
                           r.status_changed_at, r.credited, r.review_required, r.merged_into is not None,
                           r.outcome_amount, r.outcome_currency, r.outcome_close_date, tuple(steps))


def counts_by_status(ledger: Ledger, partner_id: int) -> dict[str, int]:
    with ledger.reading() as session:
        return {status: int(n) for status, n in session.execute(
            select(Referral.status, func.count()).where(Referral.partner_id == partner_id)
            .group_by(Referral.status))}


def referrals(ledger: Ledger, partner_id: int, *, status: str | None = None, since: datetime | None = None,
              until: datetime | None = None, search: str | None = None, limit: int = PAGE,
              offset: int = 0) -> tuple[list[PartnerReferral], int]:
    """The partner's referrals, newest first, filtered; one page and the number of matches."""
    where: list[ColumnElement[bool]] = [Referral.partner_id == partner_id]
    if status:
        where.append(Referral.status == status)
    if since:
        where.append(Referral.submitted_at >= since)
    if until:
        where.append(Referral.submitted_at < until)
    if search:
        pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(or_(*(func.lower(column).like(pattern, escape="\\") for column in (
            Referral.prospect_email, Referral.prospect_company, Referral.prospect_name))))
    with ledger.reading() as session:
        total = int(session.scalar(select(func.count()).select_from(Referral).where(*where)) or 0)
        rows = session.scalars(select(Referral).where(*where)
                                   .order_by(Referral.submitted_at.desc(), Referral.id.desc())
                                   .limit(limit).offset(offset))
        return [_view(r) for r in rows], total


def referral(ledger: Ledger, partner_id: int, referral_id: str) -> PartnerReferral | None:
    """One of the partner's referrals with its status steps; None for any other id."""
    with ledger.reading() as session:
        found = session.scalar(select(Referral).where(Referral.id == referral_id, Referral.partner_id == partner_id))
        if found is None:
            return None
        steps = [Step(t.to_status, t.at, t.source, t.from_status) for t in session.scalars(
            select(StatusTransition).where(StatusTransition.referral_id == found.id).order_by(StatusTransition.id))]
        return _view(found, steps)


def owned(ledger: Ledger, partner_id: int, referral_ids: Sequence[str]) -> dict[str, PartnerReferral]:
    """Which of these referrals are the partner's, by id (a submission's answer names only those)."""
    if not referral_ids:
        return {}
    with ledger.reading() as session:
        return {r.id: _view(r) for r in session.scalars(select(Referral).where(
            Referral.id.in_(list(referral_ids)), Referral.partner_id == partner_id))}


def commissions(ledger: Ledger, partner_id: int, referral_id: str | None = None) -> list[PartnerCommission]:
    """The partner's commission and clawback entries (of one of its referrals, if given), oldest first."""
    query = select(Commission).join(Referral, Commission.referral_id == Referral.id).where(
        Commission.partner_id == partner_id, Referral.partner_id == partner_id)
    if referral_id is not None:
        query = query.where(Commission.referral_id == referral_id)
    with ledger.reading() as session:
        return [PartnerCommission(c.id, c.referral_id, c.kind, c.status, c.amount_minor, c.currency, c.payable_after,
                                  c.paid_reference, c.paid_at, c.created_at)
                for c in session.scalars(query.order_by(Commission.id))]
