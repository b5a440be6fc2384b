"""What a mapping change changes: the fields it adds, removes or alters, and which linked records it
would rewrite.

Pure functions over two :class:`MappingFile` objects and plain referral rows (the ledger's view of a
referral and its links); `refsync mappings diff` prints them, and a reload rolls them out as a
planned re-push (connector/rollout.py). A record is rewritten when the value refsync would write
to an existing record under the new mapping differs from the one the old mapping wrote: a new
protected or fill_blank field with a value, or a protected field whose value changes (a value map,
a transform, another source attribute, a default). A renamed field shows as one removed and one
added; a removed field is left as it is in the CRM (refsync stops writing it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field  # a FieldChange has a `field`
from typing import Any

from refsync.connector.mapping import FieldMap, MappingFile, ObjectMap, format_value

WRITTEN = ("protect", "fill_blank")  # the rules that write to a record refsync did not just create


def content_hash(text: str) -> str:
    """A mapping file's content hash (sha256 of its UTF-8 text): what the ledger records as active."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(digest: str | None) -> str:
    return digest[:12] if digest else "none"


@dataclass
class FieldChange:
    """One mapped field that differs between two mappings, and the records it would rewrite."""

    role: str  # lead / deal: the mapping table
    object: str  # the CRM object
    field: str
    change: str  # added, removed, changed
    detail: str  # what differs, in the mapping file's words
    rewrites: int = 0  # linked records whose written value changes
    referrals: set[str] = dataclass_field(default_factory=set, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {"role": self.role, "object": self.object, "field": self.field, "change": self.change,
                "detail": self.detail, "rewrites": self.rewrites}


@dataclass
class MappingDiff:
    fields: list[FieldChange] = dataclass_field(default_factory=list)
    other: list[str] = dataclass_field(default_factory=list)  # changes that rewrite nothing (stages, match keys, ...)
    records: int = 0  # distinct linked records rewritten by any change
    referrals: set[str] = dataclass_field(default_factory=set)  # the referrals owning them

    @property
    def empty(self) -> bool:
        return not self.fields and not self.other


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _field_detail(old: FieldMap, new: FieldMap) -> str:
    before, after = _flat(old.model_dump(by_alias=True)), _flat(new.model_dump(by_alias=True))
    parts = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            parts.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return "; ".join(parts)


def _values_detail(old: FieldMap, new: FieldMap) -> str:
    """Value maps are the commonest edit: name the entries that differ rather than two whole dicts."""
    a, b = old.transform.values, new.transform.values
    if a == b:
        return _field_detail(old, new)
    parts = [f"values[{k!r}]: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    rest = _field_detail(old.model_copy(update={"transform": new.transform}), new)
    return "; ".join([*parts, *([rest] if rest else [])])


def _object_of(old: MappingFile, role: str, new_obj: ObjectMap) -> ObjectMap | None:
    """The old mapping's table for ``role`` when it maps the same CRM object (else nothing carries over)."""
    old_obj: ObjectMap = getattr(old, role)
    return old_obj if old_obj.name == new_obj.name else None


def field_changes(old: MappingFile, new: MappingFile) -> MappingDiff:
    """Every mapped field that differs, and every other difference, with no counts yet."""
    diff = MappingDiff()
    for role in ("lead", "deal"):
        new_obj: ObjectMap = getattr(new, role)
        old_obj = _object_of(old, role, new_obj)
        if old_obj is None:
            diff.other.append(f"{role}.name: {getattr(old, role).name!r} -> {new_obj.name!r} (records linked on the "
                              "old object are no longer written)")
            old_fields: dict[str, FieldMap] = {}
        else:
            old_fields = old_obj.fields
        for name in sorted(set(old_fields) | set(new_obj.fields)):
            before, after = old_fields.get(name), new_obj.fields.get(name)
            if before == after:
                continue
            if after is None:
                diff.fields.append(FieldChange(role, new_obj.name, name, "removed",
                                               "no longer written; the CRM keeps its value"))
            elif before is None:
                diff.fields.append(FieldChange(role, new_obj.name, name, "added",
                                               f"from {after.source!r}, rule {after.rule!r}"))
            else:
                assert before is not None
                diff.fields.append(FieldChange(role, new_obj.name, name, "changed", _values_detail(before, after)))
        if old_obj is not None:
            for key in ("id_field", "match_keys", "match_objects", "allow_duplicate_save", "create"):
                if getattr(old_obj, key) != getattr(new_obj, key):
                    diff.other.append(f"{role}.{key}: {getattr(old_obj, key)!r} -> {getattr(new_obj, key)!r}")
    if old.stages != new.stages:
        diff.other.append("stages: the stage map changed (applies to stage moves read from now on)")
    for key in ("stage_field", "owner_field", "pipeline_field", "amount_field", "currency_field", "close_date_field",
                "lost_reason_field", "restore_limit", "restore_window_hours"):
        if getattr(old, key) != getattr(new, key):
            diff.other.append(f"{key}: {getattr(old, key)!r} -> {getattr(new, key)!r}")
    return diff


def _written(mapped: FieldMap | None, referral: Mapping[str, Any]) -> tuple[bool, Any]:
    """(whether refsync writes this field to an existing record, the value it writes)."""
    if mapped is None or mapped.rule not in WRITTEN:
        return False, None
    return True, format_value(referral.get(mapped.source), mapped, None)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def rewrites(change: FieldChange, old_obj: ObjectMap | None, new_obj: ObjectMap, referral: Mapping[str, Any]) -> bool:
    """Whether ``change`` makes refsync write a different value onto this referral's record."""
    after = new_obj.fields.get(change.field)
    writes, value = _written(after, referral)
    if not writes or _blank(value):
        return False
    wrote, before = _written(old_obj.fields.get(change.field) if old_obj is not None else None, referral)
    if not wrote:
        return True  # a new field (or one no longer ignored): filled on every linked record
    assert after is not None
    return after.rule == "protect" and before != value  # fill_blank never overwrites a value


def count_rewrites(diff: MappingDiff, old: MappingFile, new: MappingFile,
                   referrals: Iterable[Mapping[str, Any]]) -> MappingDiff:
    """Fill in, per field change, the linked records it rewrites; ``referrals`` are the ledger's
    credited referrals with their active ``links`` ({object, record_id}) on this CRM."""
    by_role = [(role, getattr(new, role), _object_of(old, role, getattr(new, role))) for role in ("lead", "deal")]
    changes = {(c.role, c.field): c for c in diff.fields}
    records: set[tuple[str, str]] = set()
    for referral in referrals:
        for role, new_obj, old_obj in by_role:
            linked = [lk["record_id"] for lk in referral["links"] if lk["object"] == new_obj.name]
            if not linked:
                continue
            for name in new_obj.fields:
                change = changes.get((role, name))
                if change is None or not rewrites(change, old_obj, new_obj, referral):
                    continue
                change.rewrites += len(linked)
                change.referrals.add(str(referral["id"]))
                diff.referrals.add(str(referral["id"]))
                records.update((new_obj.name, rid) for rid in linked)
    diff.records = len(records)
    return diff


def fields_for(diff: MappingDiff, referral_id: str) -> list[str]:
    """The changed fields (``Object.Field``) a referral's re-push rewrites: for its audit event."""
    return [f"{c.object}.{c.field}" for c in diff.fields if referral_id in c.referrals]


def diff_json(crm: str, path: str, active: str | None, on_disk: str, diff: MappingDiff | None,
              note: str | None = None) -> dict[str, Any]:
    """One CRM's entry of `refsync mappings diff --json` (shape documented in the README)."""
    return {"crm": crm, "file": path, "active_hash": active, "file_hash": on_disk,
            "changed": active != on_disk, "note": note,
            "fields": [c.as_json() for c in diff.fields] if diff else [],
            "other": list(diff.other) if diff else [],
            "records_rewritten": diff.records if diff else 0,
            "referrals_rewritten": len(diff.referrals) if diff else 0}


def summary(diff: MappingDiff, limit: int = 8) -> list[str]:
    """Short lines for a log or an alert."""
    lines = [f"{c.object}.{c.field} {c.change} ({c.rewrites} records)" for c in diff.fields[:limit]]
    return lines + ([f"... and {len(diff.fields) - limit} more"] if len(diff.fields) > limit else [])
