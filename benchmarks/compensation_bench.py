"""Compensation cost on SQLite: the first pass over N won referrals (a commission each, with every
fraud check and a per-period cap), then a pass with nothing to change (what every later cycle costs).

Run: .venv/bin/python benchmarks/compensation_bench.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import update

from refsync.connector.attribution import Policy
from refsync.connector.compensate import compensate
from refsync.connector.imports import import_file
from refsync.connector.terms import parse_terms
from refsync.state import db
from refsync.state.ledger import Ledger
from refsync.state.models import Referral

TERMS = '[program]\ncurrency = "USD"\npercent = 10\nhold_days = 30\ncap_per_period = 100000\n'


def main(count: int) -> None:
    folder = Path(tempfile.mkdtemp())
    url = f"sqlite:///{folder / 'ledger.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    ledger = Ledger.open(url)
    rows = folder / "r.csv"
    rows.write_text("partner,prospect_email,submitted_at,external_id\n" + "".join(
        f"p{i % 50},x{i}@c{i}.example,2026-{1 + i % 9:02d}-{1 + i % 28:02d}T09:00:00Z,e{i}\n" for i in range(count)))
    import_file(ledger, rows, Policy("first_touch", "flag", 365, "bench"), datetime.now(UTC))
    with ledger.transaction() as txn:
        txn.session.execute(update(Referral).values(status="won", outcome_amount=Decimal("12345.67"),
                                                    outcome_currency="USD", outcome_close_date=date(2026, 10, 1)))
    book = parse_terms(TERMS)
    started = time.perf_counter()
    first = compensate(ledger, book)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again = compensate(ledger, book)
    again_s = time.perf_counter() - started
    print(f"{count} won referrals: first pass {first_s:.2f} s ({first.created} created, {first.held} held); "
          f"pass with nothing to change {again_s:.2f} s ({again.created} created)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
