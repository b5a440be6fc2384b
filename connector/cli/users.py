"""Who signs in to the web pages: `refsync partners invite CODE EMAIL` (a partner user) and
`refsync users add EMAIL --role admin|viewer` (program staff), each printing a one-time link.

Contract: the link is the LAST line of the output; with ``--json`` the output is ``{"url": ...}``
(plus ``"emailed": true|false`` when ``[smtp]`` is configured: the link is then also emailed).
The link sets the user's password and signs them in; it works once, for ``[http] invite_days``.
Inviting an existing user again prints a new link (how a forgotten password is reset) and makes
the earlier unused links useless.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import click

from refsync.connector.cli.base import EXIT_PROBLEMS, Context, handles_errors, print_json, print_table
from refsync.errors import InputError


def _email(value: str) -> str:
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise InputError(f"{value!r} is not an email address ({exc})") from None


def _link(obj: Context, token: str) -> str:
    from refsync.connector.web import base_url

    http = obj.config.http
    if not http.listen and not http.public_url:
        raise InputError("[http] listen is \"\" (no HTTP server), so nobody could open the link; set [http] listen "
                         "(or public_url when the portal is behind a proxy)")
    return f"{base_url(http.listen, http.public_url)}/welcome/{token}"


def _print(obj: Context, lines: list[str], token: str, as_json: bool, mail: tuple[str, str, list[str]]) -> None:
    """Print the link last; with ``[smtp]``, also email it (``mail``: to, subject, the email's lines).
    An email that fails leaves the printed link valid and makes the exit code 1."""
    url = _link(obj, token)
    smtp = obj.config.smtp
    problem = None
    if smtp is not None:
        from refsync.connector.mail import MailNotSent, link_message, send

        to, subject, body = mail
        try:
            send(smtp, obj.config.base_dir, link_message(smtp.sender, to, subject, body, url))
        except MailNotSent as exc:
            problem = str(exc)
    if as_json:
        print_json({"url": url} if smtp is None else {"url": url, "emailed": problem is None})
    else:
        for line in lines:
            click.echo(line)
        if smtp is not None and problem is None:
            click.echo(f"Emailed to {mail[0]} through {smtp.host}:{smtp.port}; the link is also here:")
        click.echo(url)
    if problem:
        click.echo(f"refsync: the link was not emailed: {problem}; send the printed link yourself", err=True)
        sys.exit(EXIT_PROBLEMS)


@click.command("invite")
@click.argument("code")
@click.argument("email")
@click.option("--create", is_flag=True, help="The code is meant to be new: create the partner without a warning.")
@click.option("--json", "as_json", is_flag=True, help='Print {"url": ...} only.')
@click.pass_obj
@handles_errors
def partner_invite(obj: Context, code: str, email: str, create: bool, as_json: bool) -> None:
    """Invite EMAIL to the partner portal as a user of partner CODE; prints a one-time link."""
    from refsync.state.access import invite

    days = obj.config.http.invite_days
    ledger = obj.ledger()
    if not create and code not in {p["code"] for p in ledger.partners()}:
        # A program often invites a partner before its first referral: the partner is created, and a
        # mistyped code is flagged (stderr, so the link stays the last line of stdout).
        click.echo(f"refsync: note: partner {code} had no referral in the ledger yet; created it (if that is a typo, "
                   "`refsync partners list` shows the known codes)", err=True)
    user, token = invite(ledger, "partner", _email(email), "partner", timedelta(days=days),
                         partner_code=code, create_partner=True)
    _print(obj, [f"{user.email} may now sign in to the partner portal of {code}.",
                 f"Send them this one-time link (it works once, for {days:g} days; it sets their password):"],
           token, as_json, (user.email, "Your link to the partner portal", [
               f"You are invited to the partner portal of {code}, where you follow your referrals and refer "
               "new prospects.", f"Open this link to choose your password; it works once, for {days:g} days:"]))


@click.group()
def users() -> None:
    """Staff users of the program dashboard."""


@users.command("add")
@click.argument("email")
@click.option("--role", type=click.Choice(["admin", "viewer"]), required=True,
              help="viewer reads the dashboard; admin also decides duplicates and approves commissions.")
@click.option("--json", "as_json", is_flag=True, help='Print {"url": ...} only.')
@click.pass_obj
@handles_errors
def users_add(obj: Context, email: str, role: str, as_json: bool) -> None:
    """Add (or re-invite) a staff user of the program dashboard; prints a one-time link."""
    from refsync.state.access import invite

    days = obj.config.http.invite_days
    user, token = invite(obj.ledger(), "staff", _email(email), role, timedelta(days=days))
    _print(obj, [f"{user.email} ({role}) may now sign in to the program dashboard.",
                 f"Send them this one-time link (it works once, for {days:g} days; it sets their password):"],
           token, as_json, (user.email, "Your link to the program dashboard", [
               f"You are invited to the referral program dashboard as {role}.",
               f"Open this link to choose your password; it works once, for {days:g} days:"]))


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handles_errors
def users_list(obj: Context, as_json: bool) -> None:
    """Every web user, partner and staff (never a password)."""
    from refsync.state.access import users as all_users

    rows = all_users(obj.ledger())
    if as_json:
        print_json(rows)
        return
    print_table(f"{len(rows)} web users", ["kind", "email", "role", "partner", "password set", "since"], [
        [u["kind"], u["email"], u["role"], u["partner"], "yes" if u["password_set"] else "no (link not used)",
         u["created_at"]] for u in rows])
