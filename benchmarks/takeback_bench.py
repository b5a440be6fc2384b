"""Time from `kill -9` of a `refsync sync --once` holding claimed ops to every one of them taken back.

Two replicas' view: a surviving `refsync run` (push every second) takes the dead worker's ops back.
``--same-host``: the dead process is on this host (its pid is gone: taken back at the next claim).
Otherwise the dead worker's row is moved to another host right after the kill, so only its silent
heartbeat tells (``worker_timeout_seconds``). The lease is 300 s in both: it never decides.

    .venv/bin/python benchmarks/takeback_bench.py --referrals 600 [--timeout 30 --heartbeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from sqlalchemy import select, update

from refsync.state import db
from refsync.state.ledger import Ledger
from refsync.state.models import SyncOp, Worker

ROOT = Path(__file__).resolve().parents[1]
REFSYNC = str(Path(sys.executable).with_name("refsync"))
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"


def held_by(ledger: Ledger) -> dict[str, int]:
    with ledger.transaction() as txn:
        rows = txn.session.execute(select(SyncOp.lease_owner).where(SyncOp.state == "in_flight")).scalars()
        counts: dict[str, int] = {}
        for owner in rows:
            counts[owner] = counts.get(owner, 0) + 1
        return counts


def measure(directory: Path, info: dict, referrals: int, same_host: bool, heartbeat: float, timeout: float) -> None:
    sf, hs = info["salesforce"], info["hubspot"]
    for crm in (sf, hs):
        requests.post(f"{crm['admin_url']}/reset", json={}, verify=crm.get("ca_file", True), timeout=10)
        requests.post(f"{crm['admin_url']}/set_faults", json={"slow": 0.2, "slow_seconds": 0.5},
                      verify=crm.get("ca_file", True), timeout=10)
    url = f"sqlite:///{directory / 'ledger.db'}"
    config = directory / "refsync.toml"
    config.write_text(
        f'[ledger]\nurl = "{url}"\n'
        f'[crm.salesforce]\ninstance_url = "{sf["base_url"]}"\nca_bundle = "{sf["ca_file"]}"\n'
        f'session_id = "env:B_SF"\nmapping = "{ROOT}/mappings/salesforce.toml"\n'
        f'[crm.hubspot]\nbase_url = "{hs["base_url"]}"\naccess_token = "env:B_HS"\n'
        f'mapping = "{ROOT}/mappings/hubspot.toml"\n'
        f'[daemon]\nbatch_size = 100\npush_interval_seconds = 1\npoll_interval_seconds = 3600\n'
        f'heartbeat_seconds = {heartbeat}\nworker_timeout_seconds = {timeout}\n'
        '[http]\nlisten = ""\n[logging]\nlevel = "error"\n')
    rows = [f"p{n % 7},bench{n}@kill.example,Bench {n},,,,,2026-10-01T00:00:00Z,,b{n}" for n in range(referrals)]
    (directory / "r.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    env = {**os.environ, "B_SF": sf["session_id"], "B_HS": hs["access_token"]}

    def refsync(*args: str) -> subprocess.Popen:
        return subprocess.Popen([REFSYNC, "--config", str(config), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    db.upgrade(db.make_engine(url))
    refsync("import", str(directory / "r.csv")).wait()
    ledger = Ledger.open(url)
    victim = refsync("sync", "--once")
    while not held_by(ledger) and victim.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait()
    held = held_by(ledger)
    [dead] = held  # only the victim held ops
    if not same_host:
        with ledger.transaction() as txn:
            txn.session.execute(update(Worker).where(Worker.id == dead).values(host="another-host"))
    survivor = refsync("run")  # in a real deployment it was already running; its start-up counts here
    while held_by(ledger).get(dead):
        time.sleep(0.05)
    seconds = time.monotonic() - killed_at
    survivor.send_signal(signal.SIGTERM)
    survivor.wait(timeout=60)
    where = "same host (pid gone)" if same_host else f"another host (heartbeat {heartbeat:g} s, timeout {timeout:g} s)"
    print(f"{where}: {held[dead]} claimed ops of the killed worker taken back {seconds:.2f} s after kill -9 "
          f"(lease 300 s)")
    ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--referrals", type=int, default=600)
    parser.add_argument("--heartbeat", type=float, default=5)
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = subprocess.Popen([REFSYNC, "sandbox", "--dir", tmp], stdout=subprocess.PIPE, text=True)
        assert sandbox.stdout is not None
        info = json.loads(sandbox.stdout.readline())
        try:
            for same_host in (True, False):
                with tempfile.TemporaryDirectory() as run_dir:
                    measure(Path(run_dir), info, args.referrals, same_host, args.heartbeat, args.timeout)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)


if __name__ == "__main__":
    main()
