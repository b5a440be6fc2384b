"""Signing in to the web pages: passwords (argon2id), sessions in cookies, CSRF tokens, the sign-in
rate limit and the one-time links.

- Session: a random 256-bit token in an HttpOnly, SameSite=Lax cookie (Secure when the public URL
  is https); the ledger keeps its SHA-256 with an absolute expiry (``[http] session_hours``).
  Partner and staff sessions use different cookies and different users, so one never opens the
  other's pages. Signing in always makes a new token and deletes the one the browser had: a token
  planted before sign-in (session fixation) never becomes a signed-in session.
- CSRF: every form carries a token. Signed in, it is the session's own token (stored with the
  session); before sign-in (the sign-in and set-password forms) it is a double-submit cookie. A
  POST without the right token is refused with 403 before anything else happens.
- Rate limit: after :data:`MAX_FAILURES` failed sign-ins of one email from one address within
  :data:`FAILURE_WINDOW`, further attempts are refused (429) until the window passes, even with the
  right password. Every attempt is an audit event (``sign_in``: succeeded, failed, rate_limited).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from refsync.connector.logs import get_logger
from refsync.connector.web import WebSettings
from refsync.connector.web.pages import forbidden, not_found, redirect, render
from refsync.state import access
from refsync.state.access import Session
from refsync.state.ledger import Ledger

COOKIES = {"partner": "refsync_portal", "staff": "refsync_staff"}
CSRF_COOKIE = "refsync_csrf"
HOMES = {"partner": "/portal", "staff": "/dashboard"}
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 hashes any length; a megabyte "password" is a denial of service, not a secret
MAX_FORM = 64 * 1024  # bytes of a sign-in or set-password form
FORM_TIMEOUT = 30.0  # seconds a client may take to send a form once its headers are in
log = get_logger("refsync.web")

_hasher = PasswordHasher()  # argon2id with the RFC 9106 low-memory parameters


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@lru_cache(maxsize=1)
def _decoy() -> str:
    return _hasher.hash(secrets.token_hex(16))


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches; a user without a password costs the same time as one with."""
    try:
        return _hasher.verify(stored or _decoy(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_problem(password: str, confirm: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"Choose a password of at least {MIN_PASSWORD} characters."
    if len(password) > MAX_PASSWORD:
        return f"Choose a password of at most {MAX_PASSWORD} characters."
    if password != confirm:
        return "The two passwords differ; type the same password twice."
    return None


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _same(given: object, expected: str | None) -> bool:
    return isinstance(given, str) and bool(expected) and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), str(expected).encode())


def set_cookie(response: Response, name: str, value: str, settings: WebSettings, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax",
                        secure=settings.secure_cookies)


def clear_cookie(response: Response, name: str, settings: WebSettings) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="lax", secure=settings.secure_cookies)


class Gate:
    """Sessions and CSRF for the pages of one app."""

    def __init__(self, ledger: Ledger, settings: WebSettings) -> None:
        self.ledger = ledger
        self.settings = settings

    @property
    def session_for(self) -> timedelta:
        return timedelta(hours=self.settings.session_hours)

    def session(self, request: Request, kind: str) -> Session | None:
        """The signed-in session of this kind (partner or staff), or None. Blocking: call in a thread."""
        token = request.cookies.get(COOKIES[kind])
        if not token or len(token) > 128:
            return None
        found = access.session(self.ledger, token)
        return found if found is not None and found.user.kind == kind else None

    def anonymous_csrf(self, request: Request) -> str:
        """The double-submit token of a browser not signed in (kept in :data:`CSRF_COOKIE`)."""
        token = request.cookies.get(CSRF_COOKIE)
        return token if token and 20 <= len(token) <= 128 else secrets.token_urlsafe(32)

    def with_csrf_cookie(self, response: Response, token: str) -> Response:
        set_cookie(response, CSRF_COOKIE, token, self.settings, None)
        return response

    @staticmethod
    def csrf_ok(request: Request, form: FormData, session: Session | None) -> bool:
        given = form.get("csrf")
        if session is not None:
            return _same(given, session.csrf_token)
        return _same(given, request.cookies.get(CSRF_COOKIE))


async def read_form(request: Request, limit: int = MAX_FORM) -> FormData | None:
    """The posted form, or None when it is larger than ``limit`` bytes."""
    length = request.headers.get("Content-Length", "")
    if not length.isdigit() or int(length) > limit:
        return None
    async with asyncio.timeout(FORM_TIMEOUT):  # a client dripping its body must not hold a thread
        return await request.form(max_files=1, max_fields=64)


def too_large() -> Response:
    return render("error.html", HTTPStatus.REQUEST_ENTITY_TOO_LARGE, title="Too large",
                  message="That form or file is too large; send a smaller one (at most 1 MB).")


Handler = Callable[[Request], Awaitable[Response]]


def sign_in_routes(gate: Gate) -> dict[str, Handler]:
    """The handlers of the sign-in, sign-out and one-time-link pages."""
    settings = gate.settings

    async def sign_in_page(request: Request) -> Response:
        kind = "staff" if request.url.path.startswith("/dashboard") else "partner"
        if await run_in_threadpool(gate.session, request, kind) is not None:
            return redirect(HOMES[kind])
        csrf = gate.anonymous_csrf(request)
        return gate.with_csrf_cookie(render("sign_in.html", kind=kind, csrf=csrf, email=""), csrf)

    async def sign_in(request: Request) -> Response:
        kind = "staff" if request.url.path.startswith("/dashboard") else "partner"
        form = await read_form(request)
        if form is None:
            return too_large()
        if not gate.csrf_ok(request, form, None):
            return forbidden("The form expired or did not come from this site. Reload the page and try again.")
        email, password = str(form.get("email") or "")[:320], str(form.get("password") or "")
        return await run_in_threadpool(_sign_in, request, kind, email, password)

    def _sign_in(request: Request, kind: str, email: str, password: str) -> Response:
        ip = client_ip(request)
        csrf = gate.anonymous_csrf(request)
        if access.recent_failures(gate.ledger, kind, email, ip, FAILURE_WINDOW) >= MAX_FAILURES:
            access.record_sign_in(gate.ledger, kind, email, ip, "rate_limited")
            log.warning("sign-in refused: too many failures", kind=kind, ip=ip)
            minutes = int(FAILURE_WINDOW.total_seconds() // 60)
            return render("sign_in.html", HTTPStatus.TOO_MANY_REQUESTS, kind=kind, csrf=csrf, email=email,
                          error=f"Too many failed sign-ins. Wait {minutes} minutes, then try again.")
        user = access.user_for_sign_in(gate.ledger, kind, email)
        if user is None or not verify_password(user.password_hash, password[:MAX_PASSWORD]):
            access.record_sign_in(gate.ledger, kind, email, ip, "failed")
            log.info("sign-in failed", kind=kind, ip=ip)
            return render("sign_in.html", HTTPStatus.UNAUTHORIZED, kind=kind, csrf=csrf, email=email,
                          error="That email and password do not match.")
        token, session_csrf = access.new_token(), access.new_token()
        access.record_sign_in(gate.ledger, kind, email, ip, "succeeded", user_id=user.id, session_token=token,
                              csrf_token=session_csrf, session_for=gate.session_for,
                              replaces=request.cookies.get(COOKIES[kind]))
        log.info("signed in", kind=kind, ip=ip)
        response = redirect(HOMES[kind])
        set_cookie(response, COOKIES[kind], token, settings, int(gate.session_for.total_seconds()))
        return response

    async def sign_out(request: Request) -> Response:
        kind = "staff" if request.url.path.startswith("/dashboard") else "partner"
        form = await read_form(request)
        if form is None:
            return too_large()
        session = await run_in_threadpool(gate.session, request, kind)
        if session is None:
            return redirect(HOMES[kind] + "/sign-in")
        if not gate.csrf_ok(request, form, session):
            return forbidden("The form expired or did not come from this site. Reload the page and try again.")
        everywhere = request.url.path.endswith("-everywhere")
        await run_in_threadpool(access.end_session, gate.ledger, request.cookies[COOKIES[kind]], session.user,
                                everywhere=everywhere)
        response = redirect(HOMES[kind] + "/sign-in")
        clear_cookie(response, COOKIES[kind], settings)
        return response

    async def welcome_page(request: Request) -> Response:
        token = request.path_params["token"]
        user = await run_in_threadpool(access.link_user, gate.ledger, token)
        if user is None:
            return _spent_link()
        csrf = gate.anonymous_csrf(request)
        return gate.with_csrf_cookie(render("welcome.html", user=user, csrf=csrf, token=token), csrf)

    async def welcome(request: Request) -> Response:
        token = request.path_params["token"]
        form = await read_form(request)
        if form is None:
            return too_large()
        if not gate.csrf_ok(request, form, None):
            return forbidden("The form expired or did not come from this site. Reload the page and try again.")
        return await run_in_threadpool(_welcome, request, token, str(form.get("password") or ""),
                                       str(form.get("confirm") or ""))

    def _welcome(request: Request, token: str, password: str, confirm: str) -> Response:
        user = access.link_user(gate.ledger, token)
        if user is None:
            return _spent_link()
        problem = password_problem(password, confirm)
        if problem:
            return render("welcome.html", HTTPStatus.UNPROCESSABLE_ENTITY, user=user, token=token,
                          csrf=gate.anonymous_csrf(request), error=problem)
        session_token = access.new_token()
        signed_in = access.use_link(gate.ledger, token, hash_password(password), session_token, access.new_token(),
                                    gate.session_for, client_ip(request))
        if signed_in is None:  # used meanwhile, by another tab
            return _spent_link()
        log.info("password set; signed in", kind=signed_in.kind, ip=client_ip(request))
        response = redirect(HOMES[signed_in.kind])
        set_cookie(response, COOKIES[signed_in.kind], session_token, settings, int(gate.session_for.total_seconds()))
        return response

    return {"sign_in_page": sign_in_page, "sign_in": sign_in, "sign_out": sign_out, "welcome_page": welcome_page,
            "welcome": welcome}


def _spent_link() -> Response:
    return render("error.html", HTTPStatus.NOT_FOUND, title="This link does not work any more",
                  message="The link was already used or has expired. Ask your program manager for a new one.")


def require(gate: Gate, kind: str, handler: Callable[[Request, Session], Awaitable[Response]]) -> Handler:
    """Wrap a page: without a session of ``kind`` the browser goes to the sign-in page."""

    async def guarded(request: Request) -> Response:
        session = await run_in_threadpool(gate.session, request, kind)
        if session is None:
            if request.method != "GET":
                return forbidden("You are signed out. Sign in again, then repeat what you did.")
            return redirect(HOMES[kind] + "/sign-in")
        return await handler(request, session)

    return guarded


def context(session: Session, **values: Any) -> dict[str, Any]:
    """What every signed-in page's template gets: the user and the session's CSRF token."""
    return {"user": session.user, "csrf": session.csrf_token, **values}


__all__ = ["Gate", "context", "not_found", "require", "sign_in_routes"]
