"""The HubSpot adapter: the CrmAdapter contract over hubspot-api-client 12 (CRM v3, associations v4).

Shapes of HubSpot's behaviour it copes with (crm-api/hubspot/README.md):
- batch endpoints take 100 inputs; 207 carries per-record ``errors[]`` (ids in ``context``); an input
  can be left out of ``results`` with no error (a merged-away id): that is MISSING, never success;
  a unique-value collision answers one 409 for the whole batch: every record of it is CONFLICT and
  the engine splits the batch;
- merges mint a new id; ``hs_merged_object_ids`` on the survivor lists the old ones, and reading an
  old id answers the survivor;
- search is 200 a page, 10,000 results a query, about 5 requests a second, and eventually
  consistent: changes are read back with a look-back window, a page at a time by keyset on the
  modified time (never an offset, so the cap never applies); deal stages are internal ids,
  resolved to labels through the pipelines API.

The client is built once with urllib3's retries off (the one retry policy, ``adapters/retrying``,
retries every call) and a timeout on every call; each generated package's ``ApiException`` is
turned into :mod:`adapters.errors` in one place.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import urllib3
from hubspot import HubSpot
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsApiException
from hubspot.crm.objects.exceptions import ApiException as ObjectsApiException
from hubspot.crm.objects.exceptions import (
    ForbiddenException,
    NotFoundException,
    ServiceException,
    UnauthorizedException,
)
from hubspot.crm.objects.rest import RESTResponse
from hubspot.crm.pipelines.exceptions import ApiException as PipelinesApiException
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException

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
    RecordUpdate,
    RecordUpsert,
    Stage,
    StageChange,
    WriteResult,
    iso_utc,
    joined_pages,
    json_answer,
    json_body,
    unhandled,
)
from refsync.adapters.errors import AuthError, CrmConfigError, CrmError, RateLimited, TransientError
from refsync.adapters.retrying import NO_RETRY, CallPolicy

log = logging.getLogger("refsync.adapters.hubspot")
# What the client's REST layer raises for a status (hubspot/crm/objects/rest.py); others: ApiException.
_STATUS_EXCEPTIONS: dict[int, type[ObjectsApiException]] = {401: UnauthorizedException, 403: ForbiddenException,
                                                            404: NotFoundException,
                                                            **dict.fromkeys(range(500, 600), ServiceException)}
API_EXCEPTIONS = (ObjectsApiException, PropertiesApiException, PipelinesApiException, AssociationsApiException)
CRM = "hubspot"
BATCH = 100
HISTORY_BATCH = 50  # HubSpot halves batch reads that ask for property history
SEARCH_PAGE = 200
IN_VALUES = 100
SEARCH_WINDOW = 1.1  # seconds: HubSpot counts searches per second; a margin for clock and latency
POLICY_WAIT = {"TEN_SECONDLY_ROLLING": 10.0, "SECONDLY": 1.0}
CONFIG_CODES = {"PROPERTY_DOESNT_EXIST", "READ_ONLY_VALUE", "MISSING_SCOPES", "INVALID_PROPERTY"}
ERROR_KINDS = {"LOCKED": RecordErrorKind.TRANSIENT, "OBJECT_NOT_FOUND": RecordErrorKind.DELETED,
               "CONFLICT": RecordErrorKind.CONFLICT, "RATE_LIMITS": RecordErrorKind.TRANSIENT}
EXTRA_FIELDS = ("hs_object_id", "hs_merged_object_ids", "hubspot_owner_id", "hs_updated_by_user_id")
DEAL_FIELDS = ("dealstage", "pipeline", "amount", "closedate", "createdate")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _body(exc: Any) -> dict[str, Any]:
    try:
        parsed = json.loads(exc.body) if getattr(exc, "body", None) else {}
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _seconds_to_utc_midnight(now: datetime | None = None) -> float:
    return seconds_to_midnight("UTC", now)


def seconds_to_midnight(time_zone: str, now: datetime | None = None) -> float:
    """Seconds until the next midnight in ``time_zone``: when HubSpot's daily limit resets, at the
    portal's midnight in its own time zone (developers.hubspot.com/apisbytier), DST included."""
    try:
        zone: tzinfo = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = UTC
    local = (now or datetime.now(UTC)).astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    return max((midnight.astimezone(UTC) - local.astimezone(UTC)).total_seconds(), 1.0)


def classify(exc: BaseException) -> CrmError:
    """The one translation of client and transport failures into the engine's error classes."""
    if not isinstance(exc, API_EXCEPTIONS):
        return TransientError(f"HubSpot unreachable: {type(exc).__name__}: {exc}", crm=CRM)
    status = int(getattr(exc, "status", 0) or 0)
    body = _body(exc)
    message = str(body.get("message") or getattr(exc, "reason", "") or f"HTTP {status}")
    details = body.get("errors") or []
    code = next((d.get("code") for d in details if isinstance(d, dict) and d.get("code")), None) \
        or body.get("policyName") or body.get("category")
    if status == 429:
        headers = getattr(exc, "headers", None) or {}
        retry_after: float | None = None
        if headers.get("Retry-After"):
            try:
                retry_after = float(headers["Retry-After"])
            except ValueError:
                retry_after = None
        policy = str(body.get("policyName") or "")
        if retry_after is None:
            retry_after = _seconds_to_utc_midnight() if policy == "DAILY" else POLICY_WAIT.get(policy, 10.0)
        return RateLimited(message, crm=CRM, code=policy or "RATE_LIMIT", retry_after=retry_after)
    if status == 0 or status >= 500:
        return TransientError(message, crm=CRM, code=code)
    if status == 401:
        return AuthError(message, crm=CRM, code=code)
    if status == 403:
        if body.get("category") == "MISSING_SCOPES" or "scope" in message.lower():
            return CrmConfigError(f"the private app lacks scopes: {message}", crm=CRM, code="MISSING_SCOPES")
        return AuthError(message, crm=CRM, code=code)
    return CrmConfigError(message, crm=CRM, code=code)


def _value(value: Any) -> str:
    """A field value as HubSpot's API takes it: strings; datetimes ISO with ms and Z; blank clears."""
    if value.__class__ is str:  # most values
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _moment(value: Any) -> datetime | None:
    """A HubSpot timestamp (ISO 8601 or epoch ms) as an aware datetime."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value)
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    try:
        parsed = datetime.fromisoformat(text)  # Python 3.11 reads the "Z" HubSpot writes itself
    except ValueError:
        return None
    tz = parsed.tzinfo
    if tz is UTC:
        return parsed
    return parsed.astimezone(UTC) if tz else parsed.replace(tzinfo=UTC)


_ONE_MS = timedelta(milliseconds=1)


def _ms(moment: datetime) -> int:
    """Epoch milliseconds, exactly (float timestamps can land one millisecond short)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return (aware - EPOCH) // _ONE_MS


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _json_answer(method: Callable[..., Any]) -> Callable[..., tuple[Any, int, Any]]:
    """``method`` (a generated ``*_with_http_info``) answering the parsed JSON body, status and
    headers; failures still raise the client's ApiException, for :func:`classify`."""
    def call(*args: Any, **kwargs: Any) -> tuple[Any, int, Any]:
        return _read(method(*args, _preload_content=False, **kwargs))
    return call


def _read(response: Any) -> tuple[Any, int, Any]:
    """An unread 2xx answer's parsed JSON body, status and headers; its connection back to the pool."""
    try:
        return json_answer(response.data or b"{}"), response.status, response.headers
    finally:
        response.release_conn()


def _posted(api: Any, path: str) -> Callable[..., tuple[Any, int, Any]]:
    """``POST path`` (``{objectType}`` filled in) as the client's generated ``*_with_http_info``
    sends it (its host, connection pool, default headers, ``Accept`` and ``Content-Type`` JSON, the
    OAuth bearer header of its ``auth_settings``), answering the parsed JSON body, status and
    headers, with the body encoded by orjson. The generated method walks the whole body once to
    "sanitize" it and encodes it with the standard library: a third of a 100-record batch upsert's
    CPU (py-spy). Failures raise the client's own exceptions, as its REST layer raises them, for
    :func:`classify`."""
    client = api.api_client

    def call(object_type: str, body: Any, _request_timeout: float | None = None) -> tuple[Any, int, Any]:
        config = client.configuration
        headers = {**client.default_headers, "Accept": "application/json", "Content-Type": "application/json"}
        for auth in config.auth_settings().values():
            headers[auth["key"]] = auth["value"]
        url = config.host + path.replace("{objectType}", quote(str(object_type), safe=""))
        timeout = urllib3.Timeout(total=_request_timeout) if _request_timeout else None
        try:
            response = client.rest_client.pool_manager.request("POST", url, body=json_body(body), headers=headers,
                                                               timeout=timeout, preload_content=False)
        except urllib3.exceptions.SSLError as exc:
            raise ObjectsApiException(status=0, reason=f"{type(exc).__name__}\n{exc}") from exc
        if not 200 <= response.status <= 299:
            try:
                failed = RESTResponse(response)  # reads the body, for the exception
            finally:
                response.release_conn()
            raise _STATUS_EXCEPTIONS.get(failed.status, ObjectsApiException)(http_resp=failed)
        return _read(response)

    return call


def _object(data: dict[str, Any]) -> SimpleNamespace:
    """One record of a JSON answer shaped like the client's ``SimplePublicObject`` (``id``,
    ``properties``, ``updated_at``, ``new``); ``properties_with_history`` stays the JSON's own lists
    of ``{value, timestamp, updatedByUserId, sourceId}``."""
    return SimpleNamespace(id=str(data.get("id")), properties=data.get("properties") or {},
                           updated_at=data.get("updatedAt"), new=bool(data.get("new")),
                           properties_with_history=data.get("propertiesWithHistory") or {})


def _search_answer(data: dict[str, Any]) -> SimpleNamespace:
    """A search answer shaped like the client's model (``results[].id/.properties/.updated_at``,
    ``paging.next.after``), built from the JSON (`POST /crm/v3/objects/{type}/search`)."""
    after = ((data.get("paging") or {}).get("next") or {}).get("after")
    return SimpleNamespace(
        results=[_object(r) for r in data.get("results") or []],
        paging=SimpleNamespace(next=SimpleNamespace(after=str(after))) if after is not None else None)


def _batch_answer(data: dict[str, Any]) -> SimpleNamespace:
    """A batch read, upsert or update answer shaped like the client's model (``results[]``, and a
    207's ``errors[].category/.message/.context``), built from the JSON: the models' dateutil parse
    of every timestamp cost more CPU than refsync spends on the records (crm-api/hubspot/README.md:
    batch answers, 207 ``errors[]`` with the ids in ``context``)."""
    return SimpleNamespace(
        results=[_object(r) for r in data.get("results") or []],
        errors=[SimpleNamespace(category=e.get("category"), message=e.get("message"), context=e.get("context"))
                for e in data.get("errors") or [] if isinstance(e, dict)])


def _field_type(prop: Any) -> str:
    name, kind, widget = prop.name, prop.type, prop.field_type
    if name == "hs_object_id":
        return "id"
    if kind == "string":
        if name == "email" or getattr(prop, "text_display_hint", None) == "email":
            return "email"
        return "text" if widget == "textarea" else "string"
    if kind == "enumeration":
        return "boolean" if widget == "booleancheckbox" else "enum"
    return {"number": "number", "datetime": "datetime", "date": "date", "bool": "boolean"}.get(kind, "string")


def _modified_field(object_name: str) -> str:
    """The one "last modified" stamp of an object, for filter, sort, keyset and cursor alike.

    Contacts carry two stamps that disagree (``hs_lastmodifieddate`` also moves on system touches);
    searching contacts by ``hs_lastmodifieddate`` misses records, so contacts use ``lastmodifieddate``
    (amp-labs/connectors#45, crm-api/hubspot/README.md); other objects use ``hs_lastmodifieddate``."""
    return "lastmodifieddate" if object_name == "contacts" else "hs_lastmodifieddate"


class HubSpotAdapter:
    """CrmAdapter for HubSpot; ``base_url`` is https://api.hubapi.com or the sandbox's."""

    name = "hubspot"
    max_batch = BATCH
    page_records = 2000  # changes per page of change_pages: search answers are joined up to this
    search_page = SEARCH_PAGE  # results per search request (HubSpot's maximum)

    def __init__(self, base_url: str, access_token: str, *, timeout: float = 30.0,
                 lookback: timedelta = timedelta(minutes=2), search_cap: int = 10_000,
                 search_per_second: float | None = 5.0,
                 deletion_check_every: timedelta = timedelta(hours=1), retry: CallPolicy = NO_RETRY) -> None:
        self.timeout = timeout
        self.retry = retry
        # HubSpot has no "deleted since" query: archived records are listed whole. Doing that at
        # most this often keeps a quiet poll at one call per object; the next check starts where
        # the last one did, so no deletion is missed, only seen later.
        self.deletion_check_every = deletion_check_every
        self._deletions_checked: dict[str, dict[str, str]] = {}  # when the caller keeps no poll_state
        self.lookback = lookback
        self.search_cap = search_cap
        self.search_per_second = search_per_second
        # retries=False: urllib3 neither retries nor wraps; the engine decides about retries.
        client = HubSpot(access_token=access_token, host=base_url.rstrip("/"), retry=False)
        # Each property access builds a new ApiClient and pool: build each API object once.
        objects = client.crm.objects
        self._basic = objects.basic_api
        self._batch = objects.batch_api
        self._search_api = objects.search_api
        self._properties = client.crm.properties.core_api
        self._pipelines = client.crm.pipelines.pipelines_api
        self._associations = client.crm.associations.v4.batch_api
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._daily: tuple[int, int] | None = None  # (limit, remaining) from the last answer
        self._searches: deque[float] = deque()
        self._stages: dict[str, list[Stage]] = {}
        # account details (the portal's time zone) are not in hubspot-api-client: one plain GET
        self._base_url, self._token = base_url.rstrip("/"), access_token
        self._http = urllib3.PoolManager(retries=False)
        self._time_zone: str | None = None
        self._time_zone_retry_at = 0.0  # monotonic: when an unreadable account API may be asked again

    # -- plumbing --------------------------------------------------------------------------------
    def _call(self, kind: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
        """One API call: counted, timed out, its rate-limit headers noted, its failure classified,
        and retried by the call policy on transient failures and short rate limits. Every call may
        be repeated: reads and searches change nothing, and the writes are batch upserts keyed by
        our unique-value property and batch updates by record id (sending one twice leaves the same
        records)."""
        tries = 0

        def once() -> tuple[Any, int]:
            nonlocal tries
            tries += 1
            if tries > 1 and kind == "search":
                self._pace_search()  # a retried search counts against the per-second limit too
            with self._lock:
                self._calls[kind] += 1
            try:
                data, status, headers = method(*args, _request_timeout=self.timeout, **kwargs)
            except API_EXCEPTIONS as exc:
                self._note(getattr(exc, "headers", None))
                raise self._classified(exc) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise classify(exc) from exc
            self._note(headers)
            return data, status

        return self.retry.call(CRM, kind, once)

    def _classified(self, exc: BaseException) -> CrmError:
        """classify(), with a DAILY 429's wait running to the portal's midnight in its time zone."""
        error = classify(exc)
        if isinstance(error, RateLimited) and error.code == "DAILY" \
                and not (getattr(exc, "headers", None) or {}).get("Retry-After"):
            error.retry_after = seconds_to_midnight(self.time_zone())
        return error

    def know_time_zone(self, zone: str) -> None:
        """The portal's time zone as the engine read it earlier (its ledger cache), so no process
        has to ask the account API again."""
        self._time_zone = zone

    def time_zone(self) -> str:
        """The portal's time zone (GET /account-info/v3/details), read once. The engine reads it with
        the schemas (connector/schemas.py), before any daily limit is hit: then this call is refused
        too and UTC is all that is left. An account API that does not answer is asked again at most
        once an hour (a quiet poll must not pay for it)."""
        if self._time_zone is not None:
            return self._time_zone
        if time.monotonic() < self._time_zone_retry_at:
            return "UTC"
        with self._lock:
            self._calls["account_details"] += 1
        try:
            answer = self._http.request("GET", f"{self._base_url}/account-info/v3/details",
                                        headers={"Authorization": f"Bearer {self._token}"},
                                        timeout=self.timeout, retries=False)
            body = json.loads(answer.data) if answer.status == 200 else {}
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            body = {"error": str(exc)}
        zone = body.get("timeZone") if isinstance(body, dict) else None
        if not zone:
            log.warning("HubSpot account details unreadable (%s); the daily limit is taken to reset at UTC "
                        "midnight until they are", body)
            self._time_zone_retry_at = time.monotonic() + 3600
            return "UTC"
        self._time_zone = str(zone)
        return self._time_zone

    def _note(self, headers: Any) -> None:
        if not headers:
            return
        limit, remaining = headers.get("X-HubSpot-RateLimit-Daily"), headers.get("X-HubSpot-RateLimit-Daily-Remaining")
        if limit and remaining and limit.isdigit() and remaining.isdigit():
            with self._lock:
                self._daily = (int(limit), int(remaining))

    def _pace_search(self) -> None:
        """Keep under HubSpot's per-second search limit (pacing, not retrying)."""
        if not self.search_per_second:
            return
        with self._lock:
            while True:
                now = time.monotonic()
                while self._searches and self._searches[0] <= now - SEARCH_WINDOW:
                    self._searches.popleft()
                if len(self._searches) < self.search_per_second:
                    self._searches.append(now)
                    return
                time.sleep(self._searches[0] + SEARCH_WINDOW - now + 0.001)

    def _search(self, object_name: str, body: dict[str, Any]) -> Any:
        """One search request, its answer read from the JSON itself: the client's models (a
        dateutil parse per timestamp) cost more CPU than refsync spends on the records."""
        self._pace_search()
        data, _status = self._call("search", _posted(self._search_api, "/crm/v3/objects/{objectType}/search"),
                                   object_name, body)
        return _search_answer(data)

    def _record(self, object_name: str, obj: Any, fields: Sequence[str]) -> CrmRecord:
        props = obj.properties or {}
        values: dict[str, Any] = {name: props.get(name) for name in fields}
        for name in EXTRA_FIELDS:
            values.setdefault(name, props.get(name))
        # the stamp the search filtered and sorted on, never the other one: mixing them skips
        # records (one ahead) or re-reads a page forever (one behind)
        modified = _moment(props.get(_modified_field(object_name))) or _moment(getattr(obj, "updated_at", None))
        return CrmRecord(object_name, str(obj.id), values, modified_at=modified,
                         owner_id=props.get("hubspot_owner_id") or None,
                         modified_by=props.get("hs_updated_by_user_id") or None)

    @staticmethod
    def _props(fields: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
        return list(dict.fromkeys([*fields, *EXTRA_FIELDS, "hs_lastmodifieddate", "lastmodifieddate", *extra]))

    # -- schema ----------------------------------------------------------------------------------
    def describe(self, object_name: str) -> ObjectSchema:
        data, _status = self._call("properties", self._properties.get_all_with_http_info, object_name)
        fields = {}
        for prop in data.results or []:
            meta = prop.modification_metadata
            writable = not (meta.read_only_value if meta is not None else False) and not prop.calculated
            unique = bool(prop.has_unique_value)
            fields[prop.name] = FieldSchema(
                name=prop.name, type=_field_type(prop), label=prop.label or "", updateable=writable,
                createable=writable, unique=unique, external_id=unique and prop.name != "hs_object_id",
                options=tuple(o.value for o in prop.options or []))
        return ObjectSchema(object_name, fields)

    def stages(self, object_name: str) -> list[Stage]:
        """The pipelines' stages, read from HubSpot on every call (the engine caches them in the
        ledger); the answer is kept to resolve stage ids in deal history."""
        data, _status = self._call("pipelines", self._pipelines.get_all_with_http_info, object_name)
        found = []
        for pipeline in data.results or []:
            for stage in pipeline.stages or []:
                meta = stage.metadata or {}
                found.append(Stage(pipeline.label, stage.label, stage.id,
                                   is_closed=str(meta.get("isClosed", "")).lower() == "true",
                                   is_won=str(meta.get("probability")) in ("1.0", "1") or stage.id == "closedwon",
                                   pipeline_id=str(pipeline.id)))
        self._stages[object_name] = found
        return list(found)

    def know_stages(self, object_name: str, stages: Sequence[Stage]) -> None:
        """Stages the engine read earlier (its ledger cache): deal history resolves ids with them
        instead of reading the pipelines again."""
        self._stages[object_name] = list(stages)

    def _known_stages(self, object_name: str) -> list[Stage]:
        """The stages known already (read this run or handed over by :meth:`know_stages`), else read."""
        if object_name not in self._stages:
            self.stages(object_name)
        return self._stages[object_name]

    # -- find ------------------------------------------------------------------------------------
    def find(self, object_name: str, match_field: str, values: Sequence[str],
             fields: Sequence[str]) -> dict[str, list[CrmRecord]]:
        fold = match_field == "email" or match_field.endswith("email")
        wanted: dict[str, str] = {}
        for value in values:
            if value not in (None, ""):
                wanted.setdefault(str(value).lower() if fold else str(value), str(value))
        found: dict[str, list[CrmRecord]] = {}
        props = self._props([*fields, match_field])
        for chunk in _chunks(list(wanted), IN_VALUES):
            filters = [{"propertyName": match_field, "operator": "IN", "values": list(chunk)}]
            for obj in self._search_all(object_name, [filters], "hs_object_id", props):
                raw = str((obj.properties or {}).get(match_field) or "")
                original = wanted.get(raw.lower() if fold else raw)
                if original is not None:
                    found.setdefault(original, []).append(self._record(object_name, obj, fields))
        return found

    def _search_all(self, object_name: str, groups: list[list[dict[str, Any]]], sort: str,
                    props: list[str]) -> Iterable[Any]:
        """Every result of a search ordered by ``sort``; restarts by id past the result cap."""
        after: str | None = None
        last_id = floor = 0  # floor: the id a restart past the cap continues after (offsets restart at 0)
        while True:
            filter_groups = [{"filters": g + ([{"propertyName": "hs_object_id", "operator": "GT",
                                                "value": str(floor)}] if floor else [])} for g in groups]
            body: dict[str, Any] = {"filterGroups": filter_groups, "properties": props, "limit": self.search_page,
                                    "sorts": [{"propertyName": sort, "direction": "ASCENDING"}]}
            if after:
                body["after"] = after
            page = self._search(object_name, body)
            for obj in page.results or []:
                last_id = max(last_id, int(obj.id))
                yield obj
            after = page.paging.next.after if page.paging and page.paging.next else None
            if after is None:
                return
            if int(after) >= self.search_cap:
                if sort != "hs_object_id":
                    raise TransientError(f"search past {self.search_cap} results needs a restartable sort", crm=CRM)
                after, floor = None, last_id

    # -- writes ----------------------------------------------------------------------------------
    def upsert(self, object_name: str, id_field: str, records: Sequence[RecordUpsert], *,
               save_duplicates: bool = False) -> list[WriteResult]:  # HubSpot has no duplicate rules to pass
        results: list[WriteResult] = []
        for chunk in _chunks(list(records), BATCH):
            inputs = [{"id": r.external_id, "idProperty": id_field,
                       "properties": {**{k: _value(v) for k, v in r.values.items()}, id_field: r.external_id}}
                      for r in chunk]
            keys = [r.external_id for r in chunk]
            answer = self._write("batch_upsert", _posted(self._batch, "/crm/v3/objects/{objectType}/batch/upsert"),
                                 object_name, inputs, keys)
            if isinstance(answer, list):
                results += answer
                continue
            by_key = {str((o.properties or {}).get(id_field)): o for o in answer.results or []}
            results += self._results(keys, by_key, self._errors(answer), created=lambda o: bool(o.new))
        return results

    def update(self, object_name: str, records: Sequence[RecordUpdate]) -> list[WriteResult]:
        results: list[WriteResult] = []
        for chunk in _chunks(list(records), BATCH):
            inputs = [{"id": r.record_id, "properties": {k: _value(v) for k, v in r.values.items()}} for r in chunk]
            keys = [r.record_id for r in chunk]
            answer = self._write("batch_update", _posted(self._batch, "/crm/v3/objects/{objectType}/batch/update"),
                                 object_name, inputs, keys)
            if isinstance(answer, list):
                results += answer
                continue
            by_key = {str(o.id): o for o in answer.results or []}
            results += self._results(keys, by_key, self._errors(answer), created=lambda o: False)
        return results

    def _write(self, kind: str, method: Callable[..., Any], object_name: str, inputs: list[dict[str, Any]],
               keys: list[str]) -> Any:
        """One batch write (``method`` answering JSON, read by :func:`_batch_answer`); a whole-batch 409
        (or a 400 on one record's value) becomes per-record results."""
        try:
            data, _status = self._call(kind, method, object_name, {"inputs": inputs})
            return _batch_answer(data)
        except CrmConfigError as exc:
            cause = exc.__cause__
            status = int(getattr(cause, "status", 0) or 0)
            if status == 409:
                error = RecordError(RecordErrorKind.CONFLICT, exc.code or "CONFLICT", exc.message)
            elif status == 400 and exc.code not in CONFIG_CODES and "idProperty" not in exc.message \
                    and "Too many inputs" not in exc.message:
                # HubSpot rejects the whole batch for one bad value without saying which input:
                # several records -> CONFLICT so the engine splits; one record -> rejected for good.
                kind_ = RecordErrorKind.CONFLICT if len(keys) > 1 else RecordErrorKind.REJECTED
                error = RecordError(kind_, exc.code or "VALIDATION_ERROR", exc.message)
            else:
                raise
            return [WriteResult(key, False, error=error) for key in keys]

    @staticmethod
    def _errors(answer: Any) -> dict[str, RecordError]:
        found: dict[str, RecordError] = {}
        for err in getattr(answer, "errors", None) or []:
            category = err.category or "ERROR"
            kind = ERROR_KINDS.get(category, RecordErrorKind.REJECTED)
            context = err.context or {}
            for key in context.get("ids") or context.get("id") or []:
                found[str(key)] = RecordError(kind, category, err.message or category)
        return found

    @staticmethod
    def _results(keys: list[str], by_key: dict[str, Any], errors: dict[str, RecordError],
                 created: Callable[[Any], bool]) -> list[WriteResult]:
        out = []
        for key in keys:
            obj = by_key.get(key)
            if obj is not None:
                out.append(WriteResult(key, True, record_id=str(obj.id), created=created(obj)))
            elif key in errors:
                out.append(WriteResult(key, False, error=errors[key]))
            else:
                out.append(WriteResult(key, False, error=RecordError(
                    RecordErrorKind.MISSING, "MISSING_FROM_RESULTS",
                    "HubSpot answered without this record (merged away or not written)")))
        return out

    # -- reads -----------------------------------------------------------------------------------
    def read(self, object_name: str, ids: Sequence[str], fields: Sequence[str]) -> dict[str, CrmRecord | None]:
        out: dict[str, CrmRecord | None] = {}
        props = self._props(fields)
        for chunk in _chunks(list(dict.fromkeys(str(i) for i in ids)), BATCH):
            answer, _status = self._call("batch_read", _json_answer(self._batch.read_with_http_info), object_name,
                                         {"inputs": [{"id": i} for i in chunk], "properties": props,
                                          "propertiesWithHistory": []}, archived=False)
            data = _batch_answer(answer)
            by_id = {str(o.id): o for o in data.results or []}
            gone = self._errors(data)
            for record_id in chunk:
                if record_id in by_id:
                    out[record_id] = self._record(object_name, by_id[record_id], fields)
                elif record_id in gone:
                    out[record_id] = None
                else:  # left out without an error: merged away; the old id reads as the survivor
                    out[record_id] = self._get(object_name, record_id, props, fields)
        return out

    def _get(self, object_name: str, record_id: str, props: list[str], fields: Sequence[str]) -> CrmRecord | None:
        try:
            data, _status = self._call("object_get", self._basic.get_by_id_with_http_info, object_name, record_id,
                                       properties=props)
        except CrmConfigError as exc:
            if getattr(exc.__cause__, "status", None) == 404:
                return None
            raise
        return self._record(object_name, data, fields)

    # -- changes ---------------------------------------------------------------------------------
    def change_pages(self, object_name: str, since: datetime, fields: Sequence[str], *,
                     handled: Mapping[str, datetime] | None = None,
                     poll_state: Mapping[str, Any] | None = None,
                     search_from: datetime | None = None) -> Iterator[ChangeSet]:
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        lower = since - self.lookback  # stage history and deletions reach back to here
        listed_from = lower if search_from is None else max(lower, _moment(search_from) or lower)
        extra = DEAL_FIELDS if object_name == "deals" else ()
        props = self._props(fields, extra)
        cursor = since
        answers = self._changed_since(object_name, _ms(listed_from), props, [*fields, *extra])
        for records, _last in joined_pages(answers, self.page_records):
            cursor = max([cursor, *(r.modified_at for r in records if r.modified_at)])
            changes, stage_changes = self._page_changes(object_name, records, lower, handled)
            if changes:
                yield ChangeSet(changes, stage_changes, cursor)
        due = self._deletions_due(object_name, lower, poll_state)
        if due is not None:
            deleted, state = due
            yield ChangeSet(unhandled(deleted, handled), [], cursor, poll_state=state)

    def _page_changes(self, object_name: str, records: list[CrmRecord], lower: datetime,
                      handled: Mapping[str, datetime] | None) -> tuple[list[Change], list[StageChange]]:
        """The page's changes, less those already handled; details (associations, stage history)
        are read only for the records that remain."""
        records = [r for r in records if not handled or handled.get(r.id) != (r.modified_at or lower)]
        if object_name == "deals" and records:
            contacts = self._associated(object_name, "contacts", [r.id for r in records])
            for rec in records:
                rec.fields["associations.contacts"] = contacts.get(rec.id, [])
        changes: list[Change] = []
        for rec in records:
            at = rec.modified_at or lower
            changes.append(Change(ChangeKind.UPDATED, object_name, rec.id, at, record=rec))
            for old in str(rec.fields.get("hs_merged_object_ids") or "").split(";"):
                if old.strip() and old.strip() != rec.id:
                    changes.append(Change(ChangeKind.MERGED, object_name, old.strip(), at, merged_into=rec.id))
        stage_changes = self._stage_history(object_name, [r.id for r in records], lower) \
            if object_name == "deals" and records else []
        return changes, stage_changes

    def _changed_since(self, object_name: str, lower_ms: int, props: list[str],
                       fields: Sequence[str]) -> Iterator[list[CrmRecord]]:
        """Records modified at or after ``lower_ms``, ascending, one search answer at a time.

        Keyset paging, never an offset: every request starts again from the last timestamp seen
        (records already read at that timestamp are skipped). A record modified while we read moves
        later and is read again instead of shifting an unread one below the offset, and the search's
        10,000-result cap never applies. When one timestamp fills a whole answer, its records are
        read by id before moving past it, so any number of ties is read exactly once. Each answer
        becomes CrmRecords at once: the client's model objects weigh several times more."""
        modified = _modified_field(object_name)
        op, stamp = "GTE", lower_ms
        seen_at_stamp: set[str] = set()
        while True:
            body: dict[str, Any] = {
                "filterGroups": [{"filters": [{"propertyName": modified, "operator": op, "value": str(stamp)}]}],
                "sorts": [{"propertyName": modified, "direction": "ASCENDING"}],
                "properties": props, "limit": self.search_page}
            answer = self._search(object_name, body)
            records = [self._record(object_name, obj, fields) for obj in answer.results or []]
            if not records:
                return
            stamps = [_ms(r.modified_at) if r.modified_at else stamp for r in records]
            fresh = [r for r, at in zip(records, stamps, strict=True) if at != stamp or r.id not in seen_at_stamp]
            if fresh:
                yield fresh
            if not (answer.paging and answer.paging.next):
                return
            top = max(stamps)
            if top > stamp:
                op, stamp = "GTE", top
                seen_at_stamp = {r.id for r, at in zip(records, stamps, strict=True) if at == top}
                continue
            # the whole answer shares one timestamp: read all of it by id, then go past it
            seen_at_stamp |= {r.id for r in records}
            ties = [{"propertyName": modified, "operator": "EQ", "value": str(stamp)}]
            rest: list[CrmRecord] = []
            for obj in self._search_all(object_name, [ties], "hs_object_id", props):
                if str(obj.id) not in seen_at_stamp:
                    rest.append(self._record(object_name, obj, fields))
                    if len(rest) >= self.search_page:
                        yield rest
                        rest = []
            if rest:
                yield rest
            op, seen_at_stamp = "GT", set()

    def _deletions_due(self, object_name: str, lower: datetime, poll_state: Mapping[str, Any] | None
                       ) -> tuple[list[Change], dict[str, str]] | None:
        """Archived records since the last check, and the position to keep once they are handled;
        None while the last check is more recent than ``deletion_check_every``.

        The position (when the last check ran, and from where it listed) comes from the caller's
        ``poll_state`` (the ledger, so a new process does not list archived records again), or from
        this adapter's memory when the caller keeps none."""
        state = poll_state if poll_state is not None else self._deletions_checked.get(object_name)
        now = datetime.now(UTC)
        checked_at = _moment((state or {}).get("deletions_checked_at"))
        checked_from = _moment((state or {}).get("deletions_since"))
        if checked_at is not None and timedelta(0) <= now - checked_at < self.deletion_check_every:
            return None
        since = min(lower, checked_from) if checked_from is not None else lower
        found = self._deleted(object_name, since)
        # the next check starts where this one's look-back began: nothing archived since is missed
        position = {"deletions_checked_at": now.isoformat(), "deletions_since": lower.isoformat()}
        if poll_state is None:
            self._deletions_checked[object_name] = position
        return found, position

    def _deleted(self, object_name: str, lower: datetime) -> list[Change]:
        """Archived records (HubSpot keeps them 90 days) archived since ``lower``."""
        out: list[Change] = []
        after: str | None = None
        while True:
            kwargs: dict[str, Any] = {"archived": True, "limit": 100, "properties": ["hs_object_id"]}
            if after:
                kwargs["after"] = after
            data, _status = self._call("object_list", self._basic.get_page_with_http_info, object_name, **kwargs)
            for obj in data.results or []:
                at = _moment(obj.archived_at) or _moment(obj.updated_at)
                if at is not None and at >= lower:
                    out.append(Change(ChangeKind.DELETED, object_name, str(obj.id), at))
            after = data.paging.next.after if data.paging and data.paging.next else None
            if after is None:
                return out

    def _associated(self, from_obj: str, to_obj: str, ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for chunk in _chunks(ids, BATCH):
            data, _status = self._call("associations", self._associations.get_page_with_http_info, from_obj, to_obj,
                                       {"inputs": [{"id": i} for i in chunk]})
            for item in data.results or []:
                out[str(item._from.id)] = [str(t.to_object_id) for t in item.to or []]
        return out

    def _stage_history(self, object_name: str, ids: list[str], lower: datetime) -> list[StageChange]:
        """Every stage move since ``lower``, at the time HubSpot recorded it (``propertiesWithHistory``
        of ``dealstage``: internal stage ids, resolved per pipeline id; crm-api/hubspot/README.md)."""
        known = self._known_stages(object_name)
        by_pipeline = {(s.pipeline_id, s.internal_id): s for s in known}
        by_id = {s.internal_id: s for s in known}
        out: list[StageChange] = []
        for chunk in _chunks(ids, HISTORY_BATCH):
            answer, _status = self._call("batch_read", _json_answer(self._batch.read_with_http_info), object_name,
                                         {"inputs": [{"id": i} for i in chunk], "properties": list(DEAL_FIELDS),
                                          "propertiesWithHistory": ["dealstage"]}, archived=False)
            for obj in _batch_answer(answer).results:
                props = obj.properties or {}
                try:
                    amount = float(props["amount"]) if props.get("amount") else None
                except ValueError:
                    amount = None
                # HubSpot lists history newest first; same-millisecond moves keep that order reversed
                for entry in reversed(obj.properties_with_history.get("dealstage") or []):
                    at, value = _moment(entry.get("timestamp")), entry.get("value")
                    if not value or at is None or at < lower:
                        continue
                    who = entry.get("updatedByUserId")
                    stage = by_pipeline.get((str(props.get("pipeline") or ""), value)) or by_id.get(value)
                    out.append(StageChange(str(obj.id), stage.label if stage else value, at, amount=amount,
                                           close_date=props.get("closedate") or None,
                                           changed_by=str(who) if who is not None else entry.get("sourceId"),
                                           pipeline=stage.pipeline if stage else None))
        return sorted(out, key=lambda s: s.at)  # stable: per-record order survives equal timestamps

    # -- budget ----------------------------------------------------------------------------------
    def budget(self) -> ApiBudget:
        with self._lock:
            calls = dict(self._calls)
            daily = self._daily
        if daily is None:
            return ApiBudget(calls)
        limit, remaining = daily
        return ApiBudget(calls, used_today=max(limit - remaining, 0), limit_today=limit)
