"""Reconcile N linked referrals against the HubSpot sandbox: API calls, wall time, peak memory.

Run: .venv/bin/python benchmarks/reconcile_bench.py [--referrals 100000] [--ledger sqlite|postgresql]

For speed the ledger rows are bulk-inserted and the emulator's store is filled directly in-process
(no API calls); reconcile itself then runs unchanged through the real HubSpot adapter over HTTP.
A few planted discrepancies (deleted contacts, overwritten fields) show the checks run at scale.
Salesforce is not part of this benchmark yet (its emulator used to re-parse ``IN (...)`` literals
per stored record, since fixed); the sync benchmark measures Salesforce reads at 100k.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DELETED, OVERWRITTEN = 25, 25


def _ledger_url(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench.db'}"
    from sqlalchemy import create_engine, text

    name = f"refsync_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return PG.rsplit("/", 1)[0] + f"/{name}"


def _current_rss_mb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--referrals", type=int, default=100_000)
    parser.add_argument("--ledger", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    from sqlalchemy import insert

    from refsync.adapters.sandbox.hubspot_emulator import HubSpotEmulator
    from refsync.adapters.sandbox.hubspot_store import Record
    from refsync.connector.config import parse_config
    from refsync.connector.crms import build_targets
    from refsync.connector.mapping import field_values
    from refsync.connector.reconcile import ReconcileSettings, reconcile
    from refsync.state import db
    from refsync.state.ledger import Ledger
    from refsync.state.models import CrmLink, Partner, Referral
    from refsync.state.notifications import alerts

    tmp = Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    url = _ledger_url(args.ledger, tmp)
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    ledger = Ledger.open(url)
    emulator = HubSpotEmulator()
    emulator.start()
    config = parse_config(f'[crm.hubspot]\nbase_url = "{emulator.base_url}"\naccess_token = "env:BENCH_HS"\n'
                          f'mapping = "{ROOT}/mappings/hubspot.toml"\n', ROOT / "bench.toml")
    import os

    os.environ["BENCH_HS"] = emulator.access_token

    seeded = time.monotonic()
    now = datetime.now(UTC)
    submitted = now - timedelta(days=5)
    store = emulator.store
    targets, problems = build_targets(config)
    assert not problems, problems
    target = targets["hubspot"]
    lead = target.mapping.lead
    referrals, links = [], []
    with store.lock:
        for i in range(args.referrals):
            rid = f"01BENCH{i:019d}"
            view = {"id": rid, "partner": f"p{i % 50}", "source": "partner", "medium": "referral",
                    "campaign": f"c{i % 7}", "submitted_at": submitted, "prospect_email": f"x{i}@co{i}.example",
                    "prospect_company": f"Co {i}", "prospect_name": None, "external_id": f"e{i}",
                    "status": "submitted", "referral_code": None}
            props = store.normalise("contacts", {k: v for k, v in field_values(lead, view).items() if v is not None})
            ms = int(now.timestamp() * 1000)
            record = Record(store._mint_id(), "contacts", {**props, "hs_object_id": ""}, ms, ms)
            record.props["hs_object_id"] = record.id
            if i < OVERWRITTEN:
                record.props["referral_partner"] = "someone-else"
            store.records["contacts"][record.id] = record
            if OVERWRITTEN <= i < OVERWRITTEN + DELETED:
                record.archived_ms = ms
            referrals.append({"id": rid, "external_id": f"e{i}", "fingerprint": rid, "partner_id": i % 50 + 1,
                              "prospect_email": view["prospect_email"], "prospect_company": view["prospect_company"],
                              "source": "partner", "medium": "referral", "campaign": view["campaign"],
                              "submitted_at": submitted, "status": "submitted", "status_changed_at": now,
                              "credited": True, "review_required": False, "attribution_model": "first_touch",
                              "policy_version": "bench", "attribution_reason": "sole_referral", "revision": 1,
                              "created_at": now, "updated_at": now})
            links.append({"referral_id": rid, "crm": "hubspot", "object": "contacts", "record_id": record.id,
                          "role": "contact", "state": "active", "created_at": now, "updated_at": now})
    with ledger.transaction() as txn:
        txn.session.execute(insert(Partner), [{"id": p + 1, "code": f"p{p}", "created_at": now} for p in range(50)])
        for start in range(0, len(referrals), 5000):
            txn.session.execute(insert(Referral), referrals[start:start + 5000])
            txn.session.execute(insert(CrmLink), links[start:start + 5000])
    ledger.refresh_statistics()
    seed_seconds = time.monotonic() - seeded
    del referrals, links
    gc.collect()
    # the emulator runs in this process: what it holds is here before reconcile starts
    rss_before = _current_rss_mb()

    before_calls = target.adapter.budget().total_calls
    served_before = sum(emulator.calls().values())
    started, cpu = time.monotonic(), time.process_time()
    report = reconcile(ledger, targets, ReconcileSettings(stale_after_days=30, won_lookback_days=90))
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    calls = target.adapter.budget().total_calls - before_calls
    served = sum(emulator.calls().values()) - served_before
    found = report.by_kind
    result = {
        "referrals_linked": args.referrals, "ledger": args.ledger, "crm": "hubspot (sandbox, in-process)",
        "seeding": f"ledger bulk-inserted and emulator store filled directly in {seed_seconds:.1f}s (no API calls)",
        "records_read": report.records_read, "api_calls": calls, "api_calls_served_by_emulator": served,
        "api_calls_by_kind": dict(target.adapter.budget().calls),
        "batch_lower_bound": -(-args.referrals // target.adapter.max_batch),
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_reconcile_mb": rss_before,  # the emulator's 100k records and the seeded ledger
        "alerts_found": found, "alerts_open": len(alerts(ledger, open_only=True)),
        "planted": {"attribution_overwritten": OVERWRITTEN, "orphaned_link": DELETED},
    }
    assert found.get("attribution_overwritten") == OVERWRITTEN and found.get("orphaned_link") == DELETED, found
    print(json.dumps(result, indent=2))
    emulator.stop()
    ledger.close()


if __name__ == "__main__":
    main()
