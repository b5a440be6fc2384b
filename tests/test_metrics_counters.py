"""`/metrics` of a running `refsync run` across rounds: the counters only grow, and an empty round
resets neither them nor the last-run gauges to 0."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from refsync.state.crmstate import did_something
from refsync.state.ledger import Ledger
from refsync.state.models import CrmLink
from tests.test_daemon import env_for, sandbox_info  # noqa: F401 - a fixture, used by name
from tests.test_http import referral, start_daemon
from tests.test_replicas import Replica, admin, crm_tables, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def counter(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def scrape_until(daemon: Replica, done: Any, seconds: float, what: str) -> Samples:
    """Scrape until ``done(samples)`` holds; those samples."""

    def scraped() -> Samples | None:
        samples = daemon.metrics()
        return samples if done(samples) else None

    return wait_for(scraped, seconds, what)  # type: ignore[no-any-return]


def last_push_run(ledger: Ledger) -> int:
    return max(r["id"] for r in ledger.runs(50) if r["job"] == "push" and r["finished_at"])


def test_counters_grow_across_rounds_and_an_empty_round_resets_nothing(
        sandbox_info: dict[str, Any], sqlite_url: str, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    admin(sandbox_info, "salesforce", "reset")
    admin(sandbox_info, "hubspot", "reset")
    daemon = Replica(*start_daemon(sqlite_url, tmp_path, extra=crm_tables(sandbox_info), env=env_for(sandbox_info)))
    ledger = Ledger.open(sqlite_url)
    try:
        assert counter(daemon.metrics(), "refsync_pushed_total", crm="salesforce") == 0  # present from the start
        assert daemon.intake([referral(n) for n in range(5)]) == 201
        wait_for(lambda: ledger.status()["ops"]["done"] == 10, 60, "the first pushes")
        # the last-run gauges are set when the push job's round ends, a moment after its last op
        # is done and counted: wait for them too (under load the scrape could fall in between)
        gauge = ("refsync_last_run_count", (("crm", "salesforce"), ("job", "push"), ("kind", "pushed")))
        first = scrape_until(daemon, lambda m: counter(m, "refsync_pushed_total", crm="hubspot") == 5
                             and gauge in m, 10, "the counters and the push round's gauges")
        assert counter(first, "refsync_pushed_total", crm="salesforce") == 5
        assert counter(first, "refsync_api_calls_total", crm="salesforce", kind="push") > 0
        assert counter(first, "refsync_dead_ops_total", crm="salesforce") == 0
        assert counter(first, "refsync_last_run_count", job="push", crm="salesforce", kind="pushed") == 5

        busy = last_push_run(ledger)
        wait_for(lambda: last_push_run(ledger) > busy + 1, 20, "an empty push round")
        empty = next(r for r in ledger.runs(50) if r["id"] == last_push_run(ledger))
        assert empty["counts"]["per_crm"]["salesforce"]["pushed"] == 0  # the round itself did nothing
        second = daemon.metrics()
        assert counter(second, "refsync_pushed_total", crm="salesforce") == 5
        assert counter(second, "refsync_last_run_count", job="push", crm="salesforce", kind="pushed") == 5
        assert counter(second, "refsync_api_calls_total", crm="salesforce", kind="push") >= \
            counter(first, "refsync_api_calls_total", crm="salesforce", kind="push")

        # A rep blanks the partner field: the poll restores it, and counts the restore.
        with ledger.transaction() as txn:
            lead = txn.session.query(CrmLink).filter_by(crm="salesforce", object="Lead").first()
            assert lead is not None
        admin(sandbox_info, "salesforce", "set_field", object_name="Lead", record_id=lead.record_id,
              field="Referral_Partner__c", value=None)
        assert daemon.intake([referral(n) for n in range(5, 8)]) == 201
        third = scrape_until(daemon, lambda m: counter(m, "refsync_pushed_total", crm="hubspot") >= 8
                             and counter(m, "refsync_restores_total", crm="salesforce") >= 1, 30,
                             "the new pushes and the restore")
        assert counter(third, "refsync_restores_total", crm="salesforce") == 1
        assert counter(third, "refsync_poll_changes_total", crm="salesforce") >= 1
        assert counter(third, "refsync_api_calls_total", crm="salesforce", kind="poll") > 0
        assert counter(third, "refsync_leader") == 1  # the only replica leads
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=30) == 0
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        ledger.close()


def test_a_round_whose_only_count_is_its_api_calls_is_empty() -> None:
    assert not did_something({"changes": 0, "transitions": 0, "repairs": 0, "calls": 4})
    assert did_something({"changes": 2, "transitions": 0, "repairs": 0, "calls": 4})
    assert not did_something({"pushed": 0, "failed": 0, "dead": 0, "calls": 0})
