"""A referral's story in words a partner understands: statuses and timeline steps as sentences,
never a CRM id or an internal reason code."""

from __future__ import annotations

from datetime import datetime

from refsync.state.models import STATUSES
from refsync.state.portal import PartnerCommission, PartnerReferral, Step

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


# A commission's status as a partner reads it: a fraud or abuse hold is "under review", never its
# reason (which can name the checks, or that another partner referred the prospect too).
COMMISSION_LABELS = {
    "pending": "Pending",
    "held": "Under review",
    "approved": "Approved",
    "rejected": "Not payable",
    "paid": "Paid",
    "void": "Cancelled",
    "clawback": "Taken back",
}


def commission_label(entry: PartnerCommission) -> str:
    return COMMISSION_LABELS.get(entry.status, entry.status.capitalize())


def commission_sentence(entry: PartnerCommission, now: datetime) -> str:
    """What happens next with this commission, in a sentence."""
    after = entry.payable_after.strftime("%Y-%m-%d") if entry.payable_after else None
    paid_on = entry.paid_at.strftime("%Y-%m-%d") if entry.paid_at else None
    if entry.kind == "clawback":
        if entry.paid_reference:
            return (f"The deal changed after this commission was paid, so it was deducted from payout "
                    f"{entry.paid_reference} on {paid_on}.")
        return "The deal changed after this commission was paid, so it will be deducted from your next payout."
    waiting = after is not None and entry.payable_after is not None and entry.payable_after > now
    if entry.status == "pending":
        return (f"Waiting for approval; payable after {after}, once the deal's refund window has passed." if waiting
                else "Waiting for approval by the program team.")
    if entry.status == "held":
        return "Our team is reviewing this commission before it can be approved; the status will change here."
    if entry.status == "approved":
        return f"Approved; it is paid with the first payout after {after}." if waiting else \
            "Approved; it is paid with your next payout."
    if entry.status == "paid":
        return f"Paid in payout {entry.paid_reference} on {paid_on}."
    if entry.status == "rejected":
        return "This commission is not payable under the program's terms; ask your program manager if in doubt."
    if entry.status == "void":
        return "Cancelled before payment because the deal changed (reopened, lost or repriced)."
    return ""
