"""Partner notifications: every status transition reaches the partner's webhook signed, with an
idempotency key, through the outbox with retries and a dead state; a receiver that follows the
README rejects a bad signature and a replayed timestamp."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from refsync.connector.attribution import Policy
from refsync.connector.imports import import_file
from refsync.connector.notify import DeliverySettings, deliver_all, encode, sign
from refsync.state.ledger import Ledger
from refsync.state.notifications import set_partner_webhook
from refsync.state.observe import observing
from tests.conftest import FakeClock
from tests.receiver import receiving

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
SECRET = "whsec-test-0123456789"
ALL = frozenset({"accepted", "qualified", "opportunity", "won", "lost", "expired"})


def _referral(ledger: Ledger, tmp_path: Path, url: str | None, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\nacme,dana@northwind.example,Northwind,Dana,,,,2026-10-01T09:00:00Z,,e1\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime(2026, 10, 2, tzinfo=UTC))
    monkeypatch.setenv("T_ACME_SECRET", SECRET)
    if url:
        assert set_partner_webhook(ledger, "acme", url, "env:T_ACME_SECRET")
    return str(ledger.referrals()[0]["id"])


def _move(ledger: Ledger, referral_id: str, status: str, clock: FakeClock) -> None:
    clock.advance(hours=1)
    with observing(ledger, "salesforce") as ob:
        referral = ob.referral(referral_id)
        assert referral is not None
        ob.transition(referral, status, clock(), "005REP")


def _settings(**kw: object) -> DeliverySettings:
    return DeliverySettings(statuses=ALL, timeout=3, max_attempts=3, allow_private_targets=True, **kw)  # type: ignore[arg-type]


def test_transition_reaches_partner_signed_once_and_shows_in_the_timeline(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    with receiving(SECRET) as receiver:
        referral_id = _referral(ledger, tmp_path, receiver.url, monkeypatch)
        _move(ledger, referral_id, "qualified", clock)
        _move(ledger, referral_id, "won", clock)
        counts = deliver_all(ledger, "w1", _settings())
        again = deliver_all(ledger, "w1", _settings())
    assert counts.delivered == 2 and again.delivered == 0
    assert [n["transition"]["to"] for n in receiver.accepted] == ["qualified", "won"]
    assert receiver.accepted[1]["referral"]["id"] == referral_id and receiver.accepted[1]["partner"] == "acme"
    headers = receiver.raw[0][0]
    assert headers["Idempotency-Key"].startswith(f"notify:{referral_id}:qualified:")
    timeline = [e["kind"] for e in ledger.referral(referral_id)["timeline"]]  # type: ignore[index]
    assert timeline.count("status_changed") == 2 and timeline.count("notification_delivered") == 2


def test_receiver_rejects_a_bad_signature_and_the_op_goes_dead(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    with receiving("the-partner-expects-another-secret") as receiver:
        referral_id = _referral(ledger, tmp_path, receiver.url, monkeypatch)
        _move(ledger, referral_id, "qualified", clock)
        counts = deliver_all(ledger, "w1", _settings())
    assert receiver.rejected == ["bad signature"] and receiver.accepted == []
    assert counts.dead == 1
    [op] = ledger.ops(state="dead")
    assert op["last_error"]["code"] == "HTTP_401"
    assert "notification_dead" in [e["kind"] for e in ledger.referral(referral_id)["timeline"]]  # type: ignore[index]


def test_replayed_request_is_rejected_by_its_old_timestamp(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    with receiving(SECRET) as receiver:
        referral_id = _referral(ledger, tmp_path, receiver.url, monkeypatch)
        _move(ledger, referral_id, "qualified", clock)
        deliver_all(ledger, "w1", _settings(clock=lambda: time.time() - 600))  # captured 10 minutes ago
        body = encode({"event": "referral.status_changed", "forged": True})
        stamp = int(time.time())
        forged = requests.post(receiver.url, data=body, timeout=3, headers={
            "X-Refsync-Timestamp": str(stamp), "X-Refsync-Signature": sign("wrong", stamp, body)})
    assert receiver.rejected == ["timestamp outside the replay window", "bad signature"]
    assert forged.status_code == 401 and receiver.accepted == []


def test_server_errors_are_retried_with_backoff_and_the_same_idempotency_key(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    with receiving(SECRET) as receiver:
        receiver.fail_next = 1
        referral_id = _referral(ledger, tmp_path, receiver.url, monkeypatch)
        _move(ledger, referral_id, "won", clock)
        first = deliver_all(ledger, "w1", _settings())
        assert first.failed == 1 and receiver.accepted == []
        assert ledger.ops()[0]["state"] == "failed"
        clock.advance(hours=2)
        second = deliver_all(ledger, "w1", _settings())
    assert second.delivered == 1 and len(receiver.accepted) == 1
    keys = {headers["Idempotency-Key"] for headers, _ in receiver.raw}
    assert len(receiver.raw) == 2 and len(keys) == 1


def test_unreachable_partner_goes_dead_after_max_attempts(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    referral_id = _referral(ledger, tmp_path, "http://127.0.0.1:9/nothing-listens", monkeypatch)
    _move(ledger, referral_id, "won", clock)
    for _ in range(3):
        deliver_all(ledger, "w1", _settings())
        clock.advance(hours=3)
    [op] = ledger.ops()
    assert op["state"] == "dead" and op["attempts"] == 3


def test_transitions_not_configured_to_notify_are_not_sent(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    with receiving(SECRET) as receiver:
        referral_id = _referral(ledger, tmp_path, receiver.url, monkeypatch)
        _move(ledger, referral_id, "contacted", clock)
        _move(ledger, referral_id, "won", clock)
        counts = deliver_all(ledger, "w1", DeliverySettings(statuses=frozenset({"won"}), timeout=3,
                                                                   allow_private_targets=True))
    assert counts.delivered == 1 and counts.skipped == 1
    assert [n["transition"]["to"] for n in receiver.accepted] == ["won"]


def test_partner_without_webhook_gets_no_op(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    referral_id = _referral(ledger, tmp_path, None, monkeypatch)
    _move(ledger, referral_id, "won", clock)
    assert ledger.ops() == []
