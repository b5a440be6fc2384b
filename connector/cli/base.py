"""What every `refsync` command shares: the context, the error handling and the output helpers.

Exit codes (contract): 0 done; 1 done with rejected input or open problems reported; 2 unusable
invocation or configuration. Errors are one short line on stderr; ``--debug`` adds the traceback.
Read commands print one JSON document on stdout with ``--json``.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from refsync.connector import logs
from refsync.connector.config import Config, load_config
from refsync.errors import ConfigError, InputError, LedgerError, RefsyncError
from refsync.state.ledger import Ledger

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
        from refsync.connector.worker import registered_worker

        return registered_worker(ledger, self.config.daemon.heartbeat_seconds)


def _set_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Context).config_path = value


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Context).debug = True
        logs.configure(level="debug")


def accept_common_options(command: click.Command) -> None:
    """Let ``--config`` and ``--debug`` follow the subcommand too (``refsync status --config x.toml``),
    on ``command`` and every command below it: the one place these options are added. Given after
    the subcommand, they win over the same option before it (and over $REFSYNC_CONFIG)."""
    names = {name for param in command.params for name in param.opts}
    if "--config" not in names:
        command.params.append(click.Option(
            ["--config", "_config"], type=click.Path(dir_okay=False), expose_value=False, is_eager=True,
            callback=_set_config, help="Config file (also accepted before the command)."))
    if "--debug" not in names:
        command.params.append(click.Option(
            ["--debug", "_debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
            help="Debug logs and tracebacks on errors (also accepted before the command)."))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_common_options(sub)


# click 8.2+: a group called without a command raises this UsageError carrying the group's help.
NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class RefsyncGroup(click.Group):
    """The root group: usage errors (unknown option, missing argument, bad value) come out as one
    ``refsync: error:`` line with exit 2, like every other error, instead of click's usage block."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except NO_ARGS_IS_HELP as exc:  # `refsync` or a group alone: its help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "refsync"
            message = exc.format_message().rstrip(".")
            click.echo(f"refsync: error: {message} (see `{where} --help`)", err=True)
            sys.exit(EXIT_UNUSABLE)
        except click.ClickException as exc:
            click.echo(f"refsync: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("refsync: error: aborted", err=True)
            sys.exit(EXIT_PROBLEMS)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


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


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def parse_since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not an ISO 8601 date or time, e.g. 2026-01-31") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def crm_targets(obj: Context, *, ledger_optional: bool = False):  # type: ignore[no-untyped-def]
    """Every configured CRM's target; a configuration wrong on its face stops here (exit 2). A CRM
    that cannot be reached is a target that is not ready: it waits, the others go on.
    ``ledger_optional``: without a usable ledger (`mappings check` before `init`) the mapping is
    checked against the live schemas alone, with no memory of fields seen before."""
    from refsync.connector.crms import build_targets
    from refsync.errors import LedgerError

    try:
        ledger = obj.ledger()
    except LedgerError:
        if not ledger_optional:
            raise
        ledger = None
    targets, problems = build_targets(obj.config, ledger)
    if problems:
        raise ConfigError(problems)
    return targets
