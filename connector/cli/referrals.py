"""`refsync referrals`: the ledger's referrals, one by one."""

from __future__ import annotations

import json

import click

from refsync.connector.cli.base import (
    Context,
    handles_errors,
    parse_since,
    print_json,
    print_table,
)
from refsync.errors import InputError
from refsync.state.models import STATUSES


@click.group()
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
    rows = obj.ledger().referrals(partner=partner, status=status, since=parse_since(since), limit=limit)
    if as_json:
        print_json(rows)
        return
    print_table(f"{len(rows)} referrals", ["id", "partner", "prospect", "status", "submitted", "credit", "links"], [
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
        print_json(view)
        return
    for key in ("id", "external_id", "partner", "prospect_email", "prospect_company", "prospect_name",
                "source", "medium", "campaign", "status", "submitted_at"):
        click.echo(f"{key:>17}: {view[key] if view[key] is not None else ''}")
    att = view["attribution"]
    click.echo(f"{'attribution':>17}: {att['reason']} (model {att['model']}, policy {att['policy_version']}"
               + (", needs review" if att["review_required"] else "")
               + (f", credit held by {att['duplicate_of']}" if att["duplicate_of"] else "") + ")")
    print_table("timeline", ["at", "event", "reason", "actor", "where", "detail"], [
        [e["at"], e["kind"], e["reason_code"], e["actor"],
         ":".join(x for x in (e["crm"], e["object"], e["record_id"]) if x),
         json.dumps(e["detail"], default=str) if e["detail"] else ""]
        for e in view["timeline"]
    ])
    print_table("status history", ["at", "status", "source"],
           [[t["at"], t["status"], t["source"]] for t in view["status_history"]])


@referrals.command("decide")
@click.argument("referral_id")
@click.option("--credit", "choice", flag_value="credit", help="Give this referral the credit; the one holding it "
              "becomes the declined duplicate.")
@click.option("--decline", "choice", flag_value="decline", help="Keep this referral without credit (declined "
              "while still submitted).")
@click.option("--by", required=True, help="Who decides (recorded on both referrals' timelines).")
@click.option("--note", help="Why.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handles_errors
def referrals_decide(obj: Context, referral_id: str, choice: str | None, by: str, note: str | None,
                     as_json: bool) -> None:
    """Decide a referral flagged as a duplicate (its duplicate_referral alert resolves)."""
    from refsync.connector.decisions import decide_duplicate

    if choice is None:
        raise click.UsageError("give --credit or --decline")
    decided = decide_duplicate(obj.ledger(), referral_id, choice == "credit", by, note,
                               obj.config.attribution.policy().version)
    if as_json:
        print_json({"referral_id": decided.referral_id, "credited": decided.credited, "reason": decided.reason,
                    "status": decided.status, "credit_taken_from": decided.holder_id,
                    "credit_taken_from_status": decided.holder_status, "alerts_resolved": decided.alerts_resolved})
        return
    click.echo(decided.sentence())
