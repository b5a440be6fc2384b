"""Rendering: the Jinja2 environment (autoescaped), the security headers every page carries, and
the small formatting filters the templates share."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from refsync.connector.web.words import status_label
from refsync.state.money import as_decimal_text

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"

# No script at all, styles and images only from here (the SVG charts are inline markup, not
# script), no framing, no form posting elsewhere, no Referer carrying a /welcome/ token away.
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _when(value: datetime | date | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def _day(value: datetime | date | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d")


def money(value: float | Decimal | dict[str, float] | None) -> str:
    """An amount, or a report's ``{currency: amount}`` as one figure per currency (never summed
    across currencies): ``12,500.00 USD; 800.00 EUR``."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return "; ".join(f"{float(amount):,.2f} {currency}" for currency, amount in value.items())
    return f"{float(value):,.2f}"


def minor(amount: int, currency: str) -> str:
    """Minor units of a currency with its code, digits grouped: ``1,234.50 USD``, ``500 JPY``."""
    return f"{Decimal(as_decimal_text(amount, currency)):,} {currency}"


def percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
_env.filters.update(when=_when, day=_day, money=money, minor=minor, percent=percent, status=status_label)


def render(template: str, status: int = HTTPStatus.OK, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=int(status), headers=HEADERS)


def redirect(url: str) -> Response:
    """303 See Other: after a POST the browser GETs the next page."""
    return RedirectResponse(url, status_code=HTTPStatus.SEE_OTHER, headers={"Cache-Control": "no-store"})


def not_found(**context: Any) -> HTMLResponse:
    return render("error.html", HTTPStatus.NOT_FOUND, title="Not found",
                  message="There is no such page, or it is not yours to see.", **context)


def forbidden(message: str, **context: Any) -> HTMLResponse:
    return render("error.html", HTTPStatus.FORBIDDEN, title="Refused", message=message, **context)


def unavailable() -> HTMLResponse:
    return render("error.html", HTTPStatus.SERVICE_UNAVAILABLE, title="Try again in a moment",
                  message="The referral ledger is not available right now. Nothing you sent was lost half-way: "
                          "reload the page in a moment and repeat what you did if it did not appear.")
