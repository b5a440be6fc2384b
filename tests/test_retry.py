"""Retry decisions: only retriable failures, exponential backoff, retry-after honoured, then dead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from refsync.connector import retry

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def test_permanent_rejection_is_dead_at_once() -> None:
    decision = retry.decide("rejected", 1, 8, NOW)
    assert not decision.retry and decision.at is None


def test_transient_failures_back_off_exponentially_then_die() -> None:
    waits = [(retry.decide("transient", n, 8, NOW).at - NOW).total_seconds() for n in range(1, 6)]  # type: ignore[operator]
    assert 2 <= waits[0] <= 4 and 16 <= waits[3] <= 18
    assert waits == sorted(waits)
    assert not retry.decide("transient", 8, 8, NOW).retry


def test_retry_after_is_honoured_and_rate_limits_never_exhaust_attempts() -> None:
    decision = retry.decide("rate_limited", 50, 8, NOW, retry_after=10)
    assert decision.retry and decision.at == NOW + timedelta(seconds=10)
    assert retry.decide("transient", 1, 8, NOW, retry_after=120).at == NOW + timedelta(seconds=120)
