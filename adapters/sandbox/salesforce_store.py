"""The Salesforce emulator's org state: records, ids, clock, writes with per-record errors, queries.

Everything here is plain Python under one re-entrant lock; the HTTP layer
(:mod:`adapters.sandbox.salesforce_emulator`) only routes, authenticates, counts and injects faults.
Error bodies follow the recorded / documented ones in ``crm-api/salesforce`` (see the README
there): whole-request errors raise :class:`SfError` (a JSON list of ``{message, errorCode}``),
per-record errors come back as ``{statusCode, message, fields}`` inside collection results.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from refsync.adapters.sandbox.clock import Clock
from refsync.adapters.sandbox.salesforce_schema import KEY_PREFIX, STAGES, OrgSchema
from refsync.adapters.sandbox.salesforce_soql import (
    Compare,
    SoqlError,
    condition_fields,
    matches,
    parse,
    parse_datetime,
    sort_key,
)

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
ASSIGNMENT_QUEUE_ID = "00G5g000004AsgnQAA"  # the queue the emulated lead assignment rule hands leads to
INTEGRATION_USER = "integration"
MERGEABLE = ("Lead", "Contact", "Account")
REQUIRED = {"Lead": ("LastName", "Company"), "Contact": ("LastName",), "Account": ("Name",),
            "Opportunity": ("Name", "StageName", "CloseDate")}
NOT_FOUND = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
# The standard lead duplicate rule (active in every new org): a new Lead whose email matches a Lead
# or a Contact is blocked over the API unless the request says Sforce-Duplicate-Rule-Header:
# allowSave=true (help.salesforce.com "Standard Duplicate Rules"; developer.salesforce.com REST API
# "Duplicate Rule Header"). Emulated on create; the rule's edit action is not.
DUPLICATE_RULES = {"Lead": ("Standard_Lead_Duplicate_Rule", (("Lead", "Standard_Lead_Match_Rule_v1_0"),
                                                             ("Contact", "Standard_Contact_Match_Rule_v1_1")))}
DUPLICATE_MESSAGE = "Use one of these records?"


class SfError(Exception):
    """A whole-request error: HTTP ``status`` and Salesforce's JSON list body."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: list[dict[str, Any]] = [{"message": message, "errorCode": code}]
        if fields is not None:
            self.body[0]["fields"] = fields


_SF_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?\Z")


def record_error(code: str, message: str, fields: Iterable[str] = ()) -> dict[str, Any]:
    return {"statusCode": code, "message": message, "fields": list(fields)}


def checksum_id(id15: str) -> str:
    """The 18-character form of a 15-character Salesforce id (case-safe suffix)."""
    suffix = ""
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        bits = sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")
        suffix += _SUFFIX[bits]
    return id15 + suffix


def format_stamp(ms: int) -> str:
    """Salesforce's datetime format, millisecond precision: ``2026-11-24T20:15:50.123+0000``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}+0000"


class OrgStore:
    """One emulated org. All public methods take the lock; callers never touch ``records`` directly."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.schema = OrgSchema()
        self._reset()

    def _reset(self) -> None:
        self.schema = OrgSchema()
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.schema.objects()}
        self._counter = 0
        self.clock = Clock(strict=True)
        self._indexes = {}
        self.users: dict[str, str] = {}
        self.deleted_at: dict[str, int] = {}
        self._seed_stages()

    def _seed_stages(self) -> None:
        """The org's OpportunityStage rows: what the adapter's ``stages()`` reads closed/won from."""
        stamp = format_stamp(self.now_ms())
        for order, (label, probability, closed, won) in enumerate(STAGES, start=1):
            sid = self.new_id("OpportunityStage")
            self.records["OpportunityStage"][sid] = {
                "Id": sid, "MasterLabel": label, "ApiName": label, "IsActive": True, "IsClosed": closed,
                "IsWon": won, "SortOrder": order, "DefaultProbability": float(probability), "IsDeleted": False,
                "CreatedDate": stamp, "CreatedById": None, "LastModifiedDate": stamp, "LastModifiedById": None,
                "SystemModstamp": stamp}

    def reset(self) -> None:
        with self.lock:
            self._reset()

    # ---- ids, clock, users -------------------------------------------------------------------
    def new_id(self, obj: str) -> str:
        self._counter += 1
        n, digits = self._counter, ""
        while n or len(digits) < 6:
            n, rem = divmod(n, 62)
            digits = _B62[rem] + digits
        return checksum_id(KEY_PREFIX[obj] + "5g" + "0000" + digits[-6:])

    _indexes: dict[tuple[str, str], tuple[tuple[int, int, int], dict[str, list[dict[str, Any]]]]]

    def now_ms(self) -> int:
        """Strictly increasing milliseconds (two changes never share a SystemModstamp) unless held."""
        return self.clock.now_ms()

    def user_id(self, name: str) -> str:
        """The User id of ``name`` (created on first use), so LastModifiedById names a real user."""
        if name.startswith("005") and len(name) in (15, 18):
            return name
        if name not in self.users:
            stamp = format_stamp(self.now_ms())
            uid = self.new_id("User")
            self.users[name] = uid
            self.records["User"][uid] = {
                "Id": uid, "Name": name, "Username": f"{name}@sandbox.refsync.example", "IsActive": True,
                "IsDeleted": False, "CreatedDate": stamp, "CreatedById": uid, "LastModifiedDate": stamp,
                "LastModifiedById": uid, "SystemModstamp": stamp}
        return self.users[name]

    # ---- lookups -----------------------------------------------------------------------------
    def object_name(self, name: str) -> str:
        canonical = self.schema.object_name(name)
        if canonical is None:
            raise SfError(404, "NOT_FOUND", NOT_FOUND[0]["message"])
        return canonical

    def check_id(self, obj: str, record_id: Any, label: str | None = None) -> str:
        """The 18-char id, or MALFORMED_ID (the sfdocs body) when it is not an id of ``obj``."""
        text = str(record_id or "")
        if len(text) not in (15, 18) or not text.isalnum() or not text.startswith(KEY_PREFIX[obj]):
            raise SfError(400, "MALFORMED_ID", f"{label or obj} ID: id value of incorrect type: {text}", ["Id"])
        return checksum_id(text[:15])

    def find(self, obj: str, record_id: str) -> dict[str, Any] | None:
        return self.records[obj].get(record_id)

    def live(self, obj: str) -> list[dict[str, Any]]:
        return [r for r in self.records[obj].values() if not r.get("IsDeleted")]

    def index(self, obj: str, field: str) -> dict[str, list[dict[str, Any]]]:
        """Records of ``obj`` by the case-folded value of ``field``, deleted ones included.

        Every change takes a reading of the clock, so an index built at the current tick is
        current; it is rebuilt at most once per request, keeping a 100k-record org linear."""
        version = (self.clock.ticks, id(self.records[obj]), len(self.records[obj]))
        cached = self._indexes.get((obj, field))
        if cached is not None and cached[0] == version:
            return cached[1]
        found: dict[str, list[dict[str, Any]]] = {}
        for rec in self.records[obj].values():
            if rec.get(field) is not None:
                found.setdefault(str(rec[field]).casefold(), []).append(rec)
        self._indexes[(obj, field)] = (version, found)
        return found

    def by_external_id(self, obj: str, field: str, value: Any) -> dict[str, Any] | None:
        for rec in self.index(obj, field).get(str(value).casefold(), []):
            if not rec.get("IsDeleted") and rec.get(field) is not None:
                return rec
        return None

    # ---- value checks --------------------------------------------------------------------------
    def canonical_fields(self, obj: str, values: dict[str, Any]) -> dict[str, Any]:
        """Field names made canonical; an unknown one fails the whole request, as Salesforce does."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name == "attributes":
                continue
            field = self.schema.field(obj, name)
            if field is None:
                raise SfError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj}")
            out[field["name"]] = self._convert(field, value)
        return out

    @staticmethod
    def _convert(field: dict[str, Any], value: Any) -> Any:
        if value is None or value == "":
            return None
        kind = field["type"]
        try:
            if kind in ("datetime", "date") and not _SF_DATE.match(str(value)):
                # Salesforce parses only ISO 8601 with a four-digit year; anything else (``1-01-01T..``)
                # fails the whole request with JSON_PARSER_ERROR, in sObject Collections too
                # (crm-api/salesforce/README.md): raised here, before any record of the request is saved.
                raise ValueError(value)
            if kind == "datetime":
                return format_stamp(int(parse_datetime(str(value)).timestamp() * 1000))
            if kind == "date":
                return date.fromisoformat(str(value)[:10]).isoformat()
            if kind in ("currency", "double", "percent"):
                return float(value)
            if kind == "boolean":
                if isinstance(value, bool):
                    return value
                raise ValueError(value)
        except ValueError as exc:
            raise SfError(400, "JSON_PARSER_ERROR",
                          f"Cannot deserialize instance of {kind} from VALUE_STRING value {value} or request "
                          "may be missing a required field") from exc
        return value

    def _record_problems(self, obj: str, values: dict[str, Any], creating: bool) -> dict[str, Any] | None:
        readonly = [n for n in values if n != "Id" and not self.schema.fields(obj)[n]["createable" if creating
                                                                                      else "updateable"]]
        if readonly:
            return record_error(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(readonly)}. Please check the security settings of "
                "this field and verify that it is read/write for your profile or permission set.", readonly)
        for name, value in values.items():
            field = self.schema.fields(obj)[name]
            length = field.get("length") or 0
            if isinstance(value, str) and length and field["type"] in ("string", "email", "phone") \
                    and len(value) > length:
                return record_error("STRING_TOO_LONG", f"{field['label']}: data value too large: {value} "
                                    f"(max length={length})", [name])
            if field["type"] == "email" and value is not None and "@" not in str(value):
                return record_error("INVALID_EMAIL_ADDRESS", f"{field['label']}: invalid email address: {value}",
                                    [name])
        return None

    def _duplicate(self, obj: str, values: dict[str, Any], own_id: str | None,
                   pending: dict[tuple[str, str], str]) -> dict[str, Any] | None:
        for name, value in values.items():
            field = self.schema.fields(obj)[name]
            if not field.get("unique") or value is None:
                continue
            other = self.by_external_id(obj, name, value)
            holder = other["Id"] if other else pending.get((name, str(value).casefold()))
            if holder and holder != own_id:
                return record_error("DUPLICATE_VALUE", f"duplicate value found: {name} duplicates value on record "
                                    f"with id: {holder}", [])
        return None

    def duplicate_rule_error(self, obj: str, values: dict[str, Any], version: str) -> dict[str, Any] | None:
        """DUPLICATES_DETECTED when a new ``obj`` matches existing records under the org's standard
        duplicate rule, else None.

        The per-record error is the documented collections one (``statusCode``, ``message``
        "Use one of these records?", ``fields`` []: REST API guide, "allOrNone Parameters in
        Composite and Collections Requests") carrying the DuplicateError's ``duplicateResult``
        (SOAP API "DuplicateError" / "DuplicateResult"; the record shape as Salesforce serialises
        it over REST: crm-api/salesforce/README.md, tests/adapters/reference/README.md)."""
        rule = DUPLICATE_RULES.get(obj)
        email = str(values.get("Email") or "").casefold()
        if rule is None or not email:
            return None
        name, matchers = rule
        results = []
        for other, match_rule in matchers:
            found = [r for r in self.index(other, "Email").get(email, []) if not r.get("IsDeleted")]
            if not found:
                continue
            results.append({
                "entityType": other, "errors": [], "matchEngine": "FuzzyMatchEngine",
                "matchRecords": [{"additionalInformation": [], "fieldDiffs": [], "matchConfidence": 100.0,
                                  "record": {"attributes": {"type": other, "url": f"/services/data/v{version}/"
                                                            f"sobjects/{other}/{r['Id']}"}, "Id": r["Id"]}}
                                 for r in found],
                "rule": match_rule, "size": len(found), "success": True})
        if not results:
            return None
        error = record_error("DUPLICATES_DETECTED", DUPLICATE_MESSAGE, [])
        error["duplicateResult"] = {"allowSave": True, "duplicateRule": name, "duplicateRuleEntityType": obj,
                                    "errorMessage": DUPLICATE_MESSAGE, "matchResults": results}
        return error

    # ---- applying changes ----------------------------------------------------------------------
    def _stamp(self, rec: dict[str, Any], by: str, *, user_edit: bool = True) -> int:
        ms = self.now_ms()
        stamp = format_stamp(ms)
        rec["SystemModstamp"] = stamp
        if user_edit:
            rec["LastModifiedDate"] = stamp
            rec["LastModifiedById"] = self.user_id(by)
        return ms

    def _apply(self, obj: str, rec: dict[str, Any], values: dict[str, Any], by: str, auto_assign: bool) -> None:
        before = {k: rec.get(k) for k in ("StageName", "Amount", "CloseDate", "Probability")}
        rec.update(values)
        if obj in ("Lead", "Contact") and ("FirstName" in values or "LastName" in values):
            rec["Name"] = " ".join(p for p in (rec.get("FirstName"), rec.get("LastName")) if p)
        if obj == "Lead" and auto_assign:
            rec["OwnerId"] = ASSIGNMENT_QUEUE_ID
        if obj == "Opportunity":
            self._derive_stage(rec, explicit_probability="Probability" in values)
            after = {k: rec.get(k) for k in before}
            if after != before:
                self._history(rec, by)
        self._stamp(rec, by)

    @staticmethod
    def _derive_stage(rec: dict[str, Any], explicit_probability: bool) -> None:
        for label, probability, closed, won in STAGES:
            if label == rec.get("StageName"):
                rec["IsClosed"], rec["IsWon"] = closed, won
                if not explicit_probability:
                    rec["Probability"] = float(probability)

    def _history(self, opp: dict[str, Any], by: str) -> None:
        hid = self.new_id("OpportunityHistory")
        stamp = format_stamp(self.now_ms())
        self.records["OpportunityHistory"][hid] = {
            "Id": hid, "OpportunityId": opp["Id"], "StageName": opp.get("StageName"), "Amount": opp.get("Amount"),
            "Probability": opp.get("Probability"), "CloseDate": opp.get("CloseDate"), "CreatedDate": stamp,
            "CreatedById": self.user_id(by), "SystemModstamp": stamp, "IsDeleted": False}

    def _new_record(self, obj: str, owner_id: str | None, by: str) -> dict[str, Any]:
        rid = self.new_id(obj)
        stamp = format_stamp(self.now_ms())
        rec: dict[str, Any] = {name: None for name in self.schema.fields(obj)}
        for name, field in self.schema.fields(obj).items():
            if field["type"] == "boolean":
                rec[name] = False
        rec.update(Id=rid, IsDeleted=False, CreatedDate=stamp, CreatedById=self.user_id(by),
                   OwnerId=owner_id or self.user_id(by))
        if obj == "Lead":
            rec["Status"] = "Open - Not Contacted"
        if obj == "Opportunity" and "CurrencyIsoCode" in rec:
            rec["CurrencyIsoCode"] = "USD"
        return rec

    # ---- API writes (sObject Collections) -------------------------------------------------------
    def collection_update(self, records: list[dict[str, Any]], all_or_none: bool, auto_assign: bool,
                          lock: Callable[[], bool]) -> list[dict[str, Any]]:
        """``PATCH composite/sobjects``: update by id, results in request order."""
        with self.lock:
            plans: list[tuple[str, dict[str, Any], dict[str, Any]] | dict[str, Any]] = []
            pending: dict[tuple[str, str], str] = {}
            for raw in records:
                obj = self.object_name(str((raw.get("attributes") or {}).get("type") or ""))
                values = self.canonical_fields(obj, raw)
                record_id = values.pop("Id", None) or raw.get("id")
                plans.append(self._plan_update(obj, record_id, values, pending, lock))
            return self._commit(plans, all_or_none, auto_assign, upsert=False)

    def _plan_update(self, obj: str, record_id: Any, values: dict[str, Any],
                     pending: dict[tuple[str, str], str], lock: Callable[[], bool]
                     ) -> tuple[str, dict[str, Any], dict[str, Any]] | dict[str, Any]:
        if not record_id:
            return record_error("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
        try:
            rid = self.check_id(obj, record_id)
        except SfError as exc:
            return record_error("MALFORMED_ID", exc.body[0]["message"], ["Id"])
        rec = self.find(obj, rid)
        if rec is None:
            return record_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])
        if rec.get("IsDeleted"):
            return record_error("ENTITY_IS_DELETED", "entity is deleted", [])
        if obj == "Lead" and rec.get("IsConverted"):
            return record_error("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", [])
        problem = self._record_problems(obj, values, creating=False) or self._duplicate(obj, values, rid, pending)
        if problem:
            return problem
        if lock():
            return record_error("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 "
                                f"records: {rid}", [])
        for name, value in values.items():
            if self.schema.fields(obj)[name].get("unique") and value is not None:
                pending[(name, str(value).casefold())] = rid
        return (obj, rec, values)

    def collection_upsert(self, obj_name: str, ext_field: str, records: list[dict[str, Any]], all_or_none: bool,
                          auto_assign: bool, lock: Callable[[], bool], *, allow_save: bool = False,
                          version: str = "59.0") -> list[dict[str, Any]]:
        """``PATCH composite/sobjects/{Obj}/{ExtIdField}``: results add ``created``. A create the
        org's duplicate rule blocks fails DUPLICATES_DETECTED unless ``allow_save``."""
        with self.lock:
            obj = self.object_name(obj_name)
            field = self.schema.field(obj, ext_field)
            if field is None:
                raise SfError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: "
                              f"{ext_field}")
            if not (field.get("externalId") or field["name"] == "Id"):
                raise SfError(400, "INVALID_FIELD", f"Field {field['name']} is not an external id field")
            ext = field["name"]
            seen: dict[str, int] = {}
            for raw in records:
                key = str(raw.get(ext) or raw.get(ext_field) or "").casefold()
                if key:
                    seen[key] = seen.get(key, 0) + 1
            plans: list[Any] = []
            pending: dict[tuple[str, str], str] = {}
            for raw in records:
                values = self.canonical_fields(obj, raw)
                key = values.pop(ext, None) if ext == "Id" else values.get(ext)  # type: ignore[assignment]
                if key is None and ext == "Id":  # upsert on Id without one creates (as recorded)
                    plans.append(self._plan_create(obj, values, pending, lock))
                elif key is None:
                    plans.append(record_error("MISSING_ARGUMENT", f"{ext} not specified", [ext]))
                elif seen[str(key).casefold()] > 1:
                    plans.append(record_error("DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {key}",
                                              [ext]))
                elif (existing := self.by_external_id(obj, ext, key)) is not None:
                    values.pop(ext, None)
                    plans.append(self._plan_update(obj, existing["Id"], values, pending, lock))
                elif not allow_save and (blocked := self.duplicate_rule_error(obj, values, version)) is not None:
                    plans.append(blocked)
                else:
                    plans.append(self._plan_create(obj, values, pending, lock))
            return self._commit(plans, all_or_none, auto_assign, upsert=True)

    def _plan_create(self, obj: str, values: dict[str, Any], pending: dict[tuple[str, str], str],
                     lock: Callable[[], bool]) -> tuple[str, None, dict[str, Any]] | dict[str, Any]:
        missing = [name for name in REQUIRED.get(obj, ()) if values.get(name) in (None, "")]
        if missing:
            return record_error("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                                missing)
        problem = self._record_problems(obj, values, creating=True) or self._duplicate(obj, values, None, pending)
        if problem:
            return problem
        if lock():
            return record_error("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 "
                                "records: (new)", [])
        return (obj, None, values)

    def _commit(self, plans: list[Any], all_or_none: bool, auto_assign: bool, upsert: bool) -> list[dict[str, Any]]:
        failed = any(isinstance(p, dict) for p in plans)
        results: list[dict[str, Any]] = []
        for plan in plans:
            if isinstance(plan, dict):
                results.append({"success": False, "errors": [plan]})
                continue
            obj, rec, values = plan
            if failed and all_or_none:
                entry: dict[str, Any] = {"success": False, "errors": [record_error(
                    "ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all records were valid "
                    "and the request was using AllOrNone header", [])]}
                if rec is not None:
                    entry["id"] = rec["Id"]
                results.append(entry)
                continue
            created = rec is None
            if rec is None:
                rec = self._new_record(obj, None, INTEGRATION_USER)
                self.records[obj][rec["Id"]] = rec
            self._apply(obj, rec, values, INTEGRATION_USER, auto_assign)
            result: dict[str, Any] = {"id": rec["Id"], "success": True, "errors": []}
            if upsert:
                result["created"] = created
            results.append(result)
        return results

    # ---- single-record API ----------------------------------------------------------------------
    def get_live(self, obj: str, record_id: str) -> dict[str, Any]:
        rid = self.check_id(obj, record_id)
        rec = self.find(obj, rid)
        if rec is None:
            raise SfError(404, "NOT_FOUND", NOT_FOUND[0]["message"])
        if rec.get("IsDeleted"):
            raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
        return rec

    def sobject_patch(self, obj: str, record_id: str, raw: dict[str, Any], auto_assign: bool) -> None:
        with self.lock:
            rec = self.get_live(obj, record_id)
            values = self.canonical_fields(obj, raw)
            values.pop("Id", None)
            plan = self._plan_update(obj, rec["Id"], values, {}, lambda: False)
            if isinstance(plan, dict):
                raise SfError(400, plan["statusCode"], plan["message"], plan["fields"])
            self._commit([plan], True, auto_assign, upsert=False)

    def sobject_delete(self, obj: str, record_id: str) -> None:
        with self.lock:
            rec = self.get_live(obj, record_id)
            self._delete(rec)

    def _delete(self, rec: dict[str, Any], master: str | None = None, by: str = INTEGRATION_USER) -> None:
        rec["IsDeleted"] = True
        if "MasterRecordId" in rec or master:
            rec["MasterRecordId"] = master
        self.deleted_at[rec["Id"]] = self._stamp(rec, by)

    # ---- queries ----------------------------------------------------------------------------
    def query(self, soql: str, include_deleted: bool) -> tuple[str, list[dict[str, Any]], list[str]]:
        """Run SOQL; returns (object, matching records, selected canonical field names)."""
        with self.lock:
            query = parse(soql)
            obj = self.schema.object_name(query.object)
            if obj is None:
                raise SoqlError("INVALID_TYPE", f"sObject type '{query.object}' is not supported. If you are "
                                "attempting to use a custom object, be sure to append the '__c' after the entity "
                                "name. Please reference your WSDL or the describe call for the appropriate names.")

            def canonical(name: str) -> str:
                field = self.schema.field(obj, name)
                if field is None:
                    raise SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{obj}'. If you are "
                                    "attempting to use a custom field, be sure to append the '__c' after the custom "
                                    "field name. Please reference your WSDL or the describe call for the appropriate "
                                    "names.")
                return str(field["name"])

            fields = [canonical(f) for f in query.fields]
            for name in condition_fields(query.where) + [o[0] for o in query.order]:
                canonical(name)
            rename = {name.lower(): canonical(name) for name in condition_fields(query.where)}
            where = _rename(query.where, rename)

            def type_of(name: str) -> str:
                return self.schema.type_of(obj, name)

            candidates: Any = self.records[obj].values()
            if isinstance(where, Compare) and where.op in ("=", "in") and all(v.kind == "string" for v in where.values):
                # Equality on text: only the records indexed under one of the values can match.
                idx = self.index(obj, where.field)
                candidates = [r for v in dict.fromkeys(str(lit.value).casefold() for lit in where.values)
                              for r in idx.get(v, [])]
            rows = [r for r in candidates
                    if (include_deleted or not r.get("IsDeleted")) and matches(where, r, type_of)]
            for name, desc, _nulls in reversed(query.order):
                field_name = canonical(name)
                def order(row: dict[str, Any], f: str = field_name) -> Any:
                    return sort_key(row.get(f), type_of(f))

                rows.sort(key=order, reverse=desc)
            if query.limit is not None:
                rows = rows[:query.limit]
            return obj, [dict(r) for r in rows], fields

    def updated_ids(self, obj: str, start: datetime, end: datetime) -> list[str]:
        with self.lock:
            return [r["Id"] for r in self.live(obj)
                    if start <= parse_datetime(r["SystemModstamp"]) <= end]

    def deleted_records(self, obj: str, start: datetime, end: datetime) -> list[dict[str, str]]:
        with self.lock:
            out = []
            for rec in self.records[obj].values():
                at = self.deleted_at.get(rec["Id"])
                if rec.get("IsDeleted") and at is not None and start.timestamp() * 1000 <= at <= end.timestamp() * 1000:
                    out.append({"id": rec["Id"], "deletedDate": format_stamp(at)})
            return out

    # ---- admin plane --------------------------------------------------------------------------
    def admin_record(self, obj: str, record_id: str) -> dict[str, Any]:
        obj = self.object_name(obj)
        rec = self.find(obj, checksum_id(str(record_id)[:15]))
        if rec is None or rec.get("IsDeleted"):
            raise KeyError(f"{obj} {record_id} does not exist")
        return rec

    def create_record(self, obj: str, fields: dict[str, Any], owner_id: str | None, by: str) -> str:
        with self.lock:
            obj = self.object_name(obj)
            values = self.canonical_fields(obj, fields)
            rec = self._new_record(obj, owner_id, by)
            if obj == "Opportunity":
                values.setdefault("StageName", STAGES[0][0])
                values.setdefault("CloseDate", (date.today() + timedelta(days=30)).isoformat())
            self.records[obj][rec["Id"]] = rec
            self._apply(obj, rec, values, by, auto_assign=False)
            return str(rec["Id"])

    def set_field(self, obj: str, record_id: str, field: str, value: Any, by: str) -> None:
        with self.lock:
            rec = self.admin_record(obj, record_id)
            obj = self.object_name(obj)
            self._apply(obj, rec, self.canonical_fields(obj, {field: value}), by, auto_assign=False)

    def delete_record(self, obj: str, record_id: str, by: str) -> None:
        with self.lock:
            self._delete(self.admin_record(obj, record_id), by=by)

    def merge(self, obj: str, survivor_id: str, loser_id: str, by: str) -> str:
        with self.lock:
            obj = self.object_name(obj)
            if obj not in MERGEABLE:
                raise ValueError(f"{obj} records cannot be merged in Salesforce")
            survivor, loser = self.admin_record(obj, survivor_id), self.admin_record(obj, loser_id)
            if survivor is loser:
                raise ValueError("cannot merge a record into itself")
            self._delete(loser, master=survivor["Id"], by=by)
            self._stamp(survivor, by)
            return str(survivor["Id"])

    def convert_lead(self, lead_id: str, opportunity_name: str | None, by: str) -> dict[str, str]:
        with self.lock:
            lead = self.admin_record("Lead", lead_id)
            if lead.get("IsConverted"):
                raise ValueError(f"lead {lead_id} is already converted")
            owner = lead.get("OwnerId")
            if not str(owner or "").startswith("005"):
                owner = self.user_id(by)
            company = lead.get("Company") or lead.get("LastName") or "Account"
            account = self.create_record("Account", {"Name": company}, owner, by)
            contact = self.create_record("Contact", {"FirstName": lead.get("FirstName"), "LastName":
                                                     lead.get("LastName"), "Email": lead.get("Email"),
                                                     "AccountId": account}, owner, by)
            values = {"Name": opportunity_name or f"{company}-", "AccountId": account, "ContactId": contact}
            if self.schema.field("Opportunity", "ContactId") is None:  # an org without the field
                del values["ContactId"]
            opportunity = self.create_record("Opportunity", values, owner, by)
            self._apply("Lead", lead, {"IsConverted": True, "ConvertedAccountId": account,
                                       "ConvertedContactId": contact, "ConvertedOpportunityId": opportunity,
                                       "ConvertedDate": date.today().isoformat(), "Status": "Closed - Converted"},
                        by, auto_assign=False)
            return {"account": account, "contact": contact, "opportunity": opportunity}

    def move_stage(self, deal_id: str, stage: str, amount: float | None, close_date: str | None, by: str) -> None:
        with self.lock:
            rec = self.admin_record("Opportunity", deal_id)
            if stage not in [s[0] for s in STAGES]:
                raise ValueError(f"unknown stage {stage!r}")
            values: dict[str, Any] = {"StageName": stage}
            if amount is not None:
                values["Amount"] = float(amount)
            if close_date is not None:
                values["CloseDate"] = date.fromisoformat(close_date[:10]).isoformat()
            self._apply("Opportunity", rec, values, by, auto_assign=False)

    def remove_field(self, obj: str, field: str) -> None:
        with self.lock:
            obj = self.object_name(obj)
            canonical = self.schema.field(obj, field)
            if canonical is None or not self.schema.remove_field(obj, field):
                raise KeyError(f"{obj}.{field} does not exist")
            for rec in self.records[obj].values():
                rec.pop(canonical["name"], None)

    def create_field(self, obj: str, field: str, kind: str, label: str = "") -> None:
        """A custom field made in Setup (Object Manager > Fields & Relationships > New)."""
        with self.lock:
            obj = self.object_name(obj)
            if not field.endswith("__c"):
                raise ValueError(f"{field}: a custom field's API name ends in __c")
            if self.schema.field(obj, field) is not None:
                raise KeyError(f"{obj}.{field} exists already")
            self.schema.create_field(obj, field, kind, label)

    def restore_field(self, obj: str, field: str) -> None:
        """Undelete a custom field (Setup, "Deleted Fields": kept 15 days); its values stay blank here."""
        with self.lock:
            obj = self.object_name(obj)
            if not self.schema.restore_field(obj, field):
                raise KeyError(f"{obj}.{field} was not removed")


def _rename(node: Any, names: dict[str, str]) -> Any:
    """The WHERE tree with field names made canonical (SOQL names are case-insensitive)."""
    from refsync.adapters.sandbox.salesforce_soql import BoolOp, Compare

    if node is None:
        return None
    if isinstance(node, Compare):
        return Compare(names.get(node.field.lower(), node.field), node.op, node.values)
    return BoolOp(node.op, [_rename(item, names) for item in node.items])
