"""CRM errors, classified once by what the caller must do.

The adapters translate every client-library exception and HTTP answer into one of these
(keeping ``__cause__``); the engine decides about retries from the class alone.
"""

from __future__ import annotations

import re

from refsync.errors import RefsyncError

MESSAGE_LIMIT = 400  # characters of an error's text in a log line, a job run or an alert
# A query string (``?q=SELECT+Id%2C...``, ``?limit=100&after=...``): the request, not the problem.
_QUERY_STRING = re.compile(r"\?[^\s'\"()<>]*=[^\s'\"()<>]*")
# A SOQL statement quoted back (MALFORMED_QUERY, INVALID_FIELD): keep only the object it reads.
_SOQL = re.compile(r"(?s)\bSELECT\s.*?\bFROM\s+(\w+)[^\n]*")
_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-f]+")  # urllib3's objects: differs every attempt
_SPACE = re.compile(r"\s+")


def abbreviate(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """An error's text short enough for one log line: query strings and quoted SOQL abbreviated,
    object addresses dropped (so the same failure reads the same every round), whitespace folded,
    and the rest cut at ``limit`` characters. The CRM's error code, at the front, stays."""
    text = _QUERY_STRING.sub("?…", text)
    text = _SOQL.sub(r"SELECT … FROM \1 …", text)
    text = _SPACE.sub(" ", _ADDRESS.sub("", text)).strip()
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


class CrmError(RefsyncError):
    """Something a CRM said or failed to say. ``code`` is the CRM's own error code, if any.

    ``str()`` is the abbreviated text (what logs, job runs and alerts show); ``message`` keeps the
    whole text the CRM or the transport gave."""

    def __init__(self, message: str, *, crm: str = "", code: str | None = None) -> None:
        super().__init__(abbreviate(message))
        self.crm = crm
        self.code = code
        self.message = message


class RetriableError(CrmError):
    """Try again later; ``retry_after`` (seconds) is the CRM's hint, when it gave one."""

    def __init__(
        self, message: str, *, crm: str = "", code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, crm=crm, code=code)
        self.retry_after = retry_after


class RateLimited(RetriableError):
    """The CRM refused the call for a rate or daily limit; wait ``retry_after`` seconds."""


class TransientError(RetriableError):
    """5xx, timeout, dropped connection, lock contention: the same call may succeed later."""


class AuthError(CrmError):
    """Credentials rejected or expired and re-authentication failed: stop and page a human."""


class CrmConfigError(CrmError):
    """The CRM rejects our setup (unknown object or field, missing permission): fix the mapping/config."""
