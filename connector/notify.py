"""The webhook delivery worker: partner status notifications and alert webhooks, from the outbox.

It claims ops with ``crm = "webhook"`` (the CRM push workers never see them), signs each body,
POSTs it and lands the result: done on 2xx; retried with backoff on timeouts, connection errors,
408/425/429/5xx (``connector.retry.decide``); dead on any other 4xx, on an unresolvable secret, on
a target the policy refuses (``connector.webhook_target``), or after ``max_attempts``. Each attempt
has one overall deadline (``timeout``: connect, send and the whole answer, even against a server
that drips), reads at most ANSWER_CAP bytes of the answer, and endpoints are served concurrently.

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
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from refsync.connector import retry, webhook_target
from refsync.connector.config import SecretRef
from refsync.connector.logs import get_logger
from refsync.connector.webhook_target import Deadline, TargetRefused, url_problem
from refsync.errors import ConfigError
from refsync.state.ledger import Ledger
from refsync.state.notifications import WEBHOOK, Delivery, land_deliveries, partner_webhook

log = get_logger("refsync.notify")
USER_AGENT = "refsync-webhooks/1"
RETRIABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
REPLAY_WINDOW_SECONDS = 300
ANSWER_CAP = 4096  # bytes of a webhook's answer read at most (kept in the op's error)
MAX_ENDPOINTS = 8  # endpoints served at once in a round


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
    timeout: float = 10.0  # the overall deadline of one attempt: connect, send and the whole answer
    max_attempts: int = 8
    batch_size: int = 100
    lease_seconds: int = 120
    alert_url: Callable[[], str | None] = lambda: None  # resolved at delivery: may come from env/file
    alert_secret: Callable[[], str | None] = lambda: None
    base_dir: Path | None = None
    clock: Callable[[], float] = time.time  # the signature's timestamp: wall-clock seconds
    allow_private_targets: bool = False  # http:// and loopback/private addresses (tests, internal receivers)
    include_prospect_email: bool = False  # the payload's referral.prospect_email (README: Partner notifications)


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


@dataclass
class _Attempt:
    """A delivery ready to send: everything the HTTP part needs, resolved on the ledger's thread."""

    op: dict[str, Any]
    delivery: Delivery
    url: str
    body: bytes
    headers: dict[str, str]


def _body(op: dict[str, Any], settings: DeliverySettings) -> bytes:
    body = op["payload"]["body"]
    referral = body.get("referral") if isinstance(body, dict) else None
    if isinstance(referral, dict) and "prospect_email" in referral and not settings.include_prospect_email:
        # Partners know whom they referred; the referral and external ids identify it (README).
        body = {**body, "referral": {k: v for k, v in referral.items() if k != "prospect_email"}}
    return encode(body)


def _prepare(op: dict[str, Any], ledger: Ledger, settings: DeliverySettings) -> Delivery | _Attempt:
    """The attempt for an op, or its Delivery when it is not sent (skipped, or dead by config)."""
    key = str(op["payload"]["idempotency_key"])
    delivery = Delivery(op["id"], op["referral_id"], op["kind"], "done", idempotency_key=key)
    if op["kind"] == "notify" and (not settings.enabled or op["payload"].get("status") not in settings.statuses):
        delivery.skipped = f"status {op['payload'].get('status')} is not in [notifications] statuses"
        return delivery
    if op["kind"] == "commission_notice" and not settings.enabled:
        delivery.skipped = "[notifications] enabled = false"
        return delivery
    try:
        url, secret = _target(op, ledger, settings)
        problem = url_problem(url, settings.allow_private_targets)
        if problem:
            raise TargetRefused(problem)
    except (ConfigError, TargetRefused) as exc:
        delivery.state, delivery.error_class, delivery.error_message = "dead", "config", str(exc)
        delivery.error_code = "TARGET_REFUSED" if isinstance(exc, TargetRefused) else None
        return delivery
    body = _body(op, settings)
    stamp = int(settings.clock())
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Idempotency-Key": key,
               "X-Refsync-Timestamp": str(stamp)}
    if secret:
        headers["X-Refsync-Signature"] = sign(secret, stamp, body)
    return _Attempt(op, delivery, url, body, headers)


def _read_capped(response: requests.Response) -> str:
    """At most ANSWER_CAP bytes of an answer; the rest is never read (the connection is closed)."""
    data = response.raw.read(ANSWER_CAP, decode_content=True) or b""
    return data[:ANSWER_CAP].decode(response.encoding or "utf-8", errors="replace")


def _send(attempt: _Attempt, settings: DeliverySettings, now: Any) -> Delivery:
    """One attempt under an overall deadline (connect, send, answer), then the retry decision."""
    op, delivery = attempt.op, attempt.delivery
    kind, code, message, retry_after = "", None, "", None
    deadline = Deadline(settings.timeout)
    http = webhook_target.session(deadline, settings.allow_private_targets)
    try:
        with http.post(attempt.url, data=attempt.body, headers=attempt.headers, timeout=settings.timeout,
                       allow_redirects=False, stream=True) as response:
            delivery.status_code = response.status_code
            if 200 <= response.status_code < 300:
                return delivery
            code, message = f"HTTP_{response.status_code}", _read_capped(response)[:500]
            kind = ("rate_limited" if response.status_code == 429 else
                    "transient" if response.status_code in RETRIABLE_STATUS else "rejected")
            header = response.headers.get("Retry-After", "")
            retry_after = float(header) if header.isdigit() else None
    except TargetRefused as exc:
        delivery.state, delivery.error_class, delivery.error_code = "dead", "config", "TARGET_REFUSED"
        delivery.error_message = str(exc)
        return delivery
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        kind, code, message = "transient", type(exc).__name__, str(exc)
        if deadline.expired or isinstance(exc, requests.Timeout):
            code, message = "TIMEOUT", f"no whole answer within {settings.timeout}s: {exc}"
    finally:
        deadline.cancel()
        http.close()
    if deadline.expired and not code == "TIMEOUT":
        kind, code, message = "transient", "TIMEOUT", f"no whole answer within {settings.timeout}s"
    decision = retry.decide(kind, op["attempts"], settings.max_attempts, now, retry_after)
    if kind == "rate_limited" and op["attempts"] >= settings.max_attempts:
        decision = retry.RetryDecision(False, None, "rate limited too many times")
    delivery.state = "failed" if decision.retry else "dead"
    delivery.next_attempt_at = decision.at
    delivery.error_class, delivery.error_code, delivery.error_message = kind, code, message
    return delivery


def _send_endpoint(attempts: list[_Attempt], settings: DeliverySettings, now: Any) -> list[Delivery]:
    """One endpoint's attempts in order. After an attempt runs out of time the endpoint's other
    ops are not tried in this round (they would each wait the deadline too): they are retried later."""
    out: list[Delivery] = []
    for attempt in attempts:
        if out and out[-1].error_code == "TIMEOUT":
            d = attempt.delivery
            decision = retry.decide("transient", attempt.op["attempts"], settings.max_attempts, now, None)
            d.state, d.next_attempt_at = ("failed" if decision.retry else "dead"), decision.at
            d.error_class, d.error_code = "transient", "ENDPOINT_SLOW"
            d.error_message = "not sent: this endpoint ran out of time earlier in the round"
            out.append(d)
            continue
        out.append(_send(attempt, settings, now))
    return out


def _endpoint(url: str) -> str:
    return urlsplit(url).netloc.lower()


def _deliveries(ledger: Ledger, ops: list[dict[str, Any]],
                settings: DeliverySettings) -> Iterator[list[Delivery]]:
    """Deliveries as they finish: those not sent first, then each endpoint's as soon as it is done.
    Endpoints are served concurrently (at most MAX_ENDPOINTS at once) on daemon threads, so one
    slow partner never delays another, and a stop never waits for them (their ops' leases expire
    and they are retried)."""
    now = ledger.clock()
    by_endpoint: dict[str, list[_Attempt]] = defaultdict(list)
    unsent: list[Delivery] = []
    for op in ops:
        prepared = _prepare(op, ledger, settings)
        if isinstance(prepared, Delivery):
            unsent.append(prepared)
        else:
            by_endpoint[_endpoint(prepared.url)].append(prepared)
    if unsent:
        yield unsent
    finished: queue.Queue[list[Delivery]] = queue.Queue()
    slots = threading.BoundedSemaphore(MAX_ENDPOINTS)

    def serve(attempts: list[_Attempt]) -> None:
        with slots:
            try:
                finished.put(_send_endpoint(attempts, settings, now))
            except BaseException:
                finished.put([])  # the ops' leases expire and they are claimed again
                raise

    for endpoint, attempts in by_endpoint.items():
        threading.Thread(target=serve, args=(attempts,), name=f"refsync-webhook-{endpoint}", daemon=True).start()
    for _ in by_endpoint:
        yield finished.get()


def deliver_round(ledger: Ledger, owner: str, settings: DeliverySettings) -> DeliveryCounts:
    """Claim due webhook ops and deliver them once each; returns what happened."""
    counts = DeliveryCounts()
    ops = ledger.claim_ops(owner, WEBHOOK, settings.batch_size, timedelta(seconds=settings.lease_seconds))
    if not ops:
        return counts
    for deliveries in _deliveries(ledger, ops, settings):
        land_deliveries(ledger, owner, deliveries)
        _count(counts, deliveries)
    return counts


def _count(counts: DeliveryCounts, deliveries: list[Delivery]) -> None:
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


def deliver_all(ledger: Ledger, owner: str, settings: DeliverySettings, max_rounds: int = 1000) -> DeliveryCounts:
    """Delivery rounds until nothing is due now (retries wait for their time)."""
    total = DeliveryCounts()
    for _ in range(max_rounds):
        counts = deliver_round(ledger, owner, settings)
        for name in ("delivered", "failed", "dead", "skipped"):
            setattr(total, name, getattr(total, name) + getattr(counts, name))
        total.errors += counts.errors
        if not (counts.delivered or counts.failed or counts.dead or counts.skipped):
            break
    return total
