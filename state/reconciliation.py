"""The ledger side of reconcile and expiry: the set-based reads a full comparison needs (linked
records page by page, outstanding pushes, restore counts, duplicates, dead ops, stale referrals)
and the few writes it makes (repairs, pipeline amounts, links found alive again, expiries).

Every read is one query per page or per question, never one per referral.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, select, update

from refsync.state.ledger import Ledger
from refsync.state.models import OPEN_STATUSES, AuditEvent, CrmLink, Partner, Referral, SyncOp
from refsync.state.notifications import enqueue_status_notice

REFERRAL_VIEW = ("id", "external_id", "source", "medium", "campaign", "submitted_at", "prospect_email",
                 "prospect_company", "prospect_name", "status", "referral_code")


@dataclass(frozen=True)
class LinkRow:
    """One link with what reconcile needs of its referral (the mapping's input and its status)."""

    link_id: int
    object: str
    record_id: str
    role: str
    state: str
    referral: dict[str, Any]  # REFERRAL_VIEW + partner, credited, merged_into
    status_changed_at: datetime


def _chunks(values: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def linked_pages(ledger: Ledger, crm: str, page_size: int = 5000) -> Iterator[list[LinkRow]]:
    """Active and deleted links of ``crm`` with their referrals, a page at a time (keyset paging,
    so memory stays flat however many referrals the ledger holds)."""
    columns = [getattr(Referral, name) for name in REFERRAL_VIEW]
    last = 0
    while True:
        query = (select(CrmLink.id, CrmLink.object, CrmLink.record_id, CrmLink.role, CrmLink.state, Partner.code,
                        Referral.credited, Referral.merged_into, Referral.status_changed_at, *columns)
                 .join(Referral, Referral.id == CrmLink.referral_id).join(Partner, Partner.id == Referral.partner_id)
                 .where(CrmLink.crm == crm, CrmLink.state.in_(("active", "deleted")), CrmLink.id > last)
                 .order_by(CrmLink.id).limit(page_size))
        with ledger.transaction() as txn:
            rows = txn.session.execute(query).all()
        if not rows:
            return
        page = []
        for row in rows:
            view = dict(zip(REFERRAL_VIEW, row[9:], strict=True))
            view.update(partner=row[5], credited=row[6], merged_into=row[7])
            page.append(LinkRow(row[0], row[1], row[2], row[3], row[4], view, row[8]))
        yield page
        last = rows[-1][0]


def outstanding_pushes(ledger: Ledger, crm: str) -> set[str]:
    """Referrals with a push to ``crm`` not finished yet: their CRM values may lag on purpose."""
    with ledger.transaction() as txn:
        return {r for r in txn.session.scalars(select(SyncOp.referral_id).where(
            SyncOp.crm == crm, SyncOp.kind == "push", SyncOp.state.in_(("pending", "in_flight", "failed")))) if r}


def restore_counts(ledger: Ledger, crm: str, since: datetime) -> dict[tuple[str, str], int]:
    """Restores planned per (record id, field) since ``since``: the guard's conflict counter."""
    with ledger.transaction() as txn:
        rows = txn.session.execute(select(AuditEvent.record_id, AuditEvent.reason_code, func.count()).where(
            AuditEvent.kind == "restore_planned", AuditEvent.crm == crm, AuditEvent.at >= since,
        ).group_by(AuditEvent.record_id, AuditEvent.reason_code)).all()
    return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}


def linked_referrals(ledger: Ledger, crm: str, record_ids: Sequence[str]) -> dict[str, str]:
    """record id -> referral id, for records of ``crm`` the ledger links in any state."""
    found: dict[str, str] = {}
    with ledger.transaction() as txn:
        for chunk in _chunks(list(record_ids)):
            for record_id, referral_id in txn.session.execute(select(CrmLink.record_id, CrmLink.referral_id).where(
                    CrmLink.crm == crm, CrmLink.record_id.in_(list(chunk)))):
                found.setdefault(record_id, referral_id)
    return found


def referrals_matching(ledger: Ledger, emails: Sequence[str], domains: Sequence[str]) -> list[dict[str, Any]]:
    """Credited referrals whose prospect email, email domain or company key is among these."""
    live = (Referral.credited.is_(True), Referral.merged_into.is_(None))
    found: dict[str, dict[str, Any]] = {}
    with ledger.transaction() as txn:
        for column, values in ((Referral.prospect_email, emails), (Referral.prospect_domain, domains),
                               (Referral.company_key, domains)):
            for chunk in _chunks(sorted({v.lower() for v in values if v})):
                for rid, email, domain, key, code in txn.session.execute(
                        select(Referral.id, Referral.prospect_email, Referral.prospect_domain, Referral.company_key,
                               Partner.code).join(Partner).where(column.in_(list(chunk)), *live)):
                    found[rid] = {"id": rid, "prospect_email": email, "prospect_domain": domain,
                                  "company_key": key, "partner": code}
    return list(found.values())


def flagged_duplicates(ledger: Ledger) -> list[dict[str, Any]]:
    """Referrals flagged for review as a second referral of a prospect, still undecided."""
    with ledger.transaction() as txn:
        rows = txn.session.execute(select(Referral.id, Referral.duplicate_of, Partner.code, Referral.prospect_email,
                                          Referral.prospect_company).join(Partner).where(
            Referral.review_required.is_(True), Referral.status.in_(OPEN_STATUSES)))
        return [{"id": r[0], "duplicate_of": r[1], "partner": r[2], "prospect": r[3] or r[4]} for r in rows]


def shared_records(ledger: Ledger) -> list[dict[str, Any]]:
    """CRM records that two or more credited referrals hold an active link to."""
    with ledger.transaction() as txn:
        live = and_(CrmLink.state == "active", Referral.credited.is_(True), Referral.merged_into.is_(None))
        groups = txn.session.execute(
            select(CrmLink.crm, CrmLink.object, CrmLink.record_id).join(Referral).where(live)
            .group_by(CrmLink.crm, CrmLink.object, CrmLink.record_id)
            .having(func.count(func.distinct(CrmLink.referral_id)) > 1)).all()
        out = []
        for crm, obj, record_id in groups:
            ids = sorted(txn.session.scalars(select(CrmLink.referral_id).join(Referral).where(
                live, CrmLink.crm == crm, CrmLink.object == obj, CrmLink.record_id == record_id)))
            out.append({"crm": crm, "object": obj, "record_id": record_id, "referrals": ids})
        return out


def dead_ops(ledger: Ledger) -> list[dict[str, Any]]:
    with ledger.transaction() as txn:
        return [{"id": op.id, "kind": op.kind, "crm": op.crm, "referral_id": op.referral_id,
                 "record_id": op.record_id, "error": op.last_error_code or op.last_error_class,
                 "message": op.last_error_message}
                for op in txn.session.scalars(select(SyncOp).where(SyncOp.state == "dead").order_by(SyncOp.id))]


def stale_referrals(ledger: Ledger, unchanged_since: datetime) -> list[dict[str, Any]]:
    """Open referrals whose status has not moved since ``unchanged_since``."""
    with ledger.transaction() as txn:
        rows = txn.session.execute(select(Referral.id, Referral.status, Referral.status_changed_at, Partner.code)
                                   .join(Partner).where(Referral.status.in_(OPEN_STATUSES),
                                                        Referral.merged_into.is_(None),
                                                        Referral.status_changed_at < unchanged_since))
        return [{"id": r[0], "status": r[1], "since": r[2], "partner": r[3]} for r in rows]


def plan_repairs(ledger: Ledger, crm: str, repairs: Sequence[tuple[str, str, str, str, dict[str, Any]]],
                 stamp: str) -> int:
    """Restore ops for protected fields reconcile found overwritten: (referral, object, record,
    field, detail). Keyed like the guard's, one per record and reconcile run."""
    now = ledger.clock()
    added = 0
    with ledger.transaction() as txn:
        planned: set[str] = set()
        for referral_id, obj, record_id, field, detail in repairs:
            txn.session.add(AuditEvent(referral_id=referral_id, at=now, actor="refsync:reconcile",
                                       kind="restore_planned", reason_code=field, crm=crm, object=obj,
                                       record_id=record_id, detail=detail))
            key = f"restore:{crm}:{obj}:{record_id}:{stamp}"
            if key in planned or txn.session.scalar(select(SyncOp.id).where(SyncOp.dedupe_key == key)):
                continue
            planned.add(key)
            txn.session.add(SyncOp(kind="push", dedupe_key=key, referral_id=referral_id, crm=crm, object=obj,
                                   record_id=record_id, payload={"reason": "restore"}, next_attempt_at=now,
                                   created_at=now, updated_at=now))
            added += 1
    return added


def record_pipeline(ledger: Ledger, amounts: dict[str, tuple[Decimal | None, str | None]]) -> None:
    """The linked deal's amount and currency per referral, as reconcile read it (for `refsync report`)."""
    if not amounts:
        return
    with ledger.transaction() as txn:
        for referral_id, (amount, currency) in amounts.items():
            txn.session.execute(update(Referral).where(Referral.id == referral_id).values(
                pipeline_amount=amount, pipeline_currency=currency))


def revive_links(ledger: Ledger, crm: str, link_ids: Sequence[int]) -> None:
    """Links marked deleted whose record reconcile found alive again (restored from the recycle bin)."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        for link in txn.session.scalars(select(CrmLink).where(CrmLink.id.in_(list(link_ids)))):
            link.state = "active"
            link.updated_at = now
            txn.session.add(AuditEvent(referral_id=link.referral_id, at=now, actor="refsync:reconcile",
                                       kind="link_restored", reason_code="record_found_again", crm=crm,
                                       object=link.object, record_id=link.record_id))


# -- expiry ------------------------------------------------------------------------------------
EXPIRABLE = ("submitted", "accepted", "contacted", "qualified")  # before a deal exists
DEAL_ROLES = ("opportunity", "deal")


def expiry_candidates(ledger: Ledger, submitted_before: datetime, limit: int) -> list[str]:
    """Referrals still in an early open status, submitted before the cut-off, with no live deal."""
    has_deal = select(CrmLink.id).where(CrmLink.referral_id == Referral.id, CrmLink.role.in_(DEAL_ROLES),
                                        CrmLink.state.in_(("active", "converted"))).exists()
    with ledger.transaction() as txn:
        return list(txn.session.scalars(select(Referral.id).where(
            Referral.status.in_(EXPIRABLE), Referral.merged_into.is_(None), Referral.submitted_at < submitted_before,
            ~has_deal).order_by(Referral.submitted_at, Referral.id).limit(limit)))


def expire(ledger: Ledger, referral_ids: Sequence[str], days: int, policy_version: str) -> int:
    """Move these referrals to ``expired`` with a transition, an audit event and a partner notice.

    Re-checked inside the transaction: one that moved in the meantime is left alone."""
    now = ledger.clock()
    done = 0
    with ledger.transaction() as txn:
        for referral in txn.session.scalars(select(Referral).where(Referral.id.in_(list(referral_ids)))):
            if referral.status not in EXPIRABLE:
                continue
            before = referral.status
            txn.add_transition(referral.id, before, "expired", now, "expiry",
                               detail=f"open longer than {days} days")
            txn.add_audit(referral.id, "status_changed", "expired", "refsync:expiry", policy_version=policy_version,
                          detail={"from": before, "to": "expired", "at": now.isoformat(),
                                  "reason": f"expired_after_{days}_days",
                                  "submitted_at": referral.submitted_at.isoformat()})
            enqueue_status_notice(txn.session, referral, before, "expired", now, "expiry", now)
            referral.status = "expired"
            referral.status_changed_at = now
            done += 1
    return done
