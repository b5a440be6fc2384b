"""The HubSpot sandbox's account state: records, property history, merges, associations.

Pure in-memory state behind one re-entrant lock; the HTTP layer (``hubspot_emulator``) turns
requests into calls here and :class:`ApiError` into HubSpot's error answers. Semantics follow
HubSpot's documented behaviour (see crm-api/hubspot/README.md): merges mint a new id, old ids
read as the survivor, every change bumps ``hs_lastmodifieddate``, history is kept per property.
On contacts ``lastmodifieddate`` is a second stamp that a system touch (a calculated property, an
analytics roll-up) does not move: the two disagree as they do on live portals.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

from refsync.adapters.sandbox import hubspot_schema as hs
from refsync.adapters.sandbox.clock import Clock


class ApiError(Exception):
    """An answer other than success: HTTP status and HubSpot's JSON body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {body.get('message')}")
        self.status = status
        self.body = body
        self.headers = headers or {}


@dataclass
class Source:
    """Who made a change, as propertiesWithHistory reports it."""

    source_type: str = "INTEGRATION"
    source_id: str = "sandbox-private-app"
    user_id: int | None = None
    label: str | None = None
    system: bool = False  # a HubSpot-internal touch: moves hs_lastmodifieddate only


    def entry(self, value: str, at_ms: int) -> dict[str, Any]:
        item: dict[str, Any] = {"value": value, "timestamp": hs.iso_ms(at_ms), "sourceType": self.source_type,
                                "sourceId": self.source_id}
        if self.user_id is not None:
            item["updatedByUserId"] = self.user_id
        if self.label:
            item["sourceLabel"] = self.label
        return item


API = Source()
SYSTEM = Source("CALCULATED", "RollupProperties", system=True)


@dataclass
class Record:
    id: str
    object: str
    props: dict[str, str]
    created_ms: int
    updated_ms: int
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    archived_ms: int | None = None
    # (visible in search from, properties then): search is eventually consistent when lag > 0
    snapshots: list[tuple[int, dict[str, str]]] = field(default_factory=list)


class Store:
    """All records of one sandbox account. Every public method takes the lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.indexing_lag_ms = 0
        self._reset_state()

    def _reset_state(self) -> None:
        self.properties = hs.default_properties()
        self.removed_properties: dict[tuple[str, str], dict[str, Any]] = {}
        self.records: dict[str, dict[str, Record]] = {name: {} for name in hs.OBJECTS}
        self.merged: dict[str, dict[str, str]] = {name: {} for name in hs.OBJECTS}  # old id -> new id
        self.assoc: set[tuple[str, str, str, str]] = set()  # (from obj, from id, to obj, to id), both ways
        self.users: dict[str, int] = {}
        self._next_id = 1001
        self.clock = Clock(strict=False)
        self._generation = 0  # bumped by every write: unique-value indexes built earlier are stale
        self._indexes: dict[tuple[str, str], tuple[tuple[int, int, int], dict[str, Record]]] = {}

    def reset(self) -> None:
        with self.lock:
            self._reset_state()

    # -- clock and ids -------------------------------------------------------------------------
    def now_ms(self) -> int:
        """Wall-clock milliseconds, never going backwards; the held instant while the clock is held."""
        return self.clock.now_ms()

    def _mint_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def user(self, name: str) -> Source:
        """A sales rep acting in the UI, with a stable numeric user id per name."""
        with self.lock:
            uid = self.users.setdefault(name, 2_000_001 + len(self.users))
        return Source("CRM_UI", f"userId:{uid}", uid, name)

    # -- lookup --------------------------------------------------------------------------------
    def object_props(self, obj: str) -> dict[str, dict[str, Any]]:
        if obj not in self.properties:
            raise ApiError(400, hs.error_body(f"Unable to infer object type from: {obj}", "VALIDATION_ERROR"))
        return self.properties[obj]

    def resolve(self, obj: str, record_id: str, *, archived: bool = False) -> tuple[Record | None, bool]:
        """The live (or, with ``archived``, archived) record for an id; True when the id was merged away."""
        with self.lock:
            self.object_props(obj)
            new_id = self.merged[obj].get(str(record_id))
            rec = self.records[obj].get(new_id or str(record_id))
            if rec is None or (rec.archived_ms is not None) != archived:
                return None, new_id is not None
            return rec, new_id is not None

    def by_unique(self, obj: str, prop: str, value: str) -> Record | None:
        with self.lock:
            definition = self.object_props(obj).get(prop)
            if definition is None or not definition["hasUniqueValue"]:
                raise ApiError(400, hs.error_body(
                    f"{prop} is not a unique identifier property for {obj}", "VALIDATION_ERROR"))
            if prop == "hs_object_id":
                return self.resolve(obj, value)[0]
            return self._unique_index(obj, prop).get(str(value).casefold())

    def _unique_index(self, obj: str, prop: str) -> dict[str, Record]:
        """Live records by case-folded ``prop``, rebuilt only after a write (once per batch, not per record)."""
        version = (self._generation, id(self.records[obj]), len(self.records[obj]))
        cached = self._indexes.get((obj, prop))
        if cached is not None and cached[0] == version:
            return cached[1]
        found: dict[str, Record] = {}
        for rec in self.records[obj].values():
            value = rec.props.get(prop, "")
            if rec.archived_ms is None and value:
                found.setdefault(value.casefold(), rec)
        self._indexes[(obj, prop)] = (version, found)
        return found

    # -- validation ----------------------------------------------------------------------------
    def normalise(self, obj: str, values: dict[str, Any], *, internal: bool = False) -> dict[str, str]:
        """Property values as HubSpot stores them (strings); 400 VALIDATION_ERROR naming each bad one."""
        defs = self.object_props(obj)
        clean: dict[str, str] = {}
        problems: list[tuple[str, str, str]] = []
        for name, raw in values.items():
            definition = defs.get(name)
            if definition is None:
                problems.append((name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist'))
                continue
            if definition["modificationMetadata"]["readOnlyValue"] and not internal:
                problems.append((name, "READ_ONLY_VALUE",
                                 f'"{name}" is a read only property; its value cannot be set.'))
                continue
            text = "" if raw is None else ("true" if raw is True else "false" if raw is False else str(raw))
            problem = self._check_value(definition, text)
            if problem:
                problems.append((name, problem[0], problem[1]))
                continue
            if definition["type"] == "datetime" and text:
                text = hs.iso_ms(hs.parse_ms(text) or 0)
            elif definition["type"] == "date" and text:
                text = hs.iso_ms(hs.parse_ms(text) or 0)[:10]  # read back as YYYY-MM-DD
            clean[name] = text
        if problems:
            raise ApiError(400, hs.validation_error(problems))
        return clean

    @staticmethod
    def _check_value(definition: dict[str, Any], text: str) -> tuple[str, str] | None:
        if not text:
            return None
        kind = definition["type"]
        name = definition["name"]
        if kind == "number":
            try:
                float(text)
            except ValueError:
                return "INVALID_LONG", f'{text} was not a valid number for "{name}".'
        elif kind in ("datetime", "date") and hs.parse_ms(text) is None:
            return "INVALID_DATE", f'{text} was not a valid date for "{name}".'
        elif kind == "date":
            late = hs.midnight_problem(hs.parse_ms(text) or 0)
            if late:
                return "INVALID_DATE", late
        elif kind in ("enumeration", "bool") and definition["options"] and definition["fieldType"] != "checkbox":
            allowed = {o["value"] for o in definition["options"]}
            if text not in allowed:
                return "INVALID_OPTION", f'{text} was not one of the allowed options: {sorted(allowed)}'
        return None

    def check_unique(self, obj: str, writes: list[tuple[str | None, dict[str, str]]]) -> None:
        """409 CONFLICT when a write would give a unique value (or a contact email) to a second record."""
        with self.lock:
            defs = self.object_props(obj)
            unique = [n for n, d in defs.items() if d["hasUniqueValue"] and n != "hs_object_id"]
            if obj == "contacts":
                unique.append("email")
            taken: dict[tuple[str, str], str] = {}
            for rec in self.records[obj].values():
                if rec.archived_ms is None:
                    for name in unique:
                        if rec.props.get(name):
                            taken[(name, rec.props[name].casefold())] = rec.id
            for index, (record_id, values) in enumerate(writes):
                for name in unique:
                    value = values.get(name)
                    if not value:
                        continue
                    key = (name, value.casefold())
                    owner = taken.get(key)
                    if owner is not None and owner != (record_id or f"new:{index}"):
                        if name == "email":
                            message = f"Contact already exists. Existing ID: {owner}"
                        else:
                            message = (f'A {hs.SINGULAR[obj].lower()} with the unique value "{value}" for property '
                                       f'"{name}" already exists. Existing ID: {owner}')
                        raise ApiError(409, hs.error_body(message, "CONFLICT"))
                    taken[key] = record_id or f"new:{index}"

    # -- writes --------------------------------------------------------------------------------
    def create(self, obj: str, values: dict[str, str], source: Source = API) -> Record:
        with self.lock:
            now = self.now_ms()
            rec = Record(self._mint_id(), obj, {}, now, now)
            self.records[obj][rec.id] = rec
            initial = dict(values)
            if obj == "deals":
                initial.setdefault("pipeline", hs.DEFAULT_PIPELINE[0])
                initial.setdefault("dealstage", hs.PIPELINES[initial["pipeline"]][1][0][0])
            initial.update({"hs_object_id": rec.id, "createdate": hs.iso_ms(now)})
            self._apply(rec, initial, source, now)
            return rec

    def write(self, rec: Record, values: dict[str, str], source: Source = API) -> None:
        """Set properties (blank clears), keep history, bump the modified dates."""
        with self.lock:
            self._apply(rec, values, source, self.now_ms())

    def _apply(self, rec: Record, values: dict[str, str], source: Source, now: int) -> None:
        self._generation += 1
        values = dict(values)
        if rec.object == "deals" and "dealstage" in values:
            found = hs.stage_of(values["dealstage"])
            closed, won = (found[1][3], found[1][2] == "1.0") if found else (False, False)
            values["hs_is_closed"] = "true" if closed else "false"
            values["hs_is_closed_won"] = "true" if won else "false"
        if source.user_id is not None:
            values["hs_updated_by_user_id"] = str(source.user_id)
        elif "hs_updated_by_user_id" in rec.props:
            values["hs_updated_by_user_id"] = ""
        stamp = hs.iso_ms(now)
        values["hs_lastmodifieddate"] = stamp
        if not source.system:
            values["lastmodifieddate"] = stamp
        for name, value in values.items():
            if value:
                rec.props[name] = value
            else:
                rec.props.pop(name, None)
            rec.history.setdefault(name, []).insert(0, source.entry(value, now))
        rec.updated_ms = now
        self._snapshot(rec, now)

    def touch(self, rec: Record) -> None:
        """A system process recomputes a calculated property: ``hs_lastmodifieddate`` moves,
        ``lastmodifieddate`` does not (the two stamps are distinct; crm-api/hubspot/README.md)."""
        with self.lock:
            self._apply(rec, {}, SYSTEM, self.now_ms())

    def _snapshot(self, rec: Record, now: int) -> None:
        rec.snapshots.append((now + self.indexing_lag_ms, dict(rec.props)))
        del rec.snapshots[:-4]

    def archive(self, rec: Record) -> None:
        with self.lock:
            now = self.now_ms()
            rec.archived_ms = now
            self._generation += 1
            rec.updated_ms = now

    def merge(self, obj: str, primary_id: str, loser_id: str) -> Record:
        """Merge two records into a NEW record (HubSpot contacts/companies); old ids read as the new one."""
        with self.lock:
            primary, _ = self.resolve(obj, primary_id)
            loser, _ = self.resolve(obj, loser_id)
            if primary is None or loser is None or primary is loser:
                raise ApiError(400, hs.error_body(f"Cannot merge {primary_id} and {loser_id}", "VALIDATION_ERROR"))
            now = self.now_ms()
            new = Record(self._mint_id(), obj, {}, primary.created_ms, now)
            values = {k: v for k, v in loser.props.items() if v}
            values.update({k: v for k, v in primary.props.items() if v})
            old_ids = [primary.id, loser.id]
            for rec in (primary, loser):
                old_ids += [i for i in rec.props.get("hs_merged_object_ids", "").split(";") if i]
            values.update({"hs_object_id": new.id, "hs_merged_object_ids": ";".join(old_ids)})
            new.history = copy.deepcopy(primary.history)
            del self.records[obj][primary.id]
            del self.records[obj][loser.id]
            self.records[obj][new.id] = new
            for old in old_ids:
                self.merged[obj][old] = new.id
            for old, target in list(self.merged[obj].items()):
                if target in (primary.id, loser.id):
                    self.merged[obj][old] = new.id
            self.assoc = {self._repoint(edge, obj, {primary.id, loser.id}, new.id) for edge in self.assoc}
            self._apply(new, values, API, now)
            return new

    @staticmethod
    def _repoint(edge: tuple[str, str, str, str], obj: str, old: set[str], new: str) -> tuple[str, str, str, str]:
        a_obj, a_id, b_obj, b_id = edge
        return (a_obj, new if a_obj == obj and a_id in old else a_id,
                b_obj, new if b_obj == obj and b_id in old else b_id)

    def associate(self, from_obj: str, from_id: str, to_obj: str, to_id: str) -> None:
        with self.lock:
            self.assoc.add((from_obj, from_id, to_obj, to_id))
            self.assoc.add((to_obj, to_id, from_obj, from_id))

    def associated(self, from_obj: str, from_id: str, to_obj: str) -> list[str]:
        with self.lock:
            found = {b_id for a_obj, a_id, b_obj, b_id in self.assoc
                     if (a_obj, a_id, b_obj) == (from_obj, from_id, to_obj)}
            return sorted((i for i in found if self.resolve(to_obj, i)[0] is not None), key=int)

    def remove_property(self, obj: str, name: str) -> None:
        with self.lock:
            if name not in self.object_props(obj):
                raise KeyError(f"{obj}.{name} does not exist")
            self.removed_properties[(obj, name)] = self.properties[obj].pop(name)
            for rec in self.records[obj].values():
                rec.props.pop(name, None)

    def create_property(self, obj: str, name: str, kind: str, label: str = "") -> None:
        """A custom property made in Settings > Properties (POST /crm/v3/properties/{object}): "text"
        is a single-line text (string/text), "number" a number (number/number)."""
        types = {"text": ("string", "text"), "number": ("number", "number")}
        if kind not in types:
            raise ValueError(f"kind {kind!r}: use one of {', '.join(types)}")
        with self.lock:
            if name in self.object_props(obj):
                raise KeyError(f"{obj}.{name} exists already")
            self.properties[obj][name] = hs._prop(name, label or name.replace("_", " ").capitalize(), *types[kind],
                                                  custom=True)

    def restore_property(self, obj: str, name: str) -> None:
        """Put a removed property back (HubSpot: restore a deleted property from the archive);
        its values stay blank."""
        with self.lock:
            if (obj, name) not in self.removed_properties:
                raise KeyError(f"{obj}.{name} was not removed")
            self.properties[obj][name] = self.removed_properties.pop((obj, name))

    # -- reads ---------------------------------------------------------------------------------
    def search_view(self, rec: Record, now: int) -> dict[str, str] | None:
        """The record as search sees it now: the last snapshot whose indexing time has come."""
        if self.indexing_lag_ms <= 0:
            return rec.props
        visible = [props for at, props in rec.snapshots if at <= now]
        return visible[-1] if visible else None

    def to_json(self, rec: Record, properties: list[str] | None, with_history: list[str] | None = None,
                props: dict[str, str] | None = None) -> dict[str, Any]:
        """SimplePublicObject: requested properties (HubSpot's defaults when none), blanks left out."""
        source = rec.props if props is None else props
        names = properties or list(hs.DEFAULT_READ[rec.object]) + ["hs_object_id", "createdate", "lastmodifieddate"]
        if rec.object != "contacts" and not properties:
            names = [n if n != "lastmodifieddate" else "hs_lastmodifieddate" for n in names]
        body: dict[str, Any] = {
            "id": rec.id,
            "properties": {n: source[n] for n in names if source.get(n)},
            "createdAt": hs.iso_ms(rec.created_ms), "updatedAt": hs.iso_ms(rec.updated_ms),
            "archived": rec.archived_ms is not None,
        }
        if rec.archived_ms is not None:
            body["archivedAt"] = hs.iso_ms(rec.archived_ms)
        if with_history:
            body["propertiesWithHistory"] = {n: copy.deepcopy(rec.history.get(n, [])) for n in with_history
                                             if n in self.properties[rec.object]}
        return body
