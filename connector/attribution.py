"""Who gets credit for a prospect: first-to-refer (or last touch), as pure functions.

No I/O here: the intake hands in the new referral and the currently credited rival (if any), and
gets back what to record, with reason codes that end up in the audit trail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

# Reason codes (stable: they are evidence in disputes and appear in --json output).
SOLE_REFERRAL = "sole_referral"
FIRST_TO_REFER = "first_to_refer"
LAST_TOUCH = "last_touch"
DUPLICATE_FLAGGED = "duplicate_flagged"
DUPLICATE_DECLINED = "duplicate_declined"
CREDIT_MOVED = "credit_moved_to_earlier_referral"
CREDIT_MOVED_LAST = "credit_moved_to_later_referral"
CREDITED_BY_REVIEW = "credited_by_review"  # a person credited a flagged duplicate (`referrals decide --credit`)

FREEMAIL = frozenset(
    "gmail.com googlemail.com yahoo.com hotmail.com outlook.com live.com icloud.com me.com "
    "aol.com proton.me protonmail.com gmx.de gmx.net web.de mail.com yandex.ru".split()
)
_LEGAL_SUFFIX = re.compile(
    r"\b(inc|incorporated|llc|ltd|limited|gmbh|ag|sa|sas|bv|plc|corp|corporation|co|company)\b\.?",
    re.IGNORECASE,
)
_DOMAIN = re.compile(r"^(?:https?://)?(?:www\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)+)/?$", re.IGNORECASE)


@dataclass(frozen=True)
class Policy:
    model: str  # first_touch | last_touch
    on_duplicate: str  # flag | decline
    window_days: int
    version: str


@dataclass(frozen=True)
class Rival:
    """The referral that currently holds credit for the same prospect."""

    id: str
    submitted_at: datetime
    status: str


@dataclass(frozen=True)
class Decision:
    """What to record for the new referral, and for the rival when credit moves to the new one."""

    credited: bool
    reason: str
    status: str  # the new referral's status: submitted, or declined
    review_required: bool
    duplicate_of: str | None  # the referral that holds credit instead
    rival_loses: bool = False
    rival_reason: str | None = None
    rival_status: str | None = None


def company_key(company: str | None, email_domain: str | None) -> str | None:
    """A comparable key for a company: its domain when known, else its normalised name."""
    if email_domain and email_domain not in FREEMAIL:
        return email_domain
    if not company:
        return None
    match = _DOMAIN.match(company.strip())
    if match:
        return match.group(1).lower()
    name = _LEGAL_SUFFIX.sub(" ", company.lower())
    name = re.sub(r"[^\w]+", " ", name).strip()
    return name or None


def email_domain(email: str | None) -> str | None:
    return email.rsplit("@", 1)[1].lower() if email and "@" in email else None


def within_window(a: datetime, b: datetime, policy: Policy) -> bool:
    return abs(a - b) <= timedelta(days=policy.window_days)


def decide(submitted_at: datetime, rival: Rival | None, policy: Policy) -> Decision:
    """Credit for a new referral submitted at ``submitted_at`` given the current holder ``rival``.

    First touch: the earlier ``submitted_at`` wins (a tie goes to the referral already in the
    ledger). Last touch: the later one wins. The loser is flagged for review or declined per
    ``on_duplicate``; a rival already past ``submitted`` is only flagged, never declined.
    """
    if rival is None:
        return Decision(True, SOLE_REFERRAL, "submitted", False, None)
    if policy.model == "first_touch":
        new_wins = submitted_at < rival.submitted_at
        win_reason, moved_reason = FIRST_TO_REFER, CREDIT_MOVED
    else:
        new_wins = submitted_at > rival.submitted_at
        win_reason, moved_reason = LAST_TOUCH, CREDIT_MOVED_LAST
    decline = policy.on_duplicate == "decline"
    if not new_wins:
        return Decision(
            credited=False,
            reason=DUPLICATE_DECLINED if decline else DUPLICATE_FLAGGED,
            status="declined" if decline else "submitted",
            review_required=not decline,
            duplicate_of=rival.id,
        )
    rival_declined = decline and rival.status == "submitted"
    return Decision(
        credited=True,
        reason=win_reason,
        status="submitted",
        review_required=False,
        duplicate_of=None,
        rival_loses=True,
        rival_reason=moved_reason,
        rival_status="declined" if rival_declined else rival.status,
    )


@dataclass(frozen=True)
class Review:
    """What a person's decision on a flagged duplicate changes: for the flagged referral, and for
    the referral holding credit when credit moves to the flagged one."""

    credited: bool
    reason: str
    status: str
    holder_loses: bool = False
    holder_reason: str | None = None
    holder_status: str | None = None


def _declined_if_new(status: str) -> str:
    # As in :func:`decide`: a referral still ``submitted`` is declined; one past it keeps its status
    # (its CRM records tell its story) and only loses credit.
    return "declined" if status == "submitted" else status


def review(credit: bool, flagged_status: str, holder: Rival | None) -> Review:
    """A person's decision on a flagged duplicate. ``--credit``: the flagged referral gets credit and
    the holder (if one still holds it) becomes the declined duplicate; ``--decline``: the flagged
    one stays without credit, declined unless it has moved past ``submitted``."""
    if not credit:
        return Review(False, DUPLICATE_DECLINED, _declined_if_new(flagged_status))
    if holder is None:
        return Review(True, CREDITED_BY_REVIEW, flagged_status)
    return Review(True, CREDITED_BY_REVIEW, flagged_status, holder_loses=True, holder_reason=DUPLICATE_DECLINED,
                  holder_status=_declined_if_new(holder.status))
