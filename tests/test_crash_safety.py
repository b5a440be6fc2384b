"""kill -9 at any moment, start again: the CRM and the ledger converge, with no duplicate record and
no lost op. A real `refsync sync --once` subprocess is killed mid-sync, repeatedly, against a
sandbox running in its own process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from adapters.hubspot import HubSpotAdapter
from adapters.salesforce import SalesforceAdapter
from state.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
REFSYNC = str(Path(sys.executable).with_name("refsync"))
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
RECORDS = 600


@pytest.fixture(scope="module")
def sandbox_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    directory = tmp_path_factory.mktemp("sandbox")
    process = subprocess.Popen([REFSYNC, "sandbox", "--dir", str(directory)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    yield info
    process.terminate()
    process.wait(timeout=10)


def test_killing_sync_repeatedly_converges_without_duplicates(
    sandbox_process: dict, tmp_path: Path, ledger_url: str
) -> None:
    sf, hs = sandbox_process["salesforce"], sandbox_process["hubspot"]
    requests.post(f"{sf['admin_url']}/reset", json={}, verify=sf["ca_file"], timeout=10).raise_for_status()
    requests.post(f"{hs['admin_url']}/reset", json={}, timeout=10).raise_for_status()
    env = {**os.environ, "K_SF": sf["session_id"], "K_HS": hs["access_token"]}
    config = tmp_path / "refsync.toml"
    config.write_text(
        f'[ledger]\nurl = "{ledger_url}"\n'
        f'[crm.salesforce]\ninstance_url = "{sf["base_url"]}"\nca_bundle = "{sf["ca_file"]}"\n'
        f'session_id = "env:K_SF"\nmapping = "{ROOT}/mappings/salesforce.toml"\n'
        f'[crm.hubspot]\nbase_url = "{hs["base_url"]}"\naccess_token = "env:K_HS"\n'
        f'mapping = "{ROOT}/mappings/hubspot.toml"\n'
        '[daemon]\nbatch_size = 50\nlease_seconds = 10\n[logging]\nlevel = "error"\n')
    rows = [f"p{n % 7},crash{n}@kill.example,Kill Co {n},,,,,2026-10-01T00:00:00Z,,k{n}" for n in range(RECORDS)]
    (tmp_path / "r.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")

    def refsync(*args: str) -> subprocess.Popen:
        return subprocess.Popen([REFSYNC, "--config", str(config), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    assert refsync("init").wait(timeout=60) == 0
    assert refsync("import", str(tmp_path / "r.csv")).wait(timeout=120) == 0
    rng = random.Random(5)
    for _ in range(5):
        process = refsync("sync", "--once")
        time.sleep(rng.uniform(0.3, 2.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    time.sleep(11)  # the killed runs' leases run out: their claimed ops are due again
    final = refsync("sync", "--once")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err

    ledger = Ledger.open(ledger_url)
    status = ledger.status()
    assert status["ops"]["dead"] == 0 and status["ops"]["pending"] == 0 and status["ops"]["in_flight"] == 0
    emails = [f"crash{n}@kill.example" for n in range(RECORDS)]
    referral_ids = {r["prospect_email"]: r["id"] for r in ledger.referrals()}
    salesforce = SalesforceAdapter(sf["base_url"], session_id=sf["session_id"], ca_bundle=sf["ca_file"])
    found = salesforce.find("Lead", "Email", emails, ["Referral_Id__c", "Email"])
    assert sorted(found) == sorted(emails)  # every referral landed ...
    assert all(len(records) == 1 for records in found.values())  # ... exactly once
    assert all(found[e][0].fields["Referral_Id__c"] == referral_ids[e] for e in emails)
    time.sleep(1.1)  # the sandbox's search limit (5 a second) counts the last sync's searches too
    hubspot = HubSpotAdapter(hs["base_url"], hs["access_token"])
    contacts = hubspot.find("contacts", "email", emails, ["refsync_referral_id", "email"])
    assert len(contacts) == RECORDS and all(len(records) == 1 for records in contacts.values())
    ledger.close()
