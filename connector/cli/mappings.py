"""`refsync mappings`: the admins' mapping files."""

from __future__ import annotations

import sys
from typing import Any

import click

from refsync.connector.cli.base import EXIT_PROBLEMS, EXIT_UNUSABLE, Context, crm_targets, handles_errors, print_json


@click.group()
def mappings() -> None:
    """Mapping files."""


@mappings.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print each CRM's result as JSON.")
@click.pass_obj
@handles_errors
def mappings_check(obj: Context, as_json: bool) -> None:
    """Validate the mapping files against the live CRM schemas; every problem with file and line.
    Exit 2 when a mapping is wrong or a CRM refuses refsync's credentials or setup (a configuration
    to fix); exit 1 when a CRM could not be reached (nothing checked) or a mapped field drifted."""
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
