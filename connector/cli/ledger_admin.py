"""`refsync ledger copy` and `refsync ledger backup`: moving and saving the whole ledger."""

from __future__ import annotations

from pathlib import Path

import click

from refsync.connector.cli.base import Context, handles_errors, print_json


@click.group()
def ledger() -> None:
    """Copy the ledger into another database, or back up a SQLite ledger."""


@ledger.command("copy")
@click.option("--to", "url", required=True, metavar="URL",
              help="The target database, empty, e.g. postgresql+psycopg://refsync@db.internal/refsync.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@handles_errors
def copy_cmd(obj: Context, url: str, as_json: bool) -> None:
    """Copy every table of the configured ledger into an empty database (created or migrated to this
    version's schema first), ids kept, and check each table's row count. Stop `refsync run` first:
    what it writes after the copy started stays behind. Exit 2 when the target holds any row."""
    from refsync.state import transfer
    from refsync.state.workers import workers_view

    source = obj.ledger()
    running = [w["id"] for w in workers_view(source) if w["alive"]]
    if running:
        click.echo(f"refsync: warning: {len(running)} refsync process(es) work on this ledger ({', '.join(running)}); "
                   "the copy is a consistent snapshot, but what they write from now on stays behind: stop them "
                   "before you switch to the target", err=True)
    target = transfer.target_engine(url)
    try:
        report = transfer.copy_ledger(source.engine, target)
    finally:
        target.dispose()
    if as_json:
        print_json(report.as_json())
        return
    for table, rows in report.tables.items():
        click.echo(f"  {table}: {rows}")
    click.echo(f"copied {sum(report.tables.values())} rows from {report.source} to {report.target} "
               f"(schema {report.schema}); every table's count matches. Point [ledger] url at the target to use it.")


@ledger.command("backup")
@click.option("--to", "destination", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="The backup file to write (never overwritten).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@handles_errors
def backup_cmd(obj: Context, destination: Path, as_json: bool) -> None:
    """Back up a SQLite ledger while refsync runs (SQLite's online backup), into FILE, 0600. For a
    PostgreSQL ledger use pg_dump. Restore: stop refsync, copy FILE over the ledger file (removing
    its -wal and -shm files), start refsync."""
    from refsync.state import transfer

    report = transfer.backup_sqlite(obj.ledger().engine, destination)
    if as_json:
        print_json(report.as_json())
        return
    click.echo(f"backed up {report.source} to {report.backup} ({report.bytes} bytes, schema {report.schema})")
