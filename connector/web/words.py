"""A referral's story in words a partner understands: statuses and timeline steps as sentences,
never a CRM id or an internal reason code."""

from __future__ import annotations

from refsync.state.models import STATUSES
from refsync.state.portal import PartnerReferral, Step

LABELS = {
    "submitted": "Submitted",
    "accepted": "Accepted",
    "contacted": "In contact",
    "qualified": "Qualified",
    "opportunity": "Opportunity",
    "proposal": "Proposal",
    "negotiation": "Negotiation",
    "won": "Won",
    "lost": "Lost",
    "expired": "Expired",
    "declined": "Declined",
}
SENTENCES = {
    "submitted": "You referred this prospect.",
    "accepted": "Our team accepted the referral.",
    "contacted": "Our sales team got in touch with the prospect.",
    "qualified": "The prospect was qualified: there is a real need.",
    "opportunity": "A sales opportunity was opened.",
    "proposal": "The prospect received a proposal.",
    "negotiation": "Terms are being negotiated with the prospect.",
    "won": "The deal was won. Thank you!",
    "lost": "The deal was lost: the prospect did not buy this time.",
    "expired": "The referral expired: it did not move forward within the program's window.",
    "declined": "The referral was declined: this prospect had already been referred.",
}
OPEN = STATUSES[:7]


def status_label(status: str) -> str:
    return LABELS.get(status, status.replace("_", " ").capitalize())


def step_sentence(step: Step, expire_after_days: int) -> str:
    if step.status == "expired":
        return (f"The referral expired: it did not move forward within {expire_after_days} days, the program's "
                "window.")
    if step.previous in STATUSES and step.status in STATUSES and \
            STATUSES.index(step.status) < STATUSES.index(step.previous) and step.status in OPEN:
        return f"The referral went back to \"{status_label(step.status)}\"."
    return SENTENCES.get(step.status, f"The status became \"{status_label(step.status)}\".")


def standing(referral: PartnerReferral) -> str | None:
    """A note on the referral's credit, when it is not simply the partner's (never naming who)."""
    if referral.merged:
        return "This referral was combined with another record of the same prospect."
    if referral.review_required:
        return ("Under review: this prospect was already referred. Our team decides who receives the credit "
                "and the status will change here.")
    if not referral.credited:
        return "This prospect was already referred, so this referral does not receive the credit."
    return None
