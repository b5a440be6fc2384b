"""What an admin does on the program dashboard: decide a flagged duplicate referral, and approve,
reject or release commissions. Each form calls the very function of the CLI command
(:func:`connector.decisions.decide_duplicate` for ``refsync referrals decide``,
:func:`state.commissions.decide` for ``refsync commissions approve|reject|release``) with the staff
user's email as ``--by``, so the audit trail names the person, and the outcome is the same.

Every POST needs the session's CSRF token and the ``admin`` role (a ``viewer`` is refused with 403
before anything changes), then redirects to the dashboard with a flash message in the CLI's words.
The flash travels in a short-lived cookie signed with the session's CSRF secret: a link or another
site cannot make the dashboard claim something was done.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from refsync.connector.decisions import decide_duplicate
from refsync.connector.web import WebSettings
from refsync.connector.web.auth import Gate, forbidden, read_form, too_large
from refsync.connector.web.pages import redirect
from refsync.errors import InputError
from refsync.state.access import Session
from refsync.state.commissions import decide

FLASH_COOKIE = "refsync_flash"
FLASH_PATH = "/dashboard"
FLASH_SECONDS = 120
MAX_FLASH = 3000  # characters of flash text kept (a cookie holds about 4 KB)
COMMISSION_ACTIONS = ("approve", "reject", "release")
MAX_IDS = 200  # commissions of one form
Flash = list[tuple[str, bool]]  # (line, refused)


def _signature(payload: str, secret: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def flash_cookie(lines: Flash, secret: str) -> str:
    kept: Flash = []
    size = 0
    for text, refused in lines:
        size += len(text)
        if size > MAX_FLASH:
            kept.append((f"... and {len(lines) - len(kept)} more lines", refused))
            break
        kept.append((text, refused))
    payload = base64.urlsafe_b64encode(json.dumps(kept).encode()).decode()
    return f"{payload}.{_signature(payload, secret)}"


def read_flash(request: Request, session: Session) -> Flash:
    """The flash lines of the last action, when signed for this session; else none."""
    value = request.cookies.get(FLASH_COOKIE, "")
    payload, _, signature = value.partition(".")
    if not payload or not hmac.compare_digest(signature, _signature(payload, session.csrf_token)):
        return []
    try:
        lines = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (binascii.Error, ValueError):
        return []
    return [(str(text), bool(refused)) for text, refused in lines]


def clear_flash(response: Response, settings: WebSettings) -> None:
    response.delete_cookie(FLASH_COOKIE, path=FLASH_PATH, httponly=True, samesite="lax",
                           secure=settings.secure_cookies)


class Actions:
    """The admin forms of the dashboard."""

    def __init__(self, gate: Gate, settings: WebSettings) -> None:
        self.gate = gate
        self.settings = settings
        self.ledger = gate.ledger

    async def _admin_form(self, request: Request, session: Session) -> FormData | Response:
        form = await read_form(request)
        if form is None:
            return too_large()
        if not self.gate.csrf_ok(request, form, session):
            return forbidden("The form expired or did not come from this site. Reload the page and try again.",
                             user=session.user, csrf=session.csrf_token)
        if session.user.role != "admin":
            return forbidden("Only an admin can decide duplicates and commissions; your role is "
                             f"{session.user.role}.", user=session.user, csrf=session.csrf_token)
        return form

    def _back(self, session: Session, lines: Flash, anchor: str) -> Response:
        response = redirect(f"{FLASH_PATH}#{anchor}")
        response.set_cookie(FLASH_COOKIE, flash_cookie(lines, session.csrf_token), max_age=FLASH_SECONDS,
                            path=FLASH_PATH, httponly=True, samesite="lax", secure=self.settings.secure_cookies)
        return response

    async def duplicate(self, request: Request, session: Session) -> Response:
        """Credit or decline a flagged duplicate: ``refsync referrals decide ID --credit|--decline``."""
        form = await self._admin_form(request, session)
        if isinstance(form, Response):
            return form
        referral_id = str(form.get("referral_id") or "").strip()[:64]
        choice = str(form.get("decision") or "")
        note = str(form.get("note") or "").strip()[:1000] or None
        if choice not in ("credit", "decline"):
            return self._back(session, [("refused: give --credit or --decline", True)], "duplicates")
        lines = await run_in_threadpool(self._decide_duplicate, referral_id, choice == "credit",
                                        session.user.email, note)
        return self._back(session, lines, "duplicates")

    def _decide_duplicate(self, referral_id: str, credit: bool, by: str, note: str | None) -> Flash:
        try:
            decided = decide_duplicate(self.ledger, referral_id, credit, by, note, self.settings.policy.version)
        except InputError as exc:
            return [(f"refused: {exc}", True)]
        return [(decided.sentence(), False)]

    async def commission(self, request: Request, session: Session) -> Response:
        """Approve, reject or release commissions: ``refsync commissions ACTION ID... --by EMAIL``."""
        form = await self._admin_form(request, session)
        if isinstance(form, Response):
            return form
        action = str(form.get("action") or "")
        reason = str(form.get("reason") or "").strip()[:1000] or None
        raw = [str(v) for v in form.getlist("id")][:MAX_IDS]
        ids = [int(v) for v in raw if v.isdigit() and len(v) < 16]
        lines: Flash = [(f"refused: {v[:40]!r} is not a commission id", True) for v in raw
                        if not (v.isdigit() and len(v) < 16)]
        if action not in COMMISSION_ACTIONS:
            return self._back(session, [(f"refused: {action[:40]!r} is not one of "
                                         f"{', '.join(COMMISSION_ACTIONS)}", True)], "commissions")
        if action != "approve" and reason is None:
            return self._back(session, [(f"refused: give a reason to {action} (it is the evidence in a dispute)",
                                         True)], "commissions")
        if ids:
            result = await run_in_threadpool(decide, self.ledger, ids, action, session.user.email, reason)
            lines = [(line, False) for line in result.lines(action, session.user.email)] + \
                [(f"refused: {line}", True) for line in result.refused] + lines
        elif not lines:
            lines = [("refused: choose at least one commission", True)]
        return self._back(session, lines, "commissions")


def commission_view(row: dict[str, Any]) -> dict[str, Any]:
    """A ``commission_rows`` row as the dashboard lists it (holds with their reasons, for staff)."""
    return {**row, "hold_text": "; ".join(f"{h['code']}: {h['detail']}" for h in row["holds"])}
