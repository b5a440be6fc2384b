"""Live mapping files: the daemon picks up an edited mapping file on SIGHUP and when the file changes.

:class:`MappingWatch` looks at each CRM's mapping file (its mtime and size every few seconds, its
content hash when they moved). A new content is validated first, the same checks `refsync mappings
check` makes: the file's own structure, then the live CRM schema (read again, so a field the admin
just created counts). A broken file is refused with a ``mapping_rejected`` alert and an error log
line naming file and line, and the CRM keeps running the mapping it had; a later good edit (or the
old content put back) resolves the alert. A good one replaces the target's mapping under the CRM's
lock (between jobs, never in the middle of a push or poll) and is rolled out (connector/rollout.py).
A CRM that cannot be asked about its schema right now keeps its mapping; the check is tried again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from refsync.adapters.errors import CrmConfigError, CrmError
from refsync.connector import schemas as schema_cache
from refsync.connector.logs import get_logger
from refsync.connector.mapping import LoadedMapping, load_mapping
from refsync.connector.mapping_diff import content_hash, short
from refsync.connector.push import CrmTarget
from refsync.connector.rollout import roll_out
from refsync.errors import ConfigError
from refsync.state.ledger import Ledger
from refsync.state.notifications import sync_alerts
from refsync.state.observe import observing

log = get_logger("refsync.reload")
REJECTED = "mapping_rejected"
RETRY_UNREACHABLE = timedelta(seconds=30)  # a CRM that could not validate a new file is asked again after this
_WHERE = re.compile(r"^(?P<file>.+?):(?P<line>\d+|\?): ")
_TOML_AT = re.compile(r"at line (\d+)")


def where(problem: str) -> tuple[str | None, int | None]:
    """(file, line) a problem line starts with (``FILE:LINE: ...``), as far as it says."""
    found = _WHERE.match(problem)
    if found is None:
        at = _TOML_AT.search(problem)  # "FILE: not valid TOML: ... (at line 3, column 7)"
        return (problem.split(": ", 1)[0] or None, int(at.group(1))) if at else (None, None)
    line = found.group("line")
    return found.group("file"), int(line) if line.isdigit() else None


def validate(ledger: Ledger | None, target: CrmTarget, path: Path) -> tuple[CrmTarget | None, list[str]]:
    """A candidate target running the file at ``path`` (schemas read live), or the problems that
    refuse it. CrmError propagates when the CRM cannot be asked (nothing is decided then)."""
    try:
        loaded = load_mapping(path)
    except ConfigError as exc:
        return None, list(exc.problems)
    problems = crm_mismatch(loaded, target.name)
    if problems:
        return None, problems
    candidate = CrmTarget(target.name, target.adapter, loaded.mapping, {}, limits=target.limits, loaded=loaded,
                          not_ready="validating", schema_refresh=target.schema_refresh,
                          seen={o: dict(f) for o, f in target.seen.items()})
    try:
        schema_cache.load(ledger, candidate, target.schema_refresh, force=True)
    except CrmConfigError as exc:
        if getattr(exc.__cause__, "status", None) == 404 or exc.code in ("NOT_FOUND", "INVALID_TYPE",
                                                                          "OBJECT_NOT_FOUND"):
            return None, [f"{loaded.where('lead', 'name')}: {target.name} has no object among "
                          f"{[o.name for o in loaded.mapping.objects()]}: {exc}"]
        raise
    _drift, problems, seen = schema_cache.drift_and_check(loaded, candidate.schemas, candidate.stages or [],
                                                          candidate.seen)
    candidate.seen = seen
    return (None, problems) if problems else (candidate, [])


def crm_mismatch(loaded: LoadedMapping, crm: str) -> list[str]:
    if loaded.mapping.crm == crm:
        return []
    return [f"{loaded.where('crm')}: crm: this file maps {loaded.mapping.crm!r} but is configured as "
            f"crm.{crm}.mapping; point crm.{crm}.mapping at the {crm} mapping file"]


@dataclass
class _Watched:
    path: Path
    stamp: tuple[int, int] | None  # (mtime_ns, size) last looked at
    digest: str  # the content running now
    refused: str | None = None  # the content last refused (not validated again until it changes)
    retry_at: datetime | None = None  # the CRM could not validate: ask again from then


class MappingWatch:
    """Each CRM's mapping file as the daemon runs it (see the module docstring)."""

    def __init__(self, ledger: Ledger, targets: dict[str, CrmTarget]) -> None:
        self.ledger = ledger
        self.targets = targets
        self.files: dict[str, _Watched] = {}
        for name, target in targets.items():
            assert target.loaded is not None
            self.files[name] = _Watched(target.loaded.path, _stamp(target.loaded.path),
                                        content_hash(target.loaded.text))

    def start(self) -> None:
        """At start-up: roll out a mapping changed while the daemon was stopped; the file loaded,
        so an alert an earlier process raised about it is resolved."""
        for name, target in self.targets.items():
            with target.lock:
                roll_out(self.ledger, target)
            sync_alerts(self.ledger, [], scope=[(REJECTED, name)])

    def check(self, *, forced: bool = False) -> None:
        """Look at every file; reload those whose content changed (``forced``: SIGHUP, validate a
        refused or unvalidated file again too)."""
        for name, watched in self.files.items():
            stamp = _stamp(watched.path)
            now = self.ledger.clock()
            due = watched.retry_at is not None and now >= watched.retry_at
            if stamp == watched.stamp and not forced and not due:
                continue
            watched.stamp = stamp
            try:
                text = watched.path.read_text(encoding="utf-8")
            except OSError as exc:
                self._refuse(name, watched, f"missing:{stamp}",
                             [f"{watched.path}: cannot read mapping file ({exc.strerror})"])
                continue
            digest = content_hash(text)
            if digest == watched.digest:
                if watched.refused is not None:  # the running content was put back
                    watched.refused, watched.retry_at = None, None
                    self._resolve(name, watched, "mapping file back to the content running; alert resolved")
                continue
            if digest == watched.refused and not forced:
                continue
            target = self.targets[name]
            with target.lock:  # between jobs: never while this CRM's push or poll runs
                self._reload(name, target, watched, digest)

    def _reload(self, name: str, target: CrmTarget, watched: _Watched, digest: str) -> None:
        try:
            candidate, problems = validate(self.ledger, target, watched.path)
        except CrmError as exc:
            watched.retry_at = self.ledger.clock() + RETRY_UNREACHABLE
            log.warning("mapping file changed but the CRM cannot check it now; the previous mapping keeps "
                        "running, checked again shortly", crm=name, file=str(watched.path), error=str(exc),
                        retry_in_seconds=RETRY_UNREACHABLE.total_seconds())
            return
        watched.retry_at = None
        if candidate is None:
            self._refuse(name, watched, digest, problems)
            return
        assert candidate.loaded is not None
        loaded = candidate.loaded
        target.mapping, target.loaded = candidate.mapping, loaded
        target.schemas, target.stages = candidate.schemas, candidate.stages
        target.schema_read_at, target.seen = candidate.schema_read_at, candidate.seen
        target.drift = set()
        previous = watched.digest
        watched.digest, watched.refused = content_hash(loaded.text), None
        schema_cache.reckon(self.ledger, target)  # drift alerts as the new mapping sees them
        # A ledger failure from here on leaves the rollout to the next start or `sync --once`
        # (the ledger still records the previous mapping as active).
        rollout = roll_out(self.ledger, target)
        log.info("mapping file reloaded", crm=name, file=str(watched.path), mapping_hash=short(watched.digest),
                 previous_hash=short(previous), referrals_repushed=rollout.planned if rollout else 0)
        self._resolve(name, watched, None)

    def _refuse(self, name: str, watched: _Watched, digest: str, problems: list[str]) -> None:
        first_file, first_line = where(problems[0]) if problems else (None, None)
        watched.refused = digest
        log.error("mapping file refused; the previous mapping keeps running", crm=name,
                  file=first_file or str(watched.path), line=first_line, problems=problems,
                  running_hash=short(watched.digest))
        with observing(self.ledger, name) as ob:
            ob.raise_alert(REJECTED, f"{REJECTED}:{name}",
                           f"{watched.path} was not loaded: " + "; ".join(problems) + f". {name} keeps running the "
                           f"previous mapping ({short(watched.digest)}). Fix the file (`refsync mappings check` "
                           "shows every problem); refsync loads it as soon as it is saved.")

    def _resolve(self, name: str, watched: _Watched, note: str | None) -> None:
        if note:
            log.info(note, crm=name, file=str(watched.path))
        sync_alerts(self.ledger, [], scope=[(REJECTED, name)])


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size
