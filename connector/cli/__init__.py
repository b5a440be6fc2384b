"""The `refsync` command line: the root group, and every command group registered on it.

Exit codes (contract): 0 done; 1 done with rejected input or open problems reported; 2 unusable
invocation or configuration. Errors are one short line on stderr; ``--debug`` adds the traceback.
Read commands print one JSON document on stdout with ``--json``.

Each module here holds one command group and imports only :mod:`connector.cli.base`; this module
is the one place that knows them all.
"""

from __future__ import annotations

import click

from refsync import __version__
from refsync.connector import logs, runtime
from refsync.connector.cli import (
    alerts,
    commissions,
    ledger,
    ledger_admin,
    mappings,
    partners,
    referrals,
    reports,
    retention,
    sync,
    users,
)
from refsync.connector.cli.base import Context, RefsyncGroup, accept_common_options


@click.group(cls=RefsyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="refsync", message="%(prog)s %(version)s",
                      help="Print refsync's version and exit.")
@click.option("--config", "config_path", envvar="REFSYNC_CONFIG", type=click.Path(dir_okay=False),
              help="Config file (default: $REFSYNC_CONFIG, else ./refsync.toml).")
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """refsync keeps partner referral attribution on your CRM, and proves it."""
    logs.configure(level="debug" if debug else "warning")
    ctx.obj = Context(config_path, debug)


for _command in (ledger.init, ledger.import_, ledger.status, ledger.demo, referrals.referrals, partners.partners,
                 sync.sync, sync.run, sync.ops, sync.retry, sync.runs, sync.sandbox, mappings.mappings, alerts.alerts,
                 reports.reconcile_cmd, reports.expire_cmd, reports.notify_cmd, reports.report_cmd,
                 ledger_admin.ledger, commissions.commissions, commissions.payouts, commissions.terms,
                 users.users, retention.prune):
    cli.add_command(_command)
partners.partners.add_command(users.partner_invite)  # `refsync partners invite CODE EMAIL`
for _command in cli.commands.values():
    accept_common_options(_command)


def main() -> None:
    runtime.tune_gc()
    cli(prog_name="refsync")


if __name__ == "__main__":
    main()
