"""A local HubSpot CRM (v3 objects/search/properties/pipelines, v4 associations) over plain HTTP.

The real :class:`adapters.hubspot.HubSpotAdapter` talks to it unchanged through hubspot-api-client;
only the base URL differs. It keeps state, counts API calls by kind, sends HubSpot's rate-limit
headers, enforces the search limits (5 requests a second, 200 a page, 10,000 results), and injects
faults by probability. The admin plane (the :class:`SandboxAdmin` methods) plays a sales rep; it is
available in process and as ``POST {admin_url}/{method}`` with the keyword arguments as JSON.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections import Counter, deque
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from refsync.adapters.sandbox import hubspot_schema as hs
from refsync.adapters.sandbox.hubspot_admin import AdminMixin
from refsync.adapters.sandbox.hubspot_api import Answer, Endpoints
from refsync.adapters.sandbox.hubspot_search import search
from refsync.adapters.sandbox.hubspot_store import ApiError, Store
from refsync.adapters.sandbox.served import Served

DEFAULT_TOKEN = "sandbox-token-hubspot"  # noqa: S105 - the local sandbox's well-known token
BURST_INTERVAL_MS = 10_000
OBJ = r"(?P<obj>[a-z_0-9-]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"^/crm/v3/objects/{OBJ}/batch/(?P<op>read|create|update|upsert|archive)$"), "batch"),
    ("POST", re.compile(rf"^/crm/v3/objects/{OBJ}/search$"), "search"),
    ("GET", re.compile(rf"^/crm/v3/objects/{OBJ}$"), "object_list"),
    ("POST", re.compile(rf"^/crm/v3/objects/{OBJ}$"), "object_create"),
    ("GET", re.compile(rf"^/crm/v3/objects/{OBJ}/(?P<id>[^/]+)$"), "object_get"),
    ("PATCH", re.compile(rf"^/crm/v3/objects/{OBJ}/(?P<id>[^/]+)$"), "object_update"),
    ("DELETE", re.compile(rf"^/crm/v3/objects/{OBJ}/(?P<id>[^/]+)$"), "object_archive"),
    ("GET", re.compile(rf"^/crm/v3/properties/{OBJ}$"), "properties"),
    ("GET", re.compile(rf"^/crm/v3/properties/{OBJ}/(?P<name>[^/]+)$"), "properties"),
    ("GET", re.compile(rf"^/crm/v3/pipelines/{OBJ}$"), "pipelines"),
    ("GET", re.compile(rf"^/crm/v4/objects/{OBJ}/(?P<id>[^/]+)/associations/(?P<to>[a-z_0-9-]+)$"),
     "associations"),
    ("POST", re.compile(rf"^/crm/v4/associations/{OBJ}/(?P<to>[a-z_0-9-]+)/batch/read$"), "associations"),
    ("GET", re.compile(r"^/account-info/v3/details$"), "account_details"),
]
PORTAL_ID = 62515
TYPE_IDS = {v: k for k, v in hs.OBJECT_TYPE_IDS.items()}


class HubSpotEmulator(AdminMixin, Served):
    """HubSpot's CRM API on 127.0.0.1, with an in-process and HTTP admin plane."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, access_token: str = DEFAULT_TOKEN,
                 seed: int | None = None) -> None:
        self.host = host
        self.port = port
        self.access_token = access_token
        self.rng = random.Random(seed)
        self.store = Store()
        self.endpoints = Endpoints(self.store, self._lock_fault)
        # tunables (admin ``configure``): HubSpot's numbers by default
        self.search_cap = 10_000
        self.search_per_second: int | None = 5
        self.burst_limit: int | None = None  # 100 or 190 per 10 s on HubSpot; off unless asked for
        self.burst_max = 190
        self.daily_limit = 1_000_000
        self.time_zone = hs.ACCOUNT_TIME_ZONE  # daily limits reset at midnight here, not at UTC midnight
        self._daily_day: date | None = None
        self._guard = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._daily_used = 0
        self._recent: deque[float] = deque()
        self._recent_search: deque[float] = deque()
        self._faults: dict[str, float] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> HubSpotEmulator:
        emulator = self

        class Handler(_Handler):
            owner = emulator

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._serve(server, "hubspot-emulator")
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return self.base_url + "/__admin"

    # -- counters and limits -------------------------------------------------------------------
    def _portal_day(self) -> date:
        """Today in the portal's time zone: HubSpot's daily limit resets at the portal's midnight
        (developers.hubspot.com/apisbytier; crm-api/hubspot/README.md)."""
        return datetime.fromtimestamp(self.store.now_ms() / 1000, ZoneInfo(self.time_zone)).date()

    def _count(self, kind: str) -> None:
        day = self._portal_day()
        with self._guard:
            if day != self._daily_day:
                self._daily_day, self._daily_used = day, 0
            self._counts[kind] += 1
            self._daily_used += 1
            self._recent.append(time.monotonic())

    def _rate_headers(self) -> dict[str, str]:
        with self._guard:
            cutoff = time.monotonic() - BURST_INTERVAL_MS / 1000
            while self._recent and self._recent[0] < cutoff:
                self._recent.popleft()
            maximum = self.burst_limit or self.burst_max
            return {"X-HubSpot-RateLimit-Max": str(maximum),
                    "X-HubSpot-RateLimit-Remaining": str(max(maximum - len(self._recent), 0)),
                    "X-HubSpot-RateLimit-Interval-Milliseconds": str(BURST_INTERVAL_MS),
                    "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
                    "X-HubSpot-RateLimit-Daily-Remaining": str(max(self.daily_limit - self._daily_used, 0))}

    def _limit(self, kind: str) -> None:
        """429 when a HubSpot limit is exceeded: daily, the search secondly limit, the 10 s burst."""
        with self._guard:
            now = time.monotonic()
            if self._daily_used > self.daily_limit:
                raise _rate_limited("DAILY", "You have reached your daily limit.", None)
            if kind == "search" and self.search_per_second:
                while self._recent_search and self._recent_search[0] < now - 1:
                    self._recent_search.popleft()
                if len(self._recent_search) >= self.search_per_second:
                    raise _rate_limited("SECONDLY", "You have reached your secondly limit.", None)
                self._recent_search.append(now)
            if self.burst_limit and len(self._recent) > self.burst_limit:
                raise _rate_limited("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.",
                                    None)

    def _roll(self, name: str) -> bool:
        rate = self._faults.get(name, 0.0)
        with self._guard:
            return rate > 0 and self.rng.random() < rate

    def _lock_fault(self) -> bool:
        return self._roll("lock")

    # -- dispatch ------------------------------------------------------------------------------
    def dispatch(self, method: str, path: str, query: dict[str, list[str]], body: Any,
                 authorization: str | None) -> tuple[int, Any, dict[str, str]]:
        """Answer one API request: (status, JSON body or None, extra headers). Raises _Drop."""
        route = _route(method, path)
        if route is None:
            raise ApiError(404, hs.error_body(f"No route for {method} {path}", "OBJECT_NOT_FOUND"))
        kind, params = route
        if authorization != f"Bearer {self.access_token}":
            raise ApiError(401, hs.error_body(
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can "
                "find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                "INVALID_AUTHENTICATION"))
        self._count(kind)
        if self._roll("drop"):
            raise _Drop()
        if self._roll("slow"):
            time.sleep(self._faults.get("slow_seconds", 2.0))
        self._limit(kind)
        if self._roll("rate_limit"):
            raise _rate_limited("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.",
                                self._faults.get("retry_after", 1.0))
        if self._roll("server_error"):
            status = self.rng.choice((502, 503))
            raise ApiError(status, hs.error_body("The service is temporarily unavailable; try again.",
                                                 "SERVICE_UNAVAILABLE" if status == 503 else "BAD_GATEWAY"))
        status, answer = self._handle(kind, method, params, query, body if isinstance(body, dict) else {})
        return status, answer, {}

    def _handle(self, kind: str, method: str, p: dict[str, str], query: dict[str, list[str]],
                body: dict[str, Any]) -> Answer:
        e = self.endpoints
        obj = TYPE_IDS.get(p.get("obj", ""), p.get("obj", ""))
        if kind.startswith("batch_"):
            op = kind[len("batch_"):]
            if op == "read":
                return e.batch_read(obj, body, query)
            return {"create": e.batch_create, "update": e.batch_update, "upsert": e.batch_upsert,
                    "archive": e.batch_archive}[op](obj, body)
        if kind == "search":
            self.store.object_props(obj)
            return 200, search(self.store, obj, body, self.search_cap)
        handlers = {
            "object_list": lambda: e.list_page(obj, query),
            "object_create": lambda: e.create(obj, body),
            "object_get": lambda: e.get(obj, p["id"], query),
            "object_update": lambda: e.update(obj, p["id"], body, query),
            "object_archive": lambda: e.archive(obj, p["id"]),
            "properties": lambda: e.properties(obj, p.get("name")),
            "pipelines": lambda: e.pipelines(obj),
            "account_details": lambda: (200, hs.account_details(PORTAL_ID, self.time_zone)),
            "associations": lambda: (e.associations(obj, p["id"], p["to"]) if method == "GET"
                                     else e.associations_batch(obj, p["to"], body)),
        }
        return handlers[kind]()


def _route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    for verb, pattern, kind in ROUTES:
        match = pattern.match(path)
        if verb == method and match:
            params = match.groupdict()
            if kind == "batch":
                kind = "batch_" + params["op"]
            return kind, params
    return None


def _rate_limited(policy: str, message: str, retry_after: float | None) -> ApiError:
    body = hs.error_body(message, "RATE_LIMITS", errorType="RATE_LIMIT", policyName=policy,
                         groupName="publicapi:private-app:sandbox")
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return ApiError(429, body, headers)


class _Drop(Exception):
    """Fault: close the connection without answering."""


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 plumbing: parse, call the emulator, write JSON with the rate-limit headers."""

    owner: HubSpotEmulator
    protocol_version = "HTTP/1.1"
    server_version = "HubSpotSandbox/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the tests and the demo have their own logs."""

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        query = parse_qs(url.query)
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            self._send(400, hs.error_body("Invalid input JSON on line 1", "VALIDATION_ERROR"), {})
            return
        admin = url.path.startswith("/__admin/")
        headers: dict[str, str]
        try:
            if admin:
                result = self.owner.admin_call(url.path[len("/__admin/"):], body)
                status, answer, headers = 200, {"result": None} if result is None else result, {}
            else:
                status, answer, headers = self.owner.dispatch(self.command, url.path, query, body,
                                                              self.headers.get("Authorization"))
        except _Drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        except ApiError as exc:
            status, answer, headers = exc.status, exc.body, exc.headers
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if admin:  # a bad admin call: say what was wrong with it
                status, answer, headers = 400, {"error": type(exc).__name__, "message": str(exc)}, {}
            else:  # an emulator bug: answer like HubSpot's 500 so it shows, with the cause
                status, answer, headers = 500, hs.error_body(f"internal error: {exc!r}", "INTERNAL_ERROR"), {}
        if not admin:
            headers = {**self.owner._rate_headers(), **headers}
        self._send(status, answer, headers)

    def _send(self, status: int, answer: Any, headers: dict[str, str]) -> None:
        payload = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if answer is not None:
            self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve
