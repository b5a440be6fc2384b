"""`refsync partners`: who refers, and where they hear back."""

from __future__ import annotations

import click

from refsync.connector.cli.base import (
    Context,
    handles_errors,
    print_json,
    print_table,
)
from refsync.connector.config import SECRET_SCHEMES
from refsync.errors import InputError


@click.group()
def partners() -> None:
    """Partners known to the ledger."""


@partners.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handles_errors
def partners_list(obj: Context, as_json: bool) -> None:
    rows = obj.ledger().partners()
    if as_json:
        print_json(rows)
        return
    print_table(f"{len(rows)} partners", ["code", "referrals", "by status", "since"], [
        [p["code"], p["referrals"], ", ".join(f"{k}={v}" for k, v in sorted(p["by_status"].items())),
         p["created_at"]] for p in rows
    ])


@partners.command("set")
@click.argument("code")
@click.option("--webhook-url", help="Where the partner receives status notifications (https).")
@click.option("--webhook-secret", help="The signing secret as a reference: env:NAME or file:/path.")
@click.option("--clear-webhook", is_flag=True, help="Stop notifying this partner.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_obj
@handles_errors
def partners_set(obj: Context, code: str, webhook_url: str | None, webhook_secret: str | None,
                 clear_webhook: bool, as_json: bool) -> None:
    """Set a partner's webhook URL and signing-secret reference (the secret itself never enters the ledger)."""
    from refsync.connector.webhook_target import url_problem
    from refsync.state.notifications import set_partner_webhook

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
    webhook = "cleared" if clear_webhook and not webhook_url else "set"
    if as_json:
        print_json({"partner": code, "webhook": webhook})
    else:
        click.echo(f"partner {code}: webhook {webhook}")
