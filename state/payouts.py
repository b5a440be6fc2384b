"""Payout batches: what finance sends each partner for a period, made from approved commissions past
their hold minus the clawbacks they net, exported for the payment tool and then marked paid.

A commission or clawback belongs to at most one open or paid payout (``commissions.payout_id``); the
rows are locked while a batch is made or paid, so two replicas or operators never batch or pay one
twice.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select

from refsync.errors import InputError
from refsync.state.commissions import CommissionRefused, change, net_clawbacks, settle
from refsync.state.ledger import Ledger, LedgerTxn
from refsync.state.models import Commission, Payout
from refsync.state.views import iso


def period_end(period: str) -> datetime:
    """The first instant after a ``YYYY-MM`` period (UTC)."""
    match = re.fullmatch(r"(\d{4})-(0[1-9]|1[0-2])", period)
    if match is None:
        raise InputError(f"--period {period!r} is not a month; write it as YYYY-MM, e.g. 2026-11")
    year, month = int(match.group(1)), int(match.group(2))
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def create_payouts(ledger: Ledger, period: str, by: str) -> list[dict[str, Any]]:
    """One open payout per partner and currency with approved commissions payable by the end of the
    period (and by now), not yet in a payout; each nets that partner's open clawbacks as far as it covers."""
    cutoff = period_end(period)
    made = []
    with ledger.transaction() as txn:
        limit = min(txn.clock(), cutoff)
        due = txn.session.scalars(select(Commission).where(
            Commission.kind == "commission", Commission.status == "approved", Commission.payout_id.is_(None),
            or_(Commission.payable_after.is_(None), Commission.payable_after <= limit))
            .order_by(Commission.partner_id, Commission.currency, Commission.id).with_for_update(of=Commission))
        groups: dict[tuple[int, str], list[Commission]] = {}
        for entry in due:
            groups.setdefault((entry.partner_id, entry.currency), []).append(entry)
        for (partner_id, currency), entries in groups.items():
            total, netted = net_clawbacks(txn, partner_id, currency, sum(e.amount_minor for e in entries))
            payout = Payout(partner_id=partner_id, currency=currency, period=period, amount_minor=total,
                            status="open", created_by=by, created_at=txn.clock())
            txn.session.add(payout)
            txn.session.flush()
            for entry in (*entries, *netted):
                change(txn, entry, "payout_batched", f"in payout {payout.id} for {period}", f"user:{by}",
                       payout_id=payout.id)
            made.append(_view(txn, payout))
    return made


def _locked_payout(txn: LedgerTxn, payout_id: int) -> Payout:
    payout = txn.session.scalar(select(Payout).where(Payout.id == payout_id).with_for_update(of=Payout))
    if payout is None:
        raise CommissionRefused(f"no payout {payout_id}; `refsync payouts create --period YYYY-MM` makes them")
    return payout


def _entries(txn: LedgerTxn, payout_id: int) -> list[Commission]:
    return list(txn.session.scalars(select(Commission).where(Commission.payout_id == payout_id)
                                    .order_by(Commission.id).with_for_update(of=Commission)))


def mark_paid(ledger: Ledger, payout_id: int, reference: str, by: str) -> dict[str, Any]:
    """Mark an open payout paid: its commissions become ``paid`` and its clawbacks settled, under
    ``reference``. Refused (nothing changes) when it is not open or a commission in it changed since."""
    with ledger.transaction() as txn:
        payout = _locked_payout(txn, payout_id)
        if payout.status != "open":
            raise CommissionRefused(f"payout {payout_id} is {payout.status}"
                                    + (f" (reference {payout.reference})" if payout.reference else ""))
        entries = _entries(txn, payout_id)
        changed = [e for e in entries if e.kind == "commission" and e.status != "approved"]
        if changed:
            now = ", ".join(f"{e.id} is {e.status}" for e in changed)
            raise CommissionRefused(
                f"payout {payout_id} no longer matches: commission {now}; run "
                f"`refsync payouts cancel {payout_id} --by NAME` and create it again")
        settle(txn, [e for e in entries if e.kind == "commission"], [e for e in entries if e.kind == "clawback"],
               reference, by)
        payout.status, payout.reference, payout.paid_by, payout.paid_at = "paid", reference, by, txn.clock()
        return _view(txn, payout)


def cancel(ledger: Ledger, payout_id: int, by: str) -> dict[str, Any]:
    """Cancel an open payout: its entries are free for the next one."""
    with ledger.transaction() as txn:
        payout = _locked_payout(txn, payout_id)
        if payout.status != "open":
            raise CommissionRefused(f"payout {payout_id} is {payout.status}; only an open payout is cancelled")
        view = _view(txn, payout)
        for entry in _entries(txn, payout_id):
            change(txn, entry, "payout_cancelled", f"payout {payout_id} cancelled", f"user:{by}", payout_id=None)
        payout.status = "cancelled"
        view["status"] = "cancelled"
        return view


def payout(ledger: Ledger, payout_id: int) -> dict[str, Any]:
    """One payout with its lines (commissions and netted clawbacks), amounts in minor units."""
    with ledger.transaction() as txn:
        found = txn.session.get(Payout, payout_id)
        if found is None:
            raise CommissionRefused(f"no payout {payout_id}")
        return _view(txn, found, lines=True)


def _view(txn: LedgerTxn, p: Payout, lines: bool = False) -> dict[str, Any]:
    entries = list(txn.session.scalars(select(Commission).where(Commission.payout_id == p.id)
                                       .order_by(Commission.id)))
    view: dict[str, Any] = {
        "id": p.id, "partner": p.partner.code, "currency": p.currency, "period": p.period,
        "amount_minor": p.amount_minor, "status": p.status, "reference": p.reference,
        "commission_ids": [e.id for e in entries if e.kind == "commission"],
        "clawback_ids": [e.id for e in entries if e.kind == "clawback"],
        "created_by": p.created_by, "created_at": iso(p.created_at), "paid_by": p.paid_by, "paid_at": iso(p.paid_at)}
    if lines:
        view["lines"] = [{"commission_id": e.id, "kind": e.kind, "referral_id": e.referral_id,
                          "amount_minor": e.amount_minor, "deal_amount_minor": e.deal_amount_minor,
                          "closed_on": iso(e.closed_on), "terms_version": e.terms_version} for e in entries]
    return view
