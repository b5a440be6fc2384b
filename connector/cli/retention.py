"""`refsync prune`: delete finished work older than ``[retention]`` allows (the daemon does it daily)."""

from __future__ import annotations

import click

from refsync.connector.cli.base import Context, handles_errors, print_json

LABELS = {"done_ops": "done ops", "delivered_notifications": "delivered webhook notifications",
          "job_runs": "job runs"}
DAYS = {"done_ops": "done_ops_days", "delivered_notifications": "delivered_notifications_days",
        "job_runs": "job_runs_days"}


@click.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handles_errors
def prune(obj: Context, dry_run: bool, as_json: bool) -> None:
    """Delete done ops, delivered webhook notifications and job runs older than [retention] keeps
    them (0 days: kept forever). Audit events and status transitions are always kept."""
    from refsync.connector.retention import prune_ledger

    retention = obj.config.retention
    result = prune_ledger(obj.ledger(), retention, dry_run=dry_run)
    if as_json:
        print_json(result)
        return
    verb = "would delete" if dry_run else "deleted"
    for name, count in result["pruned"].items():
        days = getattr(retention, DAYS[name])
        if days:
            click.echo(f"{LABELS[name]}: {verb} {count} (older than {days} days)")
        else:
            click.echo(f"{LABELS[name]}: kept forever (retention.{DAYS[name]} = 0)")
