"""Sync N referrals to both sandbox CRMs: API calls against the batch lower bound, calls of a quiet
cycle (one run right after the first cycle, inside the overlap window, by a new process; the one
that lists the window again once it has settled; one in the steady state), wall time, CPU per
referral (the first cycle's push and poll, the import before it, and the two together) and peak
memory.

Run: .venv/bin/python benchmarks/sync_bench.py [--referrals 10000] [--ledger sqlite|postgresql] [--faults 0.2]
Each size runs in its own process, so ru_maxrss is that run's peak. ``--faults RATE`` runs each size
twice, fault-free and with RATE of every CRM call failing transiently (5xx, dropped connections,
HubSpot 429s with a short Retry-After; start-up included), and reports the calls and wall time of the
faulty run against the fault-free one (goal: at most 1.5x the calls). SYNC_BENCH_PROFILE=FILE writes
a cProfile of the first cycle there (CPU figures then include the profiler's overhead).
``reference_cpu_ms`` is a fixed pure-Python workload's CPU time before the import and after the
last cycle: how fast the machine ran Python around the measurement (shared machines drift).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def writes(calls: dict[str, int]) -> int:
    return sum(v for k, v in calls.items() if k.startswith(("composite_upsert", "composite_update", "batch_upsert",
                                                            "batch_update", "batch_create")))


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls by kind made between two readings of an emulator's counters."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def reference_cpu_ms() -> float:
    """CPU milliseconds of a fixed pure-Python workload (JSON, string building, sorting): how fast
    this machine runs Python right now. Shared machines drift by a third within an hour; a CPU
    figure divided by the reference taken beside it compares across runs and machines."""
    started = time.process_time()
    rows = [{"id": n, "name": f"n{n}", "values": [n, n * 2.5, str(n)]} for n in range(20_000)]
    for _ in range(3):
        json.loads(json.dumps(rows))
        sorted((str(n) for n in range(100_000)), key=len)
    return round((time.process_time() - started) * 1000, 1)


def one(referrals: int, ledger_url: str, tmp: Path, faults: float = 0.0) -> dict[str, object]:
    import logging

    logging.disable(logging.WARNING)
    import requests

    from refsync.connector.attribution import Policy
    from refsync.connector.config import load_config
    from refsync.connector.crms import build_targets
    from refsync.connector.imports import import_file
    from refsync.connector.runtime import tune_gc
    from refsync.connector.sync import CycleSettings, run_cycle
    from refsync.state import db
    from refsync.state.ledger import Ledger

    tune_gc()  # as the `refsync` command does at start
    # The sandbox runs in its own process, so this process's CPU time and memory are refsync's alone.
    server = subprocess.Popen([str(Path(sys.executable).with_name("refsync")), "sandbox", "--dir", str(tmp / "sb")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdout is not None
    info = json.loads(server.stdout.readline())
    sf_info, hs_info = info["salesforce"], info["hubspot"]

    def admin(crm: dict[str, str], action: str, **kwargs: object) -> dict[str, int]:
        answer = requests.post(f"{crm['admin_url']}/{action}", json=kwargs, timeout=30,
                               verify=info["ca_file"])
        answer.raise_for_status()
        result = answer.json().get("result")
        return dict(result if result is not None else answer.json()) if action == "calls" else {}

    def calls() -> dict[str, dict[str, int]]:
        return {"salesforce": admin(sf_info, "calls"), "hubspot": admin(hs_info, "calls")}

    admin(hs_info, "configure", search_per_second=None)  # the adapter paces itself; keep the bench about refsync
    os.environ["B_SF"], os.environ["B_HS"] = sf_info["session_id"], hs_info["access_token"]
    config_file = tmp / "refsync.toml"
    config_file.write_text(
        f'[ledger]\nurl = "{ledger_url}"\n'
        f'[crm.salesforce]\ninstance_url = "{sf_info["base_url"]}"\n'
        f'ca_bundle = "{info["ca_file"]}"\nsession_id = "env:B_SF"\n'
        f'mapping = "{ROOT}/mappings/salesforce.toml"\n'
        f'[crm.hubspot]\nbase_url = "{hs_info["base_url"]}"\naccess_token = "env:B_HS"\n'
        f'mapping = "{ROOT}/mappings/hubspot.toml"\n')
    config = load_config(config_file)
    engine = db.make_engine(config.ledger_url())
    db.upgrade(engine)
    engine.dispose()
    ledger = Ledger.open(config.ledger_url())
    csv = tmp / "referrals.csv"
    with csv.open("w") as out:
        out.write(HEADER + "\n")
        for n in range(referrals):
            out.write(f"partner-{n % 50},person{n}@co{n % 997}.example,Co {n},Person {n},partner,referral,"
                      f"c{n % 7},2026-10-01T00:00:00Z,,b{n}\n")
    reference_before = reference_cpu_ms()
    import_cpu = time.process_time()
    import_file(ledger, csv, Policy("first_touch", "flag", 365, "bench"), datetime.now(UTC))
    import_cpu = time.process_time() - import_cpu
    import_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    before = calls()
    if faults:  # from start-up on: the describes and stage reads are faulted too
        admin(sf_info, "set_faults", server_error=faults / 2, drop=faults / 2, seed=7)
        admin(hs_info, "set_faults", server_error=faults / 3, drop=faults / 3, rate_limit=faults / 3, retry_after=1,
              seed=7)
    profiler = cProfile.Profile(time.process_time) if os.environ.get("SYNC_BENCH_PROFILE") else None  # CPU, not waits
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    targets, problems = build_targets(config, ledger)
    assert not problems, problems
    settings = CycleSettings(batch_size=1000, lease_seconds=600, max_attempts=5)
    first = run_cycle(ledger, targets, settings)
    first_wall, first_cpu = time.perf_counter() - started, time.process_time() - cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.environ["SYNC_BENCH_PROFILE"])
    after_push = calls()
    # The adapters' own count includes every attempt (an emulator does not count a call it faulted).
    made = {name: target.adapter.budget().total_calls for name, target in targets.items()}
    if faults:
        admin(sf_info, "set_faults")
        admin(hs_info, "set_faults")
    # A `sync --once` right after, inside the overlap window: a new process (fresh targets, nothing
    # remembered in memory), so what it costs is what the ledger remembers between processes.
    fresh, problems = build_targets(config, ledger)
    assert not problems, problems
    run_cycle(ledger, fresh, settings)
    after_first = calls()
    # Later on: no CRM change for longer than the overlap window. Rather than wait, move the poll
    # windows' "first seen" times back by that much (exactly what the waiting would do): the next
    # cycle lists the window once more, as it settles; the one after is the steady state.
    from sqlalchemy import select

    from refsync.state.models import CrmState

    def wait_out_the_window() -> None:
        with ledger.transaction() as txn:
            for row in txn.session.scalars(select(CrmState).where(CrmState.key.startswith("poll_window:"))):
                row.value = {k: (datetime.fromisoformat(v) - timedelta(minutes=5)).isoformat()
                             if k.endswith("seen_at") and v else v for k, v in row.value.items()}

    wait_out_the_window()
    run_cycle(ledger, targets, settings)
    after_settling = calls()
    wait_out_the_window()
    run_cycle(ledger, targets, settings)
    after_quiet = calls()
    reference_after = reference_cpu_ms()  # here: the quiet cycle must follow the first one at once
    result: dict[str, object] = {"referrals": referrals, "ledger": ledger_url.split(":")[0], "faults": faults,
                                 "pushed": first.counts()["pushed"], "dead": first.counts()["dead"],
                                 "first_cycle_seconds": round(first_wall, 1),
                                 "cpu_ms_per_referral": round(first_cpu * 1000 / referrals, 2),
                                 "import_cpu_ms_per_referral": round(import_cpu * 1000 / referrals, 2),
                                 "import_push_poll_cpu_ms_per_referral":
                                     round((import_cpu + first_cpu) * 1000 / referrals, 2),
                                 "reference_cpu_ms": [reference_before, reference_after]}
    for crm, batch in (("salesforce", 200), ("hubspot", 100)):
        total = sum(after_push[crm].values()) - sum(before[crm].values())
        wrote = writes(after_push[crm]) - writes(before[crm])
        result[crm] = {"calls": total, "calls_made": made.get(crm, 0), "write_calls": wrote,
                       "write_lower_bound": math.ceil(referrals / batch),
                       "quiet_cycle_calls_in_overlap": _delta(after_push[crm], after_first[crm]),
                       "settling_cycle_calls": _delta(after_first[crm], after_settling[crm]),
                       "quiet_cycle_calls": _delta(after_settling[crm], after_quiet[crm])}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["peak_rss_mb_by_end_of_import"] = round(import_peak, 1)  # the rest of the peak is the sync's
    server.terminate()
    server.wait(timeout=10)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--referrals", type=int, nargs="+", default=[10_000])
    parser.add_argument("--ledger", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--faults", type=float, default=0.0, help="also run with this rate of transient faults")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one(int(args.one[0]), args.one[1].replace("TMP", tmp), Path(tmp), float(args.one[2]))))
        return
    for size in args.referrals:
        runs = [_run(size, args.ledger, rate) for rate in ([0.0, args.faults] if args.faults else [0.0])]
        if args.faults and all(isinstance(r, dict) for r in runs):
            clean, faulty = runs
            print(json.dumps({"referrals": size, "faults": args.faults, **{
                crm: {"calls_made": faulty[crm]["calls_made"], "fault_free_calls_made": clean[crm]["calls_made"],
                      "calls_ratio": round(faulty[crm]["calls_made"] / max(clean[crm]["calls_made"], 1), 2)}
                for crm in ("salesforce", "hubspot")},
                "pushed": faulty["pushed"], "fault_free_pushed": clean["pushed"],
                "first_cycle_seconds": faulty["first_cycle_seconds"],
                "fault_free_first_cycle_seconds": clean["first_cycle_seconds"],
                "wall_ratio": round(faulty["first_cycle_seconds"] / max(clean["first_cycle_seconds"], 0.1), 2)}))


def _run(size: int, ledger: str, faults: float) -> dict[str, object] | None:
    """One size in its own process; prints and returns its result."""
    url = "sqlite:///TMP/ledger.db"
    admin = None
    if ledger == "postgresql":
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"refsync_sbench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(PG).set(database=name).render_as_string(False)
    done = subprocess.run([sys.executable, __file__, "--one", str(size), url, str(faults)], capture_output=True,
                          text=True)
    print(done.stdout.strip() or done.stderr[-3000:])
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        return None


if __name__ == "__main__":
    main()
