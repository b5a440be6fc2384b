"""CRM errors, classified once by what the caller must do.

The adapters translate every client-library exception and HTTP answer into one of these
(keeping ``__cause__``); the engine decides about retries from the class alone.
"""

from __future__ import annotations

from refsync.errors import RefsyncError


class CrmError(RefsyncError):
    """Something a CRM said or failed to say. ``code`` is the CRM's own error code, if any."""

    def __init__(self, message: str, *, crm: str = "", code: str | None = None) -> None:
        super().__init__(message)
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
