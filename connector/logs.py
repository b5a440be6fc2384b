"""Structured logging: JSON lines for machines, readable lines on a terminal, secrets redacted.

Logs go to stderr, so that ``--json`` output on stdout stays one clean document. Every line passes
through :class:`Redactor`, which removes configured secret values wherever they appear, values of
keys that name a secret, and strings shaped like credentials (bearer tokens, session ids).
Standard-library loggers (the CRM client libraries, urllib3) go through the same processors.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from refsync.adapters.errors import abbreviate

REDACTED = "[REDACTED]"
_SECRET_KEYS = re.compile(
    r"(token|password|passwd|secret|authorization|session_?id|api_?key|security_token|signature)",
    re.IGNORECASE,
)
_SECRET_SHAPES = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=!-]{8,}"),
    re.compile(r"\b00D[A-Za-z0-9]{12,15}![A-Za-z0-9._]{20,}"),  # Salesforce session ids
    re.compile(r"\bpat-[a-z]{2,4}\d?-[0-9a-f-]{20,}\b"),  # HubSpot private-app tokens
    re.compile(r"(?i)((?:access_token|session_id|password|client_secret)=)[^&\s\"']+"),
]


class Redactor:
    """A structlog processor that scrubs secrets from every value of an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register more secret values (longest first, so a prefix never leaves a tail)."""
        known = set(self.secrets) | {s for s in secrets if s and len(s) >= 4}
        self.secrets = sorted(known, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for shape in _SECRET_SHAPES:
            text = shape.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
        return text

    def _value(self, key: str, value: Any) -> Any:
        if isinstance(value, str):
            if _SECRET_KEYS.search(key) and value and not value.startswith(("env:", "file:")):
                return REDACTED
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(key, v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(repr(value))
        return value

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            event[key] = self._value(key, event[key])
        return event


REDACTOR = Redactor()


def _scrub_rendered(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Exceptions are formatted into text late; scrub the text they became.
    for key in ("exception", "stack"):
        if isinstance(event.get(key), str):
            event[key] = REDACTOR.scrub(event[key])
    return event


ERROR_KEYS = ("error", "reason")


def _abbreviate_errors(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # One place for every log line: an error's text never carries a whole query or request.
    for key in ERROR_KEYS:
        if isinstance(event.get(key), str):
            event[key] = abbreviate(event[key])
    return event


def configure(
    fmt: str = "auto", level: str = "info", stream: TextIO | None = None, secrets: Iterable[str] = ()
) -> None:
    """Set up structlog and stdlib logging once per process; safe to call again (tests, CLI)."""
    stream = stream or sys.stderr
    REDACTOR.add(secrets)
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        REDACTOR,
        _abbreviate_errors,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            _scrub_rendered,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "simple_salesforce", "alembic", "apscheduler", "uvicorn"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _identity(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


def get_logger(name: str = "refsync", **bound: Any) -> Any:
    """A structlog logger; bind referral_id, crm, object, record_id, op_id where they apply."""
    return structlog.get_logger(name, **bound)


_DIGITS = re.compile(r"\d+")


def error_signature(error: str) -> str:
    """What makes two errors "the same": their abbreviated text with numbers blanked (a wait of
    37 s and one of 36 s, or attempt 3 and attempt 4, are one repeated problem)."""
    return _DIGITS.sub("#", abbreviate(error))


@dataclass
class _Streak:
    error: str
    signature: str
    total: int = 1
    unlogged: int = 0
    logged_at: float = 0.0


class RepeatedErrors:
    """Logs an error once, then counts identical ones instead of a line (and a traceback) per round.

    The first occurrence of an error under a key (a job, a job and a CRM) is logged with its text.
    The same error again is only counted; every ``every_seconds`` a line says how many times it was
    repeated meanwhile. A different error, or a success after errors (:meth:`clear`), first logs
    how many repeats went unlogged, so nothing is hidden for longer than ``every_seconds``.
    """

    def __init__(self, logger: Any, every_seconds: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.every = every_seconds
        self.clock = clock
        self.streaks: dict[str, _Streak] = {}
        self.lock = threading.Lock()  # the daemon's jobs report from their own threads

    def error(self, key: str, event: str, error: str, **fields: Any) -> bool:
        """Report ``error`` under ``key``; True when a line was logged for it."""
        with self.lock:
            return self._error(key, event, error, **fields)

    def _error(self, key: str, event: str, error: str, **fields: Any) -> bool:
        signature = error_signature(error)
        now = self.clock()
        streak = self.streaks.get(key)
        if streak is not None and streak.signature == signature:
            streak.total += 1
            streak.unlogged += 1
            if now - streak.logged_at < self.every:
                return False
            self.log.error(f"{event} (repeated {streak.unlogged} more times)", error=abbreviate(error),
                           repeated=streak.unlogged, total=streak.total, **fields)
            streak.unlogged, streak.logged_at = 0, now
            return True
        if streak is not None:
            self._close(key, streak, "changed")
        self.streaks[key] = _Streak(error, signature, logged_at=now)
        self.log.error(event, error=abbreviate(error), **fields)
        return True

    def clear(self, key: str, event: str, **fields: Any) -> None:
        """The work under ``key`` succeeded: end its streak, saying so when there was one."""
        with self.lock:
            streak = self.streaks.pop(key, None)
        if streak is not None:
            self._close(key, streak, "cleared")
            self.log.info(f"{event}: recovered after {streak.total} failed rounds", **fields)

    def _close(self, key: str, streak: _Streak, why: str) -> None:
        if streak.unlogged:
            self.log.error(f"{key}: the error before was repeated {streak.unlogged} more times, then {why}",
                           error=abbreviate(streak.error), repeated=streak.unlogged, total=streak.total)
