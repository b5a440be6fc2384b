"""The ledger's commissions: the one way to read and change them. Amounts are integers of minor units.

Every change writes an audit event on the referral (``commission_*``, ``clawback_created``) with the
actor, the reason and the terms version, so ``referrals show`` tells the whole story. Changes made
by people (approve, reject, hold, release, pay) lock the rows they change and check the state inside
the same transaction: two replicas or two operators can never pay one commission twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from refsync.errors import RefsyncError
from refsync.state.ledger import Ledger, LedgerTxn
from refsync.state.models import Commission, Partner, Referral
from refsync.state.money import as_decimal_text
from refsync.state.notifications import enqueue_commission_notice
from refsync.state.views import iso

OPEN = ("pending", "held", "approved")


class CommissionRefused(RefsyncError):
    """A change a commission's state does not allow (approve a paid one, pay one still in its hold)."""


# -- what the compensation job reads ------------------------------------------------------------

def facts_key(referral: Any) -> str:
    """The referral's outcome as one comparable text: what a commission entry was computed from
    (``referral``: a Referral or a row with its status and outcome columns)."""
    amount = "" if referral.outcome_amount is None else f"{Decimal(referral.outcome_amount):.2f}"
    return f"{referral.status}|{amount}|{referral.outcome_currency or ''}|{referral.outcome_close_date or ''}"


@dataclass
class Standing:
    """Where one referral stands for compensation, read in bulk to find the few that need work."""

    referral_id: str
    earns: bool  # won, credited, not merged away
    facts: str
    entries: list[tuple[str, str, int, str | None]]  # (status, kind, amount_minor, facts) in order
    noted: set[str]  # facts for which "commission_not_due" was recorded


def standings(ledger: Ledger, chunk: int = 500) -> list[Standing]:
    """Won referrals and referrals with open or paid entries, with their entries: two indexed reads a chunk."""
    from refsync.state.models import AuditEvent

    with ledger.transaction() as txn:
        won = select(Referral.id).where(Referral.status == "won", Referral.merged_into.is_(None),
                                        Referral.credited.is_(True))
        owing = select(Commission.referral_id).where(Commission.status.in_((*OPEN, "paid")))
        ids = sorted(set(txn.session.scalars(won)) | set(txn.session.scalars(owing)))
        found: list[Standing] = []
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            columns = select(Referral.id, Referral.status, Referral.credited, Referral.merged_into,
                             Referral.outcome_amount, Referral.outcome_currency, Referral.outcome_close_date)
            by_id = {r.id: Standing(r.id, r.status == "won" and r.credited and r.merged_into is None, facts_key(r),
                                    [], set())
                     for r in txn.session.execute(columns.where(Referral.id.in_(part)))}
            for c in txn.session.execute(select(Commission.referral_id, Commission.status, Commission.kind,
                                                Commission.amount_minor, Commission.facts)
                                         .where(Commission.referral_id.in_(part))
                                         .order_by(Commission.referral_id, Commission.seq)):
                by_id[c.referral_id].entries.append((c.status, c.kind, c.amount_minor, c.facts))
            for rid, detail in txn.session.execute(select(AuditEvent.referral_id, AuditEvent.detail).where(
                    AuditEvent.kind == "commission_not_due", AuditEvent.referral_id.in_(part))):
                by_id[str(rid)].noted.add(str(detail.get("facts")))
            found += by_id.values()
        return found


def lock_referral(txn: LedgerTxn, referral_id: str) -> Referral | None:
    """The referral, its row locked until the transaction ends (PostgreSQL; SQLite writes are serial)."""
    return txn.session.scalar(select(Referral).where(Referral.id == referral_id).with_for_update(of=Referral))


def entries(txn: LedgerTxn, referral_id: str) -> list[Commission]:
    """The referral's entries, locked: an approval or payment committing meanwhile is waited for and
    seen, never overwritten by a stale adjustment."""
    return list(txn.session.scalars(select(Commission).where(Commission.referral_id == referral_id)
                                    .order_by(Commission.seq).with_for_update(of=Commission)
                                    .execution_options(populate_existing=True)))


def won_volume(txn: LedgerTxn, partner_id: int, currency: str, start: date, end: date, exclude: str,
               default_currency: bool) -> Decimal:
    """The partner's other won deals closed in [start, end) in this currency (deals without a currency
    count when ``default_currency``: they are in the terms' currency)."""
    same = Referral.outcome_currency == currency
    if default_currency:
        same = or_(same, Referral.outcome_currency.is_(None))
    total = txn.session.scalar(select(func.sum(Referral.outcome_amount)).where(
        Referral.partner_id == partner_id, Referral.status == "won", Referral.id != exclude, same,
        Referral.outcome_close_date >= start, Referral.outcome_close_date < end))
    return Decimal(total or 0)


def earned(txn: LedgerTxn, partner_id: int, currency: str, start: date, end: date, exclude: str) -> int:
    """What the partner's other commissions (clawbacks netted) of deals closed in [start, end) earned."""
    total = txn.session.scalar(select(func.sum(Commission.amount_minor)).where(
        Commission.partner_id == partner_id, Commission.currency == currency, Commission.referral_id != exclude,
        Commission.status.not_in(("void", "rejected")), Commission.closed_on >= start, Commission.closed_on < end))
    return int(total or 0)


def submitted_between(txn: LedgerTxn, partner_id: int, start: datetime, end: datetime) -> int:
    """How many referrals the partner submitted in (start, end]."""
    return txn.session.scalar(select(func.count()).select_from(Referral).where(
        Referral.partner_id == partner_id, Referral.submitted_at > start, Referral.submitted_at <= end)) or 0


def other_partners(txn: LedgerTxn, referral: Referral, start: datetime, end: datetime) -> list[str]:
    """Codes of other partners who referred the same prospect (email or company) in [start, end]."""
    same = []
    if referral.prospect_email:
        same.append(Referral.prospect_email == referral.prospect_email)
    if referral.company_key:
        same.append(Referral.company_key == referral.company_key)
    if not same:
        return []
    return sorted(set(txn.session.scalars(select(Partner.code).join(Referral, Referral.partner_id == Partner.id).where(
        or_(*same), Referral.partner_id != referral.partner_id, Referral.submitted_at >= start,
        Referral.submitted_at <= end))))


# -- what the compensation job writes -----------------------------------------------------------

def add_entry(txn: LedgerTxn, referral: Referral, *, kind: str, status: str, amount_minor: int, currency: str,
              actor: str, reason: str, **values: Any) -> Commission:
    """A new commission or clawback entry for the referral, with its audit event."""
    now = txn.clock()
    seq = (txn.session.scalar(select(func.max(Commission.seq)).where(Commission.referral_id == referral.id)) or 0) + 1
    entry = Commission(referral_id=referral.id, seq=seq, partner_id=referral.partner_id, kind=kind, status=status,
                       amount_minor=amount_minor, currency=currency, reason=reason, created_at=now, updated_at=now,
                       **values)
    txn.session.add(entry)
    txn.session.flush()
    replan(txn, referral.id)
    event = "clawback_created" if kind == "clawback" else f"commission_{'held' if status == 'held' else 'created'}"
    _audit(txn, entry, event, reason, actor)
    return entry


def change(txn: LedgerTxn, entry: Commission, event: str, why: str, actor: str, **values: Any) -> None:
    """Change an entry (status, amount, basis...) and record why, who, and from what."""
    before = {"status": entry.status, "amount_minor": entry.amount_minor}
    for key, value in values.items():
        setattr(entry, key, value)
    entry.updated_at = txn.clock()
    if (entry.status, entry.amount_minor) != (before["status"], before["amount_minor"]):
        replan(txn, entry.referral_id)
    _audit(txn, entry, event, why, actor, before)
    if event in ("commission_approved", "commission_paid"):
        enqueue_commission_notice(txn.session, entry, event.removeprefix("commission_"), entry.updated_at)


def _audit(txn: LedgerTxn, entry: Commission, event: str, reason: str, actor: str,
           before: dict[str, Any] | None = None) -> None:
    detail: dict[str, Any] = {"commission_id": entry.id, "status": entry.status, "amount_minor": entry.amount_minor,
                              "currency": entry.currency, "reason": reason}
    if entry.holds:
        detail["holds"] = entry.holds
    if before:
        detail["from"] = before
    codes = [h["code"] for h in entry.holds] if event == "commission_held" else []
    txn.add_audit(entry.referral_id, event, ",".join(codes) or event.removeprefix("commission_"), actor,
                  policy_version=entry.terms_version, detail=detail)


def note_not_due(txn: LedgerTxn, referral: Referral, reason: str, terms_version: str, actor: str) -> bool:
    """Record once per outcome that a won deal earns nothing (below the minimum, cap reached, no terms)."""
    from refsync.state.models import AuditEvent

    facts = facts_key(referral)
    seen = txn.session.scalars(select(AuditEvent.detail).where(
        AuditEvent.referral_id == referral.id, AuditEvent.kind == "commission_not_due",
        AuditEvent.reason_code == reason))
    if any(detail.get("facts") == facts for detail in seen):
        return False
    txn.add_audit(referral.id, "commission_not_due", reason, actor, policy_version=terms_version,
                  detail={"reason": reason, "facts": facts})
    return True


def replan(txn: LedgerTxn, referral_id: str) -> None:
    """A commission's amount or status changed: a new revision of the referral, so the outbox plans
    its push again (``enqueue_pushes``) and a deal mapping ``commission_amount`` / ``commission_status``
    shows the change. A CRM whose mapping does not map them reads the record and writes nothing."""
    txn.session.execute(update(Referral).where(Referral.id == referral_id)
                        .values(revision=Referral.revision + 1).execution_options(synchronize_session=False))


# -- what the CRM deal shows ----------------------------------------------------------------------

DEAL_ATTRIBUTES = ("commission_amount", "commission_status")  # mapping `from` values (connector/mapping.py)


def deal_values(session: Session, referral_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What a referral's CRM deal shows of its commissions, for referrals that have entries:
    ``commission_status``, the status of its newest entry (a ledger word: pending, held, approved,
    rejected, paid, void, clawback), and ``commission_amount``, the sum of its entries net of
    clawbacks (void and rejected ones count 0) as a Decimal in the currency's minor digits, or None
    (the field is left alone) when an entry is not in the deal's currency, or is held because the
    terms do not pay in the deal's currency (no amount was computed)."""
    found: dict[str, dict[str, Any]] = {}
    ids = list(dict.fromkeys(referral_ids))
    for start in range(0, len(ids), 500):
        rows = session.execute(
            select(Commission.referral_id, Commission.status, Commission.amount_minor, Commission.currency,
                   Commission.deal_currency, Commission.holds, Referral.outcome_currency)
            .join(Referral, Referral.id == Commission.referral_id)
            .where(Commission.referral_id.in_(ids[start:start + 500])).order_by(Commission.referral_id, Commission.seq))
        grouped: dict[str, list[Any]] = {}
        for row in rows:
            grouped.setdefault(row.referral_id, []).append(row)
        for referral_id, entries in grouped.items():
            newest = entries[-1]
            # a CRM without currencies: the deal is in the currency the commission computed it in
            deal_currency = (newest.outcome_currency or newest.deal_currency or newest.currency).upper()
            # held for a currency the terms do not pay in: its 0 is no amount, nothing is shown
            same = all(e.currency.upper() == deal_currency for e in entries) and not any(
                h.get("code") == "currency_mismatch" for e in entries if e.status not in ("void", "rejected")
                for h in e.holds or ())
            total = sum(e.amount_minor for e in entries if e.status not in ("void", "rejected"))
            found[referral_id] = {
                "commission_status": newest.status,
                "commission_amount": Decimal(as_decimal_text(total, deal_currency)) if same else None}
    return found


def add_deal_values(ledger: Ledger, referrals: dict[str, dict[str, Any]]) -> None:
    """Put :func:`deal_values` into these referrals' attribute dicts (what a push writes)."""
    with ledger.transaction() as txn:
        shown = deal_values(txn.session, list(referrals))
    for referral_id, attributes in referrals.items():
        attributes.update(shown.get(referral_id, dict.fromkeys(DEAL_ATTRIBUTES)))


# -- what people do -----------------------------------------------------------------------------

# action -> (states it applies to, resulting state, audit event)
DECISIONS = {
    "approve": (("pending",), "approved", "commission_approved"),
    "reject": (("pending", "held", "approved"), "rejected", "commission_rejected"),
    "hold": (("pending", "approved"), "held", "commission_held"),
    "release": (("held",), "pending", "commission_hold_released"),
}


@dataclass
class Outcomes:
    done: list[int]
    refused: list[str]  # one line per refused id: what and why

    def lines(self, action: str, by: str) -> list[str]:
        """What was done, one line per id, as `refsync commissions ACTION` prints it."""
        return [f"{commission_id}: {action} done by {by}" for commission_id in self.done]


def _locked(txn: LedgerTxn, ids: Sequence[int]) -> dict[int, Commission]:
    rows = txn.session.scalars(select(Commission).where(Commission.id.in_(ids)).order_by(Commission.id)
                               .with_for_update(of=Commission))
    return {row.id: row for row in rows}


def decide(ledger: Ledger, ids: Sequence[int], action: str, by: str, reason: str | None) -> Outcomes:
    """Approve, reject, hold or release commissions by a named person; the ids whose state does not
    allow it are refused with the reason and left as they were, the others change."""
    allowed, target, event = DECISIONS[action]
    result = Outcomes([], [])
    with ledger.transaction() as txn:
        rows = _locked(txn, ids)
        for commission_id in ids:
            entry = rows.get(commission_id)
            if entry is None:
                result.refused.append(f"{commission_id}: no such commission (`refsync commissions list` shows them)")
                continue
            if entry.status not in allowed:
                hint = " (release its hold first: `refsync commissions release`)" if entry.status == "held" else ""
                result.refused.append(f"{commission_id}: is {entry.status}; {action} applies to "
                                      f"{' or '.join(allowed)} commissions{hint}")
                continue
            values: dict[str, Any] = {"status": target, "decided_by": by, "decided_at": txn.clock()}
            text = reason or ("approved" if action == "approve" else "no reason given")
            if action == "hold":
                values["holds"] = [*entry.holds, {"code": "manual", "detail": f"{text} ({by})"}]
            if action == "release":
                values["holds"] = []
            change(txn, entry, event, text, f"user:{by}", reason=text, **values)
            result.done.append(commission_id)
    return result


def pay(ledger: Ledger, ids: Sequence[int], reference: str, by: str) -> dict[str, Any]:
    """Mark approved commissions past their hold as paid under one payout reference, netting the
    partner's outstanding clawbacks in that currency (oldest first, as far as the payout covers them).
    All or nothing: any id that cannot be paid refuses the whole payout."""
    with ledger.transaction() as txn:
        now = txn.clock()
        rows = _locked(txn, ids)
        problems = []
        for commission_id in ids:
            entry = rows.get(commission_id)
            if entry is None:
                problems.append(f"{commission_id}: no such commission")
            elif entry.kind != "commission" or entry.status != "approved":
                problems.append(f"{commission_id}: is {entry.status}; only approved commissions are paid")
            elif entry.payout_id is not None:
                problems.append(f"{commission_id}: is in payout {entry.payout_id}; `refsync payouts mark-paid "
                                f"{entry.payout_id} --reference REF` pays it")
            elif entry.payable_after is not None and entry.payable_after > now:
                problems.append(f"{commission_id}: in its hold period until {iso(entry.payable_after)}")
        groups = {(r.partner_id, r.currency) for r in rows.values()}
        if len(groups) > 1:
            problems.append("the commissions belong to several partners or currencies; pay each partner and "
                            "currency as its own payout")
        if problems:
            raise CommissionRefused("payout refused, nothing was paid: " + "; ".join(problems))
        partner_id, currency = groups.pop()
        total, netted = net_clawbacks(txn, partner_id, currency, sum(r.amount_minor for r in rows.values()))
        settle(txn, list(rows.values()), netted, reference, by)
        code = txn.session.scalar(select(Partner.code).where(Partner.id == partner_id))
        return {"reference": reference, "partner": code, "currency": currency, "amount_minor": total,
                "commission_ids": sorted(rows), "clawback_ids": [c.id for c in netted]}


def net_clawbacks(txn: LedgerTxn, partner_id: int, currency: str, total: int) -> tuple[int, list[Commission]]:
    """The partner's open clawbacks in this currency that a payout of ``total`` covers, oldest first,
    and what is left to send; they are locked until the transaction ends."""
    clawbacks = txn.session.scalars(select(Commission).where(
        Commission.partner_id == partner_id, Commission.currency == currency, Commission.kind == "clawback",
        Commission.paid_reference.is_(None), Commission.payout_id.is_(None)).order_by(Commission.id)
        .with_for_update(of=Commission))
    netted = []
    for claw in clawbacks:
        if total + claw.amount_minor < 0:
            break
        total += claw.amount_minor
        netted.append(claw)
    return total, netted


def settle(txn: LedgerTxn, paid: Sequence[Commission], netted: Sequence[Commission], reference: str, by: str) -> None:
    """Mark commissions paid and clawbacks settled under one payout reference, each with its audit event."""
    now = txn.clock()
    for entry in paid:
        change(txn, entry, "commission_paid", f"payout {reference}", f"user:{by}", status="paid",
               paid_reference=reference, paid_by=by, paid_at=now)
    for claw in netted:
        change(txn, claw, "clawback_settled", f"netted in payout {reference}", f"user:{by}",
               paid_reference=reference, paid_by=by, paid_at=now)


# -- what people read ---------------------------------------------------------------------------

def commission_rows(ledger: Ledger, partner: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Commission entries, oldest first, as plain dicts (amounts in minor units)."""
    query = select(Commission).order_by(Commission.id)
    if partner:
        query = query.join(Partner, Commission.partner_id == Partner.id).where(Partner.code == partner)
    if status:
        query = query.where(Commission.status == status)
    with ledger.transaction() as txn:
        return [_row(c) for c in txn.session.scalars(query)]


def _row(c: Commission) -> dict[str, Any]:
    return {"id": c.id, "referral_id": c.referral_id, "partner": c.partner.code, "kind": c.kind,
            "amount_minor": c.amount_minor, "currency": c.currency, "status": c.status,
            "terms_version": c.terms_version, "payable_after": iso(c.payable_after), "reason": c.reason,
            "holds": list(c.holds), "notes": c.notes, "deal_amount_minor": c.deal_amount_minor,
            "closed_on": iso(c.closed_on), "decided_by": c.decided_by, "decided_at": iso(c.decided_at),
            "paid_reference": c.paid_reference, "paid_at": iso(c.paid_at), "payout_id": c.payout_id,
            "created_at": iso(c.created_at)}


def balances(ledger: Ledger, partner: str | None = None) -> list[dict[str, Any]]:
    """Per partner and currency: what is pending, held, approved (payable now or still in hold), paid,
    and clawed back (outstanding and settled), in minor units."""
    now = ledger.clock()
    sums: dict[tuple[str, str], dict[str, int]] = {}
    for row in commission_rows(ledger, partner):
        bucket = sums.setdefault((row["partner"], row["currency"]), dict.fromkeys(
            ("pending", "held", "approved_payable", "approved_in_hold", "paid", "clawback_outstanding",
             "clawback_settled"), 0))
        status, amount = row["status"], row["amount_minor"]
        if row["kind"] == "clawback":
            bucket["clawback_settled" if row["paid_reference"] else "clawback_outstanding"] += amount
        elif status == "approved":
            due = row["payable_after"] is None or datetime.fromisoformat(row["payable_after"]) <= now
            bucket["approved_payable" if due else "approved_in_hold"] += amount
        elif status in bucket:
            bucket[status] += amount
    return [{"partner": code, "currency": currency, **bucket} for (code, currency), bucket in sorted(sums.items())]
