"""The `refsync` command line.

Exit codes (contract): 0 done; 1 done with rejected input or open problems reported; 2 unusable
invocation or configuration. Errors are one short line on stderr; ``--debug`` adds the traceback.
Read commands print one JSON document on stdout with ``--json``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from connector import logs
from connector.config import Config, load_config
from connector.errors import ConfigError, InputError, LedgerError, RefsyncError
from state import db
from state.ledger import Ledger
from state.models import STATUSES

F = TypeVar("F", bound=Callable[..., Any])
EXIT_OK, EXIT_PROBLEMS, EXIT_UNUSABLE = 0, 1, 2
log = logs.get_logger("refsync.cli")


class Context:
    def __init__(self, config_path: str | None, debug: bool) -> None:
        self.config_path = config_path
        self.debug = debug
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
            logs.configure(
                self._config.logging.format, "debug" if self.debug else self._config.logging.level,
                secrets=self._config.secrets(),
            )
        return self._config

    def ledger(self, require_current: bool = True) -> Ledger:
        return Ledger.open(self.config.ledger_url(), require_current=require_current,
                           worker_timeout=timedelta(seconds=self.config.daemon.worker_timeout_seconds))

    def worker(self, ledger: Ledger) -> AbstractContextManager[str]:
        """Register this process as a worker for a command that claims ops or leases (connector/worker.py)."""
        from connector.worker import registered_worker

        return registered_worker(ledger, self.config.daemon.heartbeat_seconds)


def _fail(message: str, code: int, debug: bool) -> None:
    click.echo(f"refsync: error: {message}", err=True)
    if debug:
        log.exception("command failed")
    sys.exit(code)


def handles_errors(func: F) -> F:
    """Turn refsync's errors into one clear line and the contract's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        debug = bool(ctx and ctx.debug)
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            problems = exc.problems
            head = "the configuration has a problem" if len(problems) == 1 else (
                f"the configuration has {len(problems)} problems")
            click.echo(f"refsync: error: {head}:", err=True)
            for problem in problems:
                click.echo(f"  {problem}", err=True)
            if debug:
                log.exception("configuration refused")
            sys.exit(EXIT_UNUSABLE)
        except (InputError, LedgerError) as exc:
            _fail(str(exc), EXIT_UNUSABLE, debug)
        except RefsyncError as exc:
            _fail(str(exc), EXIT_PROBLEMS, debug)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback only with --debug
            if debug:
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback)",
                  EXIT_UNUSABLE, debug)

    return wrapper  # type: ignore[return-value]


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _parse_since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not an ISO 8601 date or time, e.g. 2026-01-31") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", envvar="REFSYNC_CONFIG", type=click.Path(dir_okay=False),
              help="Config file (default: $REFSYNC_CONFIG, else ./refsync.toml).")
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """refsync keeps partner referral attribution on your CRM, and proves it."""
    logs.configure(level="debug" if debug else "warning")
    ctx.obj = Context(config_path, debug)


@cli.command()
@click.pass_obj
@handles_errors
def init(obj: Context) -> None:
    """Create the ledger, or migrate it to this version's schema."""
    ledger = obj.ledger(require_current=False)
    before, after = db.upgrade(ledger.engine)
    where = ledger.engine.url.render_as_string(hide_password=True)
    if before == after:
        click.echo(f"ledger at {where} is up to date (schema {after})")
    elif before is None:
        click.echo(f"ledger created at {where} (schema {after})")
    else:
        click.echo(f"ledger at {where} migrated from schema {before} to {after}")


@cli.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@handles_errors
def import_(obj: Context, file: Path, as_json: bool) -> None:
    """Import referrals from a CSV or JSONL file (see README for the columns)."""
    from connector.imports import import_file

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
        _print_json(report.as_json())
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


@cli.group()
def referrals() -> None:
    """List and inspect referrals."""


@referrals.command("list")
@click.option("--partner", help="Only this partner code.")
@click.option("--status", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--since", help="Submitted at or after this ISO 8601 date/time.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see README for the shape).")
@click.pass_obj
@handles_errors
def referrals_list(obj: Context, partner: str | None, status: str | None, since: str | None,
                   limit: int | None, as_json: bool) -> None:
    """Referrals in submission order."""
    rows = obj.ledger().referrals(partner=partner, status=status, since=_parse_since(since), limit=limit)
    if as_json:
        _print_json(rows)
        return
    _table(f"{len(rows)} referrals", ["id", "partner", "prospect", "status", "submitted", "credit", "links"], [
        [r["id"], r["partner"], r["prospect_email"] or r["prospect_company"], r["status"], r["submitted_at"],
         r["attribution"]["reason"] + (" (review)" if r["attribution"]["review_required"] else ""),
         ", ".join(f"{lk['crm']}:{lk['object']}:{lk['record_id']}"
                   + ("" if lk["state"] == "active" else f" ({lk['state']})") for lk in r["links"])]
        for r in rows
    ])


@referrals.command("show")
@click.argument("referral_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handles_errors
def referrals_show(obj: Context, referral_id: str, as_json: bool) -> None:
    """One referral with its whole audit timeline."""
    view = obj.ledger().referral(referral_id)
    if view is None:
        raise InputError(f"no referral with id {referral_id}; `refsync referrals list` shows the ids")
    if as_json:
        _print_json(view)
        return
    for key in ("id", "external_id", "partner", "prospect_email", "prospect_company", "prospect_name",
                "source", "medium", "campaign", "status", "submitted_at"):
        click.echo(f"{key:>17}: {view[key] if view[key] is not None else ''}")
    att = view["attribution"]
    click.echo(f"{'attribution':>17}: {att['reason']} (model {att['model']}, policy {att['policy_version']}"
               + (", needs review" if att["review_required"] else "")
               + (f", credit held by {att['duplicate_of']}" if att["duplicate_of"] else "") + ")")
    _table("timeline", ["at", "event", "reason", "actor", "where", "detail"], [
        [e["at"], e["kind"], e["reason_code"], e["actor"],
         ":".join(x for x in (e["crm"], e["object"], e["record_id"]) if x),
         json.dumps(e["detail"], default=str) if e["detail"] else ""]
        for e in view["timeline"]
    ])
    _table("status history", ["at", "status", "source"],
           [[t["at"], t["status"], t["source"]] for t in view["status_history"]])


@cli.group()
def partners() -> None:
    """Partners known to the ledger."""


@partners.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handles_errors
def partners_list(obj: Context, as_json: bool) -> None:
    rows = obj.ledger().partners()
    if as_json:
        _print_json(rows)
        return
    _table(f"{len(rows)} partners", ["code", "referrals", "by status", "since"], [
        [p["code"], p["referrals"], ", ".join(f"{k}={v}" for k, v in sorted(p["by_status"].items())),
         p["created_at"]] for p in rows
    ])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handles_errors
def status(obj: Context, as_json: bool) -> None:
    """Ops by state, stuck ops, workers, poll cursors, the last run of each job and each CRM's
    readiness. Exits 1 while ops are dead or stuck (in flight under a dead worker or past their
    lease, or failed and overdue for their next attempt by more than the grace, see
    :func:`stuck_grace`), or while a CRM is not ready."""
    from connector.crms import remembered_readiness
    from state.workers import stuck_ops, workers_view

    ledger = obj.ledger()
    view = {**ledger.status(), "crms": remembered_readiness(ledger)}
    view["stuck"] = stuck_ops(ledger, stuck_grace(obj.config.daemon.push_interval_seconds))
    view["workers"] = workers_view(ledger)
    waiting = {name: c for name, c in view["crms"].items() if not c["ready"]}
    problems = bool(view["ops"].get("dead") or any(view["stuck"].values()) or waiting)
    if as_json:
        _print_json(view)
        if problems:
            sys.exit(EXIT_PROBLEMS)
        return
    click.echo("ops: " + ", ".join(f"{k}={v}" for k, v in view["ops"].items()))
    click.echo("stuck: " + ", ".join(f"{k}={v}" for k, v in view["stuck"].items()))
    click.echo("referrals: " + (", ".join(f"{k}={v}" for k, v in sorted(view["referrals"].items())) or "none"))
    _table("cursors", ["crm", "object", "position"],
           [[c["crm"], c["object"], c["position"]] for c in view["cursors"]])
    _table("last runs", ["job", "started", "finished", "status", "counts"],
           [[job, r["started_at"], r["finished_at"], r["status"], json.dumps(r["counts"])]
            for job, r in sorted(view["last_runs"].items())])
    _table("workers", ["id", "started", "last beat", "alive"],
           [[w["id"], w["started_at"], w["heartbeat_at"], "yes" if w["alive"] else "NO"] for w in view["workers"]])
    _table("crms", ["crm", "ready", "since", "reason"],
           [[name, "yes" if c["ready"] else "NO", c["since"], c["reason"] or ""] for name, c in view["crms"].items()])
    if problems:
        sys.exit(EXIT_PROBLEMS)


def stuck_grace(push_interval_seconds: int) -> timedelta:
    """How far past its next attempt a failed op may be before it counts as stuck: 15 minutes, or
    three push intervals when longer (a daemon retries it within one interval; a `sync --once` cron
    job every few minutes too). Longer than that, nothing is retrying it."""
    return max(timedelta(minutes=15), timedelta(seconds=3 * push_interval_seconds))


@cli.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=".demo",
              show_default=True, help="Where the demo keeps its config and ledger.")
@handles_errors
def demo(directory: Path) -> None:
    """Run the whole story against an embedded SQLite ledger (and the sandbox CRMs)."""
    from connector.demo import run_demo

    sys.exit(run_demo(directory))


from connector import cli_reports, cli_sync  # noqa: E402,F401,I001 - register the CRM, outbox and report commands


def main() -> None:
    cli(prog_name="refsync")


if __name__ == "__main__":
    main()
