"""The web pages' routes, registered into the daemon's one Starlette app (:func:`connector.web.app.create_app`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from refsync.connector.web import WebSettings
from refsync.connector.web.actions import Actions
from refsync.connector.web.auth import Gate, require, sign_in_routes
from refsync.connector.web.dashboard import Dashboard
from refsync.connector.web.pages import STATIC, not_found, redirect
from refsync.connector.web.portal import Portal
from refsync.state.ledger import Ledger


def web_routes(ledger: Ledger, settings: WebSettings) -> list[BaseRoute]:
    """Every page of the portal and the dashboard; a signed-in page without its session redirects
    to its sign-in page (GET) or is refused (POST)."""
    gate = Gate(ledger, settings)
    auth = sign_in_routes(gate)
    partners = Portal(gate, settings)
    staff = Dashboard(gate, settings)
    admin = Actions(gate, settings)

    async def root(request: Request) -> Response:
        return redirect("/portal")

    return [
        Route("/", root, methods=["GET"]),
        Route("/welcome/{token}", auth["welcome_page"], methods=["GET"]),
        Route("/welcome/{token}", auth["welcome"], methods=["POST"]),
        Route("/portal/sign-in", auth["sign_in_page"], methods=["GET"]),
        Route("/portal/sign-in", auth["sign_in"], methods=["POST"]),
        Route("/portal/sign-out", auth["sign_out"], methods=["POST"]),
        Route("/portal/sign-out-everywhere", auth["sign_out"], methods=["POST"]),
        Route("/portal", require(gate, "partner", partners.home), methods=["GET"]),
        Route("/portal/referrals/{referral_id}", require(gate, "partner", partners.referral), methods=["GET"]),
        Route("/portal/submit", require(gate, "partner", partners.submit_page), methods=["GET"]),
        Route("/portal/submit", require(gate, "partner", partners.submit), methods=["POST"]),
        Route("/dashboard/sign-in", auth["sign_in_page"], methods=["GET"]),
        Route("/dashboard/sign-in", auth["sign_in"], methods=["POST"]),
        Route("/dashboard/sign-out", auth["sign_out"], methods=["POST"]),
        Route("/dashboard/sign-out-everywhere", auth["sign_out"], methods=["POST"]),
        Route("/dashboard", require(gate, "staff", staff.home), methods=["GET"]),
        Route("/dashboard/duplicates/decide", require(gate, "staff", admin.duplicate), methods=["POST"]),
        Route("/dashboard/commissions/decide", require(gate, "staff", admin.commission), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def page_not_found() -> Response:
    """The HTML 404 of a web path no route serves (the JSON endpoints keep their JSON 404)."""
    return not_found()
