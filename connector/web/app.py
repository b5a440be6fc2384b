"""The daemon's HTTP surface: ``/healthz``, ``/readyz``, ``/metrics``, the authenticated intake and
its OpenAPI description (``/openapi.json``), and, registered into the same app from
:mod:`connector.web`, the partner portal (``/portal``) and the program dashboard (``/dashboard``).

A Starlette app (:func:`create_app`) served by uvicorn with h11 from a background thread of ``refsync
run``. Why not the stdlib server it replaces: it had a listen backlog of 5, a thread per connection
without a cap, no deadline for a slow client, and printed raw tracebacks for clients that hung up;
h11 parses strictly (two Content-Length headers, ``+81``, a garbage request line: 400), uvicorn
serves every connection from one event loop with a cap, and the partner portal will grow on this app.

The limits, all here: a listen backlog of :data:`BACKLOG`; at most :data:`MAX_CONNECTIONS` open
connections (past it uvicorn answers 503, so the cap sits far above what a probe needs and below the
descriptor limit: the scheduler's own connections always find a descriptor); request headers of at
most :data:`MAX_HEADER_BYTES` (431 beyond), complete within ``HEADER_TIMEOUT`` seconds of the
connection or of the previous answer (both in :mod:`connector.web.protocol`); an intake body of at
most :data:`MAX_BODY`, read within :data:`BODY_TIMEOUT`. Work that touches the ledger runs on
Starlette's bounded thread pool (40 threads); ``/healthz`` runs on the event loop, so it answers
while that pool is busy.

``POST /intake`` validates each referral exactly like a file import and writes it through
:func:`connector.imports.import_rows`, so first-to-refer, deduplication and idempotency are the same
whichever way a referral arrives.

Secrets: the intake token is compared in constant time and never logged; request headers and query
strings are never logged at all. Every log line (uvicorn's own included) goes through
:mod:`connector.logs`: JSON, redacted, never a bare traceback on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from refsync.connector.attribution import Policy
from refsync.connector.imports import ImportReport, RowOutcome, import_rows
from refsync.connector.intake import (
    COLUMNS,
    NewReferral,
    RowProblem,
    parse_json,
    repeated_key_problems,
    validate_row,
)
from refsync.connector.logs import get_logger
from refsync.connector.web import WebSettings, is_web_path
from refsync.connector.web.metrics import Metrics
from refsync.connector.web.protocol import MAX_HEADER_BYTES, HttpProtocol
from refsync.errors import ConfigError, LedgerError
from refsync.state import db
from refsync.state.ledger import Ledger

log = get_logger("refsync.http")

MAX_BODY = 1024 * 1024  # bytes of one intake request
MAX_ITEMS = 500  # referrals in one intake request (one import batch, one transaction)
BODY_TIMEOUT = 30.0  # seconds a client may take to send an intake body once its headers are in
KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection stays open
BACKLOG = 2048  # connections the kernel queues before the server accepts them
MAX_CONNECTIONS = 4096  # open connections; beyond it uvicorn answers 503 (lowered to fit the fd limit)
FD_HEADROOM = 256  # descriptors kept for the ledger, the CRM clients, logs and files
GRACE = 5.0  # seconds running requests get to finish when the daemon stops
GET_ROUTES = ("/healthz", "/readyz", "/metrics", "/openapi.json")
INTAKE = "/intake"
INTAKE_ACTOR = "intake:http"


@dataclass(frozen=True)
class HttpSettings:
    """What ``[http]`` configures: where to listen ("" disables the server) and the resolved intake
    token (None disables ``/intake``), plus the attribution policy intake decides credit with."""

    listen: str
    intake_token: str | None
    policy: Policy
    web: WebSettings | None = None  # the partner portal and the program dashboard (connector/web)


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


def connection_cap() -> int:
    """:data:`MAX_CONNECTIONS`, or less when the process may not open that many descriptors (after
    raising the soft limit as far as the hard one allows): the cap must bite before descriptors run
    out, or an attack on the HTTP port would starve the scheduler's ledger and CRM connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):  # not permitted: live with the soft limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(64, min(MAX_CONNECTIONS, soft - FD_HEADROOM))


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its signal handlers: the daemon owns SIGTERM/SIGINT and stops the
    HTTP server itself after the scheduler's last round."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """The HTTP endpoints of one daemon, bound by :meth:`start` and served from a thread."""

    def __init__(self, ledger: Ledger, settings: HttpSettings, scheduler_running: Callable[[], bool],
                 crms: Callable[[], dict[str, dict[str, Any]]] | None = None, metrics: Metrics | None = None) -> None:
        self.ledger = ledger
        self.settings = settings
        self.scheduler_running = scheduler_running
        self.crms = crms  # each CRM's readiness (connector/crms.readiness)
        self.metrics = metrics or Metrics(ledger)  # the daemon's, with its counters and worker id
        self._socket: socket.socket | None = None
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address actually bound (the real port when ``listen`` asked for port 0)."""
        if self._socket is None:
            raise RuntimeError("the HTTP server is not started")
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind ``listen`` and serve in a background thread; ConfigError when the address cannot be
        bound (in use, not local), so ``refsync run`` stops at start-up with the reason. Returns once
        the server accepts connections."""
        host, port = parse_listen(self.settings.listen)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the stdlib server did
            sock.bind((host, port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"http.listen: cannot listen on {self.settings.listen} ({exc.strerror or exc}); free the port, "
                "choose another address, or set listen = \"\" to run without the HTTP server"
            ) from exc
        config = uvicorn.Config(
            create_app(self), http=HttpProtocol, loop="asyncio", lifespan="off", backlog=BACKLOG,
            limit_concurrency=connection_cap(), timeout_keep_alive=int(KEEP_ALIVE),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_graceful_shutdown=int(GRACE),
            log_config=None, access_log=False, server_header=False, proxy_headers=False,
        )
        server = _Uvicorn(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="refsync-http", daemon=True)
        self._socket, self._server, self._thread = sock, server, thread
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            self.stop()
            raise ConfigError(f"http.listen: the HTTP server on {self.settings.listen} did not start; see the log")
        bound_host, bound_port = self.address
        log.info("http listening", address=f"{bound_host}:{bound_port}", port=bound_port,
                 intake="enabled" if self.settings.intake_token else "disabled",
                 max_connections=config.limit_concurrency)

    def stop(self) -> None:
        """Stop accepting, give running requests :data:`GRACE` seconds, close the socket."""
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=GRACE + 5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
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
            repeated = repeated_key_problems(line, item)
            if repeated:
                results.append(_rejected(index, item.get("external_id"), repeated, unknown))
                continue
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
    if isinstance(body, dict) and "referrals" in getattr(body, "repeated", ()):
        return [], "\"referrals\" appears more than once; send one array with every referral"
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


# -- the ASGI app ---------------------------------------------------------------------------------


def _json(status: int, value: Any, *, close: bool = False, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer as the endpoints always gave it: one line, UTF-8, never cached. ``close`` ends
    the connection after it: a body we did not read must not be taken for the next request."""
    sent = {"Cache-Control": "no-store", **(headers or {})}
    if close:
        sent["Connection"] = "close"
    # A lone surrogate sent to us (and quoted back in a problem) cannot be UTF-8: it goes out as
    # its JSON escape (\udXXX, inside a string, so the body stays valid JSON) instead of a 500.
    body = (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
    return Response(body, status_code=int(status), media_type="application/json", headers=sent)


def _not_here(route: str, intake_enabled: bool) -> Response:
    """404 for what does not exist (including a disabled intake); 405 for a wrong method."""
    if route in GET_ROUTES:
        return _json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{route} answers GET only"}, close=True,
                     headers={"Allow": "GET"})
    if route == INTAKE and intake_enabled:
        return _json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{INTAKE} answers POST only"}, close=True,
                     headers={"Allow": "POST"})
    if route == INTAKE:
        return _json(HTTPStatus.NOT_FOUND, {"error": "the intake endpoint is disabled; set [http] intake_token "
                                            "to enable it"}, close=True)
    return _json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {route}; see {', '.join(GET_ROUTES)}, "
                                        f"POST {INTAKE}"}, close=True)


def _authorised(request: Request, expected: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    given = token.strip().encode("utf-8", "surrogateescape")
    # compare_digest runs the comparison in constant time whatever matches, so the answer's
    # timing does not reveal how much of a guessed token was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(given, expected.encode("utf-8"))


async def _body(request: Request) -> bytes | Response | None:
    """The request body; a 411/413/408 answer for one we will not read; None when the client hung
    up before sending all of it (nothing to answer, nothing imported)."""
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return _json(HTTPStatus.LENGTH_REQUIRED, {"error": "send the body with a Content-Length, not chunked"},
                     close=True)
    length_header = request.headers.get("Content-Length")
    if length_header is None:
        return _json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"}, close=True)
    if not length_header.isdigit():  # h11 refused the malformed ones already; this is belt and braces
        return _json(HTTPStatus.BAD_REQUEST, {"error": f"Content-Length {length_header!r} is not a size"},
                     close=True)
    length = int(length_header)
    if length > MAX_BODY:
        return _json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                     {"error": f"the body is {length} bytes; at most {MAX_BODY} (1 MB) a request: split it"},
                     close=True)
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.stream():
                chunks.append(chunk)
    except TimeoutError:
        return _json(HTTPStatus.REQUEST_TIMEOUT, {"error": f"the body did not arrive within {BODY_TIMEOUT:.0f} "
                                                  "seconds; send it at once"}, close=True)
    except ClientDisconnect:
        log.info("http client hung up before sending its whole body; nothing imported",
                 client=request.client.host if request.client else None)
        return None
    return b"".join(chunks)


def _shown(path: str) -> str:
    """A request path as it may be logged: a one-time link's token is a secret, never logged."""
    return "/welcome/{token}" if path.startswith("/welcome/") else path


class _Counted:
    """Counts every answer in ``refsync_http_requests_total`` and logs one debug line for it (probes
    and scrapes would flood info), never its headers or query string."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                endpoint = path if path in (*GET_ROUTES, INTAKE) else "other"
                self.metrics.requests.labels(endpoint, str(status)).inc()
                client = scope.get("client")
                log.debug("http request", method=scope["method"], path=_shown(path), status=status,
                          client=client[0] if client else None)
            await send(message)

        await self.app(scope, receive, counting)


def create_app(server: HttpServer) -> ASGIApp:
    """The ASGI app of one daemon's endpoints; the work is ``server``'s (:class:`HttpServer`)."""
    token = server.settings.intake_token

    async def healthz(request: Request) -> Response:
        # On the event loop, no ledger, no thread: alive means this process answers at all.
        return _json(HTTPStatus.OK, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        return _json(*(await run_in_threadpool(server.readyz)))

    async def metrics(request: Request) -> Response:
        body, content_type = await run_in_threadpool(server.metrics.render)
        return Response(body, media_type=None, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    async def openapi(request: Request) -> Response:
        return _json(HTTPStatus.OK, openapi_schema(intake_enabled=token is not None))

    async def intake(request: Request) -> Response:
        if not token or not _authorised(request, token):
            return _json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token; send "
                                                   "Authorization: Bearer <the token of [http] intake_token>"},
                         close=True, headers={"WWW-Authenticate": 'Bearer realm="refsync"'})
        body = await _body(request)
        if body is None:
            return Response(status_code=HTTPStatus.BAD_REQUEST, headers={"Connection": "close"})  # nobody reads it
        if isinstance(body, Response):
            return body
        try:
            parsed = parse_json(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting
            return _json(HTTPStatus.BAD_REQUEST, {"error": f"the body is not valid JSON ({exc})"})
        try:
            status, answer = await run_in_threadpool(server.intake, parsed)
        except LedgerError as exc:
            log.error("intake failed: the ledger refused the write; the client may retry", error=str(exc))
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the ledger is unavailable; retry later "
                                                          "(re-sending the same referrals is safe)"})
        except Exception:  # noqa: BLE001 - answer 500 with the traceback in the JSON log, not a dropped connection
            log.exception("intake failed unexpectedly")
            return _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the refsync log"},
                         close=True)
        return _json(status, answer)

    async def refused(request: Request, exc: Exception) -> Response:
        # Starlette's 404 (no route) and 405 (wrong method) become the JSON answers of the contract.
        if isinstance(exc, HTTPException) and exc.status_code not in (404, 405):
            return _json(exc.status_code, {"error": exc.detail})
        if server.settings.web is not None and is_web_path(request.url.path):
            from refsync.connector.web.routes import page_not_found

            return page_not_found()
        return _not_here(request.url.path, token is not None)

    routes: list[BaseRoute] = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"]), Route("/openapi.json", openapi, methods=["GET"])]
    if token:
        routes.append(Route(INTAKE, intake, methods=["POST"]))
    if server.settings.web is not None:
        from refsync.connector.web.routes import web_routes

        routes.extend(web_routes(server.ledger, server.settings.web))
    async def ledger_unavailable(request: Request, exc: Exception) -> Response:
        # A page whose ledger read or write failed (connection lost, locked): 503, say so, log it.
        log.error("http request failed: the ledger is unavailable", path=_shown(request.url.path), error=str(exc))
        if server.settings.web is not None and is_web_path(request.url.path):
            from refsync.connector.web.pages import unavailable

            return unavailable()
        return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the ledger is unavailable; retry later"})

    app = Starlette(routes=routes, exception_handlers={HTTPException: refused, LedgerError: ledger_unavailable})
    return _Counted(app, server.metrics)


def openapi_schema(intake_enabled: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the endpoints (served at ``/openapi.json``)."""
    error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    problem = {"type": "object", "required": ["column", "reason"],
               "properties": {"column": {"type": ["string", "null"]}, "reason": {"type": "string"}}}
    referral = {"type": "object", "description": "One referral: the columns of a file import (unknown keys are "
                "ignored with a note).", "properties": {c: {"type": "string"} for c in COLUMNS},
                "not": {"required": ["referrals"]}}
    result = {"type": "object", "required": ["index", "external_id", "outcome"], "properties": {
        "index": {"type": "integer"}, "external_id": {"type": ["string", "null"]},
        "outcome": {"enum": ["imported", "unchanged", "rejected"]}, "referral_id": {"type": "string"},
        "problems": {"type": "array", "items": problem}, "notes": {"type": "array", "items": problem}}}
    answer = {"type": "object", "required": ["imported", "unchanged", "rejected", "results"], "properties": {
        "imported": {"type": "integer"}, "unchanged": {"type": "integer"}, "rejected": {"type": "integer"},
        "results": {"type": "array", "items": result}}}

    def json_of(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": json_of(
            {"type": "object", "properties": {"status": {"const": "ok"}}}, "the process runs")}}},
        "/readyz": {"get": {"summary": "Readiness", "responses": {
            "200": json_of({"type": "object"}, "ready, or degraded (a CRM waits)"),
            "503": json_of({"type": "object"}, "not ready (ledger, scheduler)")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }
    if intake_enabled:
        paths[INTAKE] = {"post": {
            "summary": "Submit referrals", "security": [{"bearer": []}],
            "description": f"One referral object, or {{\"referrals\": [...]}} with up to {MAX_ITEMS}; at most "
                           f"{MAX_BODY} bytes. Each item is validated and imported like a file row; "
                           "re-sending is safe.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                referral, {"type": "object", "required": ["referrals"], "additionalProperties": False,
                           "properties": {"referrals": {"type": "array", "minItems": 1, "maxItems": MAX_ITEMS,
                                                        "items": referral}}}]}}}},
            "responses": {
                "201": json_of(answer, "at least one referral imported"),
                "200": json_of(answer, "nothing new (all unchanged, or unchanged and rejected)"),
                "422": json_of(answer, "every referral rejected"),
                "400": json_of(error, "not JSON, or not a referral or {\"referrals\": [...]}"),
                "401": json_of(error, "missing or wrong bearer token"),
                "408": json_of(error, f"the body did not arrive within {BODY_TIMEOUT:.0f} s"),
                "411": json_of(error, "no Content-Length (or chunked)"),
                "413": json_of(error, f"more than {MAX_BODY} bytes or {MAX_ITEMS} referrals"),
                "503": json_of(error, "the ledger is unavailable; retry"),
            }}}
    return {"openapi": "3.1.0", "info": {"title": "refsync", "version": "1"}, "paths": paths,
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}
