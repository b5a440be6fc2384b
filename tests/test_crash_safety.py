"""kill -9 at any moment, start again right away: the CRMs and the ledger converge, with no duplicate
record, no lost op and no wait for a lease. Real `refsync sync --once` and `refsync run` subprocesses
are killed mid-sync, repeatedly, against a sandbox running in its own process. The lease is left at
its 300 s default: only the dead worker's take-back (state/workers.py) can free the claimed ops."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from refsync.state.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
REFSYNC = str(Path(sys.executable).with_name("refsync"))
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
RECORDS = 300


@pytest.fixture(scope="module")
def sandbox_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    directory = tmp_path_factory.mktemp("sandbox")
    process = subprocess.Popen([REFSYNC, "sandbox", "--dir", str(directory)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    yield info
    process.terminate()
    process.wait(timeout=10)


def admin(crm: dict, method: str, **kwargs: object) -> object:
    """One admin-plane call; the Salesforce emulator wraps every answer in ``result``, HubSpot's only
    an empty one."""
    answer = requests.post(f"{crm['admin_url']}/{method}", json=kwargs, verify=crm.get("ca_file", True), timeout=10)
    answer.raise_for_status()
    body = answer.json()
    return body["result"] if isinstance(body, dict) and set(body) == {"result"} else body


def prepared(sandbox: dict, tmp_path: Path, ledger_url: str, daemon: str = "") -> Callable[..., subprocess.Popen]:
    """Fresh emulators (calls stretched now and then, so kills land mid-push), a config, an
    initialised ledger holding RECORDS referrals; returns a way to start refsync."""
    sf, hs = sandbox["salesforce"], sandbox["hubspot"]
    for crm in (sf, hs):
        admin(crm, "reset")
        admin(crm, "set_faults", slow=0.1, slow_seconds=0.3)
    env = {**os.environ, "K_SF": sf["session_id"], "K_HS": hs["access_token"]}
    config = tmp_path / "refsync.toml"
    config.write_text(
        f'[ledger]\nurl = "{ledger_url}"\n'
        f'[crm.salesforce]\ninstance_url = "{sf["base_url"]}"\nca_bundle = "{sf["ca_file"]}"\n'
        f'session_id = "env:K_SF"\nmapping = "{ROOT}/mappings/salesforce.toml"\n'
        f'[crm.hubspot]\nbase_url = "{hs["base_url"]}"\naccess_token = "env:K_HS"\n'
        f'mapping = "{ROOT}/mappings/hubspot.toml"\n'
        f'[daemon]\nbatch_size = 50\n{daemon}[http]\nlisten = ""\n[logging]\nformat = "json"\nlevel = "warning"\n')
    rows = [f"p{n % 7},crash{n}@kill.example,Kill Co {n},,,,,2026-10-01T00:00:00Z,,k{n}" for n in range(RECORDS)]
    (tmp_path / "r.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")

    def refsync(*args: str) -> subprocess.Popen:
        return subprocess.Popen([REFSYNC, "--config", str(config), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    assert refsync("init").wait(timeout=60) == 0
    assert refsync("import", str(tmp_path / "r.csv")).wait(timeout=120) == 0
    return refsync


def kill_when_working(process: subprocess.Popen, ledger: Ledger, rng: random.Random) -> None:
    """kill -9 at a random moment once the process holds ops (a kill before any claim proves nothing)."""
    deadline = time.monotonic() + 90  # a start-up on a loaded 2-core host can take tens of seconds
    while time.monotonic() < deadline and not ledger.status()["ops"]["in_flight"] and process.poll() is None:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.4))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def taken_back(stderr: str) -> int:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return sum(e.get("ops", 0) for e in events if e.get("event") == "ops taken back from a dead worker")


def assert_each_referral_once_on_each_crm(sandbox: dict, ledger: Ledger, log: str) -> None:
    status = ledger.status()["ops"]
    assert status["pending"] == status["in_flight"] == status["failed"] == status["dead"] == 0, (status, log)
    ids = sorted(r["id"] for r in ledger.referrals())
    assert len(ids) == RECORDS
    leads = admin(sandbox["salesforce"], "count_values", object_name="Lead", field="Referral_Id__c")
    contacts = admin(sandbox["hubspot"], "count_values", object_name="contacts", field="refsync_referral_id")
    assert leads == dict.fromkeys(ids, 1)  # every referral on exactly one lead ...
    assert contacts == dict.fromkeys(ids, 1)  # ... and on exactly one contact


def test_killing_sync_repeatedly_then_one_run_right_away_finishes_everything(
    sandbox_process: dict, tmp_path: Path, sqlite_url: str
) -> None:
    refsync = prepared(sandbox_process, tmp_path, sqlite_url)
    ledger = Ledger.open(sqlite_url)
    rng = random.Random(9)
    for _ in range(5):
        kill_when_working(refsync("sync", "--once"), ledger, rng)
    assert ledger.status()["ops"]["in_flight"] > 0  # the last kill left claimed ops behind
    final = refsync("sync", "--once")  # right away: the 300 s lease has not run out
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert taken_back(err) > 0, err
    assert_each_referral_once_on_each_crm(sandbox_process, ledger, err)
    ledger.close()


def test_killing_the_daemon_repeatedly_then_restarting_drains_everything(
    sandbox_process: dict, tmp_path: Path, sqlite_url: str
) -> None:
    refsync = prepared(sandbox_process, tmp_path, sqlite_url,
                       daemon="push_interval_seconds = 1\npoll_interval_seconds = 2\nheartbeat_seconds = 1\n"
                              "worker_timeout_seconds = 5\n")
    ledger = Ledger.open(sqlite_url)
    rng = random.Random(11)
    for _ in range(4):
        kill_when_working(refsync("run"), ledger, rng)
    assert ledger.status()["ops"]["in_flight"] > 0
    daemon = refsync("run")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ops = ledger.status()["ops"]
        if ops["done"] == 2 * RECORDS and not (ops["pending"] or ops["in_flight"] or ops["failed"]):
            break
        time.sleep(0.2)
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert taken_back(err) > 0
    assert_each_referral_once_on_each_crm(sandbox_process, ledger, err)
    assert ledger.status()["ops"]["done"] == 2 * RECORDS
    ledger.close()
