"""The portal's and dashboard's sign-in and isolation over real HTTP (no browser): one-time links,
CSRF, session fixation, the sign-in rate limit, sign-out everywhere, partner isolation on every
route, and no secret in any page or log line."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from refsync.connector import logs
from refsync.connector.web.app import HttpServer
from refsync.connector.web.routes import web_routes
from refsync.state.ledger import Ledger
from refsync.state.models import AuditEvent, WebSession
from refsync.state.notifications import alerts
from tests.conftest import FakeClock
from tests.web_support import PASSWORD, Browserless, csrf_of, invite, start_server, url_of

# Most of these tests check the web layer, not the database: SQLite only. The invitation and the
# isolation tests run on PostgreSQL too.
SQLITE_ONLY = pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)


@pytest.fixture
def server(ledger: Ledger) -> Iterator[HttpServer]:
    running = start_server(ledger)
    yield running
    running.stop()


@pytest.fixture
def browser(server: HttpServer) -> Iterator[Browserless]:
    client = Browserless(url_of(server))
    yield client
    client.close()


def partner_signed_in(ledger: Ledger, server: HttpServer, partner: str, email: str) -> Browserless:
    client = Browserless(url_of(server))
    assert client.accept_invitation(invite(ledger, "partner", email, partner=partner)).status_code == 303
    return client


def sign_in_events(ledger: Ledger) -> list[str]:
    with ledger.transaction() as txn:
        return [e.reason_code for e in txn.session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "sign_in").order_by(AuditEvent.id))]


def test_invitation_link_sets_the_password_signs_in_and_works_only_once(
        ledger: Ledger, server: HttpServer, browser: Browserless) -> None:
    token = invite(ledger, "partner", "Ana@Acme.example", partner="acme")
    page = browser.get(f"/welcome/{token}")
    assert page.status_code == 200 and "ana@acme.example" in page.text and "acme" in page.text
    short = browser.form_post(f"/welcome/{token}", f"/welcome/{token}", {"password": "short", "confirm": "short"})
    assert short.status_code == 422 and "at least 12 characters" in short.text
    answer = browser.accept_invitation(token)
    assert answer.status_code == 303 and answer.headers["location"] == "/portal"
    assert "Referrals of acme" in browser.get("/portal").text
    again = Browserless(url_of(server))
    assert again.get(f"/welcome/{token}").status_code == 404  # spent
    assert again.sign_in("partner", "ana@acme.example").status_code == 303  # the password it set works
    assert sign_in_events(ledger) == ["password_set", "succeeded"]


@SQLITE_ONLY
def test_session_cookie_is_httponly_samesite_and_secure_behind_https(ledger: Ledger) -> None:
    plain = start_server(ledger)
    secure = start_server(ledger, base_url="https://partners.example.com")
    try:
        for running, wants_secure in ((plain, False), (secure, True)):
            client = Browserless(url_of(running))
            link = invite(ledger, "partner", f"u{wants_secure}@acme.example", partner="acme")
            form = client.get(f"/welcome/{link}")
            csrf_cookie = form.headers["set-cookie"]
            value = re.search(r"refsync_csrf=([^;]+)", csrf_cookie).group(1)  # type: ignore[union-attr]
            # Sent by hand: a cookie jar keeps a Secure cookie away from this plain-http test server.
            answer = client.http.post(f"/welcome/{link}", data={"csrf": csrf_of(form.text), "password": PASSWORD,
                                                                  "confirm": PASSWORD},
                                      headers={"Cookie": f"refsync_csrf={value}"})
            assert answer.status_code == 303
            for cookie in (csrf_cookie, answer.headers["set-cookie"]):
                assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
                assert ("Secure" in cookie) is wants_secure
            client.close()
    finally:
        plain.stop()
        secure.stop()


@SQLITE_ONLY
def test_posts_without_the_right_csrf_token_are_refused_and_change_nothing(
        ledger: Ledger, server: HttpServer, browser: Browserless) -> None:
    token = invite(ledger, "partner", "ana@acme.example", partner="acme")
    browser.get(f"/welcome/{token}")  # the form's CSRF cookie is set, but the POST forgets the field
    refused = browser.post(f"/welcome/{token}", {"password": PASSWORD, "confirm": PASSWORD})
    assert refused.status_code == 403
    assert browser.get(f"/welcome/{token}").status_code == 200  # the link was not spent
    assert browser.accept_invitation(token).status_code == 303
    referral = {"prospect_email": "dana@northwind.example"}
    assert browser.post("/portal/submit", referral).status_code == 403
    assert browser.post("/portal/submit", {**referral, "csrf": "forged-token-0123456789abcdef"}).status_code == 403
    assert ledger.referrals() == []
    assert browser.post("/portal/sign-out-everywhere", {"csrf": "x" * 43}).status_code == 403
    assert browser.get("/portal").status_code == 200  # still signed in
    # A sign-in form posted from elsewhere (login CSRF): the cookie's token is not in the form.
    other = Browserless(url_of(server))
    other.get("/portal/sign-in")
    assert other.post("/portal/sign-in", {"email": "ana@acme.example", "password": PASSWORD}).status_code == 403


@SQLITE_ONLY
def test_a_session_token_planted_before_sign_in_never_becomes_a_session(
        ledger: Ledger, server: HttpServer, browser: Browserless) -> None:
    token = invite(ledger, "partner", "ana@acme.example", partner="acme")
    assert browser.accept_invitation(token).status_code == 303
    assert browser.post("/portal/sign-out", {"csrf": csrf_of(browser.get("/portal").text)}).status_code == 303
    planted = "attacker-chosen-session-token-0123456789abc"
    victim = Browserless(url_of(server))
    victim.http.cookies.set("refsync_portal", planted, domain="127.0.0.1", path="/")
    assert victim.get("/portal").status_code == 303  # the planted token is nobody's session
    answer = victim.sign_in("partner", "ana@acme.example")
    assert answer.status_code == 303
    issued = victim.http.cookies.get("refsync_portal")
    assert issued and issued != planted  # a fresh token at sign-in
    attacker = Browserless(url_of(server))
    attacker.http.cookies.set("refsync_portal", planted, domain="127.0.0.1", path="/")
    assert attacker.get("/portal").status_code == 303
    assert victim.get("/portal").status_code == 200
    with ledger.transaction() as txn:  # only hashes are stored: the cookie's value is not in the ledger
        stored = list(txn.session.scalars(select(WebSession.token_hash)))
    assert issued not in stored and len(stored) == 1


@SQLITE_ONLY
def test_sign_in_is_refused_after_five_failures_even_with_the_right_password(
        ledger: Ledger, server: HttpServer, browser: Browserless, clock: FakeClock) -> None:
    assert browser.accept_invitation(invite(ledger, "partner", "ana@acme.example", partner="acme")).status_code == 303
    guesser = Browserless(url_of(server))
    for attempt in range(5):
        assert guesser.sign_in("partner", "ana@acme.example", f"wrong password {attempt}").status_code == 401
    limited = guesser.sign_in("partner", "ana@acme.example")
    assert limited.status_code == 429 and "Too many failed sign-ins" in limited.text
    assert guesser.sign_in("staff", "ana@acme.example").status_code == 401  # staff sign-in is another door
    assert sign_in_events(ledger) == ["password_set", *["failed"] * 5, "rate_limited", "failed"]
    clock.advance(minutes=16)
    assert guesser.sign_in("partner", "ana@acme.example").status_code == 303  # the window passed


@SQLITE_ONLY
def test_sign_out_everywhere_ends_every_session_of_the_user(ledger: Ledger, server: HttpServer) -> None:
    phone = partner_signed_in(ledger, server, "acme", "ana@acme.example")
    laptop = Browserless(url_of(server))
    assert laptop.sign_in("partner", "ana@acme.example").status_code == 303
    colleague = partner_signed_in(ledger, server, "acme", "bo@acme.example")
    assert laptop.get("/portal").status_code == phone.get("/portal").status_code == 200
    answer = phone.post("/portal/sign-out-everywhere", {"csrf": csrf_of(phone.get("/portal").text)})
    assert answer.status_code == 303
    assert phone.get("/portal").status_code == 303 and laptop.get("/portal").status_code == 303
    assert colleague.get("/portal").status_code == 200  # another user's session stays


@SQLITE_ONLY
def test_partner_and_staff_sessions_do_not_open_each_others_pages(ledger: Ledger, server: HttpServer) -> None:
    partner = partner_signed_in(ledger, server, "acme", "ana@acme.example")
    assert partner.get("/dashboard").status_code == 303
    assert partner.get("/dashboard").headers["location"] == "/dashboard/sign-in"
    staff = Browserless(url_of(server))
    assert staff.accept_invitation(invite(ledger, "staff", "boss@corp.example", role="viewer")).status_code == 303
    assert staff.get("/dashboard").status_code == 200
    assert staff.get("/portal").status_code == 303
    # The same address as a partner user does not sign in to the dashboard with the partner's password.
    assert Browserless(url_of(server)).sign_in("staff", "ana@acme.example").status_code == 401


def _submit(client: Browserless, **values: str) -> str:
    answer = client.form_post("/portal/submit", "/portal/submit", values)
    assert answer.status_code in (200, 422)
    return answer.text


def test_every_route_walked_as_another_partner_shows_nothing_of_the_first(
        ledger: Ledger, server: HttpServer) -> None:
    acme = partner_signed_in(ledger, server, "acme", "ana@acme.example")
    assert "accepted" in _submit(acme, prospect_email="dana@northwind.example", prospect_company="Northwind Traders",
                                 prospect_name="Dana Lee")
    [dana] = ledger.referrals(partner="acme")
    rival = partner_signed_in(ledger, server, "bluebird", "bo@bluebird.example")
    secrets_of_acme = ("dana@northwind.example", "Northwind Traders", "Dana Lee", dana["id"], "acme")
    walked = 0
    for route in web_routes(ledger, server.settings.web):  # type: ignore[arg-type]
        path = getattr(route, "path", "")
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method == "HEAD" or path.endswith(("sign-out", "sign-out-everywhere")):
                continue
            target = path.replace("{referral_id}", dana["id"]).replace("{token}", "not-a-token")
            if path == "/static":
                target = "/static/style.css"
            csrf = csrf_of(rival.get("/portal").text)
            answer = rival.get(target) if method == "GET" else rival.post(target, {"csrf": csrf})
            walked += 1
            body = answer.text
            if "{referral_id}" in path:
                assert answer.status_code == 404, (method, path)
            leaked = [s for s in secrets_of_acme if s in body and not (s == "acme" and "acme" in target)]
            assert leaked == [], (method, path, leaked)
    assert walked >= 12
    # The second partner referring the same prospect learns it was referred, never by whom.
    answer = _submit(rival, prospect_email="dana@northwind.example")
    assert "this prospect was already referred" in answer
    assert "acme" not in answer and dana["id"] not in answer
    # And a guessed or foreign referral id is the same 404 as an unknown one.
    assert rival.get(f"/portal/referrals/{dana['id']}").text == rival.get("/portal/referrals/01UNKNOWN").text


@SQLITE_ONLY
def test_submission_answers_accepted_already_referred_or_the_field_problems(
        ledger: Ledger, server: HttpServer) -> None:
    acme = partner_signed_in(ledger, server, "acme", "ana@acme.example")
    assert "accepted" in _submit(acme, prospect_email="dana@northwind.example")
    again = _submit(acme, prospect_email="dana@northwind.example")
    assert "already submitted" in again or "already referred" in again
    bad = _submit(acme, prospect_email="not an email", prospect_company="")
    assert "not accepted" in bad and "prospect email" in bad and "is not an email address" in bad
    empty = _submit(acme)
    assert "needs prospect_email or prospect_company" in empty
    csv = ("prospect_email,prospect_company,partner,submitted_at\n"
           "sam@contoso.example,Contoso,,2026-10-02T09:00:00Z\n"
           "kim@fabrikam.example,Fabrikam,bluebird,\n"
           "lee@tailspin.example,Tailspin,,0226-10-01\n")
    token = csrf_of(acme.get("/portal/submit").text)
    answer = acme.post("/portal/submit", {"csrf": token}, files={"file": ("r.csv", csv.encode(), "text/csv")})
    assert answer.status_code == 200
    text = re.sub(r"\s+", " ", answer.text)
    assert "Line 2: <strong>sam@contoso.example</strong>: accepted" in text
    assert "you can refer only as acme" in text
    assert "is before 1900" in text
    emails = sorted(r["prospect_email"] for r in ledger.referrals())
    assert emails == ["dana@northwind.example", "sam@contoso.example"]
    with ledger.transaction() as txn:
        kinds = [e.kind for e in txn.session.scalars(select(AuditEvent).where(AuditEvent.referral_id.is_(None)))]
    assert kinds.count("portal_submission") == 5


@SQLITE_ONLY
def test_no_secret_reaches_a_page_or_a_log_line(ledger: Ledger) -> None:
    stream = io.StringIO()
    logs.configure("json", "debug", stream=stream)
    intake_token = "intake-secret-3b1c9d7e55aa"
    running = start_server(ledger, intake_token=intake_token)
    try:
        link = invite(ledger, "partner", "ana@acme.example", partner="acme")
        client = Browserless(url_of(running))
        pages = [client.get(f"/welcome/{link}").text]
        client.accept_invitation(link)
        session_token = client.http.cookies.get("refsync_portal")
        assert session_token
        pages += [client.get(p).text for p in ("/portal", "/portal/submit")]
        pages.append(_submit(client, prospect_email="dana@northwind.example"))
        wrong = Browserless(url_of(running)).sign_in("partner", "ana@acme.example", "a wrong password!")
        assert wrong.status_code == 401
        staff = Browserless(url_of(running))
        staff.accept_invitation(invite(ledger, "staff", "boss@corp.example", role="admin"))
        pages.append(staff.get("/dashboard").text)
        with ledger.transaction() as txn:
            hashes = [u for u in txn.session.execute(select(WebSession.token_hash)).scalars()]
        # refsync's own lines (this test's HTTP client logs its cookies at debug: not ours to judge)
        output = "\n".join(line for line in stream.getvalue().splitlines()
                           if not json.loads(line).get("logger", "").startswith(("httpx", "httpcore")))
        assert "http request" in output and "password set; signed in" in output and "sign-in failed" in output
        for secret in (PASSWORD, "a wrong password!", session_token, link, intake_token, "$argon2", *hashes):
            assert secret not in output, secret
            for page in pages[1:]:
                assert secret not in page, secret
        assert "/welcome/{token}" in output
    finally:
        running.stop()
        logs.configure("console", "warning")


def test_cli_prints_the_one_time_link_as_its_last_line_and_as_json(ledger_url: str, tmp_path: Path) -> None:
    from refsync.connector.cli import cli

    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n[http]\nlisten = "0.0.0.0:8787"\n')
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "partners", "invite", "acme", "ana@acme.example"])
    # A partner with no referral yet is created, with a note on stderr; the link stays stdout's last line.
    assert result.exit_code == 0 and "partner acme had no referral in the ledger yet; created it" in result.stderr
    assert re.fullmatch(r"http://127\.0\.0\.1:8787/welcome/[A-Za-z0-9_-]{43}", result.stdout.splitlines()[-1])
    result = runner.invoke(cli, ["--config", str(config), "partners", "invite", "acme", "Ana@Acme.example", "--create"])
    assert result.exit_code == 0 and "created it" not in result.stderr, result.output
    assert re.fullmatch(r"http://127\.0\.0\.1:8787/welcome/[A-Za-z0-9_-]{43}", result.output.splitlines()[-1])
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n[http]\nlisten = "127.0.0.1:8787"\n'
                      'public_url = "https://partners.example.com/"\n')
    result = runner.invoke(cli, ["--config", str(config), "users", "add", "boss@corp.example", "--role", "viewer",
                                 "--json"])
    assert result.exit_code == 0, result.output
    url = json.loads(result.output)["url"]
    assert url.startswith("https://partners.example.com/welcome/")
    result = runner.invoke(cli, ["--config", str(config), "users", "list", "--json"])
    listed = json.loads(result.output)
    assert [(u["kind"], u["email"], u["role"], u["password_set"]) for u in listed] == [
        ("partner", "ana@acme.example", "partner", False), ("staff", "boss@corp.example", "viewer", False)]
    refused = runner.invoke(cli, ["--config", str(config), "users", "add", "not-an-email", "--role", "admin"])
    assert refused.exit_code == 2 and "is not an email address" in refused.output


@SQLITE_ONLY
def test_dashboard_shows_the_report_numbers_and_open_alerts_with_what_to_do(
        ledger: Ledger, server: HttpServer) -> None:
    from refsync.connector.report import build
    from refsync.state.notifications import AlertSpec, sync_alerts
    from refsync.state.reports import report_rows

    acme = partner_signed_in(ledger, server, "acme", "ana@acme.example")
    for n in range(3):
        _submit(acme, prospect_email=f"p{n}@north{n}.example")
    sync_alerts(ledger, [AlertSpec("dead_op", "dead:1", "op 1 gave up: INVALID_FIELD", crm="salesforce")],
                scope=[("dead_op", "salesforce")])
    assert alerts(ledger, open_only=True)
    staff = Browserless(url_of(server))
    staff.accept_invitation(invite(ledger, "staff", "boss@corp.example", role="viewer"))
    page = re.sub(r"\s+", " ", staff.get("/dashboard").text)
    assert "dead_op</code>: 1 open" in page and "refsync retry ID" in page
    [acme_line, _total] = build(report_rows(ledger, None, None), "partner")
    cells = f'<td data-col="referrals">{acme_line["referrals"]}</td>'
    assert f'<th scope="row" data-col="partner">acme</th> {cells}' in page
    assert "<svg" in page and "Funnel: referrals, accepted, qualified, won" in page


def test_refsync_run_serves_the_portal_beside_the_json_endpoints(sqlite_url: str, tmp_path: Path) -> None:
    import signal

    from tests.test_http import start_daemon

    daemon, port = start_daemon(sqlite_url, tmp_path)
    try:
        ledger = Ledger.open(sqlite_url)
        link = invite(ledger, "partner", "ana@acme.example", partner="acme")
        ledger.close()
        client = Browserless(f"http://127.0.0.1:{port}")
        page = client.get("/portal/sign-in")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script
        assert client.get("/portal").headers["location"] == "/portal/sign-in"
        assert client.accept_invitation(link).status_code == 303
        assert "Referrals of acme" in client.get("/portal").text
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/intake").status_code == 405 and "POST only" in client.get("/intake").json()["error"]
        missing = client.get("/nothing")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
        client.close()
        daemon.send_signal(signal.SIGTERM)
        _out, rest = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, rest
        assert link not in rest and PASSWORD not in rest
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


@SQLITE_ONLY
def test_a_page_answers_503_when_the_ledger_is_gone(ledger: Ledger, server: HttpServer, ledger_url: str) -> None:
    client = partner_signed_in(ledger, server, "acme", "ana@acme.example")
    path = Path(ledger_url.removeprefix("sqlite:///"))
    ledger.engine.dispose()
    path.rename(path.with_name("moved.db"))  # the next connection opens an empty file: no tables
    answer = client.get("/portal")
    assert answer.status_code == 503 and "Try again in a moment" in answer.text
    assert client.get("/healthz").status_code == 200
