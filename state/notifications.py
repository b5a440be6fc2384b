"""The ledger side of alerts and webhooks: deduplicated alerts that resolve themselves, partner
status notifications and alert deliveries as outbox ops, and the landing of delivery results.

Webhook deliveries are ``sync_ops`` rows with ``crm = "webhook"`` so the CRM push workers never
claim them; their ``dedupe_key`` is the idempotency key receivers see.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from refsync.state.alert_states import Silence, active_silences, quiet, reopened, silenced_until, state_of
from refsync.state.ledger import Ledger
from refsync.state.models import Alert, AuditEvent, Commission, Partner, Referral, SyncOp
from refsync.state.money import as_decimal_text
from refsync.state.views import iso

WEBHOOK = "webhook"  # the crm value of every webhook op


@dataclass(frozen=True)
class AlertSpec:
    """One discrepancy found now: what it is, which key dedupes it, and what it concerns."""

    kind: str
    key: str
    message: str
    crm: str | None = None
    referral_id: str | None = None
    record_id: str | None = None


@dataclass
class AlertSync:
    raised: int = 0  # new, or reopened after being resolved
    seen_again: int = 0
    resolved: int = 0


def _chunks(values: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def sync_alerts(ledger: Ledger, found: Sequence[AlertSpec], scope: Iterable[tuple[str, str | None]],
                undecided: Iterable[tuple[str, str]] = ()) -> AlertSync:
    """Record what a full check found and resolve what it no longer finds.

    ``scope`` lists the (kind, crm) pairs the check covered completely (crm None: any crm); open
    alerts of those pairs whose key was not found are resolved. Found alerts are raised, or counted
    again with a new last-seen time (reopened, and told to the sinks again, if they were resolved).
    """
    result = AlertSync()
    now = ledger.clock()
    by_key = {spec.key: spec for spec in found}
    keep = set(undecided)
    with ledger.transaction() as txn:
        session = txn.session
        existing: dict[str, Alert] = {}
        for chunk in _chunks(sorted(by_key)):
            for alert in session.scalars(select(Alert).where(Alert.dedupe_key.in_(list(chunk)))):
                existing[alert.dedupe_key] = alert
        for key, spec in by_key.items():
            known = existing.get(key)
            if known is None:
                session.add(Alert(kind=spec.kind, dedupe_key=key, referral_id=spec.referral_id, crm=spec.crm,
                                  record_id=spec.record_id, message=spec.message, first_seen=now, last_seen=now))
                result.raised += 1
                continue
            if known.resolved_at is not None:
                reopened(known)
                result.raised += 1
            else:
                result.seen_again += 1
            known.count += 1
            known.last_seen = now
            known.message = spec.message
        for kind, crm in scope:
            query = select(Alert).where(Alert.kind == kind, Alert.resolved_at.is_(None))
            if crm is not None:
                query = query.where(Alert.crm == crm)
            for alert in session.scalars(query):
                if alert.dedupe_key not in by_key and (alert.crm or "", alert.record_id or "") not in keep:
                    alert.resolved_at = now
                    result.resolved += 1
    return result


def alerts(ledger: Ledger, kind: str | None = None, open_only: bool = False,
           resolved_only: bool = False, state: str | None = None) -> list[dict[str, Any]]:
    """Alerts in the contract's ``alerts --json`` shape, newest first. ``open_only``: unresolved
    ones (open, acknowledged or silenced); ``state``: only alerts in that state."""
    query = select(Alert).order_by(Alert.last_seen.desc(), Alert.id.desc())
    if kind:
        query = query.where(Alert.kind == kind)
    if open_only or state in ("open", "acknowledged", "silenced"):
        query = query.where(Alert.resolved_at.is_(None))
    if resolved_only or state == "resolved":
        query = query.where(Alert.resolved_at.is_not(None))
    with ledger.transaction() as txn:
        rules = active_silences(txn.session, ledger.clock())
        rows = [alert_json(a, rules) for a in txn.session.scalars(query)]
    return [row for row in rows if state is None or row["state"] == state]


def alert_json(a: Alert, silences: Sequence[Silence] = ()) -> dict[str, Any]:
    quiet_until = None if a.resolved_at else silenced_until(silences, a.kind, a.crm, a.record_id, a.referral_id)
    return {"id": a.id, "kind": a.kind, "referral_id": a.referral_id, "crm": a.crm, "record_id": a.record_id,
            "message": a.message, "first_seen": a.first_seen.isoformat(), "last_seen": a.last_seen.isoformat(),
            "count": a.count, "resolved_at": a.resolved_at.isoformat() if a.resolved_at else None,
            "state": state_of(a.resolved_at is not None, a.acknowledged_at is not None, quiet_until),
            "acknowledged_by": a.acknowledged_by,
            "acknowledged_at": a.acknowledged_at.isoformat() if a.acknowledged_at else None,
            "note": a.note, "silenced_until": quiet_until.isoformat() if quiet_until else None,
            "resolution": a.resolution}


def alerts_to_announce(ledger: Ledger) -> list[dict[str, Any]]:
    """Open alerts the sinks have not been told about yet, oldest first. Acknowledged and silenced
    ones wait: a silenced alert still open when its silence ends is announced then."""
    with ledger.transaction() as txn:
        rules = active_silences(txn.session, ledger.clock())
        return [alert_json(a, rules) for a in txn.session.scalars(select(Alert).where(
            Alert.resolved_at.is_(None), Alert.notified_at.is_(None)).order_by(Alert.id)) if not quiet(rules, a)]


def raise_alert(session: Session, spec: AlertSpec, now: datetime, *, new: bool = False) -> None:
    """Raise one alert inside the caller's transaction, or count it again when it is known (and
    reopen it, told to the sinks again, when it had resolved). ``new``: the caller knows no alert
    can have this key yet (it names a referral created in this transaction): no lookup."""
    alert = None if new else session.scalar(select(Alert).where(Alert.dedupe_key == spec.key))
    if alert is None:
        session.add(Alert(kind=spec.kind, dedupe_key=spec.key, referral_id=spec.referral_id, crm=spec.crm,
                          record_id=spec.record_id, message=spec.message, first_seen=now, last_seen=now))
        return
    alert.count += 1
    alert.last_seen = now
    alert.message = spec.message
    if alert.resolved_at is not None:
        reopened(alert)


def duplicate_alert(referral_id: str, partner: str, prospect: str | None, holder: str | None) -> AlertSpec:
    """The ``duplicate_referral`` alert of a referral flagged as a second referral of a prospect:
    one text whether the import or a reconcile raises it."""
    return AlertSpec(
        "duplicate_referral", f"duplicate_referral:{referral_id}",
        f"Referral {referral_id} from {partner} is a second referral of {prospect} (credit is held by {holder}); "
        f"decide it with `refsync referrals decide {referral_id} --credit` or `--decline` (or on the "
        "program dashboard), the credited one keeps credit meanwhile.", referral_id=referral_id)


def mark_announced(ledger: Ledger, alert_ids: Sequence[int], ops: Sequence[tuple[str, dict[str, Any]]]) -> int:
    """Mark alerts as told to the sinks and enqueue their webhook ops, in one transaction; returns
    how many ops were new (an op whose key exists is not enqueued twice)."""
    now = ledger.clock()
    added = 0
    with ledger.transaction() as txn:
        for chunk in _chunks([str(i) for i in alert_ids]):
            txn.session.execute(update(Alert).where(Alert.id.in_([int(i) for i in chunk])).values(notified_at=now))
        for key, payload in ops:
            added += _add_op(txn.session, "alert", key, now, payload)
    return added


def _add_op(session: Session, kind: str, key: str, now: datetime, payload: dict[str, Any],
            referral_id: str | None = None) -> int:
    if session.scalar(select(SyncOp.id).where(SyncOp.dedupe_key == key)) is not None:
        return 0
    payload = {**payload, "idempotency_key": key}  # the claimed op's view carries no dedupe_key
    session.add(SyncOp(kind=kind, dedupe_key=key, referral_id=referral_id, crm=WEBHOOK, payload=payload,
                       next_attempt_at=now, created_at=now, updated_at=now))
    return 1


def enqueue_status_notice(session: Session, referral: Referral, from_status: str | None, to_status: str,
                          at: datetime, source: str, now: datetime) -> bool:
    """Queue the partner's notification of a status transition, in the transition's transaction.

    Nothing is queued when the partner has no webhook URL. Which statuses are sent is decided at
    delivery (``[notifications] statuses``), so changing the config applies to queued ones too."""
    partner = referral.partner if referral.partner is not None else session.get(Partner, referral.partner_id)
    if partner is None or not partner.webhook_url:
        return False
    key = f"notify:{referral.id}:{to_status}:{at.isoformat()}"
    body = {
        "event": "referral.status_changed",
        "id": key,
        "partner": partner.code,
        "referral": {"id": referral.id, "external_id": referral.external_id,
                     "prospect_email": referral.prospect_email, "prospect_company": referral.prospect_company,
                     "status": to_status},
        "transition": {"from": from_status, "to": to_status, "at": at.isoformat(), "source": source},
    }
    added = _add_op(session, "notify", key, now, {"target": "partner", "partner": partner.code,
                                                  "status": to_status, "body": body}, referral.id)
    if added:
        session.add(AuditEvent(referral_id=referral.id, at=now, actor="refsync", kind="notification_queued",
                               reason_code=to_status, detail={"idempotency_key": key, "partner": partner.code}))
    return bool(added)


def enqueue_commission_notice(session: Session, entry: Commission, event: str, now: datetime) -> bool:
    """Queue the partner's notice that a commission was approved or paid, in the same transaction as
    the change (nothing when the partner has no webhook URL). The body says what, never why."""
    partner = session.get(Partner, entry.partner_id)
    if partner is None or not partner.webhook_url:
        return False
    stamp = entry.paid_reference if event == "paid" else iso(entry.decided_at)
    key = f"commission:{entry.id}:{event}:{stamp}"
    body = {
        "event": f"commission.{event}",
        "id": key,
        "partner": partner.code,
        "commission": {"id": entry.id, "referral_id": entry.referral_id,
                       "amount": as_decimal_text(entry.amount_minor, entry.currency), "currency": entry.currency,
                       "status": entry.status, "terms_version": entry.terms_version,
                       "payable_after": iso(entry.payable_after), "paid_reference": entry.paid_reference},
    }
    return bool(_add_op(session, "commission_notice", key, now, {"target": "partner", "partner": partner.code,
                                                                 "event": event, "body": body}, entry.referral_id))


def partner_webhook(ledger: Ledger, code: str) -> tuple[str | None, str | None] | None:
    """(webhook_url, secret reference) of a partner; None when the partner does not exist."""
    with ledger.transaction() as txn:
        row = txn.session.execute(select(Partner.webhook_url, Partner.webhook_secret).where(
            Partner.code == code)).first()
        return (row[0], row[1]) if row else None


def set_partner_webhook(ledger: Ledger, code: str, url: str | None, secret_ref: str | None,
                        clear: bool = False) -> bool:
    """Set (or with ``clear``, remove) a partner's webhook URL and secret reference; False when
    the partner does not exist. Only the reference is stored, never the secret."""
    with ledger.transaction() as txn:
        partner = txn.session.scalar(select(Partner).where(Partner.code == code))
        if partner is None:
            return False
        if clear:
            partner.webhook_url, partner.webhook_secret = None, None
        if url is not None:
            partner.webhook_url = url
        if secret_ref is not None:
            partner.webhook_secret = secret_ref
        txn.add_audit(None, "partner_webhook_set", "cleared" if clear else "set", "cli",
                      detail={"partner": code, "url": partner.webhook_url, "secret": partner.webhook_secret})
        return True


@dataclass
class Delivery:
    """How one webhook op ended."""

    op_id: int
    referral_id: str | None
    kind: str  # notify, alert
    state: str  # done, failed, dead
    next_attempt_at: datetime | None = None
    error_class: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    status_code: int | None = None
    skipped: str | None = None  # why it was not sent (e.g. the status is not configured to notify)
    idempotency_key: str | None = None


def land_deliveries(ledger: Ledger, owner: str, deliveries: Sequence[Delivery]) -> None:
    """Record webhook op states and, for partner notifications, the audit events of the referral's
    timeline; only ops still leased to ``owner`` are touched."""
    now = ledger.clock()
    with ledger.transaction() as txn:
        for d in deliveries:
            values: dict[str, Any] = {"state": d.state, "updated_at": now, "lease_owner": None,
                                      "lease_expires_at": None}
            if d.state == "done":
                values["done_at"] = now
            if d.state == "failed" and d.next_attempt_at is not None:
                values["next_attempt_at"] = d.next_attempt_at
            if d.error_class or d.skipped:
                values.update(last_error_class=d.error_class or "skipped", last_error_code=d.error_code,
                              last_error_message=(d.error_message or d.skipped or "")[:2000])
            result = txn.session.execute(update(SyncOp).where(and_(SyncOp.id == d.op_id, SyncOp.lease_owner == owner))
                                         .values(**values))
            if getattr(result, "rowcount", 1) == 0 or d.referral_id is None or d.kind not in ("notify",
                                                                                             "commission_notice"):
                continue
            if d.skipped:
                kind, reason = "notification_skipped", "not_configured"
            elif d.state == "done":
                kind, reason = "notification_delivered", str(d.status_code or "ok")
            elif d.state == "dead":
                kind, reason = "notification_dead", d.error_code or d.error_class or "dead"
            else:
                continue  # a retry; its error stays on the op (`refsync ops`)
            txn.session.add(AuditEvent(referral_id=d.referral_id, at=now, actor="refsync", kind=kind,
                                       reason_code=reason, detail={"idempotency_key": d.idempotency_key,
                                                                   "op_id": d.op_id, "error": d.error_message}))
