"""Time and peak memory to import N referrals into SQLite and PostgreSQL.

Run: .venv/bin/python benchmarks/import_bench.py [--rows 100000] [--pg URL]
Each backend runs in its own subprocess so peak RSS (ru_maxrss) is that import's alone.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"


def make_file(path: Path, rows: int) -> None:
    rng = random.Random(7)
    with path.open("w") as out:
        out.write(HEADER + "\n")
        for n in range(rows):
            company = f"Company {rng.randrange(rows // 2)}"
            email = f"person{rng.randrange(rows)}@{company.replace(' ', '').lower()}.example"
            day = 1 + n % 28
            out.write(f"partner-{n % 300},{email},{company},Person {n},partner,referral,c{n % 12},"
                      f"2026-0{1 + n % 9}-{day:02d}T10:00:00Z,,bench-{n}\n")


def one(url: str, file: Path) -> None:
    from datetime import UTC, datetime

    from refsync.connector.attribution import Policy
    from refsync.connector.imports import import_file
    from refsync.state import db
    from refsync.state.ledger import Ledger

    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    ledger = Ledger.open(url)
    started = time.perf_counter()
    cpu = time.process_time()
    report = import_file(ledger, file, Policy("first_touch", "flag", 365, "bench"), datetime.now(UTC))
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "imported": report.imported, "rejected": report.rejected_rows, "duplicates": report.duplicates,
        "seconds": round(elapsed, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
        "rows_per_second": round(report.imported / elapsed),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], Path(args.one[1]))
        return
    import logging

    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "referrals.csv"
        make_file(file, args.rows)
        print(f"{args.rows} rows, {file.stat().st_size / 1e6:.1f} MB CSV")
        targets = [("sqlite", f"sqlite:///{tmp}/bench.db")]
        pg_db = f"refsync_bench_{uuid.uuid4().hex[:8]}"
        try:
            from sqlalchemy import create_engine, text
            from sqlalchemy.engine import make_url

            admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{pg_db}"'))
            targets.append(("postgresql", make_url(args.pg).set(database=pg_db).render_as_string(False)))
        except Exception as exc:  # noqa: BLE001 - report and go on with SQLite alone
            print(f"postgresql: skipped ({exc.__class__.__name__}: {exc})")
            admin = None
        for name, url in targets:
            result = subprocess.run([sys.executable, __file__, "--one", url, str(file)],
                                    capture_output=True, text=True, check=True)
            print(f"{name}: {result.stdout.strip().splitlines()[-1]}")
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
