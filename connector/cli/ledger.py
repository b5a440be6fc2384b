"""`refsync init`, `import`, `status` and `demo`: the ledger and its state."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.console import Console

from refsync.connector.cli.base import (
    EXIT_PROBLEMS,
    Context,
    handles_errors,
    print_json,
    print_table,
)
from refsync.errors import InputError
from refsync.shipped import shipped_path
from refsync.state import db


@click.command()
@click.option("--example", is_flag=True,
              help="Write a commented refsync.toml to start from (to PATH) instead of touching the ledger.")
@click.argument("path", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.pass_obj
@handles_errors
def init(obj: Context, example: bool, path: str | None, as_json: bool) -> None:
    """Create the ledger, or migrate it to this version's schema.

    With --example: write the shipped example configuration to PATH (default ./refsync.toml; a
    folder gets a refsync.toml inside), never over an existing file, and show where the shipped
    default mappings are."""
    if example:
        written = write_example_config(path or "refsync.toml")
        if as_json:
            print_json({"config": str(written), "mappings": str(shipped_path("mappings"))})
            return
        click.echo(f"wrote {written}: edit it, then run `refsync --config {written} init`")
        click.echo(f"default mappings (used when a mapping path is not found beside the config): "
                   f"{shipped_path('mappings')}; copy one beside the config to change it")
        return
    if path is not None:
        raise click.UsageError("PATH is only taken with --example (the ledger's place is [ledger] url in the config)")
    ledger = obj.ledger(require_current=False)
    before, after = db.upgrade(ledger.engine)
    where = ledger.engine.url.render_as_string(hide_password=True)
    if as_json:
        done = "up_to_date" if before == after else "created" if before is None else "migrated"
        print_json({"ledger": where, "action": done, "schema_before": before, "schema": after})
    elif before == after:
        click.echo(f"ledger at {where} is up to date (schema {after})")
    elif before is None:
        click.echo(f"ledger created at {where} (schema {after})")
    else:
        click.echo(f"ledger at {where} migrated from schema {before} to {after}")


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@handles_errors
def import_(obj: Context, file: Path, as_json: bool) -> None:
    """Import referrals from a CSV or JSONL file (see README for the columns)."""
    from refsync.connector.imports import import_file

    if not file.exists():
        raise InputError(f"{file}: no such file")
    ledger = obj.ledger()
    now = datetime.now(UTC)
    policy = obj.config.attribution.policy()
    if sys.stderr.isatty() and not as_json:
        from rich.progress import Progress

        rows = max(sum(1 for _ in file.open("rb")) - 1, 1)
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(f"importing {file.name}", total=rows)
            report = import_file(ledger, file, policy, now, progress=lambda n: bar.advance(task, n))
    else:
        report = import_file(ledger, file, policy, now)
    if as_json:
        print_json(report.as_json())
    else:
        for problem in report.rejected:
            click.echo(f"rejected {problem.describe(str(file))}", err=True)
        for note in report.notes:
            click.echo(f"note {note.describe(str(file))}", err=True)
        click.echo(
            f"{file}: {report.imported} imported, {report.unchanged} unchanged (already in the ledger), "
            f"{report.rejected_rows} rejected"
            + (f", {report.duplicates} duplicate prospects resolved by first-to-refer" if report.duplicates else "")
        )
    if report.rejected or any(n.column and n.reason.startswith("unknown") for n in report.notes):
        sys.exit(EXIT_PROBLEMS)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handles_errors
def status(obj: Context, as_json: bool) -> None:
    """Ops by state, stuck ops, workers, the leader, poll cursors, the last run of each job and each
    CRM's readiness. Exits 1 while ops are dead or stuck (in flight under a dead worker or past their
    lease, or failed and overdue for their next attempt by more than the grace, see
    :func:`stuck_grace`), or while a CRM is not ready."""
    from refsync.connector.crms import remembered_readiness
    from refsync.state.workers import stuck_ops, workers_view

    ledger = obj.ledger()
    view = {**ledger.status(), "crms": remembered_readiness(ledger)}
    view["stuck"] = stuck_ops(ledger, stuck_grace(obj.config.daemon.push_interval_seconds))
    view["workers"] = workers_view(ledger)
    view["leader"] = ledger.lease_holder()  # the replica that polls, expires, reconciles and prunes
    waiting = {name: c for name, c in view["crms"].items() if not c["ready"]}
    problems = bool(view["ops"].get("dead") or any(view["stuck"].values()) or waiting)
    if as_json:
        print_json(view)
        if problems:
            sys.exit(EXIT_PROBLEMS)
        return
    click.echo("ops: " + ", ".join(f"{k}={v}" for k, v in view["ops"].items()))
    click.echo("stuck: " + ", ".join(f"{k}={v}" for k, v in view["stuck"].items()))
    click.echo("referrals: " + (", ".join(f"{k}={v}" for k, v in sorted(view["referrals"].items())) or "none"))
    leader = view["leader"]
    click.echo(f"leader: {leader['worker']} (poller lease until {leader['until']})" if leader["worker"]
               else "leader: none (no replica holds the poller lease: `refsync run` is not running, or one takes it "
                    "within seconds)")
    print_table("cursors", ["crm", "object", "position"],
           [[c["crm"], c["object"], c["position"]] for c in view["cursors"]])
    print_table("last runs", ["job", "started", "finished", "status", "counts"],
           [[job, r["started_at"], r["finished_at"], r["status"], json.dumps(r["counts"])]
            for job, r in sorted(view["last_runs"].items())])
    print_table("workers", ["id", "started", "last beat", "alive"],
           [[w["id"], w["started_at"], w["heartbeat_at"], "yes" if w["alive"] else "NO"] for w in view["workers"]])
    print_table("crms", ["crm", "ready", "since", "reason"],
           [[name, "yes" if c["ready"] else "NO", c["since"], c["reason"] or ""] for name, c in view["crms"].items()])
    if problems:
        sys.exit(EXIT_PROBLEMS)


def write_example_config(path: str) -> Path:
    """Copy the shipped, commented config.example.toml to ``path`` (a refsync.toml inside it, when a
    folder or ending in /); an existing file is refused, never overwritten (InputError: exit 2)."""
    target = Path(path) / "refsync.toml" if path.endswith(("/", os.sep)) or Path(path).is_dir() else Path(path)
    try:
        with target.open("x", encoding="utf-8") as out:
            out.write(shipped_path("config.example.toml").read_text(encoding="utf-8"))
    except FileExistsError:
        raise InputError(f"{target} already exists; refsync init --example never overwrites a file: "
                         "move it away or give another PATH") from None
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror}; check that its folder exists and is "
                         "writable") from None
    return target


def stuck_grace(push_interval_seconds: int) -> timedelta:
    """How far past its next attempt a failed op may be before it counts as stuck: 15 minutes, or
    three push intervals when longer (a daemon retries it within one interval; a `sync --once` cron
    job every few minutes too). Longer than that, nothing is retrying it."""
    return max(timedelta(minutes=15), timedelta(seconds=3 * push_interval_seconds))



@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=".demo",
              show_default=True, help="Where the demo keeps its config and ledger.")
@click.option("--portal", is_flag=True, help="Then serve the partner portal and the dashboard until Ctrl-C.")
@click.option("--listen", default="127.0.0.1:8787", show_default=True, help="Where --portal serves them.")
@handles_errors
def demo(directory: Path, portal: bool, listen: str) -> None:
    """Run the whole story against an embedded SQLite ledger (and the sandbox CRMs)."""
    from refsync.connector.demo import run_demo

    sys.exit(run_demo(directory, portal_listen=listen if portal else None))
