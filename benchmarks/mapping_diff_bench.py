"""A mapping change over N linked referrals: time of `mappings diff`'s count and of planning the re-push.

Run: .venv/bin/python benchmarks/mapping_diff_bench.py [--referrals 100000]

The ledger (SQLite) is bulk-seeded with N credited referrals, each linked to one Salesforce Lead;
the shipped Salesforce mapping is recorded as active, then a value map on Referral_Partner__c that
touches one partner in ten is diffed (connector.rollout.diff_against) and rolled out (roll_out:
the diff, one op and one audit event per affected referral). No CRM is called.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--referrals", type=int, default=100_000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    from sqlalchemy import insert

    from refsync.connector.mapping import load_mapping
    from refsync.connector.push import CrmTarget
    from refsync.connector.rollout import diff_against, record_active, roll_out
    from refsync.state import db
    from refsync.state.ledger import Ledger
    from refsync.state.models import CrmLink, Partner, Referral

    tmp = Path(tempfile.mkdtemp(prefix="mapping-diff-bench-"))
    url = f"sqlite:///{tmp / 'bench.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    ledger = Ledger.open(url)
    now = datetime.now(UTC)
    referrals = [{"id": f"01BENCH{i:019d}", "external_id": f"e{i}", "fingerprint": f"f{i}", "partner_id": i % 10 + 1,
                  "prospect_email": f"x{i}@co{i}.example", "source": "partner", "medium": "referral",
                  "campaign": "q4", "submitted_at": now, "status": "submitted", "status_changed_at": now,
                  "credited": True, "review_required": False, "attribution_model": "first_touch",
                  "policy_version": "bench", "attribution_reason": "sole_referral", "revision": 1,
                  "created_at": now, "updated_at": now} for i in range(args.referrals)]
    links = [{"referral_id": r["id"], "crm": "salesforce", "object": "Lead", "record_id": f"00Q{i:015d}",
              "role": "lead", "state": "active", "created_at": now, "updated_at": now}
             for i, r in enumerate(referrals)]
    with ledger.transaction() as txn:
        txn.session.execute(insert(Partner), [{"id": p + 1, "code": f"p{p}", "created_at": now} for p in range(10)])
        for start in range(0, len(referrals), 5000):
            txn.session.execute(insert(Referral), referrals[start:start + 5000])
            txn.session.execute(insert(CrmLink), links[start:start + 5000])
    old = load_mapping(ROOT / "mappings" / "salesforce.toml")
    record_active(ledger, "salesforce", old)
    edited = tmp / "salesforce.toml"
    edited.write_text(old.text.replace('Referral_Partner__c = { from = "partner", rule = "protect" }',
                                       'Referral_Partner__c = { from = "partner", rule = "protect", transform = { '
                                       'values = { "p3" = "Partner Three" } } }', 1))
    new = load_mapping(edited)

    started = time.monotonic()
    diff = diff_against(ledger, "salesforce", old.mapping, new.mapping)
    diff_seconds = time.monotonic() - started
    target = CrmTarget("salesforce", None, new.mapping, {}, loaded=new)  # type: ignore[arg-type]  # no CRM call
    started = time.monotonic()
    rollout = roll_out(ledger, target)
    rollout_seconds = time.monotonic() - started
    assert rollout is not None
    print(json.dumps({"referrals": args.referrals, "records_rewritten": diff.records,
                      "diff_seconds": round(diff_seconds, 2), "repushes_planned": rollout.planned,
                      "rollout_seconds": round(rollout_seconds, 2)}))


if __name__ == "__main__":
    main()
