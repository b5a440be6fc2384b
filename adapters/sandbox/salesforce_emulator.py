"""A local Salesforce org over real HTTPS: the REST resources refsync's adapter uses, plus an admin plane.

Served (under ``/services/data/vNN.0/``, any version): ``sobjects/{Obj}/describe``, ``query`` and
``queryAll`` (SOQL subset, ``nextRecordsUrl`` paging, ``Sforce-Query-Options: batchSize=N``),
``sobjects/{Obj}/{id}`` GET/PATCH/DELETE, ``sobjects/{Obj}/updated/`` and ``deleted/``,
``composite/sobjects`` PATCH (update), ``composite/sobjects/{Obj}/{ExtIdField}`` PATCH (upsert),
``composite/sobjects/{Obj}?ids=&fields=`` GET and ``limits``; logins by SOAP
(``/services/Soap/u/NN.0``, what ``simple_salesforce.SalesforceLogin`` posts) and OAuth client
credentials (``/services/oauth2/token``). Every API answer carries ``Sforce-Limit-Info``.

The admin plane (:class:`adapters.sandbox.admin.SandboxAdmin`) plays sales reps and the org itself;
it is callable in process and as ``POST {admin_url}/{method}`` with the keyword arguments as a JSON
object (answer ``{"result": ...}``), and is never counted as API usage.
"""

from __future__ import annotations

import base64
import json
import random
import re
import secrets
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from refsync.adapters.sandbox.salesforce_soql import SoqlError, parse_datetime
from refsync.adapters.sandbox.salesforce_store import NOT_FOUND, OrgStore, SfError, format_stamp
from refsync.adapters.sandbox.served import Served
from refsync.adapters.sandbox.tls import make_tls

DAILY_LIMIT = 15000
MAX_COLLECTION = 200
_API = re.compile(r"^/services/data/v(?P<version>\d+\.\d+)/(?P<rest>.*)$")
ADMIN_METHODS = ("create_record", "get_record", "set_field", "change_owner", "delete_record", "merge",
                 "convert_lead", "move_stage", "remove_field", "restore_field", "set_faults", "hold_clock", "calls",
                 "reset", "expire_sessions", "count_values", "create_field")
_FAULTS = ("rate_limit", "server_error", "slow", "drop", "lock", "lost_answer")


class _Reply(Exception):
    """A finished HTTP answer raised from deep inside a route."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class _Drop(Exception):
    """Close the connection without answering (fault injection)."""


class _QuietServer(ThreadingHTTPServer):
    """Clients that fail TLS verification or hang up are normal here (tests do both): no tracebacks."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return


class SalesforceEmulator(Served):
    """One emulated org. ``start()`` serves HTTPS on ``host:port`` (0 picks a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls_dir: str | Path | None = None,
                 session_id: str | None = None, *, seed: int | None = None,
                 username: str = "integration@sandbox.refsync.example",
                 password: str = "sandbox-password",  # noqa: S107 - the sandbox's own well-known login
                 security_token: str = "sandbox-token",  # noqa: S107
                 client_id: str = "sandbox-client-id",
                 client_secret: str = "sandbox-client-secret") -> None:  # noqa: S107
        if tls_dir is None:
            raise ValueError("tls_dir is required: the emulator serves HTTPS with a CA written there")
        self.host, self._port = host, port
        self.ca_path, self._certfile, self._keyfile = make_tls(tls_dir)
        self.session_id = session_id or f"sandbox-session-{secrets.token_hex(12)}"
        self.credentials = {"username": username, "password": password, "security_token": security_token,
                            "client_id": client_id, "client_secret": client_secret}
        self.store = OrgStore()
        self._seed = seed
        self._random = random.Random(seed)
        self._state_lock = threading.Lock()
        self._sessions = {self.session_id}
        self._faults: dict[str, float] = {}
        self._calls: dict[str, int] = {}
        self._cursors: dict[str, tuple[str, list[dict[str, Any]], list[str]]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> SalesforceEmulator:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self._certfile), str(self._keyfile))
        server = _QuietServer((self.host, self._port), _handler_for(self))
        # Handshake lazily in the handler thread, so one stalled client cannot block accept().
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._serve(server, "salesforce-emulator")
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return self.base_url + "/__admin"

    # ---- admin plane (SandboxAdmin) -------------------------------------------------------------
    def create_record(self, object_name: str, fields: dict[str, Any], owner_id: str | None = None) -> str:
        return self.store.create_record(object_name, fields, owner_id, "rep")

    def get_record(self, object_name: str, record_id: str) -> dict[str, Any] | None:
        with self.store.lock:
            try:
                return dict(self.store.admin_record(object_name, record_id))
            except (KeyError, SfError):
                return None

    def count_values(self, object_name: str, field: str) -> dict[str, int]:
        with self.store.lock:
            counts: dict[str, int] = {}
            for rec in self.store.live(self.store.object_name(object_name)):
                if rec.get(field):
                    counts[str(rec[field])] = counts.get(str(rec[field]), 0) + 1
            return counts

    def get_raw(self, object_name: str, record_id: str) -> dict[str, Any] | None:
        """The stored row even when deleted (IsDeleted, MasterRecordId): for tests of merges."""
        with self.store.lock:
            rec = self.store.find(self.store.object_name(object_name), record_id)
            return dict(rec) if rec else None

    def set_field(self, object_name: str, record_id: str, field: str, value: Any, by: str = "rep") -> None:
        self.store.set_field(object_name, record_id, field, value, by)

    def change_owner(self, object_name: str, record_id: str, owner_id: str) -> None:
        self.store.set_field(object_name, record_id, "OwnerId", owner_id, "rep")

    def delete_record(self, object_name: str, record_id: str) -> None:
        self.store.delete_record(object_name, record_id, "rep")

    def merge(self, object_name: str, survivor_id: str, loser_id: str) -> str:
        return self.store.merge(object_name, survivor_id, loser_id, "rep")

    def convert_lead(self, lead_id: str, opportunity_name: str | None = None) -> dict[str, str]:
        return self.store.convert_lead(lead_id, opportunity_name, "rep")

    def move_stage(self, deal_id: str, stage: str, amount: float | None = None,
                   close_date: str | None = None) -> None:
        self.store.move_stage(deal_id, stage, amount, close_date, "rep")

    def remove_field(self, object_name: str, field: str) -> None:
        self.store.remove_field(object_name, field)

    def restore_field(self, object_name: str, field: str) -> None:
        self.store.restore_field(object_name, field)

    def create_field(self, object_name: str, field: str, kind: str = "text", label: str = "") -> None:
        self.store.create_field(object_name, field, kind, label)

    def set_faults(self, **rates: float) -> None:
        """Probabilities (0..1) of ``rate_limit``, ``server_error``, ``slow``, ``drop``, ``lock`` per call
        (``lock`` per record; ``lost_answer``: the request is carried out, then the connection drops
        before the answer, as when a network path fails after Salesforce committed); ``slow_seconds``
        sets the delay (default 2). ``retry_after`` is accepted
        for symmetry with HubSpot but Salesforce sends no Retry-After, so neither does this emulator."""
        unknown = set(rates) - {*_FAULTS, "retry_after", "slow_seconds", "seed"}
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        with self._state_lock:
            if "seed" in rates:
                self._random = random.Random(rates.pop("seed"))
            self._faults = {k: float(v) for k, v in rates.items()}

    def hold_clock(self, held: bool = True) -> None:
        """Every write carries one timestamp until released (``held=False``): a bulk import's ties."""
        self.store.clock.hold(held)

    def calls(self) -> dict[str, int]:
        with self._state_lock:
            return dict(self._calls)

    def reset(self) -> None:
        with self._state_lock:
            self._faults, self._calls, self._cursors = {}, {}, {}
            self._sessions = {self.session_id}
            self._random = random.Random(self._seed)
        self.store.reset()

    def expire_sessions(self) -> None:
        """Invalidate every session (also ``session_id``): the next API call answers 401 INVALID_SESSION_ID."""
        with self._state_lock:
            self._sessions = set()

    # ---- internals used by the handler ----------------------------------------------------------
    def _roll(self, fault: str) -> bool:
        with self._state_lock:
            rate = self._faults.get(fault, 0.0)
            return rate > 0 and self._random.random() < rate

    def _count(self, kind: str) -> int:
        with self._state_lock:
            self._calls[kind] = self._calls.get(kind, 0) + 1
            return sum(self._calls.values())

    def _used(self) -> int:
        with self._state_lock:
            return sum(self._calls.values())

    def _authorised(self, header: str | None) -> bool:
        token = (header or "").removeprefix("Bearer ").removeprefix("OAuth ").strip()
        with self._state_lock:
            return token in self._sessions

    def _new_session(self) -> str:
        token = f"sandbox-session-{secrets.token_hex(12)}"
        with self._state_lock:
            self._sessions.add(token)
        return token

    def _save_cursor(self, obj: str, rows: list[dict[str, Any]], fields: list[str]) -> str:
        locator = "01g" + secrets.token_hex(8)[:12].upper() + "AAW"
        with self._state_lock:
            self._cursors[locator] = (obj, rows, fields)
        return locator

    def _cursor(self, locator: str) -> tuple[str, list[dict[str, Any]], list[str]]:
        with self._state_lock:
            found = self._cursors.get(locator)
        if found is None:
            raise _Reply(400, [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}])
        return found

    # ---- API routes --------------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
              body: Any) -> tuple[int, Any]:
        """Answer one authenticated API request; raises :class:`_Reply` / :class:`SfError` for errors."""
        match = _API.match(path)
        if not match:
            raise _Reply(404, NOT_FOUND)
        version, rest = match["version"], match["rest"].rstrip("/")
        parts = [unquote(p) for p in rest.split("/")] if rest else []
        auto_assign = headers.get("sforce-auto-assign", "TRUE").strip().upper() not in ("FALSE", "0")
        allow_save = "allowsave=true" in headers.get("sforce-duplicate-rule-header", "").replace(" ", "").lower()
        if parts[:1] in (["query"], ["queryAll"]):
            return self._query(method, parts, query, headers, version)
        if parts == ["limits"]:
            self._count("limits")
            used = self._used()
            return 200, {"DailyApiRequests": {"Max": DAILY_LIMIT, "Remaining": DAILY_LIMIT - used},
                         "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
                         "DataStorageMB": {"Max": 5, "Remaining": 5}}
        if parts[:2] == ["composite", "sobjects"]:
            return self._composite(method, parts[2:], query, body, auto_assign, version, allow_save)
        if parts[:1] == ["sobjects"] and len(parts) >= 2:
            return self._sobjects(method, parts[1:], query, body, auto_assign, version)
        raise _Reply(404, NOT_FOUND)

    def _record_json(self, obj: str, rec: dict[str, Any], fields: list[str], version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"attributes": {"type": obj, "url": f"/services/data/v{version}/sobjects/{obj}/"
                                              f"{rec.get('Id')}"}}
        for name in fields:
            out[name] = rec.get(name)
        return out

    def _page(self, locator: str, offset: int, batch: int, version: str) -> dict[str, Any]:
        obj, rows, fields = self._cursor(locator)
        chunk = rows[offset:offset + batch]
        page: dict[str, Any] = {"totalSize": len(rows), "done": offset + batch >= len(rows),
                                "records": [self._record_json(obj, r, fields, version) for r in chunk]}
        if not page["done"]:
            page["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{offset + batch}"
        return page

    def _query(self, method: str, parts: list[str], query: dict[str, list[str]], headers: dict[str, str],
               version: str) -> tuple[int, Any]:
        if method != "GET":
            raise _Reply(405, [{"message": f"HTTP Method '{method}' not allowed. Allowed are GET",
                                "errorCode": "METHOD_NOT_ALLOWED"}])
        self._count("query")
        options = re.search(r"batchSize=(\d+)", headers.get("sforce-query-options", ""))
        batch = min(max(int(options.group(1)), 200), 2000) if options else 2000
        if len(parts) == 2:  # query/01g...-2000
            locator, _, offset = parts[1].rpartition("-")
            if not offset.isdigit():
                raise _Reply(400, [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}])
            return 200, self._page(locator, int(offset), batch, version)
        soql = (query.get("q") or [""])[0]
        try:
            obj, rows, fields = self.store.query(soql, include_deleted=parts[0] == "queryAll")
        except SoqlError as exc:
            raise _Reply(400, [{"message": exc.message, "errorCode": exc.code}]) from exc
        if len(rows) <= batch:
            return 200, {"totalSize": len(rows), "done": True,
                         "records": [self._record_json(obj, r, fields, version) for r in rows]}
        return 200, self._page(self._save_cursor(obj, rows, fields), 0, batch, version)

    def _composite(self, method: str, parts: list[str], query: dict[str, list[str]], body: Any,
                   auto_assign: bool, version: str, allow_save: bool = False) -> tuple[int, Any]:
        if method == "GET" and len(parts) == 1:
            self._count("composite_read")
            obj = self.store.object_name(parts[0])
            ids = [i for i in ",".join(query.get("ids", [])).split(",") if i]
            names = [f for f in ",".join(query.get("fields", [])).split(",") if f]
            if not ids or not names:
                raise _Reply(400, [{"message": "ids and fields are required", "errorCode": "MISSING_ARGUMENT"}])
            with self.store.lock:
                fields = [str(self._field_or_fail(obj, f)) for f in names]
                out: list[Any] = []
                for raw in ids:
                    rec = self.store.find(obj, self.store.check_id(obj, raw))
                    out.append(None if rec is None or rec.get("IsDeleted") else
                               self._record_json(obj, rec, fields, version))
            return 200, out
        if method != "PATCH" or len(parts) not in (0, 2):
            raise _Reply(404, NOT_FOUND)
        records = (body or {}).get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise _Reply(400, [{"message": "Json Deserialization failed on token 'null' and has left off in the "
                                "middle of parsing a row. Will go to end of row to begin parsing the next row",
                                "errorCode": "INVALID_FIELD"}])
        self._count("composite_upsert" if parts else "composite_update")
        if len(records) > MAX_COLLECTION:
            raise _Reply(400, [{"message": f"Maximum number of records allowed is {MAX_COLLECTION}",
                                "errorCode": "EXCEEDED_ID_LIMIT"}])
        all_or_none = bool(body.get("allOrNone", False))
        if parts:
            return 200, self.store.collection_upsert(parts[0], parts[1], records, all_or_none, auto_assign,
                                                     lambda: self._roll("lock"), allow_save=allow_save,
                                                     version=version)
        return 200, self.store.collection_update(records, all_or_none, auto_assign, lambda: self._roll("lock"))

    def _field_or_fail(self, obj: str, name: str) -> str:
        field = self.store.schema.field(obj, name)
        if field is None:
            raise _Reply(400, [{"message": f"No such column '{name}' on entity '{obj}'. If you are attempting to "
                                "use a custom field, be sure to append the '__c' after the custom field name. "
                                "Please reference your WSDL or the describe call for the appropriate names.",
                                "errorCode": "INVALID_FIELD"}])
        return str(field["name"])

    def _sobjects(self, method: str, parts: list[str], query: dict[str, list[str]], body: Any, auto_assign: bool,
                  version: str) -> tuple[int, Any]:
        obj = self.store.object_name(parts[0])
        if parts[1:] == ["describe"] and method == "GET":
            self._count("describe")
            with self.store.lock:
                return 200, self.store.schema.describe_body(obj, version, f"{self.host}:{self.port}")
        if len(parts) == 2 and parts[1] in ("updated", "deleted") and method == "GET":
            self._count(parts[1])
            now = datetime.now(UTC)
            try:
                start = parse_datetime((query.get("start") or [""])[0])
                end = parse_datetime((query.get("end") or [now.isoformat()])[0])
            except ValueError as exc:
                raise _Reply(400, [{"message": "start and end must be dateTimes", "errorCode":
                                    "INVALID_REPLICATION_DATE"}]) from exc
            covered = format_stamp(int(min(end, now).timestamp() * 1000) // 60000 * 60000)
            if parts[1] == "updated":
                return 200, {"ids": self.store.updated_ids(obj, start, end), "latestDateCovered": covered}
            earliest = format_stamp(int((now - timedelta(days=15)).timestamp() * 1000) // 60000 * 60000)
            return 200, {"deletedRecords": self.store.deleted_records(obj, start, end),
                         "earliestDateAvailable": earliest, "latestDateCovered": covered}
        if len(parts) != 2:
            raise _Reply(404, NOT_FOUND)
        self._count("sobject")
        if method == "GET":
            with self.store.lock:
                rec = self.store.get_live(obj, parts[1])
                names = [f for f in ",".join(query.get("fields", [])).split(",") if f]
                fields = [self._field_or_fail(obj, f) for f in names] or list(self.store.schema.fields(obj))
                return 200, self._record_json(obj, rec, fields, version)
        if method == "PATCH":
            self.store.sobject_patch(obj, parts[1], body if isinstance(body, dict) else {}, auto_assign)
            return 204, None
        if method == "DELETE":
            self.store.sobject_delete(obj, parts[1])
            return 204, None
        raise _Reply(405, [{"message": f"HTTP Method '{method}' not allowed.", "errorCode": "METHOD_NOT_ALLOWED"}])

    # ---- logins ------------------------------------------------------------------------------
    def soap_login(self, body: str) -> tuple[int, str]:
        """What ``SalesforceLogin`` posts for username + password + security token."""
        user = re.search(r"<n1:username>(.*?)</n1:username>", body, re.S)
        secret = re.search(r"<n1:password>(.*?)</n1:password>", body, re.S)
        creds = self.credentials
        wanted = escape(creds["password"] + creds["security_token"])
        if not user or not secret or user.group(1) != escape(creds["username"]) or secret.group(1) != wanted:
            return 500, ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.'
                         'xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com"><soapenv:Body>'
                         '<soapenv:Fault><faultcode>sf:INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN: Invalid'
                         ' username, password, security token; or user locked out.</faultstring><detail>'
                         '<sf:LoginFault><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode><sf:exceptionMessage>'
                         'Invalid username, password, security token; or user locked out.</sf:exceptionMessage>'
                         '</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>')
        token = self._new_session()
        return 200, ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.'
                     'xmlsoap.org/soap/envelope/" xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse>'
                     f'<result><serverUrl>{self.base_url}/services/Soap/u/59.0/00D5g000000SBOX</serverUrl>'
                     f'<sessionId>{token}</sessionId><userId>{self.store.user_id("integration")}</userId>'
                     '</result></loginResponse></soapenv:Body></soapenv:Envelope>')

    def oauth_token(self, form: dict[str, list[str]], authorization: str | None) -> tuple[int, Any]:
        """OAuth 2.0 client credentials (client id/secret in the form or as HTTP Basic)."""
        grant = (form.get("grant_type") or [""])[0]
        client_id = (form.get("client_id") or [""])[0]
        client_secret = (form.get("client_secret") or [""])[0]
        if authorization and authorization.startswith("Basic "):
            decoded = base64.b64decode(authorization[6:]).decode()
            client_id, _, client_secret = decoded.partition(":")
        if grant != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"}
        if (client_id, client_secret) != (self.credentials["client_id"], self.credentials["client_secret"]):
            return 400, {"error": "invalid_client", "error_description": "invalid client credentials"}
        token = self._new_session()
        return 200, {"access_token": token, "instance_url": self.base_url, "token_type": "Bearer",
                     "id": f"{self.base_url}/id/00D5g000000SBOX/{self.store.user_id('integration')}",
                     "issued_at": str(int(time.time() * 1000)), "signature": secrets.token_urlsafe(24)}


def _handler_for(emulator: SalesforceEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "SalesforceSandbox/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return  # quiet: tests and the demo read their own logs

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None,
                  content_type: str = "application/json;charset=UTF-8") -> None:
            data = b"" if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if status != 204:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            try:
                if url.path.startswith("/__admin/"):
                    self._admin(url.path[len("/__admin/"):], raw)
                elif url.path.startswith("/services/Soap/u/"):
                    status, xml = emulator.soap_login(raw.decode())
                    self._send(status, xml, content_type="text/xml;charset=UTF-8")
                elif url.path.rstrip("/") == "/services/oauth2/token" and method == "POST":
                    status, answer = emulator.oauth_token(parse_qs(raw.decode()), self.headers.get("Authorization"))
                    self._send(status, answer)
                else:
                    self._api(method, url.path, query, raw)
            except _Drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _api(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> None:
            if not emulator._authorised(self.headers.get("Authorization")):
                self._send(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
                           {"WWW-Authenticate": 'Token realm="Salesforce"'})
                return
            if emulator._roll("drop"):
                raise _Drop()
            if emulator._roll("slow"):
                time.sleep(emulator._faults.get("slow_seconds", 2.0))
            limit = {"Sforce-Limit-Info": f"api-usage={emulator._used()}/{DAILY_LIMIT}"}
            if emulator._roll("rate_limit"):
                self._send(403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
                           limit)
                return
            if emulator._roll("server_error"):
                status = emulator._random.choice([500, 503])
                body = ([{"message": "Service Unavailable", "errorCode": "SERVER_UNAVAILABLE"}] if status == 503 else
                        [{"message": "An unexpected error occurred. Please include this ErrorId if you contact "
                          "support: 1234567890-12345 (-1234567890)", "errorCode": "UNKNOWN_EXCEPTION"}])
                self._send(status, body, limit)
                return
            try:
                body = json.loads(raw) if raw else None  # type: ignore[assignment]
            except json.JSONDecodeError:
                self._send(400, [{"message": "Unexpected character in JSON body", "errorCode": "JSON_PARSER_ERROR"}],
                           limit)
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                status, answer = emulator.route(method, path, query, headers, body)
            except _Reply as reply:
                status, answer = reply.status, reply.body
            except SfError as exc:
                status, answer = exc.status, exc.body
            if method == "PATCH" and emulator._roll("lost_answer"):
                raise _Drop()
            self._send(status, answer, {"Sforce-Limit-Info": f"api-usage={emulator._used()}/{DAILY_LIMIT}"})

        def _admin(self, method: str, raw: bytes) -> None:
            if method not in ADMIN_METHODS:
                self._send(404, {"error": f"unknown admin method {method!r}", "methods": list(ADMIN_METHODS)})
                return
            try:
                kwargs = json.loads(raw) if raw else {}
                result = getattr(emulator, method)(**kwargs)
            except (TypeError, ValueError, KeyError, SfError) as exc:
                self._send(400, {"error": f"{type(exc).__name__}: {exc}"})
                return
            self._send(200, {"result": result})

    return Handler
