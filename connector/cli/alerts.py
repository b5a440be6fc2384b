"""`refsync alerts`: discrepancy alerts for ops, and what people do about them (ack, silence, accept)."""

from __future__ import annotations

import re
import sys
from datetime import timedelta

import click

from refsync.connector.cli.base import EXIT_PROBLEMS, Context, handles_errors, print_json, print_table

STATES = ("open", "acknowledged", "silenced", "resolved")
_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str) -> timedelta:
    """``30m``, ``12h``, ``7d`` or ``2w`` as a timedelta."""
    match = _DURATION.match(value)
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter(f"'{value}' is not a duration; write a number and a unit, e.g. 30m, 12h, 7d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@click.group(invoke_without_command=True)
@click.option("--kind", help="Only alerts of this kind (e.g. attribution_overwritten, orphaned_link).")
@click.option("--open", "open_only", is_flag=True,
              help="Only alerts not resolved yet (open, acknowledged or silenced).")
@click.option("--resolved", "resolved_only", is_flag=True, help="Only resolved alerts.")
@click.option("--state", type=click.Choice(STATES), help="Only alerts in this state.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def alerts(ctx: click.Context, kind: str | None, open_only: bool, resolved_only: bool, state: str | None,
           as_json: bool) -> None:
    """Discrepancy alerts, newest first; exits 1 while any listed alert is open (neither
    acknowledged nor silenced)."""
    if ctx.invoked_subcommand is not None:
        return
    from refsync.state.notifications import alerts as list_alerts

    if open_only and resolved_only:
        raise click.UsageError("--open and --resolved exclude each other; give one")
    obj: Context = ctx.obj
    rows = list_alerts(obj.ledger(), kind=kind, open_only=open_only, resolved_only=resolved_only, state=state)
    if as_json:
        print_json(rows)
    else:
        print_table(f"{len(rows)} alerts", ["id", "kind", "state", "count", "last seen", "message"], [
            [a["id"], a["kind"], _state_text(a), a["count"], a["last_seen"], a["message"]] for a in rows])
    if any(a["state"] == "open" for a in rows):
        sys.exit(EXIT_PROBLEMS)


def _state_text(a: dict[str, object]) -> str:
    if a["state"] == "acknowledged":
        return f"acknowledged by {a['acknowledged_by']}" + (f": {a['note']}" if a["note"] else "")
    if a["state"] == "silenced":
        return f"silenced until {a['silenced_until']}"
    if a["state"] == "resolved":
        return f"resolved {a['resolved_at']}" + (f" ({a['resolution']} by {a['acknowledged_by']})"
                                                 if a["resolution"] else "")
    return "open"


@alerts.command("ack")
@click.argument("alert_id", type=int)
@click.option("--by", required=True, help="Who takes it (a name or handle, recorded in the audit trail).")
@click.option("--note", help="Why, or what happens next.")
@click.option("--json", "as_json", is_flag=True, help='Print {"alert", "state", "by"} as JSON.')
@click.pass_obj
@handles_errors
def alerts_ack(obj: Context, alert_id: int, by: str, note: str | None, as_json: bool) -> None:
    """Acknowledge an alert: it stays listed but stops paging until it resolves and reopens."""
    from refsync.state.alert_states import acknowledge

    acknowledge(obj.ledger(), alert_id, by, note)
    if as_json:
        print_json({"alert": alert_id, "state": "acknowledged", "by": by})
        return
    click.echo(f"alert {alert_id} acknowledged by {by}; it stays listed and pages again only if it resolves "
               "and comes back")


@alerts.command("accept")
@click.argument("alert_id", type=int)
@click.option("--by", required=True, help="Who accepts the loss (recorded on the referral's timeline).")
@click.option("--note", help="Why the loss is accepted.")
@click.option("--json", "as_json", is_flag=True, help='Print {"alert", "state", "by", "links_lost"} as JSON.')
@click.pass_obj
@handles_errors
def alerts_accept(obj: Context, alert_id: int, by: str, note: str | None, as_json: bool) -> None:
    """Accept the loss an orphaned_link alert reports: the deleted record is not checked, restored or
    alerted on again, and the alert resolves."""
    from refsync.connector.decisions import accept_loss

    links = accept_loss(obj.ledger(), alert_id, by, note)
    if as_json:
        print_json({"alert": alert_id, "state": "resolved", "by": by, "links_lost": links})
        return
    click.echo(f"alert {alert_id} resolved: the loss is accepted by {by} ({links} link(s) marked lost)")


@alerts.command("silence")
@click.option("--kind", required=True, help="The alert kind to silence (e.g. stale_referral).")
@click.option("--record", "record_id", help="Only alerts about this CRM record id or referral id.")
@click.option("--crm", help="Only alerts of this CRM (salesforce, hubspot).")
@click.option("--for", "duration", required=True, help="How long: 30m, 12h, 7d, 2w.")
@click.option("--by", default="cli", show_default=True, help="Who silences (recorded in the audit trail).")
@click.option("--note", help="Why.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def alerts_silence(obj: Context, kind: str, record_id: str | None, crm: str | None, duration: str, by: str,
                   note: str | None, as_json: bool) -> None:
    """Keep matching alerts, open now or raised later, from paging until the time passes."""
    from refsync.connector.web.metrics import ALERT_KINDS
    from refsync.errors import InputError
    from refsync.state.alert_states import silence

    length = parse_duration(duration)
    if kind not in ALERT_KINDS:
        raise InputError(f"--kind {kind}: no such alert kind; use one of {', '.join(sorted(ALERT_KINDS))}")
    ledger = obj.ledger()
    row = silence(ledger, kind, crm, record_id, ledger.clock() + length, by, note)
    if as_json:
        print_json(row)
        return
    where = " ".join(x for x in (crm, record_id) if x)
    click.echo(f"silence {row['id']}: {kind}{f' ({where})' if where else ''} alerts page no more until "
               f"{row['until']} ({row['matching_open_alerts']} open now); `refsync alerts unsilence {row['id']}` "
               "lifts it")


@alerts.command("silences")
@click.option("--all", "include_ended", is_flag=True, help="Also lifted and expired silences.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def alerts_silences(obj: Context, include_ended: bool, as_json: bool) -> None:
    """Silences in force, newest first."""
    from refsync.state.alert_states import silences

    rows = silences(obj.ledger(), include_ended)
    if as_json:
        print_json(rows)
        return
    print_table(f"{len(rows)} silences", ["id", "kind", "crm", "record", "until", "by", "open alerts", "note"], [
        [s["id"], s["kind"], s["crm"], s["record_id"], s["until"] if s["active"] else f"{s['until']} (ended)",
         s["created_by"], s["matching_open_alerts"], s["note"]] for s in rows])


@alerts.command("unsilence")
@click.argument("silence_id", type=int)
@click.option("--by", default="cli", show_default=True, help="Who lifts it (recorded in the audit trail).")
@click.option("--json", "as_json", is_flag=True, help='Print {"silence", "lifted": true} as JSON.')
@click.pass_obj
@handles_errors
def alerts_unsilence(obj: Context, silence_id: int, by: str, as_json: bool) -> None:
    """Lift a silence now; its alerts still open page on the next round."""
    from refsync.state.alert_states import unsilence

    unsilence(obj.ledger(), silence_id, by)
    if as_json:
        print_json({"silence": silence_id, "lifted": True})
        return
    click.echo(f"silence {silence_id} lifted")
