"""How long the portal's and the dashboard's pages take with a ledger of N referrals (SQLite).

Run: .venv/bin/python benchmarks/portal_bench.py [--rows 20000]
Imports N referrals of 300 partners, signs a partner user and a manager in over real HTTP, and
prints the median time of 5 loads of each main page (the dashboard computes `refsync report`'s
lines per partner and per channel for every referral at each load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    from benchmarks.import_bench import make_file
    from refsync.connector.imports import import_file
    from refsync.state import db
    from refsync.state.ledger import Ledger
    from tests.web_support import POLICY, Browserless, invite, start_server, url_of

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/ledger.db"
        engine = db.make_engine(url)
        db.upgrade(engine)
        engine.dispose()
        ledger = Ledger.open(url)
        data = Path(folder) / "r.csv"
        make_file(data, args.rows)
        started = time.perf_counter()
        import_file(ledger, data, POLICY, datetime.now(UTC))
        imported = time.perf_counter() - started
        server = start_server(ledger, crms=("salesforce", "hubspot"))
        partner, staff = Browserless(url_of(server)), Browserless(url_of(server))
        partner.accept_invitation(invite(ledger, "partner", "p@partner0.example", partner="partner-0"))
        staff.accept_invitation(invite(ledger, "staff", "m@corp.example", role="viewer"))
        [some] = ledger.referrals(partner="partner-0", limit=1)
        pages = {"dashboard": (staff, "/dashboard"),
                 "dashboard_period": (staff, "/dashboard?from=2026-03-01&to=2026-04-01"),
                 "portal_home": (partner, "/portal"),
                 "portal_search": (partner, "/portal?q=company+1&status=submitted"),
                 "portal_referral": (partner, f"/portal/referrals/{some['id']}")}
        timings: dict[str, float] = {}
        for name, (client, path) in pages.items():
            runs = []
            for _ in range(5):
                start = time.perf_counter()
                answer = client.get(path)
                runs.append(time.perf_counter() - start)
                assert answer.status_code == 200, (path, answer.status_code)
            timings[name] = round(statistics.median(runs), 3)
        server.stop()
        ledger.close()
    print(json.dumps({"referrals": args.rows, "import_seconds": round(imported, 1), "median_seconds": timings}))


if __name__ == "__main__":
    main()
