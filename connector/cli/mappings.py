"""`refsync mappings`: the admins' mapping files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from refsync.connector.cli.base import EXIT_PROBLEMS, EXIT_UNUSABLE, Context, crm_targets, handles_errors, print_json
from refsync.errors import ConfigError


@click.group()
def mappings() -> None:
    """Mapping files."""


def _configured_files(obj: Context) -> dict[str, Path]:
    """Each configured CRM's mapping file (the config's crm.*.mapping), by CRM."""
    config = obj.config
    files: dict[str, Path] = {}
    problems: list[str] = []
    for name in ("salesforce", "hubspot"):
        crm = getattr(config.crm, name)
        if crm is None:
            continue
        try:
            files[name] = config.mapping_path(crm.mapping, f"crm.{name}.mapping")
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return files


def _check_offline(obj: Context, paths: tuple[Path, ...]) -> None:
    """Structure only: no credentials, no network, no ledger. Every problem with file and line."""
    from refsync.connector.mapping import load_mapping
    from refsync.connector.reload import crm_mismatch

    files: list[tuple[str | None, Path]] = [(None, p) for p in paths] or [
        (name, path) for name, path in _configured_files(obj).items()]
    if not files:
        raise ConfigError("no CRM is configured, so there is no mapping file to check; add a [crm.*] table or "
                          "name the files: refsync mappings check --offline FILE ...")
    problems: list[str] = []
    for crm, path in files:
        try:
            loaded = load_mapping(path)
        except ConfigError as exc:
            problems += exc.problems
            continue
        found = crm_mismatch(loaded, crm) if crm else []
        problems += found
        if not found:
            mapping = loaded.mapping
            click.echo(f"{path}: structure OK ({mapping.crm}: {mapping.lead.name}, {mapping.deal.name}, "
                       f"{sum(len(s) for s in mapping.stages.values())} stages; not checked against the CRM)")
    if problems:
        click.echo(f"refsync: error: {len(problems)} problem{'s' if len(problems) > 1 else ''} in mapping files:",
                   err=True)
        for problem in problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(EXIT_UNUSABLE)


@mappings.command("check")
@click.option("--offline", is_flag=True,
              help="Check the files' structure only: no CRM credentials, network or ledger needed (for CI).")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print each CRM's result as JSON.")
@click.pass_obj
@handles_errors
def mappings_check(obj: Context, offline: bool, files: tuple[Path, ...], as_json: bool) -> None:
    """Validate the mapping files against the live CRM schemas; every problem with file and line.
    Exit 2 when a mapping is wrong or a CRM refuses refsync's credentials or setup (a configuration
    to fix); exit 1 when a CRM could not be reached (nothing checked) or a mapped field drifted.

    With --offline, FILES (default: the configured mapping files) are checked for structure alone."""
    if offline:
        _check_offline(obj, files)
        return
    if files:
        raise click.UsageError("FILES are checked with --offline; without it the configured files are checked "
                               "against their CRM")
    from refsync.connector.intake import MAX_LENGTH
    from refsync.connector.mapping import length_warnings

    targets = crm_targets(obj, ledger_optional=True)
    results: dict[str, dict[str, Any]] = {}
    for name, target in targets.items():
        warnings = (length_warnings(target.loaded, target.schemas, MAX_LENGTH)
                    if target.ready and target.loaded is not None else [])
        results[name] = {
            "ok": target.ready and not target.drift,
            "checked": target.ready, "reason": target.not_ready, "misconfigured": target.misconfigured,
            "mapping": str(target.loaded.path) if target.loaded is not None else None,
            "objects": [target.mapping.lead.name, target.mapping.deal.name],
            "stages": sum(len(s) for s in target.mapping.stages.values()),
            "drift": [f"{o}.{f}" for o, f in sorted(target.drift)], "warnings": warnings}
        if as_json:
            continue
        if not target.ready:
            click.echo(f"refsync: {'error' if target.misconfigured else 'problem'}: {name}: not checked: "
                       f"{target.not_ready}", err=True)
            continue
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        drift = f"; drifted, left out: {', '.join(results[name]['drift'])}" if target.drift else ""
        click.echo(f"{name}: mapping OK ({target.mapping.lead.name}, {target.mapping.deal.name}, "
                   f"{results[name]['stages']} stages{drift})")
    if as_json:
        print_json(results)
    if any(t.misconfigured for t in targets.values()):
        sys.exit(EXIT_UNUSABLE)
    if not all(t.ready and not t.drift for t in targets.values()):
        sys.exit(EXIT_PROBLEMS)


@mappings.command("diff")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array, one object per CRM.")
@click.pass_obj
@handles_errors
def mappings_diff(obj: Context, as_json: bool) -> None:
    """How each mapping file on disk differs from the mapping refsync runs (recorded in the ledger),
    and how many linked records each change would rewrite. Reads the ledger only: no CRM call."""
    from refsync.connector.mapping import load_mapping
    from refsync.connector.mapping_diff import content_hash, diff_json, short
    from refsync.connector.rollout import active_mapping, diff_against

    ledger = obj.ledger()
    entries = []
    for name, path in _configured_files(obj).items():
        loaded = load_mapping(path)  # a broken file: every problem with file and line, exit 2
        on_disk = content_hash(loaded.text)
        active = active_mapping(ledger, name)
        old = active.parsed() if active is not None else None
        if active is None or old is None:
            note = ("no active mapping recorded yet: the next `refsync run` or `sync --once` records this file "
                    "and rewrites nothing") if active is None else (
                "the recorded mapping cannot be read; nothing to compare")
            entries.append(diff_json(name, str(path), active.digest if active else None, on_disk, None, note))
            continue
        diff = None if active.digest == on_disk else diff_against(ledger, name, old, loaded.mapping)
        entries.append(diff_json(name, str(path), active.digest, on_disk, diff,
                                 None if diff is None or not diff.empty else "only comments or layout changed"))
    if as_json:
        print_json(entries)
        return
    for entry in entries:
        head = (f"{entry['crm']}: {entry['file']} (active {short(entry['active_hash'])}, "
                f"on disk {short(entry['file_hash'])})")
        if not entry["changed"]:
            click.echo(f"{head}: no change")
            continue
        click.echo(f"{head}: {entry['records_rewritten']} records of {entry['referrals_rewritten']} referrals "
                   "would be rewritten")
        if entry["note"]:
            click.echo(f"  {entry['note']}")
        for change in entry["fields"]:
            click.echo(f"  {change['object']}.{change['field']}: {change['change']}: {change['detail']} -> "
                       f"{change['rewrites']} records")
        for other in entry["other"]:
            click.echo(f"  {other} (rewrites nothing)")
