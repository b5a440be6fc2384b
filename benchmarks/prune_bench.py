"""How long a prune of a large backlog takes, and how long a writer waits meanwhile.

Seeds ``--ops`` done CRM ops and as many delivered webhooks, all 60 days old, plus job runs, then
prunes them with the default retention while another thread keeps writing (one small write
transaction after another, as intake and pushes do). Prints the prune's time and the writer's
longest wait: batches of 500 rows in short transactions keep that wait at a few milliseconds.

    .venv/bin/python benchmarks/prune_bench.py --ops 100000 [--url postgresql+psycopg://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from refsync.connector.config import RetentionConfig
from refsync.connector.retention import prune_ledger
from refsync.state import db
from refsync.state.ledger import Ledger
from refsync.state.models import Base, JobRun, SyncOp


def seed(ledger: Ledger, ops: int) -> None:
    old = datetime.now(UTC) - timedelta(days=60)
    rows = [{"kind": "push" if n % 2 else "notify", "dedupe_key": f"bench:{n}", "crm": "salesforce" if n % 2 else
             "webhook", "state": "done", "attempts": 1, "next_attempt_at": old, "done_at": old, "created_at": old,
             "updated_at": old, "payload": {}} for n in range(2 * ops)]
    with ledger.transaction() as txn:
        for start in range(0, len(rows), 10_000):
            txn.session.execute(insert(SyncOp), rows[start:start + 10_000])
        txn.session.execute(insert(JobRun), [{"job": "push", "started_at": old - timedelta(days=60), "status": "ok",
                                              "counts": {}} for _ in range(ops // 10)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=100_000, help="done CRM ops (and as many webhooks)")
    parser.add_argument("--url", help="a PostgreSQL URL (its tables are dropped); default: a temporary SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite:///{Path(folder) / 'bench.db'}"
        engine = db.make_engine(url)
        if args.url:
            Base.metadata.drop_all(engine)
            with engine.begin() as connection:
                connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        db.upgrade(engine)
        ledger = Ledger(engine)
        seed(ledger, args.ops)
        waits: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            n = 0
            while not stop.is_set():
                started = time.perf_counter()
                ledger.enqueue_op("push", f"writer:{n}", "hubspot")
                waits.append(time.perf_counter() - started)
                n += 1
                time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        started = time.perf_counter()
        result = prune_ledger(ledger, RetentionConfig())
        took = time.perf_counter() - started
        stop.set()
        thread.join()
        print(f"{engine.dialect.name}: pruned {result['pruned']} in {took:.1f} s; a concurrent writer made "
              f"{len(waits)} writes, longest {max(waits) * 1000:.0f} ms, median "
              f"{sorted(waits)[len(waits) // 2] * 1000:.1f} ms")
        ledger.close()


if __name__ == "__main__":
    main()
