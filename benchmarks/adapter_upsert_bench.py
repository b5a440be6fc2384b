"""API calls to upsert N records into each sandbox CRM, against the batch lower bound, with and
without injected transient faults (retried the way the engine retries: only what failed).

Run: .venv/bin/python benchmarks/adapter_upsert_bench.py [--records 10000] [--fault-rate 0.2]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refsync.adapters.base import CrmAdapter, RecordErrorKind, RecordUpsert  # noqa: E402
from refsync.adapters.errors import RetriableError  # noqa: E402
from refsync.adapters.hubspot import HubSpotAdapter  # noqa: E402
from refsync.adapters.salesforce import SalesforceAdapter  # noqa: E402
from refsync.adapters.sandbox.run import start_sandbox  # noqa: E402

RETRIABLE = {RecordErrorKind.TRANSIENT, RecordErrorKind.MISSING}


def upsert_all(adapter: CrmAdapter, obj: str, id_field: str, records: list[RecordUpsert]) -> tuple[int, int]:
    """Upsert everything, retrying failed calls and failed records; returns (calls, rounds)."""
    pending = list(records)
    rounds = 0
    start_calls = adapter.budget().total_calls
    while pending and rounds < 50:
        rounds += 1
        retry: list[RecordUpsert] = []
        for start in range(0, len(pending), adapter.max_batch):
            chunk = pending[start:start + adapter.max_batch]
            try:
                results = adapter.upsert(obj, id_field, chunk)
            except RetriableError:
                retry += chunk
                continue
            retry += [r for r, res in zip(chunk, results, strict=True)
                      if not res.ok and res.error is not None and res.error.kind in RETRIABLE]
        pending = retry
    if pending:
        raise SystemExit(f"{len(pending)} records still failing after {rounds} rounds")
    return adapter.budget().total_calls - start_calls, rounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = start_sandbox(Path(tmp), seed=11)
        try:
            sf = sandbox.salesforce
            hs = sandbox.hubspot
            cases = [
                ("salesforce", lambda: SalesforceAdapter(sf.base_url, session_id=sf.session_id,
                                                         ca_bundle=str(sf.ca_path)), sf, "Lead", "Referral_Id__c",
                 {"LastName": "Bench", "Company": "Bench Co"}),
                ("hubspot", lambda: HubSpotAdapter(hs.base_url, hs.access_token), hs, "contacts",
                 "refsync_referral_id", {}),
            ]
            for name, make, emulator, obj, id_field, extra in cases:
                for fault_rate in (0.0, args.fault_rate):
                    emulator.reset()
                    rate = fault_rate / 3
                    emulator.set_faults(server_error=rate, lock=rate, rate_limit=rate, retry_after=0)
                    adapter = make()
                    records = [RecordUpsert(f"01BENCH{n:019d}", {**extra, id_field: f"01BENCH{n:019d}",
                                            "Email" if name == "salesforce" else "email": f"p{n}@bench.example"})
                               for n in range(args.records)]
                    started = time.perf_counter()
                    calls, rounds = upsert_all(adapter, obj, id_field, records)
                    bound = math.ceil(args.records / adapter.max_batch)
                    print(f"{name}: {args.records} records, faults {fault_rate:.0%}: {calls} API calls "
                          f"(lower bound {bound}, {calls / bound:.2f}x), {rounds} rounds, "
                          f"{time.perf_counter() - started:.1f} s")
                    emulator.set_faults()
        finally:
            sandbox.stop()


if __name__ == "__main__":
    main()
