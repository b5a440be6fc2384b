"""The daemon's HTTP surface as ops and integrators use it: over real HTTP on loopback, against a real
ledger (SQLite and PostgreSQL): probes, Prometheus metrics, and the authenticated intake."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from prometheus_client.parser import text_string_to_metric_families

from refsync.connector import logs
from refsync.connector.config import AttributionConfig, parse_config
from refsync.connector.web.app import MAX_BODY, HttpServer, HttpSettings
from refsync.state import db
from refsync.state.ledger import Ledger
from refsync.state.notifications import AlertSpec, sync_alerts

TOKEN = "intake-secret-7f3a9c2e41d8"
REFSYNC = str(Path(sys.executable).with_name("refsync"))


class Running:
    """A started server and a switch for what the readiness probe sees of the scheduler."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.scheduler_up = True

    def request(self, method: str, path: str, body: Any = None, token: str | None = TOKEN,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        host, port = self.server.address
        connection = http.client.HTTPConnection(host, port, timeout=10)
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        connection.close()
        return answer

    def json(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kwargs)
        return status, json.loads(data)


def start(ledger: Ledger, token: str | None) -> Running:
    settings = HttpSettings("127.0.0.1:0", token, AttributionConfig().policy())
    holder: list[Running] = []
    server = HttpServer(ledger, settings, lambda: holder[0].scheduler_up)
    running = Running(server)
    holder.append(running)
    server.start()
    return running


@pytest.fixture
def api(ledger: Ledger) -> Iterator[Running]:
    running = start(ledger, TOKEN)
    yield running
    running.server.stop()


def referral(n: int, **extra: str) -> dict[str, str]:
    return {"partner": "acme", "prospect_email": f"p{n}@north{n}.example", "prospect_company": f"North {n}",
            "source": "partner", "submitted_at": "2026-10-01T09:00:00Z", "external_id": f"crm-{n}", **extra}


def scrape(api: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, data = api.request("GET", "/metrics", token=None)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(data.decode()) for s in family.samples}


# -- probes -------------------------------------------------------------------------------------


def test_healthz_answers_ok_and_unknown_routes_are_404_or_405(api: Running) -> None:
    assert api.json("GET", "/healthz", token=None) == (200, {"status": "ok"})
    assert api.request("GET", "/nope", token=None)[0] == 404
    status, headers, _ = api.request("POST", "/healthz", {"x": 1})
    assert status == 405 and headers["allow"] == "GET"
    status, headers, _ = api.request("GET", "/intake")
    assert status == 405 and headers["allow"] == "POST"


def test_readyz_follows_the_scheduler_and_the_ledger_schema(api: Running, ledger: Ledger) -> None:
    assert api.json("GET", "/readyz", token=None) == (200, {"status": "ready"})
    api.scheduler_up = False
    status, body = api.json("GET", "/readyz", token=None)
    assert status == 503 and "scheduler" in body["reason"]
    api.scheduler_up = True
    command.stamp(db.alembic_config(ledger.engine), "base")  # the ledger now looks never migrated
    status, body = api.json("GET", "/readyz", token=None)
    assert status == 503 and body["status"] == "not ready" and "refsync init" in body["reason"]
    assert api.json("GET", "/healthz", token=None)[0] == 200  # alive, just not ready


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_report_ops_alerts_referrals_and_last_runs_from_the_ledger(api: Running, ledger: Ledger) -> None:
    assert api.json("POST", "/intake", {"referrals": [referral(1), referral(2), referral(3)]})[0] == 201
    assert api.json("POST", "/intake", referral(1))[0] == 200  # unchanged
    assert api.json("POST", "/intake", {"partner": "acme"})[0] == 422  # rejected: no email or company
    for n in range(2):
        ledger.enqueue_op("push", f"push:salesforce:x{n}:1", "salesforce")
    specs = [AlertSpec("dead_op", "dead_op:1", "op 1 is dead"), AlertSpec("dead_op", "dead_op:2", "op 2 is dead"),
             AlertSpec("stale_referral", "stale:1", "stale")]
    sync_alerts(ledger, specs, scope=[])
    sync_alerts(ledger, [], scope=[("stale_referral", None)])  # the stale one resolves itself
    with ledger.transaction() as txn:
        run_id = txn.start_run("push")
        txn.finish_run(run_id, "failed", {"per_crm": {"hubspot": {"pushed": 4, "calls": 2}}}, "hubspot: 503")

    metrics = scrape(api)
    assert metrics[("refsync_ledger_up", ())] == 1
    assert metrics[("refsync_ops", (("state", "pending"),))] == 2
    assert metrics[("refsync_ops", (("state", "dead"),))] == 0
    assert metrics[("refsync_open_alerts", (("kind", "dead_op"), ("state", "open")))] == 2
    assert metrics[("refsync_open_alerts", (("kind", "stale_referral"), ("state", "open")))] == 0
    assert metrics[("refsync_referrals", (("status", "submitted"),))] == 3
    assert metrics[("refsync_referrals", (("status", "won"),))] == 0
    assert metrics[("refsync_last_run_failed", (("job", "push"),))] == 1
    assert metrics[("refsync_last_run_count", (("crm", "hubspot"), ("job", "push"), ("kind", "pushed")))] == 4
    assert metrics[("refsync_last_run_started_timestamp_seconds", (("job", "push"),))] == ledger.clock().timestamp()
    assert metrics[("refsync_intake_referrals_total", (("outcome", "imported"),))] == 3
    assert metrics[("refsync_intake_referrals_total", (("outcome", "unchanged"),))] == 1
    assert metrics[("refsync_intake_referrals_total", (("outcome", "rejected"),))] == 1
    assert metrics[("refsync_http_requests_total", (("code", "201"), ("endpoint", "/intake")))] == 1


def test_two_servers_in_one_process_keep_their_own_metrics(ledger: Ledger) -> None:
    first, second = start(ledger, TOKEN), start(ledger, TOKEN)
    try:
        assert first.json("POST", "/intake", referral(1))[0] == 201
        assert scrape(first)[("refsync_intake_referrals_total", (("outcome", "imported"),))] == 1
        assert scrape(second)[("refsync_intake_referrals_total", (("outcome", "imported"),))] == 0
    finally:
        first.server.stop()
        second.server.stop()


# -- intake -------------------------------------------------------------------------------------


def test_intake_imports_a_referral_and_reposting_it_changes_nothing(api: Running, ledger: Ledger) -> None:
    status, body = api.json("POST", "/intake", referral(1))
    assert status == 201
    assert body["imported"] == 1 and body["results"][0]["outcome"] == "imported"
    referral_id = body["results"][0]["referral_id"]
    assert body["results"][0]["external_id"] == "crm-1"

    status, again = api.json("POST", "/intake", referral(1, prospect_name="Changed Later"))
    assert status == 200
    assert again["results"][0] == {"index": 0, "external_id": "crm-1", "notes": [], "outcome": "unchanged",
                                   "referral_id": referral_id}
    [stored] = ledger.referrals()
    assert stored["id"] == referral_id and stored["partner"] == "acme" and stored["prospect_name"] is None
    timeline = ledger.referral(referral_id)
    assert timeline is not None and timeline["timeline"][0]["actor"] == "intake:http:1"


def test_intake_batch_answers_each_item_and_decides_first_to_refer_like_import(api: Running,
                                                                                ledger: Ledger) -> None:
    items: list[Any] = [
        referral(1),
        referral(2, prospect_email="not-an-email"),
        "just a string",
        {**referral(3), "partner": "beta", "prospect_email": "p1@north1.example", "external_id": "crm-3",
         "submitted_at": "2026-10-05T09:00:00Z", "colour": "blue"},
        {"partner": "acme", "prospect_company": "Contoso"},
    ]
    status, body = api.json("POST", "/intake", {"referrals": items})
    assert status == 201
    assert (body["imported"], body["unchanged"], body["rejected"]) == (3, 0, 2)
    outcomes = [r["outcome"] for r in body["results"]]
    assert outcomes == ["imported", "rejected", "rejected", "imported", "imported"]
    assert body["results"][1]["problems"][0]["column"] == "prospect_email"
    assert "JSON object" in body["results"][2]["problems"][0]["reason"]
    assert {"column": "colour", "reason": "unknown key, ignored"} in body["results"][3]["notes"]
    assert any(n["column"] == "submitted_at" for n in body["results"][4]["notes"])  # defaulted to now
    by_id = {r["id"]: r for r in ledger.referrals()}
    first, later = by_id[body["results"][0]["referral_id"]], by_id[body["results"][3]["referral_id"]]
    assert first["attribution"]["credited"] is True
    assert later["attribution"]["credited"] is False and later["attribution"]["duplicate_of"] == first["id"]


def test_intake_rejects_a_referral_that_fails_validation_with_422(api: Running, ledger: Ledger) -> None:
    status, body = api.json("POST", "/intake", {"partner": "bad code!", "prospect_email": "x@y.example"})
    assert status == 422 and body["rejected"] == 1
    assert body["results"][0]["problems"][0]["column"] == "partner"
    assert ledger.referrals() == []


def test_intake_refuses_missing_or_wrong_tokens(api: Running, ledger: Ledger) -> None:
    for authorization in (None, "Bearer wrong-token-123", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"):
        headers = {"Authorization": authorization} if authorization else {}
        status, answer_headers, _ = api.request("POST", "/intake", referral(1), token=None, headers=headers)
        assert status == 401 and answer_headers["www-authenticate"].startswith("Bearer"), authorization
    assert ledger.referrals() == []


def test_intake_refuses_invalid_json_and_bodies_of_the_wrong_shape(api: Running) -> None:
    status, body = api.json("POST", "/intake", b'{"partner": "acme",')
    assert status == 400 and "not valid JSON" in body["error"]
    assert api.json("POST", "/intake", [referral(1)])[0] == 400
    assert api.json("POST", "/intake", {"referrals": []})[0] == 400
    assert api.json("POST", "/intake", {"referrals": [referral(1)], "extra": 1})[0] == 400


def test_intake_refuses_too_large_bodies_and_too_many_referrals(api: Running, ledger: Ledger) -> None:
    host, port = api.server.address
    with socket.create_connection((host, port), timeout=10) as raw:  # refused before the body is sent
        raw.sendall(f"POST /intake HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 413")
    status, body = api.json("POST", "/intake", {"referrals": [referral(n) for n in range(501)]})
    assert status == 413 and "at most 500" in body["error"]
    assert ledger.referrals() == []


def test_intake_is_404_when_no_token_is_configured(ledger: Ledger) -> None:
    running = start(ledger, None)
    try:
        status, body = running.json("POST", "/intake", referral(1))
        assert status == 404 and "intake_token" in body["error"]
        assert running.json("GET", "/healthz", token=None)[0] == 200
    finally:
        running.server.stop()


def test_the_intake_token_is_redacted_and_never_logged(ledger: Ledger, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_INTAKE_TOKEN", TOKEN)
    config = parse_config('[http]\nlisten = "127.0.0.1:0"\nintake_token = "env:T_INTAKE_TOKEN"\n',
                          tmp_path / "refsync.toml")
    assert TOKEN in config.secrets()
    stream = io.StringIO()
    logs.configure("json", "debug", stream=stream, secrets=config.secrets())
    try:
        running = start(ledger, TOKEN)
        try:
            assert running.request("POST", f"/intake?token={TOKEN}", referral(1))[0] == 201
            assert running.request("POST", "/intake", referral(2), token=TOKEN[:-1])[0] == 401
            logs.get_logger("refsync.test").info("echo", detail=f"the token is {TOKEN}")
        finally:
            running.server.stop()
        written = stream.getvalue()
        assert '"event": "intake"' in written and '"event": "http request"' in written
        assert TOKEN not in written and TOKEN[:-1] not in written
    finally:
        logs.configure("json", "warning")


# -- the daemon ---------------------------------------------------------------------------------


def start_daemon(sqlite_url: str, tmp_path: Path, level: str = "info", *, extra: str = "",
                 env: dict[str, str] | None = None, name: str = "refsync.toml") -> tuple[subprocess.Popen[str], int]:
    """A real `refsync run` with HTTP on a free port and the intake token set, and that port
    (read from its JSON "http listening" log line). ``extra``: more config tables ([daemon],
    [crm.*], ...); ``env``: more environment; ``name``: the config file's name (one per replica)."""
    config = tmp_path / name
    config.write_text(f'[ledger]\nurl = "{sqlite_url}"\n[http]\nlisten = "127.0.0.1:0"\n'
                      f'intake_token = "env:T_INTAKE_TOKEN"\n[logging]\nformat = "json"\nlevel = "{level}"\n{extra}')
    daemon = subprocess.Popen([REFSYNC, "--config", str(config), "run"],
                              env={**os.environ, "T_INTAKE_TOKEN": TOKEN, **(env or {})},
                              stderr=subprocess.PIPE, text=True)
    assert daemon.stderr is not None
    said = []
    for line in daemon.stderr:
        if line.startswith("{") and json.loads(line)["event"] == "http listening":
            return daemon, int(json.loads(line)["port"])
        said.append(line)
    daemon.kill()
    raise AssertionError("the daemon never said where it listens:\n" + "".join(said[-20:]))


def test_refsync_run_serves_http_and_stops_cleanly_on_sigterm(sqlite_url: str, tmp_path: Path) -> None:
    daemon, port = start_daemon(sqlite_url, tmp_path)
    try:
        assert daemon.stderr is not None
        host_port = ("127.0.0.1", port)
        deadline = time.monotonic() + 10
        while True:
            connection = http.client.HTTPConnection(*host_port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        connection = http.client.HTTPConnection(*host_port, timeout=5)
        connection.request("POST", "/intake", body=json.dumps(referral(1)),
                           headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        assert connection.getresponse().status == 201
        daemon.send_signal(signal.SIGTERM)
        rest = daemon.stderr.read()
        assert daemon.wait(timeout=30) == 0, rest
        events = [json.loads(line)["event"] for line in rest.splitlines() if line.startswith("{")]
        assert "http stopped" in events and "refsync stopped" in events
        assert TOKEN not in rest
        with pytest.raises(OSError):
            socket.create_connection(host_port, timeout=2).close()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
