"""What a person decides about what an alert offers: accepting the loss of a deleted CRM record
(``orphaned_link``), and deciding a flagged duplicate referral (``duplicate_referral``).

Each decision is one transaction: the ledger change, audit events on the referral's timeline (actor
= the person's name), and the alert resolved with how it was closed. Who gets credit is decided by
:func:`refsync.connector.attribution.review`, beside the rules the import applies.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from refsync.connector import attribution
from refsync.connector.attribution import Rival
from refsync.errors import InputError
from refsync.state.alert_states import resolve_by_person
from refsync.state.ledger import Ledger, LedgerTxn
from refsync.state.models import Alert, CrmLink, Referral
from refsync.state.notifications import enqueue_status_notice

ACCEPTABLE_LINK_STATES = ("active", "deleted")


@dataclass(frozen=True)
class Decided:
    referral_id: str
    credited: bool
    reason: str
    status: str
    holder_id: str | None  # the referral that held credit, when credit moved away from it
    holder_status: str | None
    alerts_resolved: int

    def sentence(self) -> str:
        """What was done, as `refsync referrals decide` and the dashboard say it."""
        if self.credited:
            taken = f"; {self.holder_id} lost it ({self.holder_status})" if self.holder_id else ""
            return f"referral {self.referral_id} now holds credit{taken}"
        return f"referral {self.referral_id} stays without credit ({self.status})"


def accept_loss(ledger: Ledger, alert_id: int, by: str, note: str | None) -> int:
    """Accept that the CRM record of an ``orphaned_link`` alert is gone: its links become ``lost``
    (never checked, written or alerted on again), the referral's timeline records who accepted it,
    and the alert is resolved. Returns how many links were marked."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        alert = txn.session.get(Alert, alert_id)
        if alert is None:
            raise InputError(f"no alert with id {alert_id}; `refsync alerts --kind orphaned_link` lists them")
        if alert.kind != "orphaned_link":
            raise InputError(f"alert {alert_id} is a {alert.kind} alert; only the loss of an orphaned_link can be "
                             f"accepted (take it with `refsync alerts ack {alert_id} --by NAME`)")
        if alert.resolved_at is not None:
            raise InputError(f"alert {alert_id} is resolved already (the record came back, or its loss was accepted)")
        query = select(CrmLink).where(CrmLink.record_id == alert.record_id, CrmLink.state.in_(ACCEPTABLE_LINK_STATES))
        if alert.crm:
            query = query.where(CrmLink.crm == alert.crm)
        if alert.referral_id:
            query = query.where(CrmLink.referral_id == alert.referral_id)
        links = list(txn.session.scalars(query))
        for link in links:
            link.state = "lost"
            txn.add_audit(link.referral_id, "link_loss_accepted", "accepted", by, crm=link.crm, object=link.object,
                          record_id=link.record_id, detail={"alert_id": alert.id, "note": note})
        if not links:  # the link changed since (merged, converted): the acceptance is still on record
            txn.add_audit(alert.referral_id, "link_loss_accepted", "accepted", by, crm=alert.crm,
                          record_id=alert.record_id, detail={"alert_id": alert.id, "note": note})
        resolve_by_person(txn.session, alert, "accepted", by, note, now)
        return len(links)


def decide_duplicate(ledger: Ledger, referral_id: str, credit: bool, by: str, note: str | None,
                     policy_version: str | None = None) -> Decided:
    """A person's decision on a referral flagged as a duplicate (``on_duplicate = "flag"``)."""
    with ledger.transaction() as txn:
        flagged = txn.referral(referral_id)
        if flagged is None:
            raise InputError(f"no referral with id {referral_id}; `refsync referrals list` shows the ids")
        if not flagged.review_required or flagged.credited:
            raise InputError(f"referral {referral_id} is not a flagged duplicate waiting for a decision "
                             f"(credit: {flagged.attribution_reason}); `refsync alerts --kind duplicate_referral` "
                             "lists the ones that are")
        holder = txn.referral(flagged.duplicate_of) if flagged.duplicate_of else None
        if holder is not None and (not holder.credited or holder.merged_into is not None):
            holder = None  # nobody holds credit any more: crediting takes nothing from anyone
        rival = Rival(holder.id, holder.submitted_at, holder.status) if holder is not None else None
        review = attribution.review(credit, flagged.status, rival)
        detail = {"decision": "credit" if credit else "decline", "note": note,
                  "credit_held_by": flagged.duplicate_of}
        _apply(txn, flagged, review.credited, review.reason, review.status,
               None if review.credited else flagged.duplicate_of)
        txn.add_audit(flagged.id, "duplicate_decided", review.reason, by, policy_version=policy_version,
                      detail=detail)
        if review.holder_loses and holder is not None:
            _apply(txn, holder, False, review.holder_reason or "", review.holder_status or holder.status, flagged.id)
            txn.add_audit(holder.id, "attribution_changed", review.holder_reason or "", by,
                          policy_version=policy_version, detail={**detail, "credit_moved_to": flagged.id})
        resolved = 0
        for alert in txn.session.scalars(select(Alert).where(
                Alert.dedupe_key == f"duplicate_referral:{flagged.id}", Alert.resolved_at.is_(None))):
            resolve_by_person(txn.session, alert, "credited" if credit else "declined", by, note, txn.clock())
            resolved += 1
        return Decided(flagged.id, review.credited, review.reason, review.status,
                       holder.id if review.holder_loses and holder is not None else None,
                       review.holder_status if review.holder_loses else None, resolved)


def _apply(txn: LedgerTxn, referral: Referral, credited: bool, reason: str, status: str,
           duplicate_of: str | None) -> None:
    now = txn.clock()
    txn.session.flush()  # a self-referencing duplicate_of needs both rows written
    previous = referral.status
    referral.credited = credited
    referral.review_required = False
    referral.attribution_reason = reason
    referral.duplicate_of = duplicate_of
    referral.revision += 1  # a newly credited referral is pushed; one that lost credit writes nothing more
    if status != previous:
        referral.status = status
        referral.status_changed_at = now
        txn.add_transition(referral.id, previous, status, now, "review", detail=reason)
        enqueue_status_notice(txn.session, referral, previous, status, now, "review", now)
