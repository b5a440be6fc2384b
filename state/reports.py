"""The rows `refsync report` aggregates: referrals submitted in a date range with their partner,
taxonomy, status, amounts and the statuses they ever reached (one query each, streamed), and how
many referrals of the ledger the report leaves out, by reason."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, case, func, or_, select

from refsync.state.ledger import Ledger
from refsync.state.models import Partner, Referral, StatusTransition


@dataclass(frozen=True)
class ReportRow:
    referral_id: str
    partner: str
    source: str | None
    medium: str | None
    campaign: str | None
    status: str
    submitted_at: datetime
    outcome_amount: Decimal | None
    pipeline_amount: Decimal | None
    pipeline_currency: str | None
    currency: str | None  # of the outcome amount
    reached: frozenset[str]
    closed_at: datetime | None  # when it became won or lost (the last such transition)


def report_rows(ledger: Ledger, start: datetime | None, end: datetime | None,
                partner: str | None = None) -> Iterator[ReportRow]:
    """Referrals submitted in [start, end) (merged-away ones left out: their credit moved)."""
    where: list[ColumnElement[bool]] = [Referral.merged_into.is_(None)]
    if start is not None:
        where.append(Referral.submitted_at >= start)
    if end is not None:
        where.append(Referral.submitted_at < end)
    if partner:
        where.append(Partner.code == partner)
    with ledger.transaction() as txn:
        reached: dict[str, set[str]] = {}
        closed: dict[str, datetime] = {}
        transitions = (select(StatusTransition.referral_id, StatusTransition.to_status, StatusTransition.at)
                       .join(Referral, Referral.id == StatusTransition.referral_id)
                       .join(Partner, Partner.id == Referral.partner_id).where(*where).order_by(StatusTransition.id))
        for referral_id, status, at in txn.session.execute(transitions):
            reached.setdefault(referral_id, set()).add(status)
            if status in ("won", "lost"):
                closed[referral_id] = at
        rows = txn.session.execute(
            select(Referral.id, Partner.code, Referral.source, Referral.medium, Referral.campaign, Referral.status,
                   Referral.submitted_at, Referral.outcome_amount, Referral.pipeline_amount,
                   Referral.pipeline_currency, Referral.outcome_currency).join(Partner).where(*where)
            .order_by(Referral.submitted_at))
        for r in rows:
            yield ReportRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                            frozenset(reached.get(r[0], set()) | {r[5]}), closed.get(r[0]))


EXCLUSIONS = ("other_partner", "outside_period", "merged")


def excluded_counts(ledger: Ledger, start: datetime | None, end: datetime | None,
                    partner: str | None = None) -> dict[str, int]:
    """How many of the ledger's referrals :func:`report_rows` leaves out, by the first reason that
    applies: another partner than the one asked for, submitted outside [start, end), merged into
    another referral (its credit moved there). Every reason is present, at 0 when none."""
    outside: list[ColumnElement[bool]] = []
    if start is not None:
        outside.append(Referral.submitted_at < start)
    if end is not None:
        outside.append(Referral.submitted_at >= end)
    whens: list[tuple[ColumnElement[bool], str]] = []
    if partner:
        whens.append((Partner.code != partner, "other_partner"))
    if outside:
        whens.append((or_(*outside), "outside_period"))
    whens.append((Referral.merged_into.is_not(None), "merged"))
    reason = case(*whens, else_=None).label("reason")
    counts = dict.fromkeys(EXCLUSIONS, 0)
    with ledger.transaction() as txn:
        query = select(reason, func.count()).select_from(Referral).join(Partner).group_by(reason)
        for why, count in txn.session.execute(query):
            if why is not None:
                counts[str(why)] = int(count)
    return counts
