"""The partner portal and the program dashboard in a real headless Chromium (Playwright driving the
system's /usr/bin/chromium), against the daemon's HTTP app, the real CLI in subprocesses and the
sandbox CRMs: what a partner and a program manager see.

Without chromium these tests skip with the reason, except in CI (REFSYNC_REQUIRE_SHARED=1 or
CI=true), where `.ci/run` installs it and a missing browser is a failure. Screenshots of the main
pages go to $REFSYNC_ARTIFACTS (else the pytest temporary directory), desktop and phone sizes.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.config import load_config
from refsync.connector.web import settings_from_config
from refsync.connector.web.app import HttpServer, HttpSettings
from refsync.shipped import shipped_path
from refsync.state.ledger import Ledger
from tests.conftest import FAST_RETRY, ROOT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
REQUIRED = os.environ.get("REFSYNC_REQUIRE_SHARED") == "1" or os.environ.get("CI") == "true"
REFSYNC = str(Path(sys.executable).with_name("refsync"))
PASSWORD = "a long partner passphrase"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole session."""
    problem = None
    if not Path(CHROMIUM).exists():
        problem = f"no {CHROMIUM}: install Debian's chromium (apt-get install -y chromium) to run the browser tests"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            problem = "playwright is not installed: pip install -e '.[dev]'"
    if problem:
        if REQUIRED:
            pytest.fail(problem + " (CI: .ci/run installs it; a skip here would hide the browser tests)")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        # --no-sandbox: CI and containers run as root, where Chromium's own sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ["REFSYNC_ARTIFACTS"]) if os.environ.get("REFSYNC_ARTIFACTS") else \
        tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class World:
    config: Path
    env: dict[str, str]
    ledger: Ledger
    server: HttpServer
    base: str
    sandbox: RunningSandbox

    def cli(self, *args: str) -> str:
        """The CLI in this process (a refsync process takes seconds to start on a busy machine);
        its standard output."""
        from click.testing import CliRunner

        from refsync.connector.cli import cli

        result = CliRunner().invoke(cli, ["--config", str(self.config), *args], env=self.env)
        assert result.exit_code == 0, f"refsync {' '.join(args)}: {result.exit_code}\n{result.output}"
        return result.stdout

    def command(self, *args: str) -> str:
        """The installed `refsync` in a subprocess, as an operator runs it; its standard output."""
        done = subprocess.run([REFSYNC, "--config", str(self.config), *args], env=self.env, capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, f"refsync {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def world(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[World]:
    """A ledger with the sample referrals, the sandbox CRMs, and the daemon's HTTP app serving the
    portal at ``[http] listen``, the address the CLI's links name."""
    sandbox.salesforce.reset()
    sandbox.hubspot.reset()
    folder = tmp_path_factory.mktemp("portal")
    listen = f"127.0.0.1:{_free_port()}"
    config = folder / "refsync.toml"
    config.write_text(
        '[ledger]\nurl = "sqlite:///refsync.db"\n'
        f'[crm.salesforce]\ninstance_url = "{sandbox.salesforce.base_url}"\n'
        f'ca_bundle = "{sandbox.salesforce.ca_path}"\n'
        f'session_id = "env:T_SF_SESSION"\nmapping = "{ROOT}/mappings/salesforce.toml"\n'
        f'[crm.hubspot]\nbase_url = "{sandbox.hubspot.base_url}"\naccess_token = "env:T_HS_TOKEN"\n'
        f'mapping = "{ROOT}/mappings/hubspot.toml"\n{FAST_RETRY}[http]\nlisten = "{listen}"\n')
    env = {**os.environ, "T_SF_SESSION": sandbox.salesforce.session_id, "T_HS_TOKEN": sandbox.hubspot.access_token}
    loaded = load_config(config)
    probe = World(config, env, None, None, "", sandbox)  # type: ignore[arg-type]
    probe.cli("init")
    probe.cli("import", str(shipped_path("examples", "referrals.csv")))
    ledger = Ledger.open(loaded.ledger_url())
    server = HttpServer(ledger, HttpSettings(listen, None, loaded.attribution.policy(),
                                             web=settings_from_config(loaded)), lambda: True)
    server.start()
    yield World(config, env, ledger, server, f"http://{listen}", sandbox)
    server.stop()
    ledger.close()


def _set_password(page: Any, link: str) -> None:
    page.goto(link)
    page.get_by_label("New password").fill(PASSWORD)
    page.get_by_label("The same password again").fill(PASSWORD)
    page.get_by_role("button", name="Set password and sign in").click()


def _shoot(page: Any, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def test_partner_is_invited_refers_a_prospect_and_follows_it_through_the_sandbox_crm(
        world: World, browser: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    invited = world.command("partners", "invite", "acme", "ana@acme.example", "--create").splitlines()
    link = invited[-1]
    assert link.startswith(f"{world.base}/welcome/")
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    _set_password(page, link)
    expect(page).to_have_url(f"{world.base}/portal")
    expect(page.get_by_role("heading", name="Referrals of acme")).to_be_visible()
    _shoot(page, shots, "portal-empty-phone")

    page.get_by_role("link", name="Refer a prospect").click()
    page.get_by_label("Prospect's email").fill("mia.wong@litware.example")
    page.get_by_label("Company", exact=True).fill("Litware Inc")
    page.get_by_label("Name", exact=True).fill("Mia Wong")
    page.get_by_role("button", name="Refer", exact=True).click()
    expect(page.locator(".answer.accepted")).to_contain_text("mia.wong@litware.example: accepted")
    _shoot(page, shots, "portal-submitted-phone")
    page.get_by_role("link", name="See its status").click()
    expect(page.locator("#status")).to_have_text("Submitted")
    referral_url = page.url

    # The prospect someone else referred already: accepted as input, answered without a name.
    page.get_by_role("link", name="Refer a prospect").click()
    page.get_by_label("Prospect's email").fill("dana.lee@northwind.example")
    page.get_by_role("button", name="Refer", exact=True).click()
    expect(page.locator(".answers")).to_contain_text("this prospect was already referred")
    expect(page.locator(".answers")).not_to_contain_text("acme-partners")

    world.cli("sync", "--once")  # pushes Mia to both sandbox CRMs
    [mia] = [r for r in world.ledger.referrals(partner="acme") if r["prospect_email"] == "mia.wong@litware.example"]
    [contact] = [lk["record_id"] for lk in mia["links"] if lk["crm"] == "hubspot" and lk["object"] == "contacts"]
    deal = world.sandbox.hubspot.convert_lead(contact)["deal"]  # a rep opens a deal for Mia ...
    world.cli("sync", "--once")
    world.sandbox.hubspot.move_stage(deal, "Closed Won", amount=52000, close_date="2026-11-20")  # ... and wins it
    world.cli("sync", "--once")
    page.goto(referral_url)
    expect(page.locator("#status")).to_have_text("Won")
    timeline = page.locator(".timeline")
    expect(timeline).to_contain_text("You referred this prospect.")
    expect(timeline).to_contain_text("The deal was won. Thank you!")
    expect(page.locator(".facts")).to_contain_text("52,000.00")
    body = page.content()
    assert contact not in body and deal not in body and mia["id"] in page.url  # no CRM id on the page
    assert "sole_referral" not in body and "crm_poll" not in body  # no internal reason code
    _shoot(page, shots, "portal-referral-won-phone")
    page.goto(f"{world.base}/portal")
    expect(page.locator('[data-status="won"]')).to_have_text("1")
    page.get_by_label("Status").select_option("won")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    _shoot(page, shots, "portal-home-phone")

    # Another partner types acme's referral address: the same page as for a referral that does not exist.
    other = browser.new_context()
    intruder = other.new_page()
    _set_password(intruder, world.cli("partners", "invite", "cedar-consulting", "lee@cedar.example")
                  .splitlines()[-1])
    expect(intruder).to_have_url(f"{world.base}/portal")
    answer = intruder.goto(referral_url)
    assert answer is not None and answer.status == 404
    expect(intruder.get_by_role("heading", name="Not found")).to_be_visible()
    assert "mia.wong" not in intruder.content() and "Litware" not in intruder.content()
    other.close()
    context.close()


def _number(text: str) -> float | None:
    text = text.strip()
    if text in ("—", ""):
        return None
    return float(text.rstrip("%").replace(",", "")) / (100 if text.endswith("%") else 1)


def _amounts(text: str) -> dict[str, float]:
    """A dashboard amount cell (``12,500.00 USD; 800.00 EUR``) as the report's ``{currency: amount}``."""
    figures = [part.split() for part in text.strip().split(";") if part.strip()]
    return {currency: float(amount.replace(",", "")) for amount, currency in figures}


def test_manager_signs_in_and_the_dashboard_shows_the_numbers_of_refsync_report(
        world: World, browser: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    world.cli("sync", "--once")
    link = json.loads(world.cli("users", "add", "boss@corp.example", "--role", "viewer", "--json"))["url"]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    _set_password(page, link)
    expect(page).to_have_url(f"{world.base}/dashboard")
    _shoot(page, shots, "dashboard-desktop")
    for grouping, table, keys in (("partner", "#by-partner", ["partner"]),
                                  ("channel", "#by-channel", ["source", "medium", "campaign"])):
        report = json.loads(world.cli("report", "--by", grouping, "--json"))["lines"]
        rows = page.locator(f"{table} tbody tr")
        expect(rows).to_have_count(len(report))
        for index, line in enumerate(report):
            row = rows.nth(index)
            shown = [row.locator(f'[data-col="{k}"]').inner_text() for k in keys]
            assert shown == [line[k] if line[k] is not None else "—" for k in keys]
            for column in ("open_pipeline_value", "won_revenue"):  # per currency, never summed
                shown_amounts = _amounts(row.locator(f'[data-col="{column}"]').inner_text())
                assert shown_amounts == line[column], (grouping, index, column, shown_amounts, line[column])
            for column in ("referrals", "accepted", "qualified", "won", "lost", "expired", "conversion_rate",
                           "median_days_to_close"):
                value = _number(row.locator(f'[data-col="{column}"]').inner_text())
                expected = line[column]
                if column == "conversion_rate":
                    assert value is not None and abs(value - expected) < 0.0005, (grouping, index, column)
                else:
                    assert value == expected, (grouping, index, column, value, expected)
    health = page.locator("#sync").locator("xpath=..")
    expect(health).to_contain_text("salesforce")
    expect(health).to_contain_text("hubspot")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC \(ok\)", health.inner_text())  # the last push and poll
    page.get_by_label("Submitted from").fill("2026-10-02")
    page.get_by_role("button", name="Show").click()
    period = json.loads(world.cli("report", "--from", "2026-10-02", "--json"))["lines"]
    expect(page.locator('#by-partner tr.total [data-col="referrals"]')).to_have_text(str(period[-1]["referrals"]))
    page.set_viewport_size(PHONE)
    _shoot(page, shots, "dashboard-phone")
    context.close()


def test_admin_approves_a_commission_on_the_dashboard_and_the_partner_sees_it_approved(
        world: World, browser: Any, shots: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from refsync.connector.compensate import compensate
    from refsync.connector.terms import parse_terms
    from refsync.state.commissions import commission_rows
    from tests.test_commissions_ledger import referral, set_deal

    # A won deal of fir-partners (what the poll records) and its commission, as the daemon computes it.
    rid = referral(world.ledger, tmp_path, partner="fir-partners", email="kim@proseware.example",
                   submitted="2026-10-01T09:00:00Z", name="fir")
    set_deal(world.ledger, rid, "won", amount="12000.00", currency="USD")
    compensate(world.ledger, parse_terms('[[program]]\neffective_from = 2026-01-01\ncurrency = "USD"\n'
                                         'percent = 10\nhold_days = 30\n'))
    [entry] = [r for r in commission_rows(world.ledger) if r["referral_id"] == rid]
    cid = entry["id"]

    partner = browser.new_context(viewport=PHONE)
    portal = partner.new_page()
    _set_password(portal, world.cli("partners", "invite", "fir-partners", "kim@fir.example").splitlines()[-1])
    portal.goto(f"{world.base}/portal/referrals/{rid}")
    row = portal.locator(f'[data-commission="{cid}"]')
    expect(row.locator('[data-col="status"]')).to_have_text("Pending")
    expect(row.locator('[data-col="amount"]')).to_have_text("1,200.00 USD")

    staff = browser.new_context(viewport={"width": 1280, "height": 900})
    dashboard = staff.new_page()
    _set_password(dashboard, world.cli("users", "add", "ada@corp.example", "--role", "admin").splitlines()[-1])
    expect(dashboard).to_have_url(f"{world.base}/dashboard")
    line = dashboard.locator(f'#commissions-table [data-commission="{cid}"]')
    expect(line.locator('[data-col="amount"]')).to_have_text("1,200.00 USD")
    line.get_by_role("button", name="Approve").click()
    expect(dashboard.locator("#flash")).to_have_text(f"{cid}: approve done by ada@corp.example")
    expect(dashboard.locator(f'#commissions-table [data-commission="{cid}"]')).to_have_count(0)
    _shoot(dashboard, shots, "dashboard-commission-approved-desktop")

    portal.reload()
    expect(row.locator('[data-col="status"]')).to_have_text("Approved")
    expect(row).to_contain_text("Approved; it is paid with")
    _shoot(portal, shots, "portal-commission-approved-phone")
    portal.goto(f"{world.base}/portal")
    expect(portal.locator('#commission-totals [data-currency="USD"] [data-col="approved"]')).to_have_text(
        "1,200.00 USD")
    assert "ada@corp.example" not in portal.content()  # the approver's name is staff business
    staff.close()
    partner.close()
