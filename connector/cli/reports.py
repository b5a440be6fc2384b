"""CLI commands for ops and partner managers: reconcile, expire, notify, report, partners set."""

from __future__ import annotations

import sys

import click

from refsync.connector.cli.base import EXIT_PROBLEMS, Context, handles_errors, parse_since, print_json, print_table
from refsync.errors import InputError


@click.command("reconcile")
@click.option("--json", "as_json", is_flag=True, help="Print the run's counts as JSON.")
@click.pass_obj
@handles_errors
def reconcile_cmd(obj: Context, as_json: bool) -> None:
    """Compare the ledger with every CRM in full; raise, count and resolve discrepancy alerts.
    Exits 1 while alerts are open."""
    from refsync.connector.alerting import announce
    from refsync.connector.cli.base import crm_targets
    from refsync.connector.reconcile import ReconcileSettings, reconcile
    from refsync.connector.sync import settings_from_config
    from refsync.state.notifications import alerts

    ledger = obj.ledger()
    config = obj.config
    targets = crm_targets(obj)
    with obj.worker(ledger):
        report = reconcile(ledger, targets, ReconcileSettings(config.alerts.stale_after_days,
                                                              config.alerts.won_lookback_days))
    settings = settings_from_config(config)
    if settings.sinks is not None:
        announce(ledger, settings.sinks, settings.storm_threshold)
    counts = report.counts()
    open_alerts = alerts(ledger, open_only=True)
    if as_json:
        print_json({**counts, "open_alerts": len(open_alerts)})
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


@click.command("expire")
@click.option("--dry-run", is_flag=True, help="Only count the referrals that would expire.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_obj
@handles_errors
def expire_cmd(obj: Context, dry_run: bool, as_json: bool) -> None:
    """Expire referrals left open longer than attribution.expire_after_days (never one with a deal)."""
    from refsync.connector.expire import expire_referrals

    attribution = obj.config.attribution
    counts = expire_referrals(obj.ledger(), attribution.expire_after_days, attribution.version(), dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run, "expire_after_days": attribution.expire_after_days,
                    "candidates": counts.candidates, "expired": counts.expired})
    elif dry_run:
        click.echo(f"{counts.candidates} referrals would expire (open > {attribution.expire_after_days} days)")
    else:
        click.echo(f"{counts.expired} referrals expired (open > {attribution.expire_after_days} days)")


@click.command("notify")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_obj
@handles_errors
def notify_cmd(obj: Context, as_json: bool) -> None:
    """Tell the alert sinks what is new and deliver the partner and alert webhooks that are due."""
    from refsync.connector.alerting import announce
    from refsync.connector.notify import deliver_all
    from refsync.connector.sync import settings_from_config

    ledger = obj.ledger()
    settings = settings_from_config(obj.config)
    assert settings.sinks is not None and settings.delivery is not None
    announced = announce(ledger, settings.sinks, settings.storm_threshold)
    with obj.worker(ledger) as owner:
        counts = deliver_all(ledger, owner, settings.delivery)
    if as_json:
        print_json({"alerts_announced": announced.alerts, "storm": announced.storm,
                    "webhooks": {"delivered": counts.delivered, "failed": counts.failed, "dead": counts.dead,
                                 "skipped": counts.skipped}, "errors": list(counts.errors)})
    else:
        click.echo(f"{announced.alerts} alerts announced{' (as one storm summary)' if announced.storm else ''}; "
                   f"webhooks: {counts.delivered} delivered, {counts.failed} to retry, {counts.dead} dead, "
                   f"{counts.skipped} not configured to notify")
        for error in counts.errors:
            click.echo(f"refsync: problem: {error}", err=True)
    if counts.dead:
        sys.exit(EXIT_PROBLEMS)


@click.command("report")
@click.option("--by", type=click.Choice(["partner", "source", "medium", "campaign", "channel"]), default="partner",
              show_default=True, help="channel = source/medium/campaign together.")
@click.option("--from", "start", help="Submitted at or after this ISO 8601 date.")
@click.option("--to", "end", help="Submitted before this ISO 8601 date.")
@click.option("--partner", help="Only this partner code.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--commissions", "money", is_flag=True, help="Commissions instead: per partner, --period and currency, "
              "earned, pending, approved, paid, clawed back (the same as `refsync commissions report`).")
@click.option("--forecast", is_flag=True, help="The payout liability forecast instead: open pipeline x win rate "
              "x terms (the same as `refsync commissions report --forecast`).")
@click.option("--period", type=click.Choice(["month", "quarter", "year"]), default="month", show_default=True,
              help="With --commissions: group by the period of the deal's close date.")
@click.pass_obj
@handles_errors
def report_cmd(obj: Context, by: str, start: str | None, end: str | None, partner: str | None, fmt: str,
               as_json: bool, money: bool, forecast: bool, period: str) -> None:
    """Referrals, funnel, conversion, pipeline, revenue and days to close per partner or channel.
    Amounts are per currency; the referrals of the ledger the report leaves out are counted by
    reason, so the report adds up to `refsync referrals list`. With --commissions or --forecast:
    the compensation reports."""
    if money or forecast:
        from refsync.connector.cli.commissions import commissions_report

        click.get_current_context().invoke(commissions_report, period=period, partner=partner, forecast=forecast,
                                           fmt=fmt, as_json=as_json)
        return
    from refsync.connector.report import AMOUNTS, COUNTS, build, currencies, excluded_note, key_of_names, to_csv
    from refsync.state.reports import excluded_counts, report_rows

    lower, upper = parse_since(start), parse_since(end)
    if lower and upper and upper <= lower:
        raise InputError(f"--to {end} is not after --from {start}")
    ledger = obj.ledger()
    lines = build(report_rows(ledger, lower, upper, partner), by)
    excluded = excluded_counts(ledger, lower, upper, partner)
    note = excluded_note(excluded)
    if as_json or fmt == "json":
        print_json({"by": by, "from": start, "to": end, "partner": partner, "currencies": currencies(lines),
                    "lines": lines, "excluded": excluded,
                    "ledger_referrals": lines[-1]["referrals"] + sum(excluded.values())})
    elif fmt == "csv":
        click.echo(to_csv(lines, by), nl=False)
        if note:
            click.echo(note, err=True)
    else:
        names = key_of_names(by)
        print_table(f"referrals by {by}" + (f" from {start}" if start else "") + (f" to {end}" if end else ""),
                    [*names, *(c.replace("_", " ") for c in (*COUNTS, *AMOUNTS, "median_days_to_close"))],
                    [[*(line[n] for n in names), *(_cell(line[c], c) for c in (*COUNTS, *AMOUNTS)),
                      line["median_days_to_close"]] for line in lines])
        if note:
            click.echo(note)


def _cell(value: object, column: str) -> object:
    if column == "conversion_rate" and isinstance(value, float):
        return f"{value:.1%}"
    if isinstance(value, dict):  # an amount per currency: never one figure for several currencies
        return "; ".join(f"{amount:,.2f} {currency}" for currency, amount in value.items())
    return value
