"""`refsync run` as ops run it: it works on its schedule, stops cleanly on SIGTERM, and refuses to
start on a broken mapping or an unreachable ledger, with a clear message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refsync.state.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
REFSYNC = str(Path(sys.executable).with_name("refsync"))
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"


@pytest.fixture(scope="module")
def sandbox_info(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    process = subprocess.Popen([REFSYNC, "sandbox", "--dir", str(tmp_path_factory.mktemp("sb"))],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    yield json.loads(process.stdout.readline())
    process.terminate()
    process.wait(timeout=10)


def write_config(path: Path, ledger_url: str, info: dict, mapping_dir: Path = ROOT / "mappings") -> Path:
    sf, hs = info["salesforce"], info["hubspot"]
    path.write_text(
        f'[ledger]\nurl = "{ledger_url}"\n'
        f'[crm.salesforce]\ninstance_url = "{sf["base_url"]}"\nca_bundle = "{info["ca_file"]}"\n'
        f'session_id = "env:D_SF"\nmapping = "{mapping_dir}/salesforce.toml"\n'
        f'[crm.hubspot]\nbase_url = "{hs["base_url"]}"\naccess_token = "env:D_HS"\n'
        f'mapping = "{mapping_dir}/hubspot.toml"\n'
        '[daemon]\npush_interval_seconds = 1\npoll_interval_seconds = 2\n[http]\nlisten = "127.0.0.1:0"\n'
        '[logging]\nformat = "json"\n')
    return path


def env_for(info: dict) -> dict[str, str]:
    return {**os.environ, "D_SF": info["salesforce"]["session_id"], "D_HS": info["hubspot"]["access_token"]}


def test_run_pushes_on_schedule_and_stops_gracefully_on_sigterm(
    sandbox_info: dict, tmp_path: Path, sqlite_url: str
) -> None:
    config = write_config(tmp_path / "refsync.toml", sqlite_url, sandbox_info)
    sample = tmp_path / "r.csv"
    sample.write_text(HEADER + "\n" + "\n".join(f"p,d{n}@daemon.example,,,,,,,,d{n}" for n in range(20)) + "\n")
    env = env_for(sandbox_info)
    assert subprocess.run([REFSYNC, "--config", str(config), "import", str(sample)], env=env,
                          capture_output=True, check=False).returncode == 0
    daemon = subprocess.Popen([REFSYNC, "--config", str(config), "run"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    ledger = Ledger.open(sqlite_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ledger.status()["ops"]["done"] < 40:
        time.sleep(0.5)
    assert ledger.status()["ops"]["done"] == 40  # 20 referrals on two CRMs, pushed by the daemon
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "refsync stopped" in events
    assert ledger.status()["ops"]["in_flight"] == 0  # nothing left claimed
    ledger.close()


def test_run_refuses_a_broken_mapping_with_file_and_line(sandbox_info: dict, tmp_path: Path, sqlite_url: str) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shipped = (ROOT / "mappings" / "salesforce.toml").read_text()
    (mappings / "salesforce.toml").write_text(shipped.replace("Referral_Source__c = {", "Referal_Source__c = {", 1))
    (mappings / "hubspot.toml").write_text((ROOT / "mappings" / "hubspot.toml").read_text())
    config = write_config(tmp_path / "refsync.toml", sqlite_url, sandbox_info, mappings)
    done = subprocess.run([REFSYNC, "--config", str(config), "run"], env=env_for(sandbox_info), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"{mappings / 'salesforce.toml'}:" in done.stderr and "Referal_Source__c" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_refuses_an_unreachable_ledger(sandbox_info: dict, tmp_path: Path) -> None:
    config = write_config(tmp_path / "refsync.toml", "postgresql+psycopg://nobody@127.0.0.1:1/none", sandbox_info)
    done = subprocess.run([REFSYNC, "--config", str(config), "run"], env=env_for(sandbox_info), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and "cannot reach the ledger" in done.stderr
