"""The daemon's HTTP surface: ``/healthz``, ``/readyz``, ``/metrics`` and the authenticated intake.

A stdlib :class:`~http.server.ThreadingHTTPServer` served from a background thread of ``refsync
run`` (no web framework: four endpoints do not need one). ``POST /intake`` validates each referral
exactly like a file import and writes it through :func:`connector.imports.import_rows`, so
first-to-refer, deduplication and idempotency are the same whichever way a referral arrives.

Secrets: the intake token is compared in constant time and never logged; request headers are never
logged at all.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from connector.attribution import Policy
from connector.errors import ConfigError, LedgerError
from connector.imports import ImportReport, RowOutcome, import_rows
from connector.intake import COLUMNS, NewReferral, RowProblem, validate_row
from connector.logs import get_logger
from connector.metrics import Metrics
from state import db
from state.ledger import Ledger

log = get_logger("refsync.http")

MAX_BODY = 1024 * 1024  # bytes of one intake request
MAX_ITEMS = 500  # referrals in one intake request (one import batch, one transaction)
READ_TIMEOUT = 30.0  # seconds a client may take to send its request
GET_ROUTES = ("/healthz", "/readyz", "/metrics")
INTAKE = "/intake"
INTAKE_ACTOR = "intake:http"


@dataclass(frozen=True)
class HttpSettings:
    """What ``[http]`` configures: where to listen ("" disables the server) and the resolved intake
    token (None disables ``/intake``), plus the attribution policy intake decides credit with."""

    listen: str
    intake_token: str | None
    policy: Policy


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6; port 0 picks a free one) as a bind address."""
    host, sep, port = listen.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"http.listen: \"{listen}\" is not HOST:PORT; write e.g. \"127.0.0.1:8787\" (\"0.0.0.0:8787\" for "
            "every interface, \"[::1]:8787\" for IPv6), or \"\" to disable the HTTP server"
        )
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never holds up the daemon's exit
    app: HttpServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpServer:
    """The HTTP endpoints of one daemon, bound by :meth:`start` and served from a thread."""

    def __init__(self, ledger: Ledger, settings: HttpSettings, scheduler_running: Callable[[], bool],
                 crms: Callable[[], dict[str, dict[str, Any]]] | None = None) -> None:
        self.ledger = ledger
        self.settings = settings
        self.scheduler_running = scheduler_running
        self.crms = crms  # each CRM's readiness (connector/crms.readiness)
        self.metrics = Metrics(ledger)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (the real port when ``listen`` asked for port 0)."""
        if self._server is None:
            raise RuntimeError("the HTTP server is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind ``listen`` and serve in a background thread; ConfigError when the address cannot be
        bound (in use, not local), so ``refsync run`` stops at start-up with the reason."""
        host, port = parse_listen(self.settings.listen)
        server_class = _Server6 if ":" in host else _Server
        try:
            server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"http.listen: cannot listen on {self.settings.listen} ({exc.strerror or exc}); free the port, "
                "choose another address, or set listen = \"\" to run without the HTTP server"
            ) from exc
        server.app = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="refsync-http", daemon=True)
        self._thread.start()
        bound_host, bound_port = self.address
        log.info("http listening", address=f"{bound_host}:{bound_port}", port=bound_port,
                 intake="enabled" if self.settings.intake_token else "disabled")

    def stop(self) -> None:
        """Stop serving and close the socket; requests being answered finish on their own thread."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        log.info("http stopped")

    # -- endpoints ---------------------------------------------------------------------------

    def readiness(self) -> str | None:
        """None when ready; else why not: the ledger unreachable or not migrated, or the scheduler
        not running (starting, or stopping after SIGTERM)."""
        try:
            db.ensure_current(self.ledger.engine)
        except LedgerError as exc:
            return str(exc)
        except SQLAlchemyError as exc:
            return f"cannot read the ledger's schema version: {exc}"
        if not self.scheduler_running():
            return "the scheduler is not running (starting up or shutting down)"
        return None

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """The ``/readyz`` answer. 503 when the daemon itself cannot work (ledger, scheduler). A CRM
        that waits (down, credentials refused) is named with its reason under ``crms`` and makes the
        status "degraded", but the answer stays 200: the other CRMs sync and the intake takes
        referrals, so a load balancer must keep sending them here."""
        reason = self.readiness()
        crms = self.crms() if self.crms is not None else {}
        if reason is not None:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not ready", "reason": reason,
                                                    **({"crms": crms} if crms else {})}
        waiting = [f"{name}: {state['reason']}" for name, state in crms.items() if not state["ready"]]
        if waiting:
            return HTTPStatus.OK, {"status": "degraded", "reason": "; ".join(waiting), "crms": crms}
        return HTTPStatus.OK, {"status": "ready", **({"crms": crms} if crms else {})}

    def intake(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Validate and import the referrals of one request body; the status and the JSON answer."""
        items, problem = _items(body)
        if problem is not None:
            status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if len(items) > MAX_ITEMS else HTTPStatus.BAD_REQUEST
            return status, {"error": problem}
        now = self.ledger.clock()
        results: list[dict[str, Any]] = []
        valid: list[NewReferral] = []
        for index, item in enumerate(items):
            line = index + 1
            if not isinstance(item, dict):
                problems = [RowProblem(line, None, "must be a JSON object with the import columns")]
                results.append(_rejected(index, None, problems))
                continue
            unknown = tuple(RowProblem(line, str(k), "unknown key, ignored", "note") for k in item if k not in COLUMNS)
            row = validate_row(line, item, now)
            if isinstance(row, list):
                results.append(_rejected(index, item.get("external_id"), row, unknown))
                continue
            valid.append(row)
            results.append({"index": index, "external_id": row.external_id, "notes": _problems(unknown)})
        report = import_rows(self.ledger, valid, self.settings.policy, INTAKE_ACTOR,
                             ImportReport(file=INTAKE_ACTOR, rows=[]))
        by_line: dict[int, RowOutcome] = {o.line: o for o in report.rows or []}
        for result in results:
            outcome = by_line.get(result["index"] + 1)
            if "outcome" in result:
                continue
            if outcome is None:  # import_rows answers every row it was given; this is a bug, not input
                raise RuntimeError(f"no import outcome for intake item {result['index']}")
            result["outcome"] = outcome.outcome
            if outcome.outcome == "rejected":
                result["problems"] = _problems(outcome.problems)
            else:
                result["referral_id"] = outcome.referral_id
                result["notes"] = result["notes"] + _problems(o for o in outcome.problems if o.severity == "note")
        totals = {k: sum(r["outcome"] == k for r in results) for k in ("imported", "unchanged", "rejected")}
        for outcome_name, count in totals.items():
            if count:
                self.metrics.intake.labels(outcome_name).inc(count)
        log.info("intake", **totals)
        if totals["imported"]:
            status = HTTPStatus.CREATED
        elif totals["rejected"] == len(results):
            status = HTTPStatus.UNPROCESSABLE_ENTITY
        else:
            status = HTTPStatus.OK
        return status, {**totals, "results": results}


def _items(body: Any) -> tuple[list[Any], str | None]:
    """The referrals of a body: one object, or ``{"referrals": [...]}``; else why not."""
    if isinstance(body, dict) and "referrals" in body:
        extra = sorted(k for k in body if k != "referrals")
        if extra:
            return [], f"unexpected keys beside \"referrals\": {', '.join(extra)}; send only {{\"referrals\": [...]}}"
        items = body["referrals"]
        if not isinstance(items, list) or not items:
            return [], "\"referrals\" must be a non-empty array of referral objects"
        if len(items) > MAX_ITEMS:
            return items, f"{len(items)} referrals in one request; send at most {MAX_ITEMS} a request"
        return items, None
    if isinstance(body, dict):
        return [body], None
    return [], ("the body must be a JSON object with the import columns (" + ", ".join(COLUMNS)
                + "), or {\"referrals\": [...]} with up to " + str(MAX_ITEMS) + " of them")


def _problems(problems: Any) -> list[dict[str, str | None]]:
    return [{"column": p.column, "reason": p.reason} for p in problems]


def _rejected(index: int, external_id: Any, problems: list[RowProblem],
              notes: tuple[RowProblem, ...] = ()) -> dict[str, Any]:
    return {"index": index, "external_id": external_id if isinstance(external_id, str) else None,
            "outcome": "rejected", "problems": _problems(problems), "notes": _problems(notes)}


class _Handler(BaseHTTPRequestHandler):
    """One request: routes, authentication, body limits; the work is :class:`HttpServer`'s."""

    server: _Server
    server_version = "refsync"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT

    @property
    def app(self) -> HttpServer:
        return self.server.app

    @property
    def route(self) -> str:
        return urlsplit(self.path).path

    # -- methods ----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        route = self.route
        if route == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok"})
        elif route == "/readyz":
            self._json(*self.app.readyz())
        elif route == "/metrics":
            body, content_type = self.app.metrics.render()
            self._send(HTTPStatus.OK, body, content_type)
        else:
            self._not_here(route)

    def do_POST(self) -> None:  # noqa: N802
        if self.route != INTAKE or not self.app.settings.intake_token:
            self._not_here(self.route)
            return
        if not self._authorised():
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token; send "
                                                 "Authorization: Bearer <the token of [http] intake_token>"},
                       close=True, headers={"WWW-Authenticate": 'Bearer realm="refsync"'})
            return
        body = self._body()
        if body is None:
            return
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"the body is not valid JSON ({exc})"})
            return
        try:
            status, answer = self.app.intake(parsed)
        except LedgerError as exc:
            log.error("intake failed: the ledger refused the write; the client may retry", error=str(exc))
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the ledger is unavailable; retry later "
                                                        "(re-sending the same referrals is safe)"})
            return
        except Exception:  # noqa: BLE001 - answer 500 with the traceback in the log, not a dropped connection
            log.exception("intake failed unexpectedly")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the refsync log"},
                       close=True)
            return
        self._json(status, answer)

    def do_PUT(self) -> None:  # noqa: N802
        self._not_here(self.route)

    do_DELETE = do_PATCH = do_PUT  # noqa: N815

    # -- helpers ----------------------------------------------------------------------------

    def _authorised(self) -> bool:
        expected = self.app.settings.intake_token or ""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        given = token.strip().encode("utf-8", "surrogateescape")
        # compare_digest runs the comparison in constant time whatever matches, so the answer's
        # timing does not reveal how much of a guessed token was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(given, expected.encode("utf-8"))

    def _body(self) -> bytes | None:
        """The request body, or None after answering 411/413/400 for one we will not read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "send the body with a Content-Length, not chunked"},
                       close=True)
            return None
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"}, close=True)
            return None
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length_header)
        except ValueError:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"Content-Length {length_header!r} is not a size"},
                       close=True)
            return None
        if length > MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       {"error": f"the body is {length} bytes; at most {MAX_BODY} (1 MB) a request: split it"},
                       close=True)
            return None
        return self.rfile.read(length)

    def _not_here(self, route: str) -> None:
        """404 for what does not exist (including a disabled intake); 405 for a wrong method."""
        if route in GET_ROUTES:
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{route} answers GET only"}, close=True,
                       headers={"Allow": "GET"})
        elif route == INTAKE and self.app.settings.intake_token:
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{INTAKE} answers POST only"}, close=True,
                       headers={"Allow": "POST"})
        elif route == INTAKE:
            self._json(HTTPStatus.NOT_FOUND, {"error": "the intake endpoint is disabled; set [http] intake_token "
                                              "to enable it"}, close=True)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {route}; see {', '.join(GET_ROUTES)}, "
                                              f"POST {INTAKE}"}, close=True)

    def _json(self, status: int, value: Any, *, close: bool = False, headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")
        self._send(status, body, "application/json", close=close, headers=headers)

    def _send(self, status: int, body: bytes, content_type: str, *, close: bool = False,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:  # a body we did not read must not be taken for the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        route = self.route
        endpoint = route if route in (*GET_ROUTES, INTAKE) else "other"
        self.app.metrics.requests.labels(endpoint, str(int(status))).inc()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One debug line per request (probes and scrapes would flood info); never the headers."""
        log.debug("http request", method=self.command, path=self.route,
                  status=int(code) if isinstance(code, int) else str(code), client=self.client_address[0])

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.warning("http error", detail=format % args, client=self.client_address[0])
