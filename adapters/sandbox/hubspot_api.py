"""The HubSpot sandbox's API endpoints as plain functions: request in, (status, JSON body) out.

Routing, auth, faults and rate limits live in ``hubspot_emulator``; here is what each endpoint
does to the account (:mod:`hubspot_store`) and the shape it answers with (the OpenAPI specs in
crm-api/hubspot/). Batch rules: at most 100 inputs (50 when property history is asked for),
200 when every input succeeded, 207 with ``errors[]`` otherwise, a merged-away id left out of
``results`` without an error, a unique-value collision answered with one 409 for the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from refsync.adapters.sandbox import hubspot_schema as hs
from refsync.adapters.sandbox.hubspot_store import ApiError, Record, Store

Answer = tuple[int, Any]
MAX_BATCH = 100
MAX_BATCH_WITH_HISTORY = 50
ASSOCIATION_TYPES = {("contacts", "deals"): 4, ("deals", "contacts"): 3, ("contacts", "companies"): 1,
                     ("companies", "contacts"): 2, ("deals", "companies"): 5, ("companies", "deals"): 6}


def _bad(message: str, category: str = "VALIDATION_ERROR") -> ApiError:
    return ApiError(400, hs.error_body(message, category))


def _not_found(obj: str, record_id: str) -> ApiError:
    return ApiError(404, hs.error_body(f"resource not found: {hs.SINGULAR[obj].lower()} {record_id}",
                                       "OBJECT_NOT_FOUND", context={"id": [str(record_id)]}))


def _inputs(body: dict[str, Any], limit: int = MAX_BATCH) -> list[dict[str, Any]]:
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise _bad("Invalid input JSON: 'inputs' must be a list")
    if len(inputs) > limit:
        raise _bad(f"Too many inputs: got {len(inputs)}, the limit is {limit}.")
    return inputs


def _batch_answer(started: str, results: list[dict[str, Any]], errors: list[dict[str, Any]],
                  ok_status: int = 200) -> Answer:
    body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started,
                            "completedAt": hs.iso_ms(0)}
    if errors:
        body["errors"] = errors
        body["numErrors"] = sum(len(e["context"].get("ids", [])) or 1 for e in errors)
        return 207, body
    return ok_status, body


class Endpoints:
    """One sandbox account's endpoints; ``locked`` decides (by fault rate) whether a record is locked."""

    def __init__(self, store: Store, locked: Callable[[], bool]) -> None:
        self.store = store
        self.locked = locked

    def _stamp(self) -> str:
        return hs.iso_ms(self.store.now_ms())

    def _finish(self, answer: Answer) -> Answer:
        status, body = answer
        if isinstance(body, dict) and body.get("completedAt") == hs.iso_ms(0):
            body["completedAt"] = self._stamp()
        return status, body

    # -- single objects ------------------------------------------------------------------------
    def get(self, obj: str, record_id: str, query: dict[str, list[str]]) -> Answer:
        store = self.store
        archived = _flag(query, "archived")
        id_property = query.get("idProperty", [None])[0]
        with store.lock:
            if id_property:
                rec = store.by_unique(obj, id_property, record_id)
            else:
                rec, _merged = store.resolve(obj, record_id, archived=archived)
            if rec is None:
                raise _not_found(obj, record_id)
            body = store.to_json(rec, _list(query, "properties") or None, _list(query, "propertiesWithHistory"))
            kinds = _list(query, "associations")
            if kinds:
                body["associations"] = {
                    kind: {"results": [{"id": i, "type": f"{hs.SINGULAR[obj].lower()}_to_{kind[:-1]}"}
                                       for i in store.associated(obj, rec.id, kind)]}
                    for kind in kinds if kind in hs.OBJECTS}
            return 200, body

    def list_page(self, obj: str, query: dict[str, list[str]]) -> Answer:
        store = self.store
        limit = min(int(query.get("limit", ["10"])[0]), 100)
        after = int(query.get("after", ["0"])[0] or 0)
        archived = _flag(query, "archived")
        with store.lock:
            store.object_props(obj)
            records = sorted((r for r in store.records[obj].values() if (r.archived_ms is not None) == archived),
                             key=lambda r: int(r.id))
            page = records[after:after + limit]
            body: dict[str, Any] = {"results": [store.to_json(r, _list(query, "properties") or None) for r in page]}
        if after + limit < len(records):
            body["paging"] = {"next": {"after": str(after + limit), "link": f"?after={after + limit}"}}
        return 200, body

    def create(self, obj: str, body: dict[str, Any]) -> Answer:
        store = self.store
        with store.lock:
            values = store.normalise(obj, body.get("properties") or {})
            store.check_unique(obj, [(None, values)])
            rec = store.create(obj, values)
            return 201, store.to_json(rec, list(values) or None)

    def update(self, obj: str, record_id: str, body: dict[str, Any], query: dict[str, list[str]]) -> Answer:
        store = self.store
        with store.lock:
            id_property = query.get("idProperty", [None])[0]
            rec = store.by_unique(obj, id_property, record_id) if id_property else store.resolve(obj, record_id)[0]
            if rec is None:
                raise _not_found(obj, record_id)
            values = store.normalise(obj, body.get("properties") or {})
            store.check_unique(obj, [(rec.id, values)])
            store.write(rec, values)
            return 200, store.to_json(rec, list(values) or None)

    def archive(self, obj: str, record_id: str) -> Answer:
        with self.store.lock:
            rec, _merged = self.store.resolve(obj, record_id)
            if rec is not None:
                self.store.archive(rec)
        return 204, None

    # -- batches -------------------------------------------------------------------------------
    def batch_read(self, obj: str, body: dict[str, Any], query: dict[str, list[str]]) -> Answer:
        store = self.store
        history = body.get("propertiesWithHistory") or []
        inputs = _inputs(body, MAX_BATCH_WITH_HISTORY if history else MAX_BATCH)
        id_property = body.get("idProperty")
        archived = _flag(query, "archived")
        started = self._stamp()
        results, missing = [], []
        with store.lock:
            store.object_props(obj)
            seen: set[str] = set()
            for item in inputs:
                key = str(item.get("id"))
                if id_property:
                    rec, merged = store.by_unique(obj, id_property, key), False
                else:
                    rec, merged = store.resolve(obj, key, archived=archived)
                if rec is None:
                    if not merged:
                        missing.append(key)
                    continue
                if rec.id not in seen and not merged:
                    seen.add(rec.id)
                    results.append(store.to_json(rec, body.get("properties") or None, history))
        errors = [hs.record_error(f"Could not get some {hs.SINGULAR[obj]} objects, they may be deleted or not "
                                  "exist. Check that ids are valid.", "OBJECT_NOT_FOUND", missing)] if missing else []
        return self._finish(_batch_answer(started, results, errors))

    def batch_create(self, obj: str, body: dict[str, Any]) -> Answer:
        store = self.store
        inputs = _inputs(body)
        started = self._stamp()
        with store.lock:
            values = [store.normalise(obj, item.get("properties") or {}) for item in inputs]
            store.check_unique(obj, [(None, v) for v in values])
            results = [store.to_json(store.create(obj, v), list(v) or None) for v in values]
        return self._finish(_batch_answer(started, results, [], ok_status=201))

    def batch_update(self, obj: str, body: dict[str, Any]) -> Answer:
        store = self.store
        inputs = _inputs(body)
        started = self._stamp()
        with store.lock:
            plan: list[tuple[str, Record | None, bool, dict[str, str]]] = []
            for item in inputs:
                key = str(item.get("id"))
                id_property = item.get("idProperty")
                if id_property:
                    rec, merged = store.by_unique(obj, id_property, key), False
                else:
                    rec, merged = store.resolve(obj, key)
                plan.append((key, rec, merged, store.normalise(obj, item.get("properties") or {})))
            ids = [key for key, _r, _m, _v in plan]
            if len(set(ids)) != len(ids):
                raise _bad(f"Duplicate IDs found in batch input: {sorted({i for i in ids if ids.count(i) > 1})}")
            store.check_unique(obj, [(rec.id, v) for _k, rec, merged, v in plan if rec is not None and not merged])
            results, missing, locked = [], [], []
            for key, rec, merged, values in plan:
                if merged:
                    continue  # HubSpot leaves a merged-away id out of the answer, without an error
                if rec is None:
                    missing.append(key)
                elif self.locked():
                    locked.append(key)
                else:
                    store.write(rec, values)
                    results.append(store.to_json(rec, list(values) or None))
        errors = []
        if missing:
            errors.append(hs.record_error(f"Could not update some {hs.SINGULAR[obj]} objects: they may be deleted "
                                          "or not exist.", "OBJECT_NOT_FOUND", missing))
        errors += [hs.record_error("The record is locked by another process; try again.", "LOCKED", [k])
                   for k in locked]
        return self._finish(_batch_answer(started, results, errors))

    def batch_upsert(self, obj: str, body: dict[str, Any]) -> Answer:
        store = self.store
        inputs = _inputs(body)
        started = self._stamp()
        with store.lock:
            plan: list[tuple[str, Record | None, dict[str, str]]] = []
            for item in inputs:
                key, id_property = str(item.get("id")), item.get("idProperty") or body.get("idProperty")
                if not id_property:
                    raise _bad("idProperty is required for a batch upsert")
                values = store.normalise(obj, item.get("properties") or {})
                rec = store.by_unique(obj, id_property, key)
                if rec is None:
                    values.setdefault(id_property, key)
                plan.append((key, rec, values))
            keys = [key for key, _r, _v in plan]
            if len(set(keys)) != len(keys):
                raise _bad(f"Duplicate IDs found in batch input: {sorted({k for k in keys if keys.count(k) > 1})}")
            store.check_unique(obj, [(rec.id if rec else None, values) for _k, rec, values in plan])
            results, locked = [], []
            for key, rec, values in plan:
                if self.locked():
                    locked.append(key)
                    continue
                created = rec is None
                if rec is None:
                    rec = store.create(obj, values)
                else:
                    store.write(rec, values)
                answer = store.to_json(rec, list(values) or None)
                answer["new"] = created
                results.append(answer)
        errors = [hs.record_error("The record is locked by another process; try again.", "LOCKED", [k])
                  for k in locked]
        return self._finish(_batch_answer(started, results, errors))

    def batch_archive(self, obj: str, body: dict[str, Any]) -> Answer:
        for item in _inputs(body):
            self.archive(obj, str(item.get("id")))
        return 204, None

    # -- schema ----------------------------------------------------------------------------------
    def properties(self, obj: str, name: str | None) -> Answer:
        with self.store.lock:
            defs = self.store.object_props(obj)
            if name is None:
                return 200, {"results": [dict(d) for d in defs.values()]}
            if name not in defs:
                raise ApiError(404, hs.error_body(f"Unable to find property {name} on object type {obj}",
                                                  "OBJECT_NOT_FOUND", context={"propertyName": [name]}))
            return 200, dict(defs[name])

    def pipelines(self, obj: str) -> Answer:
        if obj != "deals":
            self.store.object_props(obj)
            return 200, {"results": []}
        return 200, hs.pipelines_body()

    # -- associations (v4) -----------------------------------------------------------------------
    def _to(self, from_obj: str, from_id: str, to_obj: str) -> list[dict[str, Any]]:
        type_id = ASSOCIATION_TYPES.get((from_obj, to_obj), 1)
        return [{"toObjectId": i, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": type_id}]}
                for i in self.store.associated(from_obj, from_id, to_obj)]

    def associations(self, from_obj: str, from_id: str, to_obj: str) -> Answer:
        with self.store.lock:
            self.store.object_props(to_obj)
            rec, _merged = self.store.resolve(from_obj, from_id)
            if rec is None:
                raise _not_found(from_obj, from_id)
            return 200, {"results": self._to(from_obj, rec.id, to_obj)}

    def associations_batch(self, from_obj: str, to_obj: str, body: dict[str, Any]) -> Answer:
        inputs = _inputs(body, 1000)
        started = self._stamp()
        results, errors = [], []
        with self.store.lock:
            self.store.object_props(to_obj)
            for item in inputs:
                key = str(item.get("id"))
                rec, _merged = self.store.resolve(from_obj, key)
                found = self._to(from_obj, rec.id, to_obj) if rec is not None else []
                if found:
                    results.append({"from": {"id": key}, "to": found})
                else:
                    errors.append({"status": "error", "category": "VALIDATION_ERROR",
                                   "message": f"No {to_obj[:-1]} is associated with {from_obj[:-1]} {key}.",
                                   "context": {"fromObjectId": [key]}, "errors": [], "links": {}})
        return self._finish(_batch_answer(started, results, errors))


def _flag(query: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter: clients send ``true`` or Python's ``True``."""
    return query.get(name, ["false"])[0].lower() == "true"


def _list(query: dict[str, list[str]], name: str) -> list[str]:
    """A list query parameter, repeated (``a=1&a=2``) or comma-separated (``a=1,2``)."""
    return [part for value in query.get(name, []) for part in value.split(",") if part]
