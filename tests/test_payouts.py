"""Payout batches as finance runs them: create for a month, export for the payment tool, mark paid;
clawbacks netted into the next batch; a batch whose commission changed is refused, never half paid;
two processes creating payouts at once on PostgreSQL never batch one commission twice."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from refsync.connector.cli import cli
from refsync.connector.compensate import compensate
from refsync.state.commissions import CommissionRefused, commission_rows, decide
from refsync.state.ledger import Ledger
from refsync.state.payouts import cancel, create_payouts, mark_paid, payout
from tests.conftest import FakeClock
from tests.test_commissions_ledger import TERMS, referral, set_deal


@pytest.fixture
def ledger_url(sqlite_url: str) -> str:
    """SQLite here; PostgreSQL runs the two-process case (and tests/test_commissions_ledger.py the payments)."""
    return sqlite_url


def approved(ledger: Ledger, tmp_path: Path, name: str, partner: str = "bluebird", amount: str = "12000.00") -> int:
    rid = referral(ledger, tmp_path, partner=partner, email=f"{name}@{name}.example", name=name)
    set_deal(ledger, rid, "won", amount=amount)
    compensate(ledger, TERMS)
    [row] = [r for r in commission_rows(ledger) if r["referral_id"] == rid]
    assert decide(ledger, [int(row["id"])], "approve", "Fiona", None).done
    return int(row["id"])


def test_a_month_of_approved_commissions_becomes_one_payout_per_partner_and_is_paid_once(
    ledger: Ledger, clock: FakeClock, tmp_path: Path
) -> None:
    a1, a2 = approved(ledger, tmp_path, "a1"), approved(ledger, tmp_path, "a2", amount="5000.00")
    c1 = approved(ledger, tmp_path, "c1", partner="crane")
    assert create_payouts(ledger, "2026-11", "Fiona") == []  # all still in their 30-day hold
    clock.advance(days=31)
    made = {p["partner"]: p for p in create_payouts(ledger, "2026-12", "Fiona")}
    assert (made["bluebird"]["amount_minor"], made["bluebird"]["commission_ids"]) == (170_000, [a1, a2])
    assert made["crane"]["commission_ids"] == [c1] and made["crane"]["status"] == "open"
    assert create_payouts(ledger, "2026-12", "Fiona") == []  # nothing is batched twice
    paid = mark_paid(ledger, made["bluebird"]["id"], "WIRE-1", "Fiona")
    assert paid["status"] == "paid" and paid["reference"] == "WIRE-1"
    with pytest.raises(CommissionRefused, match="is paid"):
        mark_paid(ledger, made["bluebird"]["id"], "WIRE-2", "Fiona")
    statuses = {r["id"]: (r["status"], r["paid_reference"]) for r in commission_rows(ledger)}
    assert statuses[a1] == statuses[a2] == ("paid", "WIRE-1") and statuses[c1] == ("approved", None)


def test_a_clawback_is_netted_in_the_partners_next_payout(ledger: Ledger, clock: FakeClock, tmp_path: Path) -> None:
    first = approved(ledger, tmp_path, "a1")
    clock.advance(days=31)
    [batch] = create_payouts(ledger, "2026-12", "Fiona")
    mark_paid(ledger, batch["id"], "WIRE-1", "Fiona")
    lost = next(r["referral_id"] for r in commission_rows(ledger) if r["id"] == first)
    set_deal(ledger, str(lost), "lost", amount=None, currency=None, close=None)
    compensate(ledger, TERMS)
    second = approved(ledger, tmp_path, "a2", amount="20000.00")
    clock.advance(days=31)
    [nxt] = create_payouts(ledger, "2027-01", "Fiona")
    assert nxt["amount_minor"] == 200_000 - 120_000 and nxt["commission_ids"] == [second]
    assert len(nxt["clawback_ids"]) == 1
    lines = payout(ledger, nxt["id"])["lines"]
    assert sorted(line["amount_minor"] for line in lines) == [-120_000, 200_000]


def test_a_batched_commission_that_changes_refuses_the_payout_until_it_is_cancelled_and_remade(
    ledger: Ledger, clock: FakeClock, tmp_path: Path
) -> None:
    keep, gone = approved(ledger, tmp_path, "a1"), approved(ledger, tmp_path, "a2")
    clock.advance(days=31)
    [batch] = create_payouts(ledger, "2026-12", "Fiona")
    reopened = next(r["referral_id"] for r in commission_rows(ledger) if r["id"] == gone)
    set_deal(ledger, str(reopened), "negotiation", amount=None, currency=None, close=None)
    compensate(ledger, TERMS)
    with pytest.raises(CommissionRefused, match=f"commission {gone} is void"):
        mark_paid(ledger, batch["id"], "WIRE-1", "Fiona")
    assert {r["status"] for r in commission_rows(ledger)} == {"approved", "void"}  # nothing half paid
    cancel(ledger, batch["id"], "Fiona")
    [again] = create_payouts(ledger, "2026-12", "Fiona")
    assert again["commission_ids"] == [keep] and again["amount_minor"] == 120_000


def test_export_csv_and_json_carry_every_line_for_the_payment_tool(ledger_url: str, ledger: Ledger, clock: FakeClock,
                                                                   tmp_path: Path) -> None:
    first = approved(ledger, tmp_path, "a1")
    clock.advance(days=31)
    [batch] = create_payouts(ledger, "2026-12", "Fiona")
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n[logging]\nformat = "json"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "payouts", "export", str(batch["id"])])
    assert result.exit_code == 0 and result.stdout_bytes.endswith(b"\r\n")  # RFC 4180 line ends
    [line] = list(csv.DictReader(io.StringIO(result.stdout)))
    assert (line["partner"], line["payout_amount"], line["amount"], line["commission_id"], line["kind"]) == (
        "bluebird", "1200.00", "1200.00", str(first), "commission")
    shown = json.loads(CliRunner().invoke(cli, ["--config", str(config), "payouts", "export", str(batch["id"]),
                                                "--format", "json"]).stdout)
    assert shown["amount"] == "1200.00" and shown["lines"][0]["deal_amount"] == "12000.00"
    missing = CliRunner().invoke(cli, ["--config", str(config), "payouts", "mark-paid", "999", "--reference", "X",
                                       "--by", "F"])
    assert missing.exit_code == 1 and "no payout 999" in missing.stderr
    bad = CliRunner().invoke(cli, ["--config", str(config), "payouts", "create", "--period", "2026-13", "--by", "F"])
    assert bad.exit_code == 2 and "YYYY-MM" in bad.stderr


@pytest.mark.postgres
def test_two_processes_creating_payouts_at_once_never_batch_a_commission_twice(pg_url: str, tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 10, 15, 12, tzinfo=UTC))  # won mid-October: payable in November
    ledger = Ledger.open(pg_url, clock=clock)
    for i in range(8):
        set_deal(ledger, referral(ledger, tmp_path, partner=f"partner{i % 4}", email=f"p{i}@p{i}.example",
                                  name=f"p{i}"), "won")
    compensate(ledger, TERMS)
    ids = [int(r["id"]) for r in commission_rows(ledger)]
    assert len(ids) == 8 and decide(ledger, ids, "approve", "Fiona", None).done == ids
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{pg_url}"\n[logging]\nformat = "json"\n')
    command = [sys.executable, "-m", "refsync", "--config", str(config), "payouts", "create", "--period", "2026-11",
               "--json"]
    procs = [subprocess.Popen([*command, "--by", f"replica{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ}) for i in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    made = [b for out, _ in outputs for b in json.loads(out)]
    batched = [cid for b in made for cid in b["commission_ids"]]
    assert sorted(batched) == sorted(ids)  # every commission once, in one payout or the other
    assert {r["payout_id"] for r in commission_rows(ledger)} == {b["id"] for b in made}
    ledger.close()
