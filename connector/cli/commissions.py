"""`refsync commissions`, `refsync payouts` and `refsync terms`: partner compensation for program
managers and finance (see the README's "Partner compensation")."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from refsync.connector.cli.base import EXIT_PROBLEMS, Context, handles_errors, print_json, print_table
from refsync.errors import ConfigError

if TYPE_CHECKING:
    from refsync.connector.commission import TermsBook

STATES = ("pending", "held", "approved", "rejected", "paid", "void", "clawback")


def _money(minor: int, currency: str) -> str:
    from refsync.connector.commission import as_decimal_text

    return as_decimal_text(minor, currency)


def commission_json(row: dict[str, Any]) -> dict[str, Any]:
    """The contract's ``commissions list --json`` element: amounts as decimal strings."""
    currency = row["currency"]
    held = "; ".join(f"{h['code']}: {h['detail']}" for h in row["holds"])
    return {
        "id": row["id"], "referral_id": row["referral_id"], "partner": row["partner"],
        "amount": _money(row["amount_minor"], currency), "currency": currency, "status": row["status"],
        "terms_version": row["terms_version"], "payable_after": row["payable_after"],
        "reason": held if row["status"] == "held" and held else row["reason"],
        "kind": row["kind"], "holds": row["holds"], "notes": row["notes"],
        "deal_amount": _money(row["deal_amount_minor"], currency) if row["deal_amount_minor"] is not None else None,
        "closed_on": row["closed_on"], "decided_by": row["decided_by"], "decided_at": row["decided_at"],
        "paid_reference": row["paid_reference"], "paid_at": row["paid_at"], "payout_id": row["payout_id"],
        "created_at": row["created_at"],
    }


@click.group()
def commissions() -> None:
    """Commissions on won deals: list them, approve, reject, hold, release and pay."""


@commissions.command("list")
@click.option("--partner", help="Only this partner code.")
@click.option("--status", "--state", "status", type=click.Choice(STATES), help="Only this status.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see README for the shape).")
@click.pass_obj
@handles_errors
def commissions_list(obj: Context, partner: str | None, status: str | None, as_json: bool) -> None:
    """Commission and clawback entries, oldest first; holds show their reasons."""
    from refsync.state.commissions import commission_rows

    rows = [commission_json(r) for r in commission_rows(obj.ledger(), partner, status)]
    if as_json:
        print_json(rows)
        return
    print_table(f"{len(rows)} commissions", ["id", "partner", "referral", "amount", "status", "payable after",
                                             "terms", "reason"], [
        [r["id"], r["partner"], r["referral_id"], f"{r['amount']} {r['currency']}", r["status"], r["payable_after"],
         r["terms_version"], r["reason"]] for r in rows])


def _decide(obj: Context, action: str, ids: tuple[int, ...], by: str, reason: str | None, as_json: bool) -> None:
    from refsync.state.commissions import decide

    result = decide(obj.ledger(), list(ids), action, by, reason)
    if as_json:
        print_json({"action": action, "by": by, "done": list(result.done), "refused": list(result.refused)})
        if result.refused:
            sys.exit(EXIT_PROBLEMS)
        return
    for line in result.lines(action, by):
        click.echo(line)
    for line in result.refused:
        click.echo(f"refsync: refused: {line}", err=True)
    if result.refused:
        sys.exit(EXIT_PROBLEMS)


_ids = click.argument("ids", nargs=-1, type=int, required=True)
_by = click.option("--by", required=True, help="Your name: recorded as the approver in the audit trail.")
_json = click.option("--json", "as_json", is_flag=True, help='Print {"action", "by", "done": [ids], "refused": [...]}.')


@commissions.command()
@_ids
@_by
@click.option("--reason", help="Why (optional).")
@_json
@click.pass_obj
@handles_errors
def approve(obj: Context, ids: tuple[int, ...], by: str, reason: str | None, as_json: bool) -> None:
    """Approve pending commissions (a held one needs `release` first)."""
    _decide(obj, "approve", ids, by, reason, as_json)


@commissions.command()
@_ids
@_by
@click.option("--reason", help="Why it is not paid (give one: it is the evidence in a dispute).")
@_json
@click.pass_obj
@handles_errors
def reject(obj: Context, ids: tuple[int, ...], by: str, reason: str | None, as_json: bool) -> None:
    """Reject commissions (pending, held or approved, not yet paid)."""
    _decide(obj, "reject", ids, by, reason, as_json)


@commissions.command()
@_ids
@_by
@click.option("--reason", help="Why it waits.")
@_json
@click.pass_obj
@handles_errors
def hold(obj: Context, ids: tuple[int, ...], by: str, reason: str | None, as_json: bool) -> None:
    """Put pending or approved commissions on hold."""
    _decide(obj, "hold", ids, by, reason, as_json)


@commissions.command()
@_ids
@_by
@click.option("--reason", help="Why the hold no longer applies (e.g. what you checked).")
@_json
@click.pass_obj
@handles_errors
def release(obj: Context, ids: tuple[int, ...], by: str, reason: str | None, as_json: bool) -> None:
    """Release held commissions back to pending, for approval."""
    _decide(obj, "release", ids, by, reason, as_json)


commissions.add_command(release, "release-hold")


@commissions.command()
@_ids
@click.option("--reference", required=True, help="The payout's reference in your payment tool.")
@_by
@click.option("--json", "as_json", is_flag=True, help="Print the payout as JSON.")
@click.pass_obj
@handles_errors
def pay(obj: Context, ids: tuple[int, ...], reference: str, by: str, as_json: bool) -> None:
    """Mark approved commissions past their hold as paid, netting the partner's open clawbacks.
    All of one partner and currency; any that cannot be paid refuses the whole payout (exit 1)."""
    from refsync.state.commissions import pay as pay_commissions

    payout = pay_commissions(obj.ledger(), list(ids), reference, by)
    view = {"reference": payout["reference"], "partner": payout["partner"], "currency": payout["currency"],
            "amount": _money(payout["amount_minor"], payout["currency"]), "commission_ids": payout["commission_ids"],
            "clawback_ids": payout["clawback_ids"]}
    if as_json:
        print_json(view)
        return
    netted = f" (clawbacks {', '.join(map(str, view['clawback_ids']))} netted)" if view["clawback_ids"] else ""
    click.echo(f"paid {view['amount']} {view['currency']} to {view['partner']} as {reference}{netted}")


@commissions.command("report")
@click.option("--period", type=click.Choice(["month", "quarter", "year"]), default="month", show_default=True,
              help="Group by the period of the deal's close date.")
@click.option("--partner", help="Only this partner code.")
@click.option("--forecast", is_flag=True, help="The payout liability forecast on the open pipeline instead "
              "(needs [compensation]).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_obj
@handles_errors
def commissions_report(obj: Context, period: str, partner: str | None, forecast: bool, fmt: str,
                       as_json: bool) -> None:
    """Per partner, period and currency: earned, pending, approved, paid, clawed back; or, with
    --forecast, expected commissions on the open pipeline (pipeline x win rate x terms)."""
    from datetime import UTC, datetime

    from refsync.connector import compensation_report as cr
    from refsync.state.commissions import commission_rows
    from refsync.state.reports import report_rows

    ledger = obj.ledger()
    if forecast:
        book = _book(obj)
        lines = cr.forecast(report_rows(ledger, None, None, partner), book, datetime.now(UTC).date())
        keys, columns, title = ["partner", "currency"], list(cr.FORECAST_COLUMNS), "payout liability forecast"
    else:
        lines = cr.earned(commission_rows(ledger, partner), period)
        keys, columns, title = ["partner", "period", "currency"], list(cr.EARNED_COLUMNS), f"commissions by {period}"
    if as_json or fmt == "json":
        print_json(lines)
    elif fmt == "csv":
        _csv(lines, [*keys, *columns])
    else:
        print_table(title, [*keys, *(c.replace("_", " ") for c in columns)],
                    [[line[k] for k in (*keys, *columns)] for line in lines])


def _book(obj: Context) -> TermsBook:
    from refsync.connector.terms import load_terms

    config = obj.config
    if config.compensation is None:
        raise ConfigError(f"{config.source or 'config'}: compensation: no [compensation] table, so compensation "
                          "is off; add [compensation] with terms = \"terms.toml\" (see config.example.toml)")
    return load_terms(config.compensation.terms_path(config.base_dir))


def _csv(lines: list[dict[str, Any]], columns: list[str]) -> None:
    """RFC 4180 lines (CRLF); text a spreadsheet would run as a formula gets a leading quote."""
    import csv
    import io

    from refsync.connector.report import spreadsheet_safe

    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\r\n")
    writer.writeheader()
    for line in lines:
        writer.writerow({k: line[k] if k in MONEY_COLUMNS else spreadsheet_safe(line[k]) for k in columns})
    click.echo(out.getvalue(), nl=False)


MONEY_COLUMNS = {"payout_amount", "amount", "deal_amount", "earned", "pending", "approved", "paid", "clawed_back",
                 "open_pipeline", "expected_commission"}


BALANCE_KEYS = ("pending", "held", "approved_payable", "approved_in_hold", "paid", "clawback_outstanding",
                "clawback_settled")


@click.group(invoke_without_command=True)
@click.option("--partner", help="Only this partner code.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see README for the shape).")
@click.pass_context
@handles_errors
def payouts(ctx: click.Context, partner: str | None, as_json: bool) -> None:
    """What is owed and paid per partner and currency (open clawbacks netted into `owed`); with a
    subcommand, payout batches: create, export, mark-paid, cancel."""
    from refsync.state.commissions import balances

    if ctx.invoked_subcommand is not None:
        return
    obj: Context = ctx.obj
    rows = []
    for b in balances(obj.ledger(), partner):
        currency = b["currency"]
        row: dict[str, Any] = {"partner": b["partner"], "currency": currency}
        row.update({key: _money(b[key], currency) for key in BALANCE_KEYS})
        row["owed"] = _money(b["approved_payable"] + b["clawback_outstanding"], currency)
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    print_table("payouts", ["partner", "currency", "owed now", "approved (in hold)", "pending", "held", "paid",
                            "clawbacks open"], [
        [r["partner"], r["currency"], r["owed"], r["approved_in_hold"], r["pending"], r["held"], r["paid"],
         r["clawback_outstanding"]] for r in rows])


def payout_json(view: dict[str, Any]) -> dict[str, Any]:
    """The contract's payout shape: the amount as a decimal string."""
    shown = {k: v for k, v in view.items() if k not in ("amount_minor", "lines")}
    shown["amount"] = _money(view["amount_minor"], view["currency"])
    if "lines" in view:
        shown["lines"] = [{**{k: v for k, v in line.items() if not k.endswith("_minor")},
                           "amount": _money(line["amount_minor"], view["currency"]),
                           "deal_amount": _money(line["deal_amount_minor"], view["currency"])
                           if line["deal_amount_minor"] is not None else None} for line in view["lines"]]
    return shown


def _show_payout(view: dict[str, Any], verb: str) -> None:
    netted = f", clawbacks {', '.join(map(str, view['clawback_ids']))} netted" if view["clawback_ids"] else ""
    click.echo(f"payout {view['id']} {verb}: {view['partner']} {view['amount']} {view['currency']} "
               f"({view['period']}; commissions {', '.join(map(str, view['commission_ids']))}{netted})")


@payouts.command("create")
@click.option("--period", required=True, help="The month, YYYY-MM: commissions payable by its end.")
@click.option("--by", required=True, help="Your name, recorded in the audit trail.")
@click.option("--json", "as_json", is_flag=True, help="Print the payouts made as JSON.")
@click.pass_obj
@handles_errors
def payouts_create(obj: Context, period: str, by: str, as_json: bool) -> None:
    """One open payout per partner and currency from approved commissions past their hold."""
    from refsync.state.payouts import create_payouts

    made = [payout_json(v) for v in create_payouts(obj.ledger(), period, by)]
    if as_json:
        print_json(made)
        return
    for view in made:
        _show_payout(view, "created")
    if not made:
        click.echo(f"nothing to pay for {period}: no approved commission past its hold outside a payout")


@payouts.command("export")
@click.argument("payout_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.pass_obj
@handles_errors
def payouts_export(obj: Context, payout_id: int, fmt: str, as_json: bool) -> None:
    """A payout and its lines, for the payment tool (CSV: one line per commission or clawback)."""
    from refsync.state.payouts import payout

    view = payout_json(payout(obj.ledger(), payout_id))
    if fmt == "json" or as_json:
        print_json(view)
        return
    columns = ["payout_id", "partner", "currency", "period", "payout_amount", "status", "reference", "commission_id",
               "kind", "referral_id", "amount", "deal_amount", "closed_on", "terms_version"]
    _csv([{"payout_id": view["id"], "partner": view["partner"], "currency": view["currency"],
           "period": view["period"], "payout_amount": view["amount"], "status": view["status"],
           "reference": view["reference"], **line} for line in view["lines"]], columns)


@payouts.command("mark-paid")
@click.argument("payout_id", type=int)
@click.option("--reference", required=True, help="The payment's reference in your payment tool.")
@click.option("--by", required=True, help="Your name, recorded in the audit trail.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def payouts_mark_paid(obj: Context, payout_id: int, reference: str, by: str, as_json: bool) -> None:
    """Mark an open payout paid: its commissions `paid`, its clawbacks settled (exit 1 if refused)."""
    from refsync.state.payouts import mark_paid

    view = payout_json(mark_paid(obj.ledger(), payout_id, reference, by))
    if as_json:
        print_json(view)
    else:
        _show_payout(view, f"paid as {reference}")


@payouts.command("cancel")
@click.argument("payout_id", type=int)
@click.option("--by", required=True, help="Your name, recorded in the audit trail.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def payouts_cancel(obj: Context, payout_id: int, by: str, as_json: bool) -> None:
    """Cancel an open payout; its commissions and clawbacks go into the next one."""
    from refsync.state.payouts import cancel

    view = payout_json(cancel(obj.ledger(), payout_id, by))
    if as_json:
        print_json(view)
    else:
        _show_payout(view, "cancelled")


@click.group()
def terms() -> None:
    """The partner agreement terms file ([compensation] terms)."""


@terms.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the versions found as JSON.")
@click.pass_obj
@handles_errors
def terms_check(obj: Context, as_json: bool) -> None:
    """Validate the terms file completely; every problem with its line (exit 2), else list the versions."""
    from refsync.connector.terms import load_terms

    config = obj.config
    if config.compensation is None:
        raise ConfigError(f"{config.source or 'config'}: compensation: no [compensation] table, so compensation "
                          "is off; add [compensation] with terms = \"terms.toml\" (see config.example.toml)")
    path = config.compensation.terms_path(config.base_dir)
    book = load_terms(path)
    versions = [{"scope": t.scope, "version": t.version, "effective_from": t.effective_from.isoformat(),
                 "currency": t.currency, "hold_days": t.hold_days}
                for t in (*book.program, *(t for v in book.partners.values() for t in v))]
    if as_json:
        print_json({"file": str(path), "applies_to": book.applies_to, "versions": versions,
                    "domains": {k: list(v) for k, v in book.domains.items()}})
        return
    click.echo(f"{path}: ok ({len(versions)} versions; the version in effect on the {book.applies_to} date applies)")
    for v in versions:
        click.echo(f"  {v['scope']:<24} from {v['effective_from']:<10}  {v['currency']}  hold {v['hold_days']}d  "
                   f"{v['version']}")
