"""Three `refsync run` replicas on one PostgreSQL ledger, as ops run them: one leads (the poller
lease) and says so in its log, `refsync status` and `/metrics`; when the leader is killed with
SIGKILL another takes over within the documented time, and no op is done twice."""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from refsync.state.crmstate import remember, remembered
from refsync.state.ledger import Ledger
from refsync.state.models import AuditEvent, SyncOp
from tests.test_daemon import REFSYNC, ROOT, env_for, sandbox_info  # noqa: F401 - a fixture, used by name
from tests.test_http import TOKEN, referral, start_daemon

pytestmark = pytest.mark.postgres

# Seconds. The same-host takeover bound is min(HEARTBEAT, LEASE / 3); TIMEOUT leaves a loaded CI
# machine room to beat late without a live leader being taken for dead.
HEARTBEAT, TIMEOUT, LEASE = 0.5, 10, 30
REFERRALS = 60


def crm_tables(info: dict[str, Any]) -> str:
    sf, hs = info["salesforce"], info["hubspot"]
    return (f'[crm.salesforce]\ninstance_url = "{sf["base_url"]}"\nca_bundle = "{info["ca_file"]}"\n'
            f'session_id = "env:D_SF"\nmapping = "{ROOT}/mappings/salesforce.toml"\n'
            f'[crm.hubspot]\nbase_url = "{hs["base_url"]}"\naccess_token = "env:D_HS"\n'
            f'mapping = "{ROOT}/mappings/hubspot.toml"\n'
            f'[daemon]\npush_interval_seconds = 1\npoll_interval_seconds = 1\nbatch_size = 10\n'
            f'heartbeat_seconds = {HEARTBEAT}\nworker_timeout_seconds = {TIMEOUT}\nlease_seconds = {LEASE}\n'
            '[retry]\ninitial_wait_seconds = 0.001\nmax_wait_seconds = 0.01\n')


class Replica:
    """One `refsync run` and the JSON log lines it wrote to stderr (read on a thread, so the pipe
    never fills)."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process, self.port = process, port
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if line.startswith("{"):
                self.events.append(json.loads(line))

    def said(self, event: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["event"] == event]

    def intake(self, referrals: list[dict[str, str]]) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("POST", "/intake", json.dumps({"referrals": referrals}),
                           {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        return connection.getresponse().status

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def admin(info: dict[str, Any], crm: str, action: str, **arguments: Any) -> Any:
    context = ssl.create_default_context(cafile=info["ca_file"])
    request = urllib.request.Request(f'{info[crm]["admin_url"]}/{action}', json.dumps(arguments).encode(),  # noqa: S310
                                     {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, context=context if crm == "salesforce" else None,  # noqa: S310 - the sandbox
                                timeout=10) as answer:
        body = json.loads(answer.read())
    return body["result"] if crm == "salesforce" else body  # HubSpot's admin plane answers unwrapped


def wait_for(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"waited {seconds} s for {what}")


def test_a_killed_leader_is_replaced_within_the_lease_interval_and_no_op_is_done_twice(
        sandbox_info: dict[str, Any], pg_url: str, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    admin(sandbox_info, "salesforce", "reset")
    admin(sandbox_info, "hubspot", "reset")
    env = env_for(sandbox_info)
    replicas: list[Replica] = []
    ledger = Ledger.open(pg_url)
    started = time.monotonic()
    try:
        def start(n: int) -> None:
            replicas.append(Replica(*start_daemon(pg_url, tmp_path, extra=crm_tables(sandbox_info), env=env,
                                                  name=f"replica{n}.toml")))

        starting = [threading.Thread(target=start, args=(n,)) for n in range(3)]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        assert len(replicas) == 3
        print(f"replicas started: {time.monotonic() - started:.1f} s")
        leader_id = wait_for(lambda: ledger.lease_holder()["worker"], 10, "a leader")
        leader = next(r for r in replicas if leader_id.split(":")[1] == str(r.process.pid))
        assert wait_for(lambda: [e["worker"] for r in replicas for e in r.said("took the poller lease")], 5,
                        "the leader's log line") == [leader_id]

        for replica in replicas:
            metrics = wait_for(lambda r=replica: r.metrics(), 5, "metrics")
            assert metrics[("refsync_leader", ())] == (1.0 if replica is leader else 0.0)
            assert metrics[("refsync_leader_info", (("worker", leader_id),))] == 1.0

        survivors = [r for r in replicas if r is not leader]
        assert survivors[0].intake([referral(n) for n in range(REFERRALS)]) == 201
        print(f"posted: {time.monotonic() - started:.1f} s")
        wait_for(lambda: ledger.status()["ops"]["done"] >= 10, 30, "the first pushes")
        leader.process.send_signal(signal.SIGKILL)  # mid-push: its claimed ops must not be lost or doubled
        killed_at = time.monotonic()
        leader.process.wait()  # reaped, as systemd or a container runtime does (a zombie's pid still exists)
        successor = wait_for(lambda: (w := ledger.lease_holder()["worker"]) not in (None, leader_id) and w, 10,
                             "a new leader")
        takeover = time.monotonic() - killed_at
        print(f"takeover after SIGKILL: {takeover:.2f} s")
        # Same host: the dead leader's pid is gone, so the next try of the lease takes it (the
        # documented bound, min(heartbeat_seconds, lease_seconds / 3) = 0.5 s, plus scheduling
        # slack); it does not wait for worker_timeout_seconds (10), let alone lease_seconds (30).
        assert takeover < TIMEOUT / 2
        assert wait_for(lambda: [e["worker"] for r in survivors for e in r.said("took the poller lease")], 5,
                        "the successor's log line") == [successor]
        status = subprocess.Popen([REFSYNC, "--config", str(tmp_path / "replica0.toml"), "status", "--json"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        wait_for(lambda: ledger.status()["ops"]["done"] == 2 * REFERRALS, 60, "every op done")
        print(f"all done: {time.monotonic() - started:.1f} s")
        assert ledger.status()["ops"] == {"pending": 0, "in_flight": 0, "done": 2 * REFERRALS, "failed": 0,
                                          "dead": 0}
        with ledger.transaction() as txn:
            ops = txn.session.execute(select(SyncOp.id, SyncOp.dedupe_key)).all()
            pushed = txn.session.execute(select(AuditEvent.referral_id, AuditEvent.crm, AuditEvent.detail)
                                         .where(AuditEvent.kind == "pushed")).all()
        assert len({key for _id, key in ops}) == len(ops) == 2 * REFERRALS  # each push planned once
        per_op = Counter(detail["op_id"] for _r, _c, detail in pushed)
        assert per_op and max(per_op.values()) == 1  # landed once, by the replica that held its lease
        assert max(Counter((r, c) for r, c, _d in pushed).values()) == 1
        # Each referral is on exactly one record of each CRM: no replay created a second one.
        leads = admin(sandbox_info, "salesforce", "count_values", object_name="Lead", field="Referral_Id__c")
        contacts = admin(sandbox_info, "hubspot", "count_values", object_name="contacts",
                         field="refsync_referral_id")
        for records in (leads, contacts):
            assert len(records) == REFERRALS and set(records.values()) == {1}
        taken_back = sum(e["ops"] for r in survivors for e in r.said("ops taken back from a dead worker"))
        print(f"ops the dead leader held, taken back: {taken_back}")
        out, err = status.communicate(timeout=60)
        assert json.loads(out)["leader"]["worker"] == successor, err
        assert [r.metrics()[("refsync_leader", ())] for r in survivors] == [
            1.0 if successor.split(":")[1] == str(r.process.pid) else 0.0 for r in survivors]
        assert ledger.lease_holder()["worker"] == successor  # it kept the lease all along
        for replica in survivors:
            replica.process.send_signal(signal.SIGTERM)
        for replica in survivors:
            assert replica.process.wait(timeout=30) == 0
        assert wait_for(lambda: [e for r in survivors for e in r.said("released the poller lease")], 5,
                        "the release")[0]["worker"] == successor
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait()
        ledger.close()


def test_replicas_starting_together_store_the_same_crm_state_without_failing(pg_url: str) -> None:
    """Each replica remembers the schemas it read at start-up; the second insert of a key updates."""
    ledgers = [Ledger.open(pg_url) for _ in range(4)]
    ready = threading.Barrier(len(ledgers))
    failures: list[BaseException] = []

    def replica(ledger: Ledger, n: int) -> None:
        ready.wait()
        for key in range(20):
            try:
                remember(ledger, "salesforce", f"seen:Object{key}", {"from": n})
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

    threads = [threading.Thread(target=replica, args=(ledger, n)) for n, ledger in enumerate(ledgers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert remembered(ledgers[0], "salesforce", "seen:Object19") is not None
    for ledger in ledgers:
        ledger.close()
