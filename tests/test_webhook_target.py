"""Hostile webhook endpoints and targets, over real HTTP on loopback: a dripping partner never
delays another and its attempt ends at the deadline (retried later); a huge answer is not read;
targets must be https:// and public unless allow_private_targets, checked on the resolved address."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from refsync.connector.attribution import Policy
from refsync.connector.imports import import_file
from refsync.connector.notify import ANSWER_CAP, DeliverySettings, deliver_all
from refsync.connector.webhook_target import address_problem, url_problem
from refsync.state.ledger import Ledger
from refsync.state.notifications import set_partner_webhook
from refsync.state.observe import observing
from tests.conftest import FakeClock
from tests.receiver import receiving
from tests.test_notify import ALL, HEADER, SECRET

DEADLINE = 1.5


def _referrals(ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, urls: dict[str, str],
               clock: FakeClock) -> None:
    """One referral per partner in ``urls``, each moved to won (one notification each)."""
    path = tmp_path / "r.csv"
    rows = [f"{code},{code}@prospect.example,{code} Inc,P,,,,2026-10-01T09:00:00Z,,e-{code}" for code in urls]
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime(2026, 10, 2, tzinfo=UTC))
    monkeypatch.setenv("T_SECRET", SECRET)
    for code, url in urls.items():
        assert set_partner_webhook(ledger, code, url, "env:T_SECRET")
    clock.advance(hours=1)
    with observing(ledger, "salesforce") as ob:
        for row in ledger.referrals():
            referral = ob.referral(str(row["id"]))
            assert referral is not None
            ob.transition(referral, "won", clock(), "005REP")


def _settings(allow_private: bool = True, **kw: Any) -> DeliverySettings:
    return DeliverySettings(statuses=ALL, timeout=DEADLINE, max_attempts=3, allow_private_targets=allow_private, **kw)


def _op(ledger: Ledger, partner: str) -> dict[str, Any]:
    [op] = [o for o in ledger.ops() if o["payload"].get("partner") == partner]
    return op


def test_a_dripping_partner_neither_delays_another_nor_outlives_the_deadline_and_is_retried(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    with receiving(SECRET) as slow, receiving(SECRET) as quick:
        slow.drip = 0.5  # one byte every 0.5 s: each read succeeds, the answer never ends
        _referrals(ledger, tmp_path, monkeypatch, {"acme": slow.url, "beta": quick.url}, clock)
        started = time.monotonic()
        first = deliver_all(ledger, "w1", _settings())
        took = time.monotonic() - started
        assert quick.received_at[0] - started < 1.0 and len(quick.accepted) == 1  # not queued behind acme
        # The drip never ends, so without the deadline this would hang; the slack is for a loaded CI host.
        assert DEADLINE - 0.1 <= took < DEADLINE + 4, took
        assert first.delivered == 1 and first.failed == 1
        stalled = _op(ledger, "acme")
        assert stalled["state"] == "failed" and stalled["last_error"]["code"] == "TIMEOUT"
        slow.drip = None  # the partner recovers; the op's retry delivers it
        clock.advance(hours=3)
        second = deliver_all(ledger, "w1", _settings())
    assert second.delivered == 1 and len(slow.accepted) == 1 and _op(ledger, "acme")["state"] == "done"


def test_a_huge_error_answer_is_cut_at_the_cap_and_never_read_whole(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    with receiving(SECRET) as receiver:
        receiver.huge = 50 * 1024 * 1024
        _referrals(ledger, tmp_path, monkeypatch, {"acme": receiver.url}, clock)
        tracemalloc.start()
        try:
            counts = deliver_all(ledger, "w1", _settings())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        time.sleep(0.2)  # let the receiver notice the hang-up
    assert counts.failed == 1
    op = _op(ledger, "acme")
    assert op["last_error"]["code"] == "HTTP_500" and 0 < len(op["last_error"]["message"]) <= ANSWER_CAP
    assert peak < 8 * 1024 * 1024, peak
    assert receiver.sent < receiver.huge  # the client hung up long before 50 MB


@pytest.mark.parametrize("url", [
    "http://partner.example/hook", "https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data",
    "http://2130706433/", "https://2130706433/", "https://0177.0.0.1/", "https://[::ffff:127.0.0.1]/",
    "https://10.1.2.3/", "https://[::1]/", "https://0.0.0.0/", "https://224.0.0.1/", "https://localhost/",
    "ftp://partner.example/", "https:///nohost"])
def test_target_text_refused_without_allow_private_targets(url: str) -> None:
    problem = url_problem(url, allow_private=False)
    assert problem is not None and url in problem
    if url.startswith(("http://", "https://")) and "nohost" not in url:
        assert url_problem(url, allow_private=True) is None
        assert "allow_private_targets" in problem


def test_public_https_targets_pass_the_text_check() -> None:
    assert url_problem("https://hooks.partner.example/refsync", allow_private=False) is None
    assert url_problem("https://93.184.215.14:8443/x", allow_private=False) is None


@pytest.mark.parametrize("allow_private", [False, True])
def test_a_name_resolving_to_a_private_address_is_checked_at_connection_time(
        allow_private: bool, ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        clock: FakeClock) -> None:
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host: Any, *args: Any, **kw: Any) -> Any:
        asked.append(host)
        return real("127.0.0.1" if host == "hooks.partner.example" else host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with receiving(SECRET) as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        # the receiver speaks plain http, so the allowed case uses http:// (allowed by the setting too)
        url = f"{'http' if allow_private else 'https'}://hooks.partner.example:{port}/hook"
        assert url_problem(url, allow_private) is None  # the text alone passes: only the address can tell
        _referrals(ledger, tmp_path, monkeypatch, {"acme": url}, clock)
        counts = deliver_all(ledger, "w1", _settings(allow_private=allow_private))
    assert "hooks.partner.example" in asked
    if allow_private:
        assert counts.delivered == 1 and len(receiver.accepted) == 1
    else:
        assert counts.dead == 1 and receiver.raw == []
        op = _op(ledger, "acme")
        assert op["last_error"]["code"] == "TARGET_REFUSED" and "127.0.0.1" in op["last_error"]["message"]


def test_payload_carries_no_prospect_email_unless_configured(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    with receiving(SECRET) as receiver:
        _referrals(ledger, tmp_path, monkeypatch, {"acme": receiver.url}, clock)
        deliver_all(ledger, "w1", _settings())
    referral = receiver.accepted[0]["referral"]
    assert "prospect_email" not in referral and referral["external_id"] == "e-acme"
    assert b"acme@prospect.example" not in receiver.raw[0][1]


def test_partners_set_refuses_a_private_or_plain_http_url_at_once_with_the_fix(
        tmp_path: Path, ledger_url: str) -> None:
    from tests.test_cli import refsync

    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n[logging]\nformat = "json"\n')
    sample = tmp_path / "r.csv"
    sample.write_text(HEADER + "\nacme,a@x.example,Acme,Ann,,,,2026-10-01T00:00:00Z,,e1\n")
    refsync(config, "init")
    refsync(config, "import", str(sample))
    for url in ("http://partner.example/hook", "https://169.254.169.254/", "https://2130706433/"):
        code, _, err = refsync(config, "partners", "set", "acme", "--webhook-url", url)
        assert code != 0 and "allow_private_targets" in err, (url, err)
    code, out, _ = refsync(config, "partners", "set", "acme", "--webhook-url", "https://hooks.partner.example/r")
    assert code == 0 and "webhook set" in out
    config.write_text(config.read_text() + "[notifications]\nallow_private_targets = true\n")
    code, out, _ = refsync(config, "partners", "set", "acme", "--webhook-url", "http://127.0.0.1:9000/hook")
    assert code == 0, out


@pytest.mark.parametrize(("address", "says"), [
    ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1: 127.0.0.1 is a loopback address"),
    ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254: 169.254.169.254 is a link-local address"),
    ("2002:c0a8:101::1", "6to4 form of 192.168.1.1: 192.168.1.1 is a private address"),
    ("2002:7f00:1::", "6to4 form of 127.0.0.1"),
    ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1: 10.0.0.1 is a private address"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("fd12:3456::1", "private"), ("2001:db8::1", "private"), ("fe80::1%eth0", "link-local"),
    ("100.64.0.1", "not a public address"),  # carrier-grade NAT: neither private nor global
])
def test_ipv6_forms_that_reach_a_private_address_and_non_global_addresses_are_refused(address: str,
                                                                                     says: str) -> None:
    problem = address_problem(address)
    assert problem is not None and says in problem, problem


@pytest.mark.parametrize("address", ["93.184.215.14", "64:ff9b::5db8:d70e", "2002:5db8:d70e::1",
                                     "::ffff:93.184.215.14", "2606:4700::6810:84e5"])
def test_translation_forms_of_a_public_address_stay_deliverable(address: str) -> None:
    # DNS64 on an IPv6-only network answers 64:ff9b::/96 for every public host: refusing them all
    # would stop every delivery there.
    assert address_problem(address) is None


def _resolver(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Any]) -> threading.Event:
    """socket.getaddrinfo answering ``answers`` (a name: an address, or "hang" to block until the
    returned event is set); other names resolve for real. DNS is a boundary we do not run."""
    real, release = socket.getaddrinfo, threading.Event()

    def fake(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        answer = answers.get(host)
        if answer == "hang":
            release.wait(30)
            answer = "127.0.0.1"
        if answer is None:
            return real(host, port, *args, **kw)
        family = socket.AF_INET6 if ":" in answer else socket.AF_INET
        sockaddr = (answer, int(port), 0, 0) if family == socket.AF_INET6 else (answer, int(port))
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return release


def test_a_hanging_resolver_ends_the_attempt_at_the_deadline_and_delays_no_other_partner(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    release = _resolver(monkeypatch, {"hangs.partner.example": "hang"})
    try:
        with receiving(SECRET) as hung, receiving(SECRET) as quick:
            port = hung.url.split(":")[2].split("/")[0]
            _referrals(ledger, tmp_path, monkeypatch,
                       {"acme": f"http://hangs.partner.example:{port}/hook", "beta": quick.url}, clock)
            started = time.monotonic()
            first = deliver_all(ledger, "w1", _settings())
            took = time.monotonic() - started
            assert took < DEADLINE + 1.0, took  # the resolver still hangs; the attempt does not
            assert len(quick.accepted) == 1 and quick.received_at[0] - started < 1.0
            assert first.delivered == 1 and first.failed == 1
            stalled = _op(ledger, "acme")
            assert stalled["state"] == "failed" and stalled["last_error"]["code"] == "TIMEOUT"
            assert "resolve" in stalled["last_error"]["message"]
            release.set()  # the resolver answers again: the retry delivers
            clock.advance(hours=3)
            second = deliver_all(ledger, "w1", _settings())
        assert second.delivered == 1 and len(hung.accepted) == 1
    finally:
        release.set()


@pytest.mark.parametrize("resolved", ["64:ff9b::7f00:1", "2002:7f00:1::1", "::ffff:127.0.0.1", "fd00::1"])
def test_a_name_resolving_to_a_translated_private_address_is_refused_before_connecting(
        resolved: str, ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    _resolver(monkeypatch, {"hooks.partner.example": resolved})
    _referrals(ledger, tmp_path, monkeypatch, {"acme": "https://hooks.partner.example/hook"}, clock)
    counts = deliver_all(ledger, "w1", _settings(allow_private=False))
    op = _op(ledger, "acme")
    assert counts.dead == 1 and op["last_error"]["code"] == "TARGET_REFUSED"
    assert resolved in op["last_error"]["message"] and "allow_private_targets" in op["last_error"]["message"]
