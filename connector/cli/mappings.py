"""`refsync mappings`: the admins' mapping files."""

from __future__ import annotations

import sys

import click

from refsync.connector.cli.base import EXIT_PROBLEMS, Context, crm_targets, handles_errors


@click.group()
def mappings() -> None:
    """Mapping files."""


@mappings.command("check")
@click.pass_obj
@handles_errors
def mappings_check(obj: Context) -> None:
    """Validate the mapping files against the live CRM schemas; every problem with file and line."""
    from refsync.connector.intake import MAX_LENGTH
    from refsync.connector.mapping import length_warnings

    targets = crm_targets(obj, ledger_optional=True)
    for name, target in targets.items():
        if not target.ready:
            click.echo(f"refsync: problem: {name}: not checked: {target.not_ready}", err=True)
            continue
        if target.loaded is not None:
            for warning in length_warnings(target.loaded, target.schemas, MAX_LENGTH):
                click.echo(f"warning: {warning}", err=True)
        drift = f"; drifted, left out: {', '.join(f'{o}.{f}' for o, f in sorted(target.drift))}" if target.drift else ""
        click.echo(f"{name}: mapping OK ({target.mapping.lead.name}, {target.mapping.deal.name}, "
                   f"{sum(len(s) for s in target.mapping.stages.values())} stages{drift})")
    if not all(t.ready and not t.drift for t in targets.values()):
        sys.exit(EXIT_PROBLEMS)
