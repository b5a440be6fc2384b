"""Rolling out a mapping change: the ledger remembers the mapping each CRM runs (its content hash
and text, ``crm_state`` key ``mapping``); when a CRM starts with, or reloads, a different one, the
referrals whose written values change are re-pushed as planned work (actor ``mapping-change``),
so the poll and reconcile never take refsync's own rewrite (nor the old values it replaces) for a
CRM user's overwrite. A change made while the daemon was stopped is found at the next start.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from refsync.connector.logs import get_logger
from refsync.connector.mapping import LoadedMapping, MappingFile
from refsync.connector.mapping_diff import MappingDiff, content_hash, count_rewrites, field_changes, fields_for, short
from refsync.state.crmstate import remember, remembered
from refsync.state.ledger import Ledger
from refsync.state.rollout import linked_referrals, plan_rollout

if TYPE_CHECKING:
    from refsync.connector.push import CrmTarget

log = get_logger("refsync.rollout")
ACTIVE = "mapping"  # crm_state key: {"hash", "path", "text"} of the mapping this CRM runs


@dataclass(frozen=True)
class ActiveMapping:
    digest: str
    path: str
    text: str

    def parsed(self) -> MappingFile | None:
        """The recorded mapping, or None when it no longer parses (written by an older refsync)."""
        try:
            return MappingFile.model_validate(tomllib.loads(self.text))
        except (tomllib.TOMLDecodeError, ValidationError):
            return None


def active_mapping(ledger: Ledger, crm: str) -> ActiveMapping | None:
    stored = remembered(ledger, crm, ACTIVE)
    if stored is None or not stored[0].get("hash"):
        return None
    value = stored[0]
    return ActiveMapping(str(value["hash"]), str(value.get("path") or ""), str(value.get("text") or ""))


def record_active(ledger: Ledger, crm: str, loaded: LoadedMapping) -> None:
    remember(ledger, crm, ACTIVE, {"hash": content_hash(loaded.text), "path": str(loaded.path), "text": loaded.text})


def diff_against(ledger: Ledger, crm: str, old: MappingFile, new: MappingFile) -> MappingDiff:
    """The field changes from ``old`` to ``new`` with the linked records each rewrites (ledger only)."""
    diff = field_changes(old, new)
    if diff.fields:
        count_rewrites(diff, old, new, linked_referrals(ledger, crm))
    return diff


@dataclass(frozen=True)
class Rollout:
    digest: str
    previous: str | None
    planned: int  # referrals planned for a re-push now
    diff: MappingDiff | None


def roll_out(ledger: Ledger, target: CrmTarget) -> Rollout | None:
    """Compare the target's mapping with the one the ledger records as active; when it differs,
    plan the re-push of every referral whose written values change, then record it as active.
    None when nothing changed. Idempotent: a crash before the record replans nothing twice."""
    loaded = target.loaded
    assert loaded is not None
    digest = content_hash(loaded.text)
    active = active_mapping(ledger, target.name)
    if active is not None and active.digest == digest:
        return None
    old = active.parsed() if active is not None else None
    if old is None:
        # First run (or a record no refsync can read): nothing to compare; this mapping is the baseline.
        record_active(ledger, target.name, loaded)
        log.info("mapping recorded as active", crm=target.name, file=str(loaded.path), mapping_hash=short(digest))
        return Rollout(digest, None, 0, None)
    diff = diff_against(ledger, target.name, old, target.mapping)
    plan = {rid: fields_for(diff, rid) for rid in sorted(diff.referrals)}
    planned = plan_rollout(ledger, target.name, plan, digest, active.digest if active else None, str(loaded.path))
    record_active(ledger, target.name, loaded)
    log.info("mapping change rolled out", crm=target.name, file=str(loaded.path), mapping_hash=short(digest),
             previous_hash=short(active.digest if active else None), referrals_repushed=planned,
             records=diff.records, changes=[f"{c.object}.{c.field} {c.change}" for c in diff.fields],
             other=diff.other)
    return Rollout(digest, active.digest if active else None, planned, diff)
