"""Commissions on the partner portal and the admin actions of the dashboard, over real HTTP: a
partner sees only its own commission figures, per currency, with holds as "under review"; an admin
decides duplicates and approves, rejects or releases commissions through the CLI's own functions,
and the result is what `refsync commissions list --json` and `referrals show --json` would show had
the CLI done it; a viewer cannot act, and a form without its CSRF token changes nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from refsync.connector.cli import cli
from refsync.connector.compensate import compensate
from refsync.connector.terms import parse_terms
from refsync.state.commissions import commission_rows, decide, pay
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts
from tests.conftest import FakeClock
from tests.test_commissions_ledger import referral, set_deal
from tests.web_support import Browserless, csrf_of, invite, start_server, url_of

SQLITE_ONLY = pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
ADMIN = "paula@corp.example"
# bluebird's agreement moved from USD to EUR for referrals submitted from 15 October
TERMS = parse_terms("""
[holds]
min_hours_to_close = 24
[[program]]
effective_from = 2026-01-01
version = "p1"
currency = "USD"
percent = 10
hold_days = 30
[[partner."bluebird"]]
effective_from = 2026-01-01
version = "bb-usd"
currency = "USD"
percent = 10
hold_days = 30
domains = ["bluebird.example"]
[[partner."bluebird"]]
effective_from = 2026-10-15
version = "bb-eur"
currency = "EUR"
percent = 5
hold_days = 30
""")


@pytest.fixture
def server(ledger: Ledger) -> Iterator[Any]:
    running = start_server(ledger)
    yield running
    running.stop()


def signed_in(ledger: Ledger, server: Any, kind: str, email: str, **how: str) -> Browserless:
    client = Browserless(url_of(server))
    assert client.accept_invitation(invite(ledger, kind, email, **how)).status_code == 303
    return client


def refsync(ledger_url: str, tmp_path: Path, *args: str) -> Any:
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n[attribution]\non_duplicate = "flag"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout) if "--json" in args else result.stdout


def won(ledger: Ledger, tmp_path: Path, partner: str, email: str, submitted: str, amount: str,
        currency: str) -> str:
    rid = referral(ledger, tmp_path, partner=partner, email=email, submitted=submitted, name=email.split("@")[0])
    set_deal(ledger, rid, "won", amount=amount, currency=currency)
    return rid


def commission_of(ledger: Ledger, referral_id: str) -> dict[str, Any]:
    return [r for r in commission_rows(ledger) if r["referral_id"] == referral_id][-1]


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def cell(html: str, row: str, col: str) -> str:
    """The text of field ``col`` in the table row or list item marked ``row`` (``data-currency="USD"``)."""
    found = re.search(rf'<(tr|li) {row}>(.*?)</\1>', html, re.S)
    assert found, row
    value = re.search(rf'data-col="{col}">(.*?)</(td|dd)>', found.group(2), re.S)
    assert value, (row, col)
    return text(value.group(1)).strip()


def test_partner_sees_its_own_commissions_per_currency_holds_as_under_review_and_nothing_of_others(
        ledger: Ledger, server: Any, clock: FakeClock, tmp_path: Path) -> None:
    usd = won(ledger, tmp_path, "bluebird", "dana@northwind.example", "2026-10-01T09:00:00Z", "12000.00", "USD")
    # crane refers the same prospect later (a flagged duplicate): bluebird's commission is held for it
    rival = referral(ledger, tmp_path, partner="crane", email="dana@northwind.example",
                     submitted="2026-10-05T09:00:00Z", name="rival")
    selfref = won(ledger, tmp_path, "bluebird", "ceo@bluebird.example", "2026-10-02T09:00:00Z", "3000.00", "USD")
    approved = won(ledger, tmp_path, "bluebird", "lee@contoso.example", "2026-10-03T09:00:00Z", "2000.00", "USD")
    eur = won(ledger, tmp_path, "bluebird", "sam@fabrikam.example", "2026-10-20T09:00:00Z", "8000.00", "EUR")
    crane = won(ledger, tmp_path, "crane", "max@tailspin.example", "2026-10-04T09:00:00Z", "99000.00", "USD")
    compensate(ledger, TERMS)
    assert commission_of(ledger, usd)["holds"][0]["code"] == "multiple_partners"
    assert commission_of(ledger, selfref)["holds"][0]["code"] == "self_referral"
    decide(ledger, [commission_of(ledger, approved)["id"], commission_of(ledger, eur)["id"]], "approve", "Fiona",
           None)
    clock.advance(days=31)
    pay(ledger, [commission_of(ledger, eur)["id"]], "PAY-7", "Fiona")
    set_deal(ledger, eur, "lost", amount=None, currency=None, close=None)  # after payment: clawed back
    compensate(ledger, TERMS)

    partner = signed_in(ledger, server, "partner", "bo@bluebird.example", partner="bluebird")
    home = partner.get("/portal").text
    assert (cell(home, 'data-currency="USD"', "earned"), cell(home, 'data-currency="USD"', "pending"),
            cell(home, 'data-currency="USD"', "approved"), cell(home, 'data-currency="USD"', "paid")) == (
        "1,700.00 USD", "1,500.00 USD", "200.00 USD", "0.00 USD")
    assert (cell(home, 'data-currency="EUR"', "paid"), cell(home, 'data-currency="EUR"', "clawed_back")) == (
        "400.00 EUR", "-400.00 EUR")
    held = partner.get(f"/portal/referrals/{usd}").text
    entry = commission_of(ledger, usd)
    row = f'data-commission="{entry["id"]}"'
    assert (cell(held, row, "amount"), cell(held, row, "status")) == ("1,200.00 USD", "Under review")
    assert cell(held, row, "payable_after") == entry["payable_after"][:10]
    paid = partner.get(f"/portal/referrals/{eur}").text
    first, claw = [r for r in commission_rows(ledger) if r["referral_id"] == eur]
    assert cell(paid, f'data-commission="{first["id"]}"', "status") == "Paid"
    assert cell(paid, f'data-commission="{first["id"]}"', "paid") == f"PAY-7, {first['paid_at'][:10]}"
    assert cell(paid, f'data-commission="{claw["id"]}"', "status") == "Taken back"
    assert "deducted from your next payout" in text(paid)
    # Never the hold reasons, another partner, its referrals or its figures.
    every_page = " ".join(partner.get(p).text for p in ("/portal", *(f"/portal/referrals/{r}" for r in (
        usd, selfref, approved, eur))))
    for secret in ("crane", "multiple_partners", "self_referral", "Fiona", "9,900.00", rival, crane):
        assert secret not in every_page, secret
    assert partner.get(f"/portal/referrals/{crane}").status_code == 404
    other = signed_in(ledger, server, "partner", "cy@crane.example", partner="crane")
    crane_home = other.get("/portal").text
    assert cell(crane_home, 'data-currency="USD"', "pending") == "9,900.00 USD"
    assert "EUR" not in text(crane_home) and "1,700.00" not in crane_home


@SQLITE_ONLY
def test_admin_approves_on_the_dashboard_exactly_as_the_cli_would(
        ledger: Ledger, ledger_url: str, server: Any, tmp_path: Path) -> None:
    by_web = won(ledger, tmp_path, "bluebird", "dana@northwind.example", "2026-10-01T09:00:00Z", "12000.00", "USD")
    by_cli = won(ledger, tmp_path, "bluebird", "lee@contoso.example", "2026-10-01T09:00:00Z", "12000.00", "USD")
    compensate(ledger, TERMS)
    web_id, cli_id = commission_of(ledger, by_web)["id"], commission_of(ledger, by_cli)["id"]
    admin = signed_in(ledger, server, "staff", ADMIN, role="admin")
    page = admin.get("/dashboard").text
    assert cell(page, f'data-commission="{web_id}"', "amount") == "1,200.00 USD"
    answer = admin.post("/dashboard/commissions/decide", {"csrf": csrf_of(page), "id": str(web_id),
                                                          "action": "approve"})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard#commissions"
    assert f"{web_id}: approve done by {ADMIN}" in text(admin.get("/dashboard").text)
    assert "approve done" not in admin.get("/dashboard").text  # the flash is shown once
    cli_out = refsync(ledger_url, tmp_path, "commissions", "approve", str(cli_id), "--by", ADMIN)
    assert cli_out.strip() == f"{cli_id}: approve done by {ADMIN}"
    listed = {r["id"]: r for r in refsync(ledger_url, tmp_path, "commissions", "list", "--json")}
    same = ("status", "decided_by", "reason", "amount", "currency", "terms_version", "holds")
    assert {k: listed[web_id][k] for k in same} == {k: listed[cli_id][k] for k in same}
    assert listed[web_id]["status"] == "approved" and listed[web_id]["decided_by"] == ADMIN

    def story(rid: str) -> list[tuple[str, str, str]]:
        shown = refsync(ledger_url, tmp_path, "referrals", "show", rid, "--json")
        return [(e["kind"], e["actor"], e["reason_code"]) for e in shown["timeline"] if "commission" in e["kind"]]

    assert story(by_web) == story(by_cli)
    assert ("commission_approved", f"user:{ADMIN}", "approved") in story(by_web)


@SQLITE_ONLY
def test_held_commissions_show_their_reasons_to_staff_and_release_reject_or_refuse_in_cli_words(
        ledger: Ledger, ledger_url: str, server: Any, tmp_path: Path) -> None:
    held = won(ledger, tmp_path, "bluebird", "ceo@bluebird.example", "2026-10-02T09:00:00Z", "3000.00", "USD")
    other = won(ledger, tmp_path, "crane", "max@tailspin.example", "2026-10-04T09:00:00Z", "1000.00", "USD")
    won(ledger, tmp_path, "bluebird", "sam@fabrikam.example", "2026-10-20T09:00:00Z", "8000.00", "EUR")
    compensate(ledger, TERMS)
    held_id, other_id = commission_of(ledger, held)["id"], commission_of(ledger, other)["id"]
    admin = signed_in(ledger, server, "staff", ADMIN, role="admin")
    page = admin.get("/dashboard").text
    assert "self_referral" in cell(page, f'data-commission="{held_id}"', "holds")
    assert "bluebird.example" in cell(page, f'data-commission="{held_id}"', "holds")
    waiting = text(re.search(r'<section aria-labelledby="commissions">(.*?)</section>', page, re.S).group(1))  # type: ignore[union-attr]
    assert "400.00 USD" in waiting and "400.00 EUR" in waiting  # 300 + 100 USD; never added to the euros
    csrf = csrf_of(page)

    def act(action: str, commission_id: int, reason: str = "") -> str:
        answer = admin.post("/dashboard/commissions/decide", {"csrf": csrf, "id": str(commission_id),
                                                              "action": action, "reason": reason})
        assert answer.status_code == 303
        flash = re.search(r'<div role="status" id="flash">(.*?)</div>', admin.get("/dashboard").text, re.S)
        assert flash
        return text(flash.group(1)).strip()

    assert act("approve", held_id) == (f"refused: {held_id}: is held; approve applies to pending commissions "
                                       "(release its hold first: `refsync commissions release`)")
    assert act("release", held_id) == "refused: give a reason to release (it is the evidence in a dispute)"
    assert act("release", held_id, "subsidiary, checked") == f"{held_id}: release done by {ADMIN}"
    assert act("reject", other_id, "deal booked twice") == f"{other_id}: reject done by {ADMIN}"
    listed = {r["id"]: r for r in refsync(ledger_url, tmp_path, "commissions", "list", "--json")}
    assert (listed[held_id]["status"], listed[held_id]["reason"], listed[held_id]["holds"]) == (
        "pending", "subsidiary, checked", [])
    assert (listed[other_id]["status"], listed[other_id]["reason"], listed[other_id]["decided_by"]) == (
        "rejected", "deal booked twice", ADMIN)
    shown = refsync(ledger_url, tmp_path, "referrals", "show", held, "--json")
    assert ("commission_hold_released", f"user:{ADMIN}") in [(e["kind"], e["actor"]) for e in shown["timeline"]]
    assert act("approve", held_id) == f"{held_id}: approve done by {ADMIN}"
    assert act("approve", 999_999) == "refused: 999999: no such commission (`refsync commissions list` " \
                                              "shows them)"


def duplicate_pair(ledger: Ledger, tmp_path: Path) -> tuple[str, str]:
    first = referral(ledger, tmp_path, partner="acme", email="pat@north.example", submitted="2026-10-01T09:00:00Z",
                     name="a")
    later = referral(ledger, tmp_path, partner="beta", email="pat@north.example", submitted="2026-10-03T09:00:00Z",
                     name="b")
    return first, later


@SQLITE_ONLY
def test_admin_decides_a_duplicate_on_the_dashboard_as_referrals_decide_would(
        ledger: Ledger, ledger_url: str, server: Any, tmp_path: Path) -> None:
    first, later = duplicate_pair(ledger, tmp_path)
    admin = signed_in(ledger, server, "staff", ADMIN, role="admin")
    page = admin.get("/dashboard").text
    listed = re.search(rf'<tr data-referral="{later}">(.*?)</tr>', page, re.S)
    assert listed and "beta" in listed.group(1) and first in listed.group(1) and "Credit" in listed.group(1)
    answer = admin.post("/dashboard/duplicates/decide", {"csrf": csrf_of(page), "referral_id": later,
                                                         "decision": "credit", "note": "contract names beta"})
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard#duplicates"
    after = admin.get("/dashboard").text
    assert f"referral {later} now holds credit; {first} lost it (declined)" in text(after)
    assert f'data-referral="{later}"' not in after and "No duplicate waits for a decision." in after
    shown = refsync(ledger_url, tmp_path, "referrals", "show", later, "--json")
    assert shown["attribution"]["credited"] is True
    [event] = [e for e in shown["timeline"] if e["kind"] == "duplicate_decided"]
    assert (event["actor"], event["reason_code"], event["detail"]["note"]) == (
        ADMIN, "credited_by_review", "contract names beta")
    [alert] = [a for a in alerts(ledger) if a["kind"] == "duplicate_referral"]
    assert (alert["resolution"], alert["acknowledged_by"]) == ("credited", ADMIN)
    again = admin.post("/dashboard/duplicates/decide", {"csrf": csrf_of(after), "referral_id": later,
                                                        "decision": "decline"})
    assert again.status_code == 303
    assert f"refused: referral {later} is not a flagged duplicate waiting for a decision" in \
        text(admin.get("/dashboard").text)


@SQLITE_ONLY
def test_a_viewer_sees_the_lists_without_buttons_and_cannot_act(ledger: Ledger, server: Any,
                                                                 tmp_path: Path) -> None:
    _first, later = duplicate_pair(ledger, tmp_path)
    rid = won(ledger, tmp_path, "bluebird", "dana@northwind.example", "2026-10-01T09:00:00Z", "12000.00", "USD")
    compensate(ledger, TERMS)
    cid = commission_of(ledger, rid)["id"]
    viewer = signed_in(ledger, server, "staff", "vic@corp.example", role="viewer")
    page = viewer.get("/dashboard").text
    assert f'data-commission="{cid}"' in page and f'data-referral="{later}"' in page
    assert "/dashboard/commissions/decide" not in page and "/dashboard/duplicates/decide" not in page
    csrf = csrf_of(page)
    refused = viewer.post("/dashboard/commissions/decide", {"csrf": csrf, "id": str(cid), "action": "approve"})
    assert refused.status_code == 403 and "Only an admin" in refused.text
    assert viewer.post("/dashboard/duplicates/decide", {"csrf": csrf, "referral_id": later,
                                                        "decision": "credit"}).status_code == 403
    assert commission_of(ledger, rid)["status"] == "pending"
    assert [a["state"] for a in alerts(ledger) if a["kind"] == "duplicate_referral"] == ["open"]
    partner = signed_in(ledger, server, "partner", "bo@bluebird.example", partner="bluebird")
    assert partner.post("/dashboard/commissions/decide", {"csrf": csrf_of(partner.get("/portal").text),
                                                          "id": str(cid), "action": "approve"}).status_code == 403
    assert commission_of(ledger, rid)["status"] == "pending"


@SQLITE_ONLY
def test_the_admin_forms_without_the_right_csrf_token_are_refused_and_change_nothing(
        ledger: Ledger, server: Any, tmp_path: Path) -> None:
    _first, later = duplicate_pair(ledger, tmp_path)
    rid = won(ledger, tmp_path, "bluebird", "dana@northwind.example", "2026-10-01T09:00:00Z", "12000.00", "USD")
    compensate(ledger, TERMS)
    cid = commission_of(ledger, rid)["id"]
    admin = signed_in(ledger, server, "staff", ADMIN, role="admin")
    for token in ({}, {"csrf": "forged-token-0123456789abcdef0123456789"}):
        assert admin.post("/dashboard/commissions/decide", {**token, "id": str(cid),
                                                            "action": "approve"}).status_code == 403
        assert admin.post("/dashboard/duplicates/decide", {**token, "referral_id": later,
                                                           "decision": "credit"}).status_code == 403
    assert commission_of(ledger, rid)["status"] == "pending"
    assert [a["state"] for a in alerts(ledger) if a["kind"] == "duplicate_referral"] == ["open"]
    # Nor can a cookie set elsewhere make the dashboard claim something was done.
    admin.http.cookies.set("refsync_flash", "W1siOTk6IGFwcHJvdmUgZG9uZSIsIGZhbHNlXV0=.00", path="/dashboard")
    assert "approve done" not in admin.get("/dashboard").text
