"""Whether and when a failed op is tried again: a pure decision, no I/O.

Backoff is tenacity's exponential wait with jitter, computed for the op's attempt number; a CRM's
own retry-after hint wins when it asks for longer. Only retriable failures are retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tenacity import RetryCallState, wait_exponential_jitter

RETRIABLE = frozenset({"transient", "missing", "rate_limited"})
_WAIT = wait_exponential_jitter(multiplier=2, max=3600, exp_base=2, jitter=2)


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    at: datetime | None  # when to try again (None when dead)
    reason: str


def backoff_seconds(attempt: int) -> float:
    """tenacity's exponential-with-jitter wait before attempt ``attempt + 1``."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(attempt, 1)
    return float(_WAIT(state))


def decide(kind: str, attempts: int, max_attempts: int, now: datetime,
           retry_after: float | None = None) -> RetryDecision:
    """Retry a ``kind`` failure after ``attempts`` tries, or declare the op dead."""
    if kind not in RETRIABLE:
        return RetryDecision(False, None, f"{kind}: not retriable")
    if kind != "rate_limited" and attempts >= max_attempts:
        return RetryDecision(False, None, f"{kind}: gave up after {attempts} attempts")
    wait = backoff_seconds(attempts)
    if retry_after is not None:
        wait = max(wait if kind != "rate_limited" else 0.0, retry_after)
    return RetryDecision(True, now + timedelta(seconds=wait), f"{kind}: retry in {wait:.1f}s")
