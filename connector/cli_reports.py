"""CLI commands for ops and partner managers: reconcile, expire, notify, report, partners set."""

from __future__ import annotations

import sys

import click

from connector.cli import EXIT_PROBLEMS, Context, _parse_since, _print_json, _table, cli, handles_errors, partners
from connector.config import SECRET_SCHEMES
from connector.errors import InputError


@cli.command("reconcile")
@click.option("--json", "as_json", is_flag=True, help="Print the run's counts as JSON.")
@click.pass_obj
@handles_errors
def reconcile_cmd(obj: Context, as_json: bool) -> None:
    """Compare the ledger with every CRM in full; raise, count and resolve discrepancy alerts.
    Exits 1 while alerts are open."""
    from connector.alerting import announce
    from connector.cli_sync import _targets
    from connector.reconcile import ReconcileSettings, reconcile
    from connector.sync import settings_from_config
    from state.notifications import alerts

    ledger = obj.ledger()
    config = obj.config
    targets = _targets(obj)
    with obj.worker(ledger):
        report = reconcile(ledger, targets, ReconcileSettings(config.alerts.stale_after_days,
                                                              config.alerts.won_lookback_days))
    settings = settings_from_config(config)
    if settings.sinks is not None:
        announce(ledger, settings.sinks, settings.storm_threshold)
    counts = report.counts()
    open_alerts = alerts(ledger, open_only=True)
    if as_json:
        _print_json({**counts, "open_alerts": len(open_alerts)})
    else:
        click.echo(f"read {counts['records_read']} linked records and {counts['deals_checked']} recent deals with "
                   f"{counts['api_calls']} API calls in {counts['seconds']}s; alerts: {counts['raised']} new, "
                   f"{counts['seen_again']} still open, {counts['resolved']} resolved; {counts['repairs']} repairs "
                   "queued")
        for kind, n in counts["found"].items():
            click.echo(f"  {kind}: {n}")
        for error in report.errors:
            click.echo(f"refsync: problem: {error}", err=True)
    if report.errors or open_alerts:
        sys.exit(EXIT_PROBLEMS)


@cli.command("expire")
@click.option("--dry-run", is_flag=True, help="Only count the referrals that would expire.")
@click.pass_obj
@handles_errors
def expire_cmd(obj: Context, dry_run: bool) -> None:
    """Expire referrals left open longer than attribution.expire_after_days (never one with a deal)."""
    from connector.expire import expire_referrals

    attribution = obj.config.attribution
    counts = expire_referrals(obj.ledger(), attribution.expire_after_days, attribution.version(), dry_run=dry_run)
    if dry_run:
        click.echo(f"{counts.candidates} referrals would expire (open > {attribution.expire_after_days} days)")
    else:
        click.echo(f"{counts.expired} referrals expired (open > {attribution.expire_after_days} days)")


@cli.command("notify")
@click.pass_obj
@handles_errors
def notify_cmd(obj: Context) -> None:
    """Tell the alert sinks what is new and deliver the partner and alert webhooks that are due."""
    from connector.alerting import announce
    from connector.notify import deliver_all
    from connector.sync import settings_from_config

    ledger = obj.ledger()
    settings = settings_from_config(obj.config)
    assert settings.sinks is not None and settings.delivery is not None
    announced = announce(ledger, settings.sinks, settings.storm_threshold)
    with obj.worker(ledger) as owner:
        counts = deliver_all(ledger, owner, settings.delivery)
    click.echo(f"{announced.alerts} alerts announced{' (as one storm summary)' if announced.storm else ''}; "
               f"webhooks: {counts.delivered} delivered, {counts.failed} to retry, {counts.dead} dead, "
               f"{counts.skipped} not configured to notify")
    for error in counts.errors:
        click.echo(f"refsync: problem: {error}", err=True)
    if counts.dead:
        sys.exit(EXIT_PROBLEMS)


@cli.command("report")
@click.option("--by", type=click.Choice(["partner", "source", "medium", "campaign", "channel"]), default="partner",
              show_default=True, help="channel = source/medium/campaign together.")
@click.option("--from", "start", help="Submitted at or after this ISO 8601 date.")
@click.option("--to", "end", help="Submitted before this ISO 8601 date.")
@click.option("--partner", help="Only this partner code.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_obj
@handles_errors
def report_cmd(obj: Context, by: str, start: str | None, end: str | None, partner: str | None, fmt: str,
               as_json: bool) -> None:
    """Referrals, funnel, conversion, pipeline, revenue and days to close per partner or channel."""
    from connector.report import COLUMNS, build, key_of_names, to_csv
    from state.reports import report_rows

    lower, upper = _parse_since(start), _parse_since(end)
    if lower and upper and upper <= lower:
        raise InputError(f"--to {end} is not after --from {start}")
    lines = build(report_rows(obj.ledger(), lower, upper, partner), by)
    if as_json or fmt == "json":
        _print_json(lines)
    elif fmt == "csv":
        click.echo(to_csv(lines, by), nl=False)
    else:
        names = key_of_names(by)
        _table(f"referrals by {by}" + (f" from {start}" if start else "") + (f" to {end}" if end else ""),
               [*names, *(c.replace("_", " ") for c in COLUMNS)],
               [[*(line[n] for n in names), *(_cell(line[c], c) for c in COLUMNS)] for line in lines])


def _cell(value: object, column: str) -> object:
    if column == "conversion_rate" and isinstance(value, float):
        return f"{value:.1%}"
    if column in ("open_pipeline_value", "won_revenue") and isinstance(value, float):
        return f"{value:,.2f}"
    return value


@partners.command("set")
@click.argument("code")
@click.option("--webhook-url", help="Where the partner receives status notifications (https).")
@click.option("--webhook-secret", help="The signing secret as a reference: env:NAME or file:/path.")
@click.option("--clear-webhook", is_flag=True, help="Stop notifying this partner.")
@click.pass_obj
@handles_errors
def partners_set(obj: Context, code: str, webhook_url: str | None, webhook_secret: str | None,
                 clear_webhook: bool) -> None:
    """Set a partner's webhook URL and signing-secret reference (the secret itself never enters the ledger)."""
    from connector.webhook_target import url_problem
    from state.notifications import set_partner_webhook

    if not (webhook_url or webhook_secret or clear_webhook):
        raise click.UsageError("give --webhook-url, --webhook-secret or --clear-webhook")
    problem = url_problem(webhook_url, obj.config.notifications.allow_private_targets) if webhook_url else None
    if problem:
        raise InputError(f"--webhook-url {problem}")
    if webhook_secret and (not webhook_secret.startswith(SECRET_SCHEMES) or webhook_secret in SECRET_SCHEMES):
        raise InputError("--webhook-secret must be a reference such as env:ACME_WEBHOOK_SECRET or "
                         "file:/etc/refsync/acme.secret, never the secret itself")
    if not set_partner_webhook(obj.ledger(), code, webhook_url, webhook_secret, clear=clear_webhook):
        raise InputError(f"no partner with code {code}; `refsync partners list` shows the codes")
    click.echo(f"partner {code}: webhook {'cleared' if clear_webhook and not webhook_url else 'set'}")
