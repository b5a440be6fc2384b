"""Mapping files (`mappings/*.toml`): which CRM field receives which referral attribute, under
which sync rule, and how the CRM's deal stages map to referral statuses.

Parsing reports every problem with file and line; :func:`check_against_schema` compares a mapping
with the live CRM schema (describe / properties API), again reporting every problem at once.
Applying a mapping to a referral (:func:`field_values`) is a pure function.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from refsync.adapters.base import ObjectSchema, Stage, iso_utc
from refsync.connector.tomlfile import did_you_mean, keys_at, line_of
from refsync.errors import ConfigError
from refsync.state.models import STATUSES

ATTRIBUTES = (
    "id", "partner", "source", "medium", "campaign", "submitted_at", "prospect_email", "prospect_company",
    "prospect_name", "external_id", "status", "referral_code", "commission_amount", "commission_status",
)
# What the ledger's commissions show on the deal (state/commissions.deal_values): deal fields only.
COMMISSION_ATTRIBUTES = ("commission_amount", "commission_status")
Rule = Literal["protect", "fill_blank", "create_only", "ignore"]
SALESFORCE_PEOPLE = ("Lead", "Contact")  # where a Salesforce org keeps a person
STRING_TYPES = {"string", "text", "textarea", "email", "enum", "picklist", "phone", "url"}
TIME_TYPES = {"datetime", "date"}
# Salesforce currency/double, HubSpot number: a decimal amount (an int or percent field would lose it)
NUMBER_TYPES = {"currency", "double", "number"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Transform(_Strict):
    format: Literal["datetime", "date", "epoch_ms"] | None = None
    values: dict[str, str] = Field(default_factory=dict)  # value map, e.g. {"partner" = "Partner"}
    truncate: bool = False  # cut to the field's length instead of failing the record


class FieldMap(_Strict):
    source: str = Field(alias="from")
    rule: Rule = "protect"
    transform: Transform = Transform()
    default: str | None = None

    @model_validator(mode="after")
    def _known_attribute(self) -> FieldMap:
        if self.source not in ATTRIBUTES:
            raise ValueError(f"unknown referral attribute '{self.source}'{did_you_mean(self.source, ATTRIBUTES)}; "
                             f"use one of: {', '.join(ATTRIBUTES)}")
        return self


class ObjectMap(_Strict):
    name: str
    role: Literal["lead", "contact", "opportunity", "deal"]
    id_field: str
    match_keys: list[str] = Field(default_factory=list)
    # Objects the match keys look for the prospect in, in order (lead only). Unset: the lead object,
    # and on Salesforce Contacts too (a referred person is often already a customer contact).
    match_objects: list[str] | None = None
    # Salesforce: send Sforce-Duplicate-Rule-Header allowSave=true on creates, saving a lead past the
    # org's duplicate rules. Off: a blocked create links the referral to the record the rule names.
    allow_duplicate_save: bool = False
    create: bool = True
    fields: dict[str, FieldMap]

    @model_validator(mode="after")
    def _id_field_mapped(self) -> ObjectMap:
        mapped = self.fields.get(self.id_field)
        if mapped is None or mapped.source != "id":
            raise ValueError(f"id_field {self.id_field} must be mapped from \"id\" (the referral id)")
        return self


class MappingFile(_Strict):
    crm: Literal["salesforce", "hubspot"]
    lead: ObjectMap
    deal: ObjectMap
    stage_field: str
    stages: dict[str, dict[str, str]]  # pipeline label -> stage label -> referral status
    owner_field: str | None = None  # OwnerId / hubspot_owner_id: recorded with every transition
    pipeline_field: str | None = None  # HubSpot: pipeline; Salesforce has one stage list
    amount_field: str | None = None
    currency_field: str | None = None
    close_date_field: str | None = None
    lost_reason_field: str | None = None
    restore_limit: int = Field(default=3, ge=1)  # restores within the window before refsync stops fighting
    restore_window_hours: int = Field(default=24, ge=1)

    @model_validator(mode="after")
    def _lead_options(self) -> MappingFile:
        problems = []
        if self.lead.match_objects is not None:
            allowed = SALESFORCE_PEOPLE if self.crm == "salesforce" else (self.lead.name,)
            wrong = [o for o in self.lead.match_objects if o not in allowed and o != self.lead.name]
            if wrong or not self.lead.match_objects:
                problems.append(f"lead.match_objects: {wrong or '[]'} cannot be matched; use some of "
                                f"{', '.join(dict.fromkeys([self.lead.name, *allowed]))}")
        if self.deal.match_objects is not None:
            problems.append("deal.match_objects: only the lead table looks for the prospect; remove it")
        if self.crm != "salesforce" and (self.lead.allow_duplicate_save or self.deal.allow_duplicate_save):
            problems.append("allow_duplicate_save: only Salesforce has duplicate rules to save past; remove it")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def objects(self) -> list[ObjectMap]:
        return [self.lead, self.deal]

    def match_objects(self) -> list[str]:
        """Where the lead table's match keys look for the prospect, in order of preference."""
        if self.lead.match_objects is not None:
            return list(dict.fromkeys(self.lead.match_objects))
        return [self.lead.name, "Contact"] if self.crm == "salesforce" and self.lead.name == "Lead" else [
            self.lead.name]

    def status_for(self, pipeline: str, stage: str) -> str | None:
        """The referral status a CRM stage label means, or None when the mapping does not say."""
        return self.stages.get(pipeline, {}).get(stage)


@dataclass(frozen=True)
class LoadedMapping:
    mapping: MappingFile
    path: Path
    text: str

    def where(self, *keys: str) -> str:
        return f"{self.path}:{line_of(self.text, tuple(keys)) or '?'}"


def load_mapping(path: Path) -> LoadedMapping:
    """Read and validate a mapping file's own structure; ConfigError lists every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read mapping file ({exc.strerror}); check the crm.*.mapping path") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    problems = _stage_problems(raw, path, text) + _commission_problems(raw, path, text)
    try:
        mapping = MappingFile.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(str(p) for p in error["loc"] if not isinstance(p, int))
            if error["type"] == "extra_forbidden":
                message = f"unknown key{did_you_mean(loc[-1], keys_at(MappingFile, loc[:-1]))}; remove it"
            else:
                message = "required key is missing" if error["type"] == "missing" else str(
                    error["msg"]).removeprefix("Value error, ")
            problems.append(f"{path}:{line_of(text, loc) or '?'}: {'.'.join(loc)}: {message}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return LoadedMapping(mapping, path, text)


def _stage_problems(raw: dict[str, Any], path: Path, text: str) -> list[str]:
    """Every stage mapped to something that is not a referral status, each on its own line."""
    stages = raw.get("stages")
    if not isinstance(stages, dict):
        return []
    return [f"{path}:{line_of(text, ('stages', pipeline, label)) or '?'}: stages.{pipeline}.{label}: "
            f"'{status}' is not a referral status{did_you_mean(str(status), STATUSES)}; use one of: "
            f"{', '.join(STATUSES)}"
            for pipeline, labels in stages.items() if isinstance(labels, dict)
            for label, status in labels.items() if isinstance(status, str) and status not in STATUSES]


def _commission_problems(raw: dict[str, Any], path: Path, text: str) -> list[str]:
    """Commission attributes mapped onto the lead table: a commission belongs to the deal."""
    lead = raw.get("lead")
    fields = lead.get("fields") if isinstance(lead, dict) else None
    if not isinstance(fields, dict):
        return []
    return [f"{path}:{line_of(text, ('lead', 'fields', name)) or '?'}: lead.fields.{name}: "
            f"{field['from']} is written onto the deal only; move it to [deal.fields]"
            for name, field in fields.items()
            if isinstance(field, dict) and field.get("from") in COMMISSION_ATTRIBUTES]


def _needed_length(source: str) -> int:
    # "clawback" is the longest status word; an amount needs room for its digits and sign
    return {"id": 26, "submitted_at": 29, "commission_status": 8, "commission_amount": 16}.get(source, 1)


def maps_commission(mapping: MappingFile) -> bool:
    """Whether the deal mapping writes a commission attribute (then pushes read the commissions)."""
    return any(f.source in COMMISSION_ATTRIBUTES and f.rule != "ignore" for f in mapping.deal.fields.values())


def check_against_schema(
    loaded: LoadedMapping, schemas: MappingABC[str, ObjectSchema], stages: list[Stage]
) -> list[str]:
    """Every way the mapping disagrees with the live CRM schema, each with file, line and fix."""
    mapping = loaded.mapping
    problems: list[str] = []
    for role in ("lead", "deal"):
        obj: ObjectMap = getattr(mapping, role)
        schema = schemas.get(obj.name)
        if schema is None:
            problems.append(f"{loaded.where(role, 'name')}: {role}.name: the CRM has no object '{obj.name}'")
            continue
        for key in obj.match_keys:
            if key not in schema.fields:
                problems.append(f"{loaded.where(role, 'match_keys')}: {role}.match_keys: '{key}' is not a field "
                                f"of {obj.name}{did_you_mean(key, schema.fields)}")
        for name, field in obj.fields.items():
            where = loaded.where(role, "fields", name)
            described = schema.fields.get(name)
            if described is None:
                problems.append(f"{where}: {role}.fields.{name}: {obj.name} has no field '{name}'"
                                f"{did_you_mean(name, schema.fields)}; create it in the CRM or fix the name")
                continue
            if field.rule == "ignore":
                continue
            kind = described.type.lower()
            wants_time = field.source == "submitted_at" and field.transform.format in (None, "datetime", "date")
            if wants_time and kind not in TIME_TYPES | STRING_TYPES:
                problems.append(f"{where}: {role}.fields.{name}: is a {described.type} field, "
                                f"{field.source} needs a datetime, date or text field")
            elif field.source == "commission_amount" and kind not in NUMBER_TYPES | STRING_TYPES:
                problems.append(f"{where}: {role}.fields.{name}: is a {described.type} field; "
                                f"{field.source} needs a number (currency, double) or text field")
            elif not wants_time and kind not in STRING_TYPES and not (kind in TIME_TYPES and
                                                                       field.source == "submitted_at") and not (
                    field.source == "commission_amount"):
                problems.append(f"{where}: {role}.fields.{name}: is a {described.type} field; "
                                f"{field.source} needs a text field")
            if kind == "date" and field.source == "submitted_at" and field.transform.format != "date":
                # a date property takes midnight UTC only; a time of day is refused on every write
                # (HubSpot: INVALID_DATE "... UTC, not midnight!"; crm-api/hubspot/README.md)
                problems.append(f"{where}: {role}.fields.{name}: is a date field (midnight UTC only) and "
                                f"would be refused a {field.transform.format or 'datetime'} value; use "
                                'transform = { format = "date" } or map it onto a datetime field')
            if (described.length is not None and kind in STRING_TYPES and not field.transform.truncate
                    and described.length < _needed_length(field.source)):
                problems.append(f"{where}: {role}.fields.{name}: holds {described.length} characters, "
                                f"{field.source} needs {_needed_length(field.source)}; widen the field")
            if field.rule in ("protect", "fill_blank") and not described.updateable:
                problems.append(f"{where}: {role}.fields.{name}: is not updateable, so rule '{field.rule}' "
                                "cannot be kept; make it editable for the integration user or use create_only")
            if name == obj.id_field and not (described.unique or described.external_id):
                problems.append(f"{where}: {role}.fields.{name}: the id field must be unique (an external id on "
                                "Salesforce, a unique-value property on HubSpot)")
    for other in mapping.match_objects():
        if other == mapping.lead.name:
            continue
        schema = schemas.get(other)
        if schema is None:  # the describe failed: build_targets reported why
            continue
        for key in mapping.lead.match_keys:
            if key not in schema.fields:
                problems.append(f"{loaded.where('lead', 'match_keys')}: lead.match_keys: '{key}' is not a field "
                                f"of {other}{did_you_mean(key, schema.fields)} (lead.match_objects looks there too)")
    known = {(s.pipeline, s.label) for s in stages}
    for pipeline, labels in mapping.stages.items():
        for label in labels:
            if (pipeline, label) not in known:
                labels_there = [s.label for s in stages if s.pipeline == pipeline]
                missing = (f"has no stage '{label}' in pipeline '{pipeline}'{did_you_mean(label, labels_there)}"
                           if labels_there else
                           f"has no pipeline '{pipeline}'{did_you_mean(pipeline, {s.pipeline for s in stages})}")
                problems.append(f"{loaded.where('stages', pipeline, label)}: stages.{pipeline}.{label}: the CRM "
                                f"{missing}")
    return problems


def length_warnings(loaded: LoadedMapping, schemas: MappingABC[str, ObjectSchema],
                    ledger_lengths: MappingABC[str, int]) -> list[str]:
    """Mapped text fields shorter than what the ledger may hold for their source attribute: a
    warning, not a failure (refsync cuts create_only text to the field and truncates where the
    mapping says so; any other too-long value is refused by the CRM, STRING_TOO_LONG)."""
    warnings: list[str] = []
    for role in ("lead", "deal"):
        obj: ObjectMap = getattr(loaded.mapping, role)
        schema = schemas.get(obj.name)
        for name, field in obj.fields.items():
            described = schema.fields.get(name) if schema is not None else None
            longest = ledger_lengths.get(field.source)
            if (described is None or described.length is None or longest is None or field.rule == "ignore"
                    or described.type.lower() not in STRING_TYPES or described.length >= longest):
                continue
            if field.rule == "create_only" or field.transform.truncate:
                effect = "longer values are cut to fit"
            else:
                effect = "a longer value is refused by the CRM (add transform = { truncate = true } to cut it)"
            warnings.append(f"{loaded.where(role, 'fields', name)}: {role}.fields.{name}: holds "
                            f"{described.length} characters, {field.source} may hold {longest}; {effect}")
    return warnings


def converter(field: FieldMap, length: int | None, number: bool | None = None) -> Callable[[Any], Any]:
    """How a referral attribute becomes the value ``field`` receives (``length``: the CRM field's,
    from the describe; ``number``: whether the CRM field takes numbers, None to leave decimals as
    they are). Built once per mapping and schema (:func:`_plan`), applied to every referral."""
    default, transform = field.default, field.transform
    shape, table = transform.format, transform.values
    # Text written only at creation is cut to the field's length (the describe's ``length``): the
    # CRM refuses a longer value (Salesforce STRING_TOO_LONG) and the record would never exist.
    cut = length if (transform.truncate or field.rule == "create_only") else None

    def convert(value: Any) -> Any:
        if value.__class__ is str:  # most values: what the steps below do to text, without the checks
            if table:
                value = table.get(value, value)
            return value[:cut] if cut is not None and isinstance(value, str) else value
        if value is None:
            value = default
            if value is None:
                return None
        if isinstance(value, datetime):
            if shape == "date":
                value = value.date().isoformat()
            elif shape == "epoch_ms":
                value = str(int(value.timestamp() * 1000))
            else:
                value = iso_utc(value)[:19] + ".000Z"  # whole seconds; strftime('%Y') writes year 1 as '1'
        if table:
            value = table.get(str(value), value)
        if cut is not None and isinstance(value, str):
            value = value[:cut]
        if number is not None and isinstance(value, Decimal):
            # a number field takes a JSON number (exact: an amount of minor units has far fewer than
            # 15 significant digits, and nothing is computed with it); a text field the decimal text
            value = float(value) if number else str(value)
        return value

    return convert


def format_value(value: Any, field: FieldMap, length: int | None) -> Any:
    """A referral attribute as the CRM field should receive it (a decimal stays a decimal)."""
    return converter(field, length)(value)


_Plan = list[tuple[str, str, Callable[[Any], Any]]]
_PLANS: dict[tuple[int, int, tuple[str, ...]], tuple[ObjectMap, ObjectSchema | None, _Plan]] = {}


def _plan(obj: ObjectMap, schema: ObjectSchema | None, rules: tuple[str, ...]) -> _Plan:
    """The fields :func:`field_values` writes for this mapping, schema and rules, as (name, source,
    converter): worked out once, not for each of a cycle's referrals. Keyed by the objects'
    identity (a reload or a new describe makes new ones), which the entry holds on to."""
    key = (id(obj), id(schema), rules)
    known = _PLANS.get(key)
    if known is not None and known[0] is obj and known[1] is schema:
        return known[2]
    plan: _Plan = []
    updating = "create_only" not in rules
    for name, field in obj.fields.items():
        if field.rule not in rules:
            continue
        described = schema.fields.get(name) if schema is not None else None
        if schema is not None and (described is None or (updating and not described.updateable)):
            continue
        number = described is not None and described.type.lower() in NUMBER_TYPES
        plan.append((name, field.source, converter(field, described.length if described is not None else None,
                                                   number)))
    if len(_PLANS) >= 256:  # mappings and schemas are few; a long-lived daemon reloads some
        _PLANS.clear()
    _PLANS[key] = (obj, schema, plan)
    return plan


def field_values(
    obj: ObjectMap, referral: MappingABC[str, Any], schema: ObjectSchema | None = None,
    rules: tuple[str, ...] = ("protect", "fill_blank", "create_only"),
) -> dict[str, Any]:
    """The CRM field values for a referral under ``obj``'s mapping, for fields with these rules.

    With a ``schema``, fields the CRM no longer has (or no longer lets us write) are left out: a
    drifted field must not stop every other field from syncing."""
    get = referral.get
    return {name: convert(get(source)) for name, source, convert in _plan(obj, schema, rules)}


def drifted_fields(obj: ObjectMap, schema: ObjectSchema) -> list[tuple[str, str]]:
    """Mapped fields the live schema no longer has, or no longer lets refsync write: (field, why)."""
    drift = []
    for name, field in obj.fields.items():
        if field.rule == "ignore":
            continue
        described = schema.fields.get(name)
        if described is None:
            drift.append((name, "removed or renamed"))
        elif field.rule in ("protect", "fill_blank") and not described.updateable:
            drift.append((name, "made read-only"))
    return drift
