"""The Salesforce adapter: :class:`adapters.base.CrmAdapter` over simple-salesforce and the REST API.

How it talks to Salesforce, and why:
- Every HTTP request goes through :class:`PinnedSession`, which passes ``verify=ca_bundle`` and a
  timeout on each request: ``requests`` lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override a
  session-level ``verify``, and simple-salesforce sets no timeout at all.
- simple-salesforce is always built with a session id (never with credentials), so its own 401
  re-login (which drops our headers and can recurse) never runs; this adapter re-authenticates once
  itself (username/password/token through ``SalesforceLogin``, or OAuth client credentials) and
  otherwise raises :class:`AuthError`.
- Writes use sObject Collections (200 records a call) with ``allOrNone: false`` and
  ``Sforce-Auto-Assign: FALSE``, so a write never runs lead assignment rules and steals the owner.
- SOQL is only built with ``simple_salesforce.format_soql`` (values quoted and escaped); field and
  object names are checked to be plain API names before they are spliced in.
- Every exception and error body is classified in one place, :func:`classify_error` (whole call)
  and :func:`record_error_kind` (per record).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus, urlsplit

import requests
from simple_salesforce import Salesforce, SalesforceLogin, format_soql
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
)
from simple_salesforce.format import quote_soql_value

from refsync.adapters.base import (
    ApiBudget,
    Change,
    ChangeKind,
    ChangeSet,
    CrmRecord,
    FieldSchema,
    ObjectSchema,
    RecordError,
    RecordErrorKind,
    RecordMatch,
    RecordUpdate,
    RecordUpsert,
    Stage,
    StageChange,
    WriteResult,
    iso_utc,
    joined_pages,
    json_answer,
    json_body,
)
from refsync.adapters.errors import AuthError, CrmConfigError, CrmError, RateLimited, TransientError
from refsync.adapters.retrying import NO_RETRY, CallPolicy

T = TypeVar("T")
CRM = "salesforce"
WRITE_HEADERS = {"Sforce-Auto-Assign": "FALSE"}
# Saves past a duplicate rule whose action is "Allow" (REST API "Duplicate Rule Header"); sent only
# when the mapping's admin allows it (lead.allow_duplicate_save).
SAVE_DUPLICATES_HEADERS = {**WRITE_HEADERS, "Sforce-Duplicate-Rule-Header": "allowSave=true"}
MIN_API_VERSION = 46.0  # composite/sobjects/{Object}/{ExternalIdField} (collection upsert) exists from 46.0
MAX_SOQL_URL = 12_000  # characters of URL-encoded SOQL per GET; Salesforce refuses URIs over 16,384
_URL_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"  # what quote() keeps as is
MERGEABLE = {"Lead", "Contact", "Account"}
OWNED = {"Lead", "Contact", "Account", "Opportunity", "Case"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# The characters simple-salesforce's quote_soql_value escapes (SOQL "Quoted String Escape
# Sequences"); a value without any (nearly every email and id) is quoted without its translate.
_SOQL_ESCAPED = re.compile(r"""[\\'"\n\r\t\b\f]""")  # in a class, \b is the backspace
_CONVERTED = {"account": "ConvertedAccountId", "contact": "ConvertedContactId",
              "opportunity": "ConvertedOpportunityId"}
_TYPES = {"string": "string", "textarea": "text", "email": "email", "phone": "string", "url": "string",
          "date": "date", "datetime": "datetime", "double": "number", "currency": "number", "percent": "number",
          "int": "number", "long": "number", "boolean": "boolean", "picklist": "enum", "multipicklist": "enum",
          "combobox": "enum", "id": "id", "reference": "reference"}
# Salesforce sends REQUEST_LIMIT_EXCEEDED without Retry-After. The daily allocation is a rolling
# 24 h window (wait long: the engine defers the CRM); the concurrency limit on long requests
# ("ConcurrentPerOrgLongTxn Limit exceeded", 25 requests of 20 s or more at once: crm-api/salesforce
# README, "Requests lasting 20 s or more") clears as soon as one of them ends: a transient failure,
# retried in place with backoff.
DAILY_LIMIT_RETRY_AFTER = 3600.0

_RECORD_KINDS = {
    "UNABLE_TO_LOCK_ROW": RecordErrorKind.TRANSIENT,
    "ALL_OR_NONE_OPERATION_ROLLED_BACK": RecordErrorKind.TRANSIENT,
    "CANNOT_UPDATE_CONVERTED_LEAD": RecordErrorKind.CONVERTED,
    "ENTITY_IS_DELETED": RecordErrorKind.DELETED,
    "NOT_FOUND": RecordErrorKind.DELETED,
    "INVALID_FIELD_FOR_INSERT_UPDATE": RecordErrorKind.CONFIG,
    "DUPLICATE_VALUE": RecordErrorKind.CONFLICT,
    "DUPLICATE_EXTERNAL_ID": RecordErrorKind.CONFLICT,
    "DUPLICATES_DETECTED": RecordErrorKind.DUPLICATE,
}


# A whole request refused for a value Salesforce cannot parse (e.g. a datetime with a 1-digit year):
# "fails the whole request with JSON_PARSER_ERROR, in sObject Collections too" (crm-api/salesforce
# README). The value is one record's, not the mapping's: each record of the request gets the error
# (RecordError.whole_request) and the engine splits the batch until the record is found. A refusal
# about the mapping (INVALID_FIELD: no such column) stays a CrmConfigError: drift handling.
VALUE_REFUSALS = frozenset({"JSON_PARSER_ERROR"})


# ---- classification: the one place that decides what an error means ------------------------------
def record_error_kind(code: str) -> RecordErrorKind:
    """How the engine must treat one record's failure with Salesforce ``statusCode`` ``code``."""
    if code in _RECORD_KINDS:
        return _RECORD_KINDS[code]
    if code.startswith("INVALID_FIELD"):
        return RecordErrorKind.CONFIG
    return RecordErrorKind.REJECTED


def _first_error(content: Any) -> tuple[str | None, str]:
    """(errorCode, message) of a Salesforce error body (a list of ``{message, errorCode}``)."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode"), str(content[0].get("message", ""))
    if isinstance(content, dict):
        return content.get("errorCode") or content.get("error"), str(
            content.get("message") or content.get("error_description") or "")
    return None, str(content)[:500]


def classify_error(exc: BaseException) -> CrmError:
    """The :mod:`adapters.errors` class for a failed call (the caller raises it ``from exc``)."""
    if isinstance(exc, CrmError):
        return exc
    if isinstance(exc, SalesforceAuthenticationFailed):
        return AuthError(f"Salesforce login failed: {exc.code}: {exc.message}", crm=CRM, code=str(exc.code))
    if isinstance(exc, SalesforceError):
        code, message = _first_error(exc.content)
        status = exc.status
        text = f"Salesforce answered {status} {code or ''}: {message}".strip()
        if status == 401:
            return AuthError(text, crm=CRM, code=code or "INVALID_SESSION_ID")
        if code == "REQUEST_LIMIT_EXCEEDED":
            if "Concurrent" in message:
                return TransientError(text, crm=CRM, code=code)
            return RateLimited(text, crm=CRM, code=code, retry_after=DAILY_LIMIT_RETRY_AFTER)
        if status >= 500 or code in ("UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE"):
            return TransientError(text, crm=CRM, code=code)
        return CrmConfigError(text, crm=CRM, code=code)
    if isinstance(exc, requests.exceptions.SSLError):
        return CrmConfigError(f"TLS verification of the Salesforce host failed (check ca_bundle): {exc}", crm=CRM,
                              code="TLS")
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return CrmConfigError(f"bad Salesforce URL: {exc}", crm=CRM)
    if isinstance(exc, requests.exceptions.RequestException):
        return TransientError(f"Salesforce unreachable: {type(exc).__name__}: {exc}", crm=CRM)
    if isinstance(exc, ValueError):  # a 2xx answer that is not JSON
        return TransientError(f"Salesforce sent an unreadable answer: {exc}", crm=CRM)
    raise TypeError(f"unclassified error {type(exc).__name__}") from exc


def duplicate_matches(error: dict[str, Any]) -> tuple[RecordMatch, ...]:
    """The records a DUPLICATES_DETECTED error names: ``duplicateResult.matchResults[].matchRecords[]
    .record.Id`` (SOAP API DuplicateError/DuplicateResult, as serialised over REST). The documented
    collections example carries no ``duplicateResult`` at all: then there are none to read."""
    result = error.get("duplicateResult") or {}
    found: list[RecordMatch] = []
    for match in result.get("matchResults") or []:
        for entry in match.get("matchRecords") or []:
            record = entry.get("record") or {}
            obj = (record.get("attributes") or {}).get("type") or record.get("type") or match.get("entityType")
            if record.get("Id") and obj:
                found.append(RecordMatch(str(obj), str(record["Id"])))
    return tuple(dict.fromkeys(found))


# ---- HTTP session ---------------------------------------------------------------------------
class _Client(Salesforce):
    """simple-salesforce's client, its answers decoded by :func:`json_answer` into plain dicts
    (the client's default builds an ``OrderedDict`` per JSON object through the standard library:
    decoding a 2,000-record query page took three times as long)."""

    def parse_result_to_json(self, result: requests.Response) -> Any:
        return json_answer(result.content)


class PinnedSession(requests.Session):
    """A session whose CA bundle and timeout apply to every request, whatever the environment says."""

    def __init__(self, ca_bundle: str | None, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.pinned_verify: str | bool = ca_bundle if ca_bundle else True
        self.verify = self.pinned_verify
        self.timeout = timeout
        self._merged: dict[tuple[Any, ...], dict[str, Any]] = {}  # merge_environment_settings, by host and settings

    def merge_environment_settings(self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        """requests' merge, once per host and settings: it reads the proxies of the environment
        on every request, walking every environment variable (py-spy: a seventh of a find's
        CPU). The environment is read at the first request to a host, as a restart reads it."""
        key = (*url.split("/", 3)[:3], stream, verify, cert, tuple(sorted(proxies.items())) if proxies else None)
        merged = self._merged.get(key)
        if merged is None:
            merged = super().merge_environment_settings(url, dict(proxies) if proxies else proxies, stream, verify,
                                                        cert)
            self._merged[key] = merged
        return {**merged, "proxies": dict(merged["proxies"])}

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self.pinned_verify
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().request(method if isinstance(method, str) else method.decode(), str(url), *args, **kwargs)


def _api_name(name: str) -> str:
    if not _NAME.match(name):
        raise CrmConfigError(f"not a Salesforce API name: {name!r}", crm=CRM)
    return name


def _json_value(value: Any) -> Any:
    if value.__class__ is str:  # most values
        return value
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()  # date.isoformat always writes four year digits
    if isinstance(value, Decimal):
        return float(value)
    return value


def parse_sf_datetime(text: str | None) -> datetime | None:
    """``2026-11-24T20:15:50.000+0000`` (or ISO) as an aware UTC datetime."""
    if not text:
        return None
    try:
        # Python 3.11's fromisoformat reads Salesforce's ``+0000`` and ``Z`` itself (one call per
        # stamp of every record a poll reads, where a regular expression per stamp cost more)
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        spelled = str(text).replace("Z", "+00:00")
        if re.search(r"[+-]\d{4}$", spelled):
            spelled = spelled[:-2] + ":" + spelled[-2:]
        value = datetime.fromisoformat(spelled)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _HistoryWindow:
    """Hands each page of opportunity changes the stage history of its own opportunities.

    History is read in consecutive windows (low, page's cursor], each row once. A row's
    CreatedDate is never later than its opportunity's SystemModstamp, so a row whose opportunity
    is not in this page belongs to a later one: it waits here until that page comes."""

    def __init__(self, since: datetime) -> None:
        self.low = since
        self.waiting: dict[str, list[StageChange]] = {}

    def take(self, rows: list[StageChange], ids: set[str], high: datetime | None) -> list[StageChange]:
        """The rows of ``ids`` among those waiting and ``rows`` (read up to ``high``; None: the last page)."""
        for row in rows:
            self.waiting.setdefault(row.record_id, []).append(row)
        out = [row for rid in ids for row in self.waiting.pop(rid, [])]
        if high is not None:
            self.low = high
        else:  # rows of opportunities changed after the query began: the next poll reads those
            out += [row for rows_ in self.waiting.values() for row in rows_]
            self.waiting.clear()
        return sorted(out, key=lambda r: r.at)


# What a URL's query may hold as it is (RFC 3986 3.4: unreserved, sub-delims, ':', '@', '/', '?'),
# less '&' and '+' (the form encoding's separator and space) and '%'.
_QUERY_SAFE = "!$'()*,;=:@/?~"


def query_param(soql: str) -> str:
    """``soql`` as the value of ``q=``: spaces as '+' and every other character outside
    :data:`_QUERY_SAFE` and the unreserved set percent-encoded, as ``application/x-www-form-urlencoded``
    decodes it (what the client's ``query()`` sends through requests' ``urlencode``, which also
    escapes quotes, commas, parentheses and '@'). Salesforce's own examples send SOQL so
    (``/query/?q=SELECT+name,id+from+Account``, REST API Developer Guide, "Execute a SOQL Query",
    https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/dome_query.htm).
    A query without '%' passes requests and urllib3 without their per-character re-encoding,
    which cost a twentieth of a first cycle's CPU on finds' long ``IN`` lists (py-spy)."""
    return quote_plus(soql, safe=_QUERY_SAFE)


def _url_len(text: str) -> int:
    """``len(quote(text, safe=""))`` without building it (a find sizes every value it sends): each
    UTF-8 byte outside the unreserved set becomes three characters."""
    raw = text.encode()
    return len(raw) + 2 * len(raw.translate(None, _URL_SAFE))


class SalesforceAdapter:
    """CrmAdapter for Salesforce (REST API through simple-salesforce)."""

    name = "salesforce"
    max_batch = 200
    query_batch_size = 2000  # records per query page asked of Salesforce (it may send fewer)
    page_records = 2000  # changes per page of change_pages: query pages are joined up to this
    # No look-back of its own: SOQL reads the database, not a search index (SystemModstamp changes
    # on every change, crm-api/salesforce/README.md); the caller's overlap covers a save committed
    # a little after its stamp.
    lookback = timedelta(0)

    def __init__(self, instance_url: str, *, session_id: str | None = None, username: str | None = None,
                 password: str | None = None, security_token: str | None = None, domain: str | None = None,
                 client_id: str | None = None, client_secret: str | None = None, ca_bundle: str | None = None,
                 api_version: str = "59.0", timeout: tuple[float, float] = (5.0, 60.0),
                 retry: CallPolicy = NO_RETRY) -> None:
        self.instance_url = instance_url.rstrip("/")
        self.api_version = api_version.lstrip("v")
        self._session_id = session_id
        self._password_login = bool(username and password is not None)
        self._client_login = bool(client_id and client_secret)
        if not (session_id or self._password_login or self._client_login):
            raise CrmConfigError("Salesforce needs a session_id, username/password/security_token or "
                                 "client_id/client_secret", crm=CRM)
        self._creds = {"username": username, "password": password, "security_token": security_token,
                       "domain": domain, "client_id": client_id, "client_secret": client_secret}
        self.http = PinnedSession(ca_bundle, timeout)
        self._sf: Salesforce | None = None
        self._calls: Counter[str] = Counter()
        self._usage: tuple[int, int] | None = None
        self._lock = threading.RLock()
        self.retry = retry

    # ---- sessions --------------------------------------------------------------------------------
    def _can_reauthenticate(self) -> bool:
        return self._password_login or self._client_login

    def _login(self) -> tuple[str, str]:
        """A fresh (session id, instance URL) from the configured credentials."""
        creds = self._creds
        domain = creds["domain"]
        if self._password_login:
            scratch = domain if domain and domain.startswith("https://") else None
            session_id, instance = SalesforceLogin(
                username=creds["username"], password=creds["password"], security_token=creds["security_token"],
                domain=None if scratch else domain, scratch_url=scratch, session=self.http,
                sf_version=self.api_version)
            return session_id, f"https://{instance}"
        token_base = domain if domain and domain.startswith("https://") else (
            f"https://{domain}.my.salesforce.com" if domain else self.instance_url)
        response = self.http.post(f"{token_base.rstrip('/')}/services/oauth2/token",
                                  data={"grant_type": "client_credentials", "client_id": creds["client_id"],
                                        "client_secret": creds["client_secret"]})
        if response.status_code != 200:
            code, message = _first_error(response.json() if response.content else {})
            raise AuthError(f"Salesforce OAuth client credentials refused: {code}: {message}", crm=CRM, code=code)
        answer = response.json()
        return str(answer["access_token"]), str(answer.get("instance_url") or self.instance_url)

    def _client(self) -> Salesforce:
        with self._lock:
            if self._sf is None:
                if self._session_id:
                    session_id, instance = self._session_id, self.instance_url
                else:
                    session_id, instance = self._login()
                    self._session_id = session_id
                self._sf = _Client(session_id=session_id, instance_url=instance, version=self.api_version,
                                   session=self.http)
            return self._sf

    def _call(self, kind: str, fn: Callable[[Salesforce], T]) -> T:
        """One API call: counted, classified, re-authenticated once on an expired session, and
        retried by the call policy on transient failures and short rate limits. Every call may be
        repeated: reads change nothing, and the only writes are sObject Collections upserts keyed
        by our external id and updates by record id (sending one twice leaves the same record)."""
        return self.retry.call(CRM, kind, lambda: self._call_once(kind, fn))

    def _call_once(self, kind: str, fn: Callable[[Salesforce], T]) -> T:
        for attempt in (0, 1):
            try:
                sf = self._client()
                self._calls[kind] += 1
                result = fn(sf)
            except SalesforceExpiredSession as exc:
                if attempt == 0 and self._can_reauthenticate():
                    with self._lock:
                        self._sf, self._session_id = None, None
                    continue
                raise classify_error(exc) from exc
            except (SalesforceError, requests.exceptions.RequestException, ValueError) as exc:
                raise classify_error(exc) from exc
            usage = sf.api_usage.get("api-usage")
            if usage is not None:
                self._usage = (int(usage.used), int(usage.total))
            return result
        raise AssertionError("unreachable")

    # ---- reads -----------------------------------------------------------------------------------
    def describe(self, object_name: str) -> ObjectSchema:
        obj = _api_name(object_name)
        body = self._call("describe", lambda sf: sf.restful(f"sobjects/{obj}/describe"))
        fields: dict[str, FieldSchema] = {}
        for raw in (body or {}).get("fields", []):
            kind = _TYPES.get(str(raw.get("type")), str(raw.get("type")))
            fields[raw["name"]] = FieldSchema(
                name=raw["name"], type=kind, label=raw.get("label", ""),
                length=raw.get("length") or None if kind in ("string", "text", "email", "enum") else None,
                updateable=bool(raw.get("updateable")), createable=bool(raw.get("createable")),
                unique=bool(raw.get("unique")), external_id=bool(raw.get("externalId")),
                options=tuple(p["value"] for p in raw.get("picklistValues") or [] if p.get("active", True)))
        return ObjectSchema(name=str((body or {}).get("name", obj)), fields=fields)

    def _query_pages(self, soql: str, *, include_deleted: bool) -> Iterator[dict[str, Any]]:
        """Every record of a SOQL query, page by page through ``nextRecordsUrl``."""
        for batch in self._query_batches(soql, include_deleted=include_deleted):
            yield from batch

    def _query_batches(self, soql: str, *, include_deleted: bool) -> Iterator[list[dict[str, Any]]]:
        """The records of a SOQL query one answer at a time: Salesforce's own server-side cursor
        (``nextRecordsUrl``) pages it, so the query's order holds across pages and nothing is re-read."""
        headers = {"Sforce-Query-Options": f"batchSize={self.query_batch_size}"}
        # GET query/?q=... as the client's query() sends it (its resource, spaces as '+'), with the
        # characters a query string may hold left as they are (query_param)
        path = f"{'queryAll' if include_deleted else 'query'}/?q={query_param(soql)}"
        page: dict[str, Any] = self._call("query", lambda sf: sf.restful(path, headers=headers) or {})
        while True:
            yield list(page.get("records", []))
            if page.get("done", True) or not page.get("nextRecordsUrl"):
                return
            next_url = page["nextRecordsUrl"]
            def more(sf: Any, url: str = next_url) -> Any:
                return sf.query_more(url, identifier_is_url=True, headers=headers)

            page = self._call("query", more)

    @staticmethod
    def _chunks(prefix_len: int, values: Sequence[str]) -> Iterator[str]:
        """``IN`` lists (``('a','b')``, each value quoted for SOQL once) whose URL-encoded SOQL stays
        under MAX_SOQL_URL."""
        chunk: list[str] = []
        size = prefix_len
        for value in values:
            quoted = quote_soql_value(value) if _SOQL_ESCAPED.search(value) else "'" + value + "'"
            cost = _url_len(quoted) + 3
            if chunk and size + cost > MAX_SOQL_URL:
                yield "(" + ",".join(chunk) + ")"
                chunk, size = [], prefix_len
            chunk.append(quoted)
            size += cost
        if chunk:
            yield "(" + ",".join(chunk) + ")"

    @staticmethod
    def _base_fields(obj: str) -> list[str]:
        fields = ["Id", "SystemModstamp", "LastModifiedById"]
        if obj in OWNED:
            fields.append("OwnerId")
        return fields

    def _record(self, obj: str, raw: dict[str, Any]) -> CrmRecord:
        fields = {k: v for k, v in raw.items() if k != "attributes"}
        return CrmRecord(object=obj, id=str(raw["Id"]), fields=fields,
                         modified_at=parse_sf_datetime(raw.get("SystemModstamp")),
                         owner_id=raw.get("OwnerId"), modified_by=raw.get("LastModifiedById"))

    def find(self, object_name: str, match_field: str, values: Sequence[str],
             fields: Sequence[str]) -> dict[str, list[CrmRecord]]:
        obj, key = _api_name(object_name), _api_name(match_field)
        # A converted Lead stays queryable (IsConverted = true) and refuses writes: callers follow
        # it to the records it became, so those ids come with every Lead found.
        converted = ["IsConverted", *_CONVERTED.values()] if obj == "Lead" else []
        select = list(dict.fromkeys([*self._base_fields(obj), key, *converted, *(_api_name(f) for f in fields)]))
        wanted: dict[str, list[str]] = {}
        for value in values:
            if value not in (None, ""):
                wanted.setdefault(str(value).casefold(), []).append(str(value))
        prefix = format_soql("SELECT {:literal} FROM {:literal} WHERE {:literal} IN ()", ", ".join(select), obj, key)
        found: dict[str, list[CrmRecord]] = {}
        for chunk in self._chunks(len(quote(prefix, safe="")), list(dict.fromkeys(v for vs in wanted.values()
                                                                                for v in vs))):
            soql = format_soql("SELECT {:literal} FROM {:literal} WHERE {:literal} IN {:literal}", ", ".join(select),
                               obj, key, chunk)
            for raw in self._query_pages(soql, include_deleted=False):
                record = self._record(obj, raw)
                for original in wanted.get(str(raw.get(key) or "").casefold(), []):
                    if all(r.id != record.id for r in found.get(original, [])):
                        found.setdefault(original, []).append(record)
        return found

    def _fetch_by_ids(self, obj: str, ids: Sequence[str], select: list[str]) -> dict[str, dict[str, Any]]:
        prefix = format_soql("SELECT {:literal} FROM {:literal} WHERE Id IN ()", ", ".join(select), obj)
        rows: dict[str, dict[str, Any]] = {}
        for chunk in self._chunks(len(quote(prefix, safe="")), list(dict.fromkeys(ids))):
            soql = format_soql("SELECT {:literal} FROM {:literal} WHERE Id IN {:literal}", ", ".join(select), obj,
                               chunk)
            for raw in self._query_pages(soql, include_deleted=True):
                rows[str(raw["Id"])] = raw
                rows[str(raw["Id"])[:15]] = raw
        return rows

    def read(self, object_name: str, ids: Sequence[str], fields: Sequence[str]) -> dict[str, CrmRecord | None]:
        obj = _api_name(object_name)
        merge_field = ["MasterRecordId"] if obj in MERGEABLE else []
        select = list(dict.fromkeys([*self._base_fields(obj), "IsDeleted", *merge_field,
                                     *(_api_name(f) for f in fields)]))
        wanted = [str(i) for i in ids if i]
        rows = self._fetch_by_ids(obj, wanted, select) if wanted else {}
        # Follow merges (a survivor can itself have been merged away since): at most a few hops.
        for _hop in range(5):
            pending = {str(r["MasterRecordId"]) for r in rows.values()
                       if r.get("IsDeleted") and r.get("MasterRecordId") and str(r["MasterRecordId"]) not in rows}
            if not pending:
                break
            rows.update(self._fetch_by_ids(obj, sorted(pending), select))
        out: dict[str, CrmRecord | None] = {}
        for record_id in ids:
            raw = rows.get(str(record_id)) or rows.get(str(record_id)[:15])
            seen: set[str] = set()
            while raw is not None and raw.get("IsDeleted") and raw.get("MasterRecordId") and raw["Id"] not in seen:
                seen.add(raw["Id"])
                raw = rows.get(str(raw["MasterRecordId"]))
            out[record_id] = None if raw is None or raw.get("IsDeleted") else self._record(obj, raw)
        return out

    def change_pages(self, object_name: str, since: datetime, fields: Sequence[str], *,
                     handled: Mapping[str, datetime] | None = None,
                     poll_state: Mapping[str, Any] | None = None,
                     search_from: datetime | None = None) -> Iterator[ChangeSet]:
        obj = _api_name(object_name)
        since = _aware(since)
        listed_from = since if search_from is None else max(since, _aware(search_from))
        extra = ["IsDeleted", *(["MasterRecordId"] if obj in MERGEABLE else [])]
        if obj == "Lead":
            extra += ["IsConverted", *_CONVERTED.values()]
        select = list(dict.fromkeys([*self._base_fields(obj), *extra, *(_api_name(f) for f in fields)]))
        soql = format_soql("SELECT {:literal} FROM {:literal} WHERE SystemModstamp > {} "
                           "ORDER BY SystemModstamp ASC, Id ASC", ", ".join(select), obj, listed_from)
        history = _HistoryWindow(since)
        cursor = since
        skipped: set[str] = set()  # handled opportunities: their history rows were handled with them
        for raws, last in joined_pages(self._query_batches(soql, include_deleted=True), self.page_records):
            page: list[Change] = []
            for raw in raws:
                at = parse_sf_datetime(raw.get("SystemModstamp")) or since
                if at <= since:  # format_soql drops milliseconds: skip what the cursor already covers
                    continue
                cursor = max(cursor, at)
                if handled and handled.get(str(raw["Id"])) == at:
                    skipped.add(str(raw["Id"]))
                    continue
                page.append(self._change(obj, raw, at))
            if not page:
                continue
            stage_changes: list[StageChange] = []
            if obj == "Opportunity":  # a stage change always bumps the opportunity's SystemModstamp
                high = None if last else cursor
                rows = [r for r in self._stage_history(history.low, high) if r.record_id not in skipped]
                stage_changes = history.take(rows, {c.record_id for c in page}, high)
            yield ChangeSet(changes=page, stage_changes=stage_changes, cursor=cursor)

    def _change(self, obj: str, raw: dict[str, Any], at: datetime) -> Change:
        record_id = str(raw["Id"])
        if raw.get("IsDeleted"):
            if raw.get("MasterRecordId"):
                return Change(ChangeKind.MERGED, obj, record_id, at, merged_into=str(raw["MasterRecordId"]))
            return Change(ChangeKind.DELETED, obj, record_id, at)
        record = self._record(obj, raw)
        if obj == "Lead" and raw.get("IsConverted"):
            converted = {role: str(raw[f]) for role, f in _CONVERTED.items() if raw.get(f)}
            return Change(ChangeKind.CONVERTED, obj, record_id, at, record=record, converted_to=converted)
        return Change(ChangeKind.UPDATED, obj, record_id, at, record=record)

    def _stage_history(self, low: datetime, high: datetime | None) -> list[StageChange]:
        """OpportunityHistory rows created in (low, high]; no upper bound when ``high`` is None."""
        soql = format_soql("SELECT OpportunityId, StageName, Amount, CloseDate, CreatedDate, CreatedById "
                           "FROM OpportunityHistory WHERE CreatedDate > {}", low)
        if high is not None:  # literals drop milliseconds: ask up to the next whole second, cut below
            soql += format_soql(" AND CreatedDate < {}", high.replace(microsecond=0) + timedelta(seconds=1))
        rows: list[StageChange] = []
        for raw in self._query_pages(soql + " ORDER BY CreatedDate ASC", include_deleted=False):
            at = parse_sf_datetime(raw.get("CreatedDate")) or low
            if at <= low or (high is not None and at > high):
                continue
            amount = raw.get("Amount")
            rows.append(StageChange(record_id=str(raw["OpportunityId"]), stage=str(raw.get("StageName") or ""),
                                    at=at, amount=float(amount) if amount is not None else None,
                                    close_date=raw.get("CloseDate"), changed_by=raw.get("CreatedById")))
        return rows

    def stages(self, object_name: str) -> list[Stage]:
        obj = _api_name(object_name)
        if obj == "Opportunity":
            try:
                rows = list(self._query_pages("SELECT MasterLabel, ApiName, IsClosed, IsWon, SortOrder FROM "
                                              "OpportunityStage WHERE IsActive = true ORDER BY SortOrder ASC",
                                              include_deleted=False))
                return [Stage("default", str(r["MasterLabel"]), str(r.get("ApiName") or r["MasterLabel"]),
                              bool(r.get("IsClosed")), bool(r.get("IsWon"))) for r in rows]
            except CrmConfigError:
                pass  # no access to OpportunityStage: fall back to the picklist (closed/won guessed from labels)
        field = "StageName" if obj == "Opportunity" else "Status"
        schema = self.describe(obj).fields.get(field)
        labels = schema.options if schema else ()
        return [Stage("default", label, label, label.lower().startswith("closed") or "lost" in label.lower(),
                      "won" in label.lower() or label == "Closed - Converted") for label in labels]

    def budget(self) -> ApiBudget:
        used, limit = self._usage if self._usage else (None, None)
        return ApiBudget(calls=dict(self._calls), used_today=used, limit_today=limit)

    # ---- writes ----------------------------------------------------------------------------------
    def _write(self, kind: str, path: str, payload: list[dict[str, Any]], keys: list[str],
               headers: dict[str, str] = WRITE_HEADERS) -> list[WriteResult]:
        results: list[WriteResult] = []
        for start in range(0, len(payload), self.max_batch):
            chunk = payload[start:start + self.max_batch]
            chunk_keys = keys[start:start + self.max_batch]
            body = {"allOrNone": False, "records": chunk}
            def send(sf: Any, b: dict[str, Any] = body) -> Any:
                # the body encoded by orjson (json_body); the client's headers say application/json
                return sf.restful(path, method="PATCH", data=json_body(b), headers=headers)

            try:
                answer = self._call(kind, send)
            except CrmConfigError as exc:
                if exc.code not in VALUE_REFUSALS:
                    raise
                results += [WriteResult(key, False, error=RecordError(
                    RecordErrorKind.REJECTED, str(exc.code), exc.message, whole_request=True)) for key in chunk_keys]
                continue
            results += self._results(answer, chunk_keys)
        return results

    @staticmethod
    def _results(answer: Any, keys: list[str]) -> list[WriteResult]:
        """One WriteResult per key; answers Salesforce left out are MISSING, never success."""
        items = answer if isinstance(answer, list) else []
        out: list[WriteResult] = []
        for index, key in enumerate(keys):
            item = items[index] if index < len(items) and isinstance(items[index], dict) else None
            if item is None:
                out.append(WriteResult(key, False, error=RecordError(
                    RecordErrorKind.MISSING, "MISSING_RESULT",
                    f"Salesforce returned {len(items)} results for {len(keys)} records")))
            elif item.get("success"):
                out.append(WriteResult(key, True, record_id=item.get("id"), created=bool(item.get("created"))))
            else:
                errors = item.get("errors") or [{"statusCode": "UNKNOWN", "message": "failed without an error"}]
                first = errors[0]
                code = str(first.get("statusCode") or first.get("errorCode") or "UNKNOWN")
                message = "; ".join(str(e.get("message", "")) for e in errors)
                out.append(WriteResult(key, False, record_id=item.get("id"), error=RecordError(
                    record_error_kind(code), code, message, tuple(first.get("fields") or ()),
                    duplicate_matches(first))))
        return out

    def upsert(self, object_name: str, id_field: str, records: Sequence[RecordUpsert], *,
               save_duplicates: bool = False) -> list[WriteResult]:
        obj, ext = _api_name(object_name), _api_name(id_field)
        payload = [{"attributes": {"type": obj}, **{k: _json_value(v) for k, v in r.values.items()},
                    ext: r.external_id} for r in records]
        return self._write("composite_upsert", f"composite/sobjects/{obj}/{ext}", payload,
                           [r.external_id for r in records],
                           SAVE_DUPLICATES_HEADERS if save_duplicates else WRITE_HEADERS)

    def update(self, object_name: str, records: Sequence[RecordUpdate]) -> list[WriteResult]:
        obj = _api_name(object_name)
        payload = [{"attributes": {"type": obj}, **{k: _json_value(v) for k, v in r.values.items() if k != "Id"},
                    "id": r.record_id} for r in records]
        return self._write("composite_update", "composite/sobjects", payload, [r.record_id for r in records])


def host_of(url: str) -> str:
    """host[:port] of an instance URL (what simple-salesforce keeps of it)."""
    parts = urlsplit(url)
    return parts.netloc or url
