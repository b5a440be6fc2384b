"""What refsync knows of each CRM's schema, kept in the ledger between runs (``crm_state``).

- Describes and stage lists change rarely: they are cached with the time they were read and read
  again after ``[daemon] schema_refresh_seconds``, at once when a call says the schema changed
  (:func:`connector.push.note_drift`), and at every job while a mapped field is drifted (a rare
  state; so its alert resolves as soon as the field is back).
- The mapped fields refsync has seen valid on each object are remembered. A mapped field that was
  seen and has since vanished or turned read-only is *drift*: left out of reads and writes, with a
  ``mapping_drift`` alert that resolves itself when the field is back, before and after a restart.
  A mapped field never seen in the CRM stays a configuration error.

The decisions (:func:`drift_and_check`) are pure; the ledger is reached through ``state.crmstate``.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from refsync.adapters.base import FieldSchema, ObjectSchema, Stage
from refsync.connector.logs import get_logger
from refsync.connector.mapping import LoadedMapping, check_against_schema, drifted_fields
from refsync.state.crmstate import remember, remembered, remembered_many
from refsync.state.ledger import Ledger
from refsync.state.notifications import AlertSpec, sync_alerts

if TYPE_CHECKING:
    from refsync.connector.push import CrmTarget

log = get_logger("refsync.schemas")

Seen = dict[str, dict[str, FieldSchema]]  # object -> field -> its last valid definition


# ---- (de)serialising for crm_state ------------------------------------------------------------
def _field_json(field: FieldSchema) -> dict[str, Any]:
    return {**asdict(field), "options": list(field.options)}


def _field(raw: dict[str, Any]) -> FieldSchema:
    return FieldSchema(**{**raw, "options": tuple(raw.get("options") or ())})


def schema_json(schema: ObjectSchema) -> dict[str, Any]:
    return {"name": schema.name, "fields": {n: _field_json(f) for n, f in schema.fields.items()}}


def schema_of(raw: dict[str, Any]) -> ObjectSchema:
    return ObjectSchema(str(raw["name"]), {n: _field(f) for n, f in raw["fields"].items()})


def stages_json(stages: list[Stage]) -> dict[str, Any]:
    return {"stages": [asdict(s) for s in stages]}


def stages_of(raw: dict[str, Any]) -> list[Stage]:
    return [Stage(**s) for s in raw["stages"]]


# ---- decisions -------------------------------------------------------------------------------
def drift_and_check(loaded: LoadedMapping, schemas: dict[str, ObjectSchema], stages: list[Stage],
                    seen: Seen) -> tuple[list[tuple[str, str, str]], list[str], Seen]:
    """(drift as (object, field, why), configuration problems, seen fields updated).

    A field that vanished or turned read-only is drift when it was seen valid before; its remembered
    definition stands in for it in the mapping check, so only fields never seen are problems."""
    drift: list[tuple[str, str, str]] = []
    checked: dict[str, ObjectSchema] = {}
    updated: Seen = {obj: dict(fields) for obj, fields in seen.items()}
    for obj in loaded.mapping.objects():
        schema = schemas.get(obj.name)
        if schema is None:
            continue
        known = updated.setdefault(obj.name, {})
        drifted = [(name, why) for name, why in drifted_fields(obj, schema) if name in known]
        fields = dict(schema.fields)
        for name, _why in drifted:
            fields[name] = known[name]
        checked[obj.name] = ObjectSchema(schema.name, fields)
        drift += [(obj.name, name, why) for name, why in drifted]
        gone = {name for name, _ in drifted_fields(obj, schema)}
        for name in obj.fields:
            if name in schema.fields and name not in gone:
                known[name] = schema.fields[name]
    return drift, check_against_schema(loaded, checked, stages), updated


def _stale(read_at: datetime | None, now: datetime, every: timedelta) -> bool:
    return read_at is None or now - read_at >= every


# ---- I/O -------------------------------------------------------------------------------------
def load(ledger: Ledger | None, target: CrmTarget, refresh_every: timedelta, *, force: bool = False) -> bool:
    """Fill ``target.schemas`` and ``target.stages``: from the ledger's cache while it is fresh,
    else from the CRM (a describe per mapped object and one stage read), stored for next time.
    True when the CRM was asked. CRM errors propagate (the caller decides about readiness)."""
    # the mapped objects, and those searched for the person (Salesforce: Contact, for its lengths)
    objects = list(dict.fromkeys([*(obj.name for obj in target.mapping.objects()), *target.mapping.match_objects()]))
    deal = target.mapping.deal.name
    now = ledger.clock() if ledger is not None else None
    if ledger is not None and not target.seen:
        stored = remembered_many(ledger, target.name, [f"seen:{o}" for o in objects])
        target.seen = {o: {n: _field(f) for n, f in stored[f"seen:{o}"][0]["fields"].items()}
                       for o in objects if f"seen:{o}" in stored}
    if not force and now is not None and ledger is not None and not target.drift:
        if target.schema_read_at is not None and not _stale(target.schema_read_at, now, refresh_every):
            return False
        cached = remembered_many(ledger, target.name, [*(f"schema:{o}" for o in objects), f"stages:{deal}"])
        times = [at for _value, at in cached.values()]
        if len(cached) == len(objects) + 1 and not _stale(min(times), now, refresh_every):
            schemas = {o: schema_of(cached[f"schema:{o}"][0]) for o in objects}
            stages = stages_of(cached[f"stages:{deal}"][0])
            assert target.loaded is not None
            if not drift_and_check(target.loaded, schemas, stages, target.seen)[0]:
                target.schemas.update(schemas)
                target.stages = stages
                target.schema_read_at = min(times)
                _seed_stages(target)
                _account(ledger, target, read=False)
                return False
            # the cache shows a drifted field: read again, it may be back
    schemas = {o: target.adapter.describe(o) for o in objects}
    stages = target.adapter.stages(deal)
    target.schemas.update(schemas)
    target.stages = stages
    target.schema_read_at = now
    _seed_stages(target)
    _account(ledger, target, read=True)
    if ledger is not None:
        for o, schema in schemas.items():
            remember(ledger, target.name, f"schema:{o}", schema_json(schema))
        remember(ledger, target.name, f"stages:{deal}", stages_json(stages))
    log.info("CRM schema read", crm=target.name, objects=objects, stages=len(stages))
    return True


def _seed_stages(target: CrmTarget) -> None:
    """Hand cached stages to an adapter that resolves stage ids itself (HubSpot's history)."""
    know = getattr(target.adapter, "know_stages", None)
    if know is not None and target.stages is not None:
        know(target.mapping.deal.name, target.stages)


def _account(ledger: Ledger | None, target: CrmTarget, *, read: bool) -> None:
    """The account facts an adapter needs before trouble comes (HubSpot: the portal's time zone,
    where its daily limit resets; the account API is refused once that limit is hit): read with
    the schemas and cached with them, else handed over from the cache."""
    ask, know = getattr(target.adapter, "time_zone", None), getattr(target.adapter, "know_time_zone", None)
    if ask is None or know is None:
        return
    if not read and ledger is not None:
        stored = remembered(ledger, target.name, "account")
        if stored is not None and stored[0].get("time_zone"):
            know(str(stored[0]["time_zone"]))
            return
    zone = ask()
    if ledger is not None:
        remember(ledger, target.name, "account", {"time_zone": zone})


def reckon(ledger: Ledger | None, target: CrmTarget) -> list[str]:
    """Compare the mapping with the schemas now held: remember the fields seen, raise a
    ``mapping_drift`` alert per drifted field and resolve those of fields that came back.
    Returns the configuration problems (fields never seen, wrong types...)."""
    assert target.loaded is not None
    drift, problems, seen = drift_and_check(target.loaded, target.schemas, target.stages or [], target.seen)
    if ledger is not None and seen != target.seen:
        for obj, fields in seen.items():
            remember(ledger, target.name, f"seen:{obj}", {"fields": {n: _field_json(f) for n, f in fields.items()}})
    target.seen = seen
    now_drifted = {(obj, name) for obj, name, _ in drift}
    if now_drifted != target.drift:
        for obj, name, why in drift:
            if (obj, name) not in target.drift:
                log.warning("mapping drift: field left out of reads and writes", crm=target.name, object=obj,
                            field=name, why=why)
        for obj, name in target.drift - now_drifted:
            log.info("mapping drift resolved: field back", crm=target.name, object=obj, field=name)
    target.drift = now_drifted
    if ledger is not None:
        sync_alerts(ledger, [AlertSpec(
            "mapping_drift", f"mapping_drift:{target.name}:{obj}:{name}",
            f"{target.name} {obj}.{name} was {why}: refsync leaves it out of reads and writes and keeps syncing "
            "the other fields. Restore the field (or its write access), or change the mapping file and run "
            "`refsync mappings check`.", crm=target.name) for obj, name, why in drift],
            scope=[("mapping_drift", target.name)])
    return problems
