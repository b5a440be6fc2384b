"""The partner portal and the program dashboard: server-rendered pages on the daemon's one ASGI app.

- ``/portal``: a partner user's own referrals, their timelines in partner words, and submission
  (one form, or a CSV upload) through the import's own validation and first-to-refer;
- ``/dashboard``: sync health per CRM, open alerts with what to do, the funnel per partner and per
  channel computed by ``refsync report``'s code, with server-rendered SVG charts;
- ``/welcome/TOKEN``: the one-time link of ``refsync partners invite`` / ``refsync users add``.

The pages hold no business rules: they read the ledger through ``state/`` (:mod:`state.portal`,
:mod:`state.health`, :mod:`state.access`) and write only through :func:`connector.imports.import_rows`.
They work without JavaScript (none is shipped) and need nothing from a CDN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from refsync.connector.attribution import Policy

if TYPE_CHECKING:
    from refsync.connector.config import Config

WEB_PREFIXES = ("/portal", "/dashboard", "/welcome", "/static")


@dataclass(frozen=True)
class WebSettings:
    """What the pages need from the config: the attribution policy submissions are decided by, the
    public base URL (https makes cookies Secure), how long sessions and links last, and the
    configured CRMs with their daily call budgets (for the sync health)."""

    policy: Policy
    base_url: str
    session_hours: float = 12
    crms: tuple[str, ...] = ()
    budgets: dict[str, int | None] = field(default_factory=dict)
    expire_after_days: int = 90

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")


def base_url(listen: str, public_url: str | None) -> str:
    """Where people reach the pages: ``[http] public_url``, else ``http://`` + ``[http] listen``
    (a wildcard address becomes 127.0.0.1: set public_url when others must reach it)."""
    if public_url:
        return public_url.rstrip("/")
    host, _, port = listen.strip().rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::", ""):  # noqa: S104 - recognising a wildcard, not binding one
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def settings_from_config(config: Config) -> WebSettings:
    budgets: dict[str, int | None] = {}
    for name in ("salesforce", "hubspot"):
        crm = getattr(config.crm, name)
        if crm is not None:
            budgets[name] = crm.daily_call_budget
    http = config.http
    return WebSettings(policy=config.attribution.policy(), base_url=base_url(http.listen, http.public_url),
                       session_hours=http.session_hours, crms=tuple(budgets), budgets=budgets,
                       expire_after_days=config.attribution.expire_after_days)


def is_web_path(path: str) -> bool:
    return path == "/" or any(path == p or path.startswith(p + "/") for p in WEB_PREFIXES)
