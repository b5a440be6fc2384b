"""`refsync demo`: the whole story on a laptop, against the sandbox CRMs and an embedded SQLite ledger.

1. start both CRM emulators and write a config for them under ``.demo/``;
2. create the ledger and import the sample referrals (one prospect referred twice);
3. push the attribution to Salesforce and HubSpot;
4. let the sandbox play sales reps: an owner change that blanks the partner field, a lead
   conversion, a merge of two referred leads, a HubSpot deal created for a referred contact, and
   deals moving to won and lost;
5. poll back, repair, and print the referrals' final statuses, their attribution, what refsync
   repaired and the alerts it raised.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path

import click

from refsync.connector.cli.support import run_cli
from refsync.shipped import shipped_path

SAMPLE = shipped_path("examples", "referrals.csv")
SESSION_VAR = "REFSYNC_DEMO_SF_SESSION"
TOKEN_VAR = "REFSYNC_DEMO_HUBSPOT_TOKEN"  # noqa: S105 - a variable name, not a secret


def demo_config(directory: Path, salesforce_url: str, ca_file: str, hubspot_url: str) -> Path:
    config = directory / "refsync.toml"
    config.write_text(
        "# Written by `refsync demo`: the sandbox CRMs and an embedded SQLite ledger.\n"
        "[ledger]\n"
        'url = "sqlite:///refsync.db"\n'
        "[attribution]\n"
        'model = "first_touch"\n'
        'on_duplicate = "flag"\n'
        "[crm.salesforce]\n"
        f'instance_url = "{salesforce_url}"\n'
        f'ca_bundle = "{ca_file}"\n'
        f'session_id = "env:{SESSION_VAR}"\n'
        f'mapping = "{shipped_path("mappings", "salesforce.toml")}"\n'
        "[crm.hubspot]\n"
        f'base_url = "{hubspot_url}"\n'
        f'access_token = "env:{TOKEN_VAR}"\n'
        f'mapping = "{shipped_path("mappings", "hubspot.toml")}"\n'
        "[logging]\n"
        'level = "warning"\n'
    )
    return config


def _step(title: str, config: Path, *args: str, allowed: tuple[int, ...] = (0,)) -> None:
    click.secho(f"\n== {title}: refsync {' '.join(args)}", bold=True)
    code = run_cli(["--config", str(config), *args])
    if code not in allowed:
        raise click.ClickException(f"demo step `refsync {' '.join(args)}` failed with exit code {code}")


def _links(config: Path) -> dict[str, dict[str, str]]:
    """Referral external id -> {crm:object -> record id}, read from the ledger."""
    from refsync.connector.config import load_config
    from refsync.state.ledger import Ledger

    ledger = Ledger.open(load_config(config).ledger_url())
    found: dict[str, dict[str, str]] = {}
    for referral in ledger.referrals():
        found[referral["external_id"]] = {f"{lk['crm']}:{lk['object']}": lk["record_id"]
                                          for lk in referral["links"] if lk["state"] == "active"}
    ledger.close()
    return found


DEMO_PASSWORD = "refsync-demo-password"  # noqa: S105 - the demo's printed, throwaway credentials


def serve_portal(config: Path, listen: str, stop: threading.Event | None = None) -> None:
    """Serve the portal and the dashboard of the demo's ledger on ``listen`` until Ctrl-C (or
    ``stop``), after printing their addresses and a demo partner's and manager's credentials."""
    from refsync.connector.config import load_config
    from refsync.connector.http import HttpServer, HttpSettings
    from refsync.connector.web import settings_from_config
    from refsync.connector.web.auth import hash_password
    from refsync.state import access
    from refsync.state.ledger import Ledger

    loaded = load_config(config)
    loaded = loaded.model_copy(update={"http": loaded.http.model_copy(update={"listen": listen})})
    ledger = Ledger.open(loaded.ledger_url())
    users = (("partner", "dana@acme-partners.example", "partner", "acme-partners"),
             ("staff", "manager@refsync.example", "admin", None))
    for kind, email, role, partner in users:
        _user, token = access.invite(ledger, kind, email, role, timedelta(hours=1), partner_code=partner)
        access.use_link(ledger, token, hash_password(DEMO_PASSWORD), access.new_token(), access.new_token(),
                        timedelta(minutes=1), "demo")
    server = HttpServer(ledger, HttpSettings(listen, None, loaded.attribution.policy(),
                                             web=settings_from_config(loaded)), lambda: True)
    server.start()
    host, port = server.address
    base = f"http://{host}:{port}"
    click.secho("\n== The partner portal and the program dashboard", bold=True)
    click.echo(f"Partner portal:    {base}/portal     sign in as {users[0][1]} / {DEMO_PASSWORD}")
    click.echo(f"Program dashboard: {base}/dashboard  sign in as {users[1][1]} / {DEMO_PASSWORD}")
    click.echo("Serving until Ctrl-C.")
    try:
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        click.echo("\nstopped")
    finally:
        server.stop()
        ledger.close()


def run_demo(directory: Path, sample: Path = SAMPLE, portal_listen: str | None = None) -> int:
    from refsync.adapters.sandbox.run import start_sandbox

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("refsync.db*"):
        stale.unlink()
    sandbox = start_sandbox(directory / "sandbox", seed=7)
    try:
        os.environ[SESSION_VAR] = sandbox.salesforce.session_id
        os.environ[TOKEN_VAR] = sandbox.hubspot.access_token
        config = demo_config(directory, sandbox.salesforce.base_url, str(sandbox.salesforce.ca_path),
                             sandbox.hubspot.base_url)
        click.secho(f"Sandbox CRMs: Salesforce {sandbox.salesforce.base_url}, HubSpot {sandbox.hubspot.base_url}",
                    bold=True)
        _step("Create the ledger", config, "init")
        _step("Import the sample referrals (one prospect is referred twice)", config, "import", str(sample))
        _step("Check the mapping files against the sandbox schemas", config, "mappings", "check")
        _step("Push the attribution to both CRMs", config, "sync", "--once")

        links = _links(config)
        sf, hs = sandbox.salesforce, sandbox.hubspot
        click.secho("\n== The sandbox plays sales reps", bold=True)
        dana_lead = links["portal-1001"]["salesforce:Lead"]
        sf.change_owner("Lead", dana_lead, "005000000000REP")
        sf.set_field("Lead", dana_lead, "Referral_Partner__c", None, by="005000000000REP")
        click.echo(f"- a rep took over Dana's lead {dana_lead} and blanked its Referral_Partner__c")
        converted = sf.convert_lead(links["portal-1002"]["salesforce:Lead"], "Contoso expansion")
        click.echo(f"- Sam's lead was converted: opportunity {converted['opportunity']} (custom fields not copied)")
        survivor = links["portal-1007"]["salesforce:Lead"]
        sf.merge("Lead", survivor, links["portal-1005"]["salesforce:Lead"])
        click.echo(f"- two referred Tailspin leads were merged into {survivor} (the later referral's record)")
        deal = hs.convert_lead(links["portal-1006"]["hubspot:contacts"])
        click.echo(f"- sales created HubSpot deal {deal['deal']} for Ana's contact")
        sync_step = ("Poll back: stages, conversions, merges, repairs", config, "sync", "--once")
        _step(*sync_step)
        sf.move_stage(converted["opportunity"], "Negotiation/Review", amount=48000)
        sf.move_stage(converted["opportunity"], "Closed Won", amount=52000, close_date="2026-11-20")
        hs.move_stage(deal["deal"], "Closed Lost")
        click.echo("\n- Sam's opportunity moved to Negotiation/Review, then Closed Won (52,000)")
        click.echo("- Ana's HubSpot deal moved to Closed Lost")
        _step("Poll back the deal stages", config, "sync", "--once")
        _step("The referrals: final statuses and attribution", config, "referrals", "list")
        _step("What refsync saw and repaired (alerts)", config, "alerts", allowed=(0, 1))
        record = sf.get_record("Lead", dana_lead) or {}
        click.echo(f"\nDana's lead {dana_lead} carries Referral_Partner__c = {record.get('Referral_Partner__c')!r} "
                   "again, restored by refsync.")
        click.secho(f"\nDone. Explore the ledger with `refsync --config {config} referrals show ID`.", bold=True)
        if portal_listen is not None:
            serve_portal(config, portal_listen)
        return 0
    finally:
        sandbox.stop()
