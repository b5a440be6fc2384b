"""`refsync alerts`: discrepancy alerts for ops."""

from __future__ import annotations

import sys

import click

from refsync.connector.cli.base import EXIT_PROBLEMS, Context, handles_errors, print_json, print_table


@click.command()
@click.option("--kind", help="Only alerts of this kind (e.g. attribution_overwritten, orphaned_link).")
@click.option("--open", "open_only", is_flag=True, help="Only alerts not resolved yet.")
@click.option("--resolved", "resolved_only", is_flag=True, help="Only alerts that resolved themselves.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def alerts(obj: Context, kind: str | None, open_only: bool, resolved_only: bool, as_json: bool) -> None:
    """Discrepancy alerts, newest first; exits 1 while any is open."""
    from refsync.state.notifications import alerts as list_alerts

    if open_only and resolved_only:
        raise click.UsageError("--open and --resolved exclude each other; give one")
    rows = list_alerts(obj.ledger(), kind=kind, open_only=open_only, resolved_only=resolved_only)
    if as_json:
        print_json(rows)
    else:
        print_table(f"{len(rows)} alerts", ["id", "kind", "count", "last seen", "resolved", "message"], [
            [a["id"], a["kind"], a["count"], a["last_seen"], a["resolved_at"], a["message"]] for a in rows])
    if any(a["resolved_at"] is None for a in rows):
        sys.exit(EXIT_PROBLEMS)
