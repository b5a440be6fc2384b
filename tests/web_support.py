"""Helpers for the portal and dashboard tests: a running HTTP server with the web pages on a real
ledger, and a cookie-keeping HTTP client that does what a browser's forms do."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx

from refsync.connector.attribution import Policy
from refsync.connector.web import WebSettings
from refsync.connector.web.app import HttpServer, HttpSettings
from refsync.state import access
from refsync.state.ledger import Ledger

PASSWORD = "correct horse battery staple"
POLICY = Policy("first_touch", "flag", 365, "web-test")
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def start_server(ledger: Ledger, *, base_url: str = "http://127.0.0.1", crms: tuple[str, ...] = (),
                 listen: str = "127.0.0.1:0", intake_token: str | None = None) -> HttpServer:
    web = WebSettings(policy=POLICY, base_url=base_url, crms=crms, budgets=dict.fromkeys(crms))
    server = HttpServer(ledger, HttpSettings(listen, intake_token, POLICY, web=web), lambda: True)
    server.start()
    return server


def url_of(server: HttpServer) -> str:
    host, port = server.address
    return f"http://{host}:{port}"


def invite(ledger: Ledger, kind: str, email: str, *, partner: str | None = None, role: str = "partner") -> str:
    """A user and its one-time link token (what `refsync partners invite` / `users add` make)."""
    _user, token = access.invite(ledger, kind, email, role if kind == "staff" else "partner", timedelta(days=7),
                                 partner_code=partner, create_partner=True)
    return token


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


class Browserless:
    """An HTTP client keeping cookies like a browser, with the steps of the sign-in forms."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, follow_redirects=False, timeout=20)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, data=data, **kwargs)

    def form_post(self, page: str, path: str, data: dict[str, Any], **kwargs: Any) -> httpx.Response:
        """GET ``page`` for its CSRF token, then POST the form to ``path`` with it."""
        token = csrf_of(self.get(page).text)
        return self.post(path, {**data, "csrf": token}, **kwargs)

    def accept_invitation(self, token: str, password: str = PASSWORD) -> httpx.Response:
        return self.form_post(f"/welcome/{token}", f"/welcome/{token}", {"password": password, "confirm": password})

    def sign_in(self, kind: str, email: str, password: str = PASSWORD) -> httpx.Response:
        base = "/portal" if kind == "partner" else "/dashboard"
        return self.form_post(f"{base}/sign-in", f"{base}/sign-in", {"email": email, "password": password})
