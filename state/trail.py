"""What one import batch adds to the ledger, written in bulk: its referrals, their status
transitions and audit events (:class:`Trail`), used by ``refsync import`` and the HTTP intake."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table
from ulid import ULID

from refsync.state.bulk import insert_rows
from refsync.state.ledger import LedgerTxn
from refsync.state.models import AuditEvent, Referral, StatusTransition

_REFERRALS = cast(Table, Referral.__table__)
_TRANSITIONS = cast(Table, StatusTransition.__table__)
_EVENTS = cast(Table, AuditEvent.__table__)


@dataclass
class Landing:
    """A referral of this batch, as first-to-refer reads it, before :meth:`Trail.flush` writes it."""

    id: str
    submitted_at: datetime
    credited: bool
    status: str
    prospect_email: str | None
    company_key: str | None
    merged_into: str | None = None


Holder = Referral | Landing


class Trail:
    """The referrals, status transitions and audit events a batch adds, written with one bulk insert
    each (state/bulk.py; as ORM objects, four a row, they were most of an import's CPU).

    :meth:`flush` writes the referrals, then what the session holds (partners, alerts, ops, a
    demoted holder), then the transitions and events in the order they were added. Every path that
    needs a referral in the database flushes through here first, so nothing points at a referral
    not written yet and a referral's timeline keeps its order."""

    def __init__(self, txn: LedgerTxn) -> None:
        self.txn = txn
        self.now = txn.clock()  # the batch's one time of writing (one transaction)
        self.referrals: list[dict[str, Any]] = []
        self.transitions: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def referral(self, values: dict[str, Any]) -> Landing:
        now = self.now
        row = {"id": str(ULID()), **values, "merged_into": None, "outcome_amount": None, "outcome_currency": None,
               "outcome_close_date": None, "outcome_reason": None, "pipeline_amount": None,
               "pipeline_currency": None, "revision": 1, "status_changed_at": now, "created_at": now,
               "updated_at": now}
        self.referrals.append(row)
        return Landing(row["id"], row["submitted_at"], row["credited"], row["status"], row["prospect_email"],
                       row["company_key"])

    def transition(self, referral_id: str, from_status: str | None, to_status: str, at: datetime, source: str,
                   detail: str | None = None) -> None:
        self.transitions.append({"referral_id": referral_id, "from_status": from_status, "to_status": to_status,
                                 "at": at, "source": source, "crm": None, "owner_id": None, "detail": detail})

    def audit(self, referral_id: str, kind: str, reason_code: str, actor: str, *, policy_version: str | None = None,
              detail: dict[str, Any]) -> None:
        self.events.append({"referral_id": referral_id, "at": self.now, "actor": actor, "kind": kind,
                            "reason_code": reason_code, "policy_version": policy_version, "crm": None,
                            "object": None, "record_id": None, "detail": detail})

    def discard(self) -> None:
        self.referrals, self.transitions, self.events = [], [], []

    def flush(self) -> None:
        session = self.txn.session
        if self.referrals:
            insert_rows(session, _REFERRALS, self.referrals)
            self.referrals = []
        session.flush()
        if self.transitions:
            insert_rows(session, _TRANSITIONS, self.transitions)
            self.transitions = []
        if self.events:
            insert_rows(session, _EVENTS, self.events)
            self.events = []

    def loaded(self, referral_id: str) -> Referral:
        """The ORM object of a referral this batch wrote (flushed first), for the rare paths that
        change it or queue a notice about it."""
        self.flush()
        referral = self.txn.session.get(Referral, referral_id)
        assert referral is not None, referral_id
        return referral
