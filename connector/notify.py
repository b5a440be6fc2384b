"""The webhook delivery worker: partner status notifications and alert webhooks, from the outbox.

It claims ops with ``crm = "webhook"`` (the CRM push workers never see them), signs each body,
POSTs it with a timeout, and lands the result: done on 2xx; retried with backoff on timeouts,
connection errors, 408/425/429/5xx (``connector.retry.decide``); dead on any other 4xx, on an
unresolvable secret, or after ``max_attempts``.

Every request carries:
- ``Idempotency-Key``: the op's dedupe key; the same notification always has the same key;
- ``X-Refsync-Timestamp``: Unix seconds when this attempt was sent;
- ``X-Refsync-Signature``: ``sha256=`` + hex HMAC-SHA256(secret, f"{timestamp}.{body}").
A receiver recomputes the HMAC over the raw body, compares in constant time, rejects timestamps
more than five minutes away from its clock, and ignores a key it has already processed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests

from connector import retry
from connector.config import SecretRef
from connector.errors import ConfigError
from connector.logs import get_logger
from state.ledger import Ledger
from state.notifications import WEBHOOK, Delivery, land_deliveries, partner_webhook

log = get_logger("refsync.notify")
USER_AGENT = "refsync-webhooks/1"
RETRIABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
REPLAY_WINDOW_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Refsync-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float,
           window: int = REPLAY_WINDOW_SECONDS) -> str | None:
    """A receiver's check: None when the request is authentic and fresh, else why it is refused."""
    if not timestamp or not signature or not timestamp.isdigit():
        return "missing timestamp or signature"
    if abs(now - int(timestamp)) > window:
        return "timestamp outside the replay window"
    if not hmac.compare_digest(sign(secret, int(timestamp), body), signature):
        return "bad signature"
    return None


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass
class DeliverySettings:
    statuses: frozenset[str]  # partner notifications sent for transitions to these statuses
    enabled: bool = True
    timeout: float = 10.0
    max_attempts: int = 8
    batch_size: int = 100
    lease_seconds: int = 120
    alert_url: Callable[[], str | None] = lambda: None  # resolved at delivery: may come from env/file
    alert_secret: Callable[[], str | None] = lambda: None
    base_dir: Path | None = None
    clock: Callable[[], float] = time.time  # the signature's timestamp: wall-clock seconds


@dataclass
class DeliveryCounts:
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def _target(op: dict[str, Any], ledger: Ledger, settings: DeliverySettings) -> tuple[str, str | None]:
    """(url, secret) for an op; ConfigError when it cannot be delivered as configured."""
    payload = op["payload"]
    if payload.get("target") == "alerts":
        url = settings.alert_url()
        if not url:
            raise ConfigError("alerts.webhook_url is not set; set it or `refsync retry` after removing the op")
        return url, settings.alert_secret()
    code = str(payload.get("partner"))
    found = partner_webhook(ledger, code)
    if found is None or not found[0]:
        raise ConfigError(f"partner {code} has no webhook URL; `refsync partners set {code} --webhook-url URL`")
    url, secret_ref = found[0], found[1]
    assert url is not None
    if not secret_ref:
        raise ConfigError(f"partner {code} has no webhook secret; `refsync partners set {code} "
                          "--webhook-secret env:NAME`")
    return url, SecretRef(secret_ref).resolve(f"partners.{code}.webhook_secret", settings.base_dir)


def _deliver(op: dict[str, Any], ledger: Ledger, settings: DeliverySettings, http: requests.Session) -> Delivery:
    key = str(op["payload"]["idempotency_key"])
    delivery = Delivery(op["id"], op["referral_id"], op["kind"], "done", idempotency_key=key)
    now = ledger.clock()
    if op["kind"] == "notify" and (not settings.enabled or op["payload"].get("status") not in settings.statuses):
        delivery.skipped = f"status {op['payload'].get('status')} is not in [notifications] statuses"
        return delivery
    try:
        url, secret = _target(op, ledger, settings)
    except ConfigError as exc:
        delivery.state, delivery.error_class, delivery.error_message = "dead", "config", str(exc)
        return delivery
    body = encode(op["payload"]["body"])
    stamp = int(settings.clock())
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Idempotency-Key": key,
               "X-Refsync-Timestamp": str(stamp)}
    if secret:
        headers["X-Refsync-Signature"] = sign(secret, stamp, body)
    kind, code, message, retry_after = "", None, "", None
    try:
        response = http.post(url, data=body, headers=headers, timeout=settings.timeout, allow_redirects=False)
    except requests.Timeout as exc:
        kind, code, message = "transient", "TIMEOUT", f"no answer within {settings.timeout}s: {exc}"
    except requests.RequestException as exc:
        kind, code, message = "transient", type(exc).__name__, str(exc)
    else:
        delivery.status_code = response.status_code
        if 200 <= response.status_code < 300:
            return delivery
        code, message = f"HTTP_{response.status_code}", response.text[:500]
        kind = ("rate_limited" if response.status_code == 429 else
                "transient" if response.status_code in RETRIABLE_STATUS else "rejected")
        header = response.headers.get("Retry-After", "")
        retry_after = float(header) if header.isdigit() else None
    decision = retry.decide(kind, op["attempts"], settings.max_attempts, now, retry_after)
    if kind == "rate_limited" and op["attempts"] >= settings.max_attempts:
        decision = retry.RetryDecision(False, None, "rate limited too many times")
    delivery.state = "failed" if decision.retry else "dead"
    delivery.next_attempt_at = decision.at
    delivery.error_class, delivery.error_code, delivery.error_message = kind, code, message
    return delivery


def deliver_round(ledger: Ledger, owner: str, settings: DeliverySettings,
                  http: requests.Session | None = None) -> DeliveryCounts:
    """Claim due webhook ops and deliver them once each; returns what happened."""
    counts = DeliveryCounts()
    ops = ledger.claim_ops(owner, WEBHOOK, settings.batch_size, timedelta(seconds=settings.lease_seconds))
    if not ops:
        return counts
    session = http or requests.Session()
    deliveries = [_deliver(op, ledger, settings, session) for op in ops]
    land_deliveries(ledger, owner, deliveries)
    for d in deliveries:
        if d.skipped:
            counts.skipped += 1
        elif d.state == "done":
            counts.delivered += 1
        else:
            setattr(counts, d.state, getattr(counts, d.state) + 1)
            if d.state == "dead":
                counts.errors.append(f"op {d.op_id}: {d.error_code or d.error_class}: {d.error_message}")
                log.error("webhook delivery gave up", op_id=d.op_id, referral_id=d.referral_id, kind=d.kind,
                          error=d.error_message)
    return counts


def deliver_all(ledger: Ledger, owner: str, settings: DeliverySettings, max_rounds: int = 1000,
                http: requests.Session | None = None) -> DeliveryCounts:
    """Delivery rounds until nothing is due now (retries wait for their time)."""
    total = DeliveryCounts()
    for _ in range(max_rounds):
        counts = deliver_round(ledger, owner, settings, http)
        for name in ("delivered", "failed", "dead", "skipped"):
            setattr(total, name, getattr(total, name) + getattr(counts, name))
        total.errors += counts.errors
        if not (counts.delivered or counts.failed or counts.dead or counts.skipped):
            break
    return total
