"""`refsync demo`: the whole story on a laptop, against the sandbox CRMs and an embedded SQLite ledger.

1. start both CRM emulators and write a config for them under ``.demo/``;
2. create the ledger and import the sample referrals (one prospect referred twice);
3. push the attribution to Salesforce and HubSpot;
4. let the sandbox play sales reps: an owner change that blanks the partner field, a lead
   conversion, a merge of two referred leads, a HubSpot deal created for a referred contact, and
   deals moving to won and lost;
5. poll back, repair, and print the referrals' final statuses, their attribution, what refsync
   repaired and the alerts it raised;
6. end with a summary and the next commands to try, copy-pastable. The sandbox CRMs live inside
   the demo's process and stop with it (their records are in memory), so the config left in
   ``.demo/`` keeps working for everything that reads the ledger, and the summary says that `sync`
   and `reconcile` cannot reach the CRMs any more (they exit 1 naming each CRM unreachable).
"""

from __future__ import annotations

import shlex
import shutil
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import click

from refsync.connector.cli.support import run_cli
from refsync.shipped import shipped_path

SAMPLE = shipped_path("examples", "referrals.csv")
SESSION_FILE = "sandbox-salesforce.session"
TOKEN_FILE = "sandbox-hubspot.token"  # noqa: S105 - a file name, not a secret


def _secret_file(path: Path, value: str) -> None:
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_text(value + "\n", encoding="utf-8")


def demo_config(directory: Path, salesforce_url: str, ca_file: str, hubspot_url: str, session_id: str,
                access_token: str) -> Path:
    """The demo's config; the sandbox's credentials go into files beside it (0600), so the config
    still loads after the demo, and a command that needs a CRM says the CRM is unreachable."""
    _secret_file(directory / SESSION_FILE, session_id)
    _secret_file(directory / TOKEN_FILE, access_token)
    config = directory / "refsync.toml"
    config.write_text(
        "# Written by `refsync demo`: the sandbox CRMs and an embedded SQLite ledger.\n"
        "# The sandbox CRMs ran inside the demo and stopped with it: commands that read the ledger\n"
        "# (status, referrals, alerts, report, runs, ops) work with this file; sync and reconcile\n"
        "# cannot reach the CRMs any more. Run `refsync demo` again for a fresh run.\n"
        "[ledger]\n"
        'url = "sqlite:///refsync.db"\n'
        "[attribution]\n"
        'model = "first_touch"\n'
        'on_duplicate = "flag"\n'
        "[crm.salesforce]\n"
        f'instance_url = "{salesforce_url}"\n'
        f'ca_bundle = "{ca_file}"\n'
        f'session_id = "file:{SESSION_FILE}"\n'
        f'mapping = "{shipped_path("mappings", "salesforce.toml")}"\n'
        "[crm.hubspot]\n"
        f'base_url = "{hubspot_url}"\n'
        f'access_token = "file:{TOKEN_FILE}"\n'
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
    from refsync.connector.web import settings_from_config
    from refsync.connector.web.app import HttpServer, HttpSettings
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
        config = demo_config(directory, sandbox.salesforce.base_url, str(sandbox.salesforce.ca_path),
                             sandbox.hubspot.base_url, sandbox.salesforce.session_id, sandbox.hubspot.access_token)
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
        click.secho("\n== Summary", bold=True)
        click.echo(summary(config, example="portal-1001"))
        if portal_listen is not None:
            serve_portal(config, portal_listen)
        return 0
    finally:
        sandbox.stop()


def refsync_command() -> str:
    """How the user runs refsync, as they would type it: ``refsync`` when that is the one on the
    PATH, else the path they used (``.venv/bin/refsync``), relative to the working directory."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    exe = argv0 if argv0 is not None and argv0.name == "refsync" and argv0.exists() else None
    if exe is None:
        beside = Path(sys.executable).with_name("refsync")
        exe = beside if beside.exists() else None
    if exe is None:
        return "refsync"
    on_path = shutil.which("refsync")
    if on_path and Path(on_path).resolve() == exe.resolve():
        return "refsync"
    return shlex.quote(_relative(exe))


def _relative(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())


def summary(config: Path, example: str = "") -> str:
    """What the demo left in the ledger, and the next commands to try with the config it left."""
    from refsync.connector.config import load_config
    from refsync.state.ledger import Ledger
    from refsync.state.notifications import alerts

    ledger = Ledger.open(load_config(config).ledger_url())
    try:
        referrals = ledger.referrals()
        statuses = Counter(r["status"] for r in referrals)
        links = sum(1 for r in referrals for lk in r["links"] if lk["state"] == "active")
        restores = sum(1 for r in referrals for e in (ledger.referral(r["id"]) or {}).get("timeline", [])
                       if e["kind"] == "restore_planned")
        open_alerts = len(alerts(ledger, open_only=True))
    finally:
        ledger.close()
    chosen = [r for r in referrals if r["external_id"] == example] or referrals
    example_id = chosen[0]["id"] if chosen else "ID"
    run = f"{refsync_command()} --config {shlex.quote(_relative(config))}"
    return "\n".join([
        f"{len(referrals)} referrals ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}), "
        f"{links} CRM records linked; overwritten fields restored: {restores}; open alerts: {open_alerts}.",
        "",
        "Next, try (the ledger stays in the demo's folder):",
        f"  {run} status",
        f"  {run} referrals list",
        f"  {run} referrals show {example_id}",
        f"  {run} alerts --open",
        f"  {run} report --by channel",
        "",
        "The sandbox CRMs stopped with the demo (they keep their records in memory only), so `sync` and",
        "`reconcile` with this config cannot reach them (after their retries they exit 1, naming each CRM",
        "unreachable): run the demo again for a fresh run, or `refsync sandbox` and a config of your own.",
    ])
