"""What people did about alerts: acknowledgements, silences, and the state each alert is in.

An alert is ``resolved`` (its problem is gone, or a person closed it), ``acknowledged`` (a person
took it: still listed, no longer paged until it resolves and reopens), ``silenced`` (a silence of
its kind, CRM or record holds until a time) or ``open`` (someone should look). Only open alerts
reach the sinks and make `refsync alerts` exit 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from refsync.errors import InputError
from refsync.state.ledger import Ledger
from refsync.state.models import Alert, AlertSilence, AuditEvent

ALERT_STATES = ("open", "acknowledged", "silenced", "resolved")


@dataclass(frozen=True)
class Silence:
    """One silence in force: matches alerts of ``kind``, and of ``crm`` and ``record_id`` when given
    (``record_id`` matches an alert's CRM record id or its referral id)."""

    id: int
    kind: str
    crm: str | None
    record_id: str | None
    until: datetime

    def covers(self, kind: str, crm: str | None, record_id: str | None, referral_id: str | None) -> bool:
        return (self.kind == kind and (self.crm is None or self.crm == crm)
                and (self.record_id is None or self.record_id in (record_id, referral_id)))


def silenced_until(silences: Iterable[Silence], kind: str, crm: str | None, record_id: str | None,
                   referral_id: str | None) -> datetime | None:
    """Until when the silences keep an alert quiet (the latest end among those that match), or None."""
    ends = [s.until for s in silences if s.covers(kind, crm, record_id, referral_id)]
    return max(ends) if ends else None


def state_of(resolved: bool, acknowledged: bool, silenced: datetime | None) -> str:
    """An alert's state; an acknowledgement names a person, so it shows before a silence."""
    if resolved:
        return "resolved"
    if acknowledged:
        return "acknowledged"
    return "silenced" if silenced is not None else "open"


def active_silences(session: Session, now: datetime) -> list[Silence]:
    rows = session.scalars(select(AlertSilence).where(AlertSilence.lifted_at.is_(None), AlertSilence.until > now))
    return [Silence(s.id, s.kind, s.crm, s.record_id, s.until) for s in rows]


def reopened(alert: Alert) -> None:
    """An alert found again after it resolved: the sinks hear of it again and whatever a person
    did about the earlier occurrence (acknowledgement, resolution) no longer holds."""
    alert.resolved_at = None
    alert.notified_at = None
    alert.acknowledged_by = alert.acknowledged_at = alert.note = alert.resolution = None


def _alert(session: Session, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise InputError(f"no alert with id {alert_id}; `refsync alerts` lists the ids")
    return alert


def acknowledge(ledger: Ledger, alert_id: int, by: str, note: str | None) -> None:
    """Mark an open alert as taken by ``by``: it stays listed and stops paging until it resolves
    and reopens. Recorded as an audit event (on its referral, when it concerns one)."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        alert = _alert(txn.session, alert_id)
        if alert.resolved_at is not None:
            raise InputError(f"alert {alert_id} is resolved already; only an unresolved alert can be acknowledged")
        alert.acknowledged_by, alert.acknowledged_at, alert.note = by, now, note
        txn.session.add(AuditEvent(referral_id=alert.referral_id, at=now, actor=by, kind="alert_acknowledged",
                                   reason_code=alert.kind, crm=alert.crm, record_id=alert.record_id,
                                   detail={"alert_id": alert.id, "note": note}))


def resolve_by_person(session: Session, alert: Alert, resolution: str, by: str, note: str | None,
                      now: datetime) -> None:
    """Close an alert because a person acted on what it offered (accepted, credited, declined)."""
    alert.resolved_at = now
    alert.resolution = resolution
    alert.acknowledged_by, alert.acknowledged_at = by, now
    alert.note = note


def find_alert(ledger: Ledger, alert_id: int) -> dict[str, Any]:
    """kind, crm, record_id, referral_id and resolved of one alert; InputError when unknown."""
    with ledger.transaction() as txn:
        a = _alert(txn.session, alert_id)
        return {"id": a.id, "kind": a.kind, "crm": a.crm, "record_id": a.record_id, "referral_id": a.referral_id,
                "resolved": a.resolved_at is not None}


def silence(ledger: Ledger, kind: str, crm: str | None, record_id: str | None, until: datetime, by: str,
            note: str | None = None) -> dict[str, Any]:
    """Keep matching alerts, open now or raised later, from the sinks until ``until``."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        row = AlertSilence(kind=kind, crm=crm, record_id=record_id, until=until, created_by=by, created_at=now,
                           note=note)
        txn.session.add(row)
        txn.session.flush()
        txn.session.add(AuditEvent(referral_id=None, at=now, actor=by, kind="alerts_silenced", reason_code=kind,
                                   crm=crm, record_id=record_id,
                                   detail={"silence_id": row.id, "until": until.isoformat(), "note": note}))
        return silence_json(row, now, _matching_open(txn.session, row, now))


def unsilence(ledger: Ledger, silence_id: int, by: str) -> None:
    """Lift a silence now; its alerts that are still open page on the next notify round."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        row = txn.session.get(AlertSilence, silence_id)
        if row is None:
            raise InputError(f"no silence with id {silence_id}; `refsync alerts silences` lists the ids")
        if row.lifted_at is None:
            row.lifted_at = now
            txn.session.add(AuditEvent(referral_id=None, at=now, actor=by, kind="alerts_unsilenced",
                                       reason_code=row.kind, crm=row.crm, record_id=row.record_id,
                                       detail={"silence_id": row.id}))


def _matching_open(session: Session, row: AlertSilence, now: datetime) -> int:
    rule = Silence(row.id, row.kind, row.crm, row.record_id, row.until)
    alerts = session.execute(select(Alert.kind, Alert.crm, Alert.record_id, Alert.referral_id).where(
        Alert.kind == row.kind, Alert.resolved_at.is_(None)))
    return sum(1 for a in alerts if rule.covers(*a)) if row.lifted_at is None and row.until > now else 0


def silence_json(row: AlertSilence, now: datetime, matching: int) -> dict[str, Any]:
    return {"id": row.id, "kind": row.kind, "crm": row.crm, "record_id": row.record_id,
            "until": row.until.isoformat(), "created_by": row.created_by, "created_at": row.created_at.isoformat(),
            "note": row.note, "lifted_at": row.lifted_at.isoformat() if row.lifted_at else None,
            "active": row.lifted_at is None and row.until > now, "matching_open_alerts": matching}


def silences(ledger: Ledger, include_ended: bool = False) -> list[dict[str, Any]]:
    """Silences in force (with ``include_ended`` also lifted and expired ones), newest first, each
    with how many unresolved alerts it covers now."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        query = select(AlertSilence).order_by(AlertSilence.id.desc())
        if not include_ended:
            query = query.where(AlertSilence.lifted_at.is_(None), AlertSilence.until > now)
        return [silence_json(s, now, _matching_open(txn.session, s, now)) for s in txn.session.scalars(query)]


def unresolved_by_state(ledger: Ledger) -> dict[tuple[str, str], int]:
    """Unresolved alerts counted by (kind, state): open, acknowledged or silenced. Grouped in SQL;
    only kinds a silence names are looked at alert by alert."""
    counts: dict[tuple[str, str], int] = {}
    with ledger.transaction() as txn:
        session = txn.session
        rules = active_silences(session, ledger.clock())
        quiet_kinds = {s.kind for s in rules}
        acked = Alert.acknowledged_at.is_not(None)
        for kind, is_acked, n in session.execute(select(Alert.kind, acked, func.count()).where(
                Alert.resolved_at.is_(None)).group_by(Alert.kind, acked)):
            if kind in quiet_kinds and not is_acked:
                continue
            key = (str(kind), "acknowledged" if is_acked else "open")
            counts[key] = counts.get(key, 0) + int(n)
        if quiet_kinds:
            for kind, crm, record_id, referral_id, n in session.execute(
                    select(Alert.kind, Alert.crm, Alert.record_id, Alert.referral_id, func.count()).where(
                        Alert.resolved_at.is_(None), Alert.acknowledged_at.is_(None),
                        Alert.kind.in_(sorted(quiet_kinds))).group_by(
                        Alert.kind, Alert.crm, Alert.record_id, Alert.referral_id)):
                state = state_of(False, False, silenced_until(rules, kind, crm, record_id, referral_id))
                counts[(str(kind), state)] = counts.get((str(kind), state), 0) + int(n)
    return counts


def quiet(silences_now: Sequence[Silence], alert: Alert) -> bool:
    """Whether an unresolved alert must not page now (acknowledged, or silenced)."""
    return alert.acknowledged_at is not None or silenced_until(
        silences_now, alert.kind, alert.crm, alert.record_id, alert.referral_id) is not None
