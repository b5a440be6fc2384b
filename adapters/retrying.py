"""The one retry policy for CRM calls: what is tried again inside the cycle, and how long we wait.

Both adapters send every API call (reads, searches, poll pages, describes, stage reads, writes)
through :meth:`CallPolicy.call`, so a 503, a dropped connection or a short rate limit costs a few
seconds instead of the CRM's whole cycle. What the policy gives up on is raised as before, and the
engine reacts to its class: a long :class:`RateLimited` (a daily limit) pauses the CRM until a later
cycle, a :class:`TransientError` that outlived every attempt fails the ops of that call (their own
attempt counting, ``connector/retry.py``, takes over from there).

This module sits below everything (it imports no ``connector`` module): the engine builds the policy
from the ``[retry]`` config table and hands it to the adapters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from refsync.adapters.errors import RateLimited, RetriableError, TransientError

T = TypeVar("T")
log = structlog.get_logger("refsync.retry")


@dataclass(frozen=True)
class RetrySettings:
    """How hard one CRM call is tried (the ``[retry]`` table of the config)."""

    attempts: int = 6  # tries of one call in all, the first included
    initial_wait_seconds: float = 0.5  # the first backoff; doubles each try, with jitter
    max_wait_seconds: float = 20.0  # no backoff is longer than this
    max_retry_after_seconds: float = 30.0  # a rate limit asking for longer is not waited out in place


class CallPolicy:
    """Retries one CRM call on transient failures and short rate limits, with exponential backoff
    and jitter (tenacity); ``sleep`` is injectable so tests wait for nothing."""

    def __init__(self, settings: RetrySettings | None = None, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings or RetrySettings()
        self.sleep = sleep
        s = self.settings
        self._backoff = wait_exponential_jitter(multiplier=s.initial_wait_seconds, max=s.max_wait_seconds,
                                                jitter=s.initial_wait_seconds)

    def retriable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another try now: a transient failure, or a rate limit whose
        wait is short. A long rate limit (a daily allocation spent) goes up to the engine."""
        if isinstance(exc, RateLimited):
            return exc.retry_after is not None and exc.retry_after <= self.settings.max_retry_after_seconds
        return isinstance(exc, TransientError)

    def wait_seconds(self, state: RetryCallState) -> float:
        """The CRM's own hint when it gave one (Retry-After), else our backoff; never over the max."""
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        backoff = float(self._backoff(state))
        if isinstance(exc, RetriableError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self.settings.max_retry_after_seconds)
        return backoff

    def call(self, crm: str, kind: str, fn: Callable[[], T]) -> T:
        """``fn()`` tried up to ``attempts`` times; the last failure is raised unchanged.

        Only call this with calls that are safe to repeat: reads, and writes that are idempotent
        (upserts keyed by an external id, updates by record id)."""
        def note(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            # The error text is the CRM's message, already classified; credentials never reach it
            # (and the log redactor scrubs secret-shaped strings anyway).
            log.warning("CRM call failed; retrying", crm=crm, call=kind, attempt=state.attempt_number,
                        of=self.settings.attempts, error_class=type(exc).__name__,
                        code=getattr(exc, "code", None), error=str(exc),
                        wait_seconds=round(state.upcoming_sleep, 3))

        retrying = Retrying(stop=stop_after_attempt(self.settings.attempts), wait=self.wait_seconds,
                            retry=retry_if_exception(self.retriable), before_sleep=note, sleep=self.sleep,
                            reraise=True)
        return retrying(fn)


NO_RETRY = CallPolicy(RetrySettings(attempts=1))
