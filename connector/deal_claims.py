"""Which deal a referral produced: the rule for linking a referral to a deal it did not create.

A referred person usually carries other deals (renewals, upsells, old wins that workflows still
touch; crm-api/hubspot/README.md), so "a deal of this contact changed" says nothing about which deal
the referral produced. Only a deal created at or after the referral was submitted, in a pipeline the
mapping covers, can become its deal; when several qualify, the earliest created wins and the others
are contested: a human decides. Pure functions over plain data, for every CRM (HubSpot deals of a
referred contact, Salesforce opportunities of a converted or matched contact).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class DealCandidate:
    """A deal that might be the referral's: its id, when the CRM created it, its pipeline label."""

    record_id: str
    created_at: datetime | None
    pipeline: str


@dataclass(frozen=True)
class DealChoice:
    """The referral's deal (None: no candidate qualifies) and the other qualifying deals."""

    deal: str | None
    contested: tuple[str, ...] = ()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def qualifies(submitted_at: datetime, candidate: DealCandidate, pipelines: Collection[str]) -> bool:
    """Created at or after the referral's submission, in a pipeline the mapping maps stages of."""
    return (candidate.created_at is not None and _aware(candidate.created_at) >= _aware(submitted_at)
            and candidate.pipeline in pipelines)


def choose_deal(submitted_at: datetime, candidates: Sequence[DealCandidate], pipelines: Collection[str],
                current: str | None = None) -> DealChoice:
    """The referral's deal among ``candidates``; ``current`` is the deal it is already linked to,
    which keeps it (it already carries the attribution): every other qualifying deal is contested."""
    qualifying = sorted((c for c in candidates if qualifies(submitted_at, c, pipelines)),
                        key=lambda c: (_aware(c.created_at or submitted_at), c.record_id))
    ids = list(dict.fromkeys(c.record_id for c in qualifying))
    if current is not None:
        return DealChoice(current, tuple(i for i in ids if i != current))
    if not ids:
        return DealChoice(None)
    return DealChoice(ids[0], tuple(ids[1:]))
