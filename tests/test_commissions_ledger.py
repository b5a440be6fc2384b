"""The commission lifecycle over a real ledger (SQLite and PostgreSQL): won -> pending -> approved ->
paid; changes before payment adjust or void; changes after payment claw back; fraud holds wait for a
person. What finance and the program manager would see in `commissions list` and `referrals show`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from refsync.connector.attribution import Policy
from refsync.connector.compensate import compensate
from refsync.connector.imports import import_file
from refsync.connector.terms import parse_terms
from refsync.state.commissions import CommissionRefused, balances, commission_rows, decide, pay
from refsync.state.ledger import Ledger
from tests.conftest import FakeClock

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
TERMS = parse_terms("""
[holds]
min_hours_to_close = 24
[[program]]
effective_from = 2026-01-01
version = "p1"
currency = "USD"
percent = 10
hold_days = 30
[partner.acme]
domains = ["acme.example"]
""")


@pytest.fixture
def ledger_url(sqlite_url: str) -> str:
    """Most cases here run on SQLite; the payment cases also on PostgreSQL (``both``)."""
    return sqlite_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def both(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Ledger]:
    ledger = Ledger.open(str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")),
                         clock=clock)
    yield ledger
    ledger.close()


def referral(ledger: Ledger, tmp_path: Path, partner: str = "bluebird", email: str = "dana@northwind.example",
             submitted: str = "2026-10-01T09:00:00Z", name: str = "r") -> str:
    path = tmp_path / f"{name}.csv"
    path.write_text(f"{HEADER}\n{partner},{email},,,,,,{submitted},,{name}-{partner}-{email}\n")
    report = import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime.now(UTC))
    assert report.rejected == []
    [row] = [r for r in ledger.referrals(partner=partner) if r["external_id"] == f"{name}-{partner}-{email}"]
    return str(row["id"])


def set_deal(ledger: Ledger, referral_id: str, status: str, amount: str | None = "12000.00",
             currency: str | None = "USD", close: date | None = date(2026, 10, 30)) -> None:
    """What the poll records when the CRM deal moves (state/observe.py: a transition and the outcome)."""
    with ledger.transaction() as txn:
        row = txn.referral(referral_id)
        assert row is not None
        txn.add_transition(row.id, row.status, status, ledger.clock(), "crm_poll", crm="salesforce")
        row.status, row.status_changed_at = status, ledger.clock()
        row.outcome_amount = Decimal(amount) if amount is not None else None
        row.outcome_currency, row.outcome_close_date = currency, close


def rows(ledger: Ledger, referral_id: str) -> list[dict[str, object]]:
    return [r for r in commission_rows(ledger) if r["referral_id"] == referral_id]


def approved(ledger: Ledger, tmp_path: Path, **referral_kw: str) -> tuple[str, int]:
    """A referral whose deal is won, with its commission computed and approved: (referral, commission)."""
    rid = referral(ledger, tmp_path, **referral_kw)
    set_deal(ledger, rid, "won")
    compensate(ledger, TERMS)
    cid = int(str(rows(ledger, rid)[0]["id"]))
    decide(ledger, [cid], "approve", "Fiona", None)
    return rid, cid


def timeline(ledger: Ledger, referral_id: str) -> list[tuple[str, str, str | None]]:
    view = ledger.referral(referral_id)
    assert view is not None
    return [(e["kind"], e["actor"], e["policy_version"]) for e in view["timeline"] if "commission" in e["kind"]
            or "clawback" in e["kind"]]


def test_a_won_deal_gets_one_pending_commission_with_its_terms_version_and_hold(
    ledger: Ledger, clock: FakeClock, tmp_path: Path
) -> None:
    rid = referral(ledger, tmp_path)
    set_deal(ledger, rid, "won")
    counts = compensate(ledger, TERMS)
    again = compensate(ledger, TERMS)
    assert (counts.created, again.created, again.adjusted) == (1, 0, 0)
    [row] = rows(ledger, rid)
    assert row["status"] == "pending" and row["amount_minor"] == 120_000 and row["currency"] == "USD"
    assert row["terms_version"] == "p1" and row["payable_after"] == (clock.now + timedelta(days=30)).isoformat()
    assert timeline(ledger, rid) == [("commission_created", "refsync:compensation", "p1")]


def test_approve_then_pay_only_after_the_hold_and_never_twice(both: Ledger, clock: FakeClock,
                                                               tmp_path: Path) -> None:
    ledger = both
    rid = referral(ledger, tmp_path)
    set_deal(ledger, rid, "won")
    compensate(ledger, TERMS)
    [row] = rows(ledger, rid)
    cid = int(str(row["id"]))
    assert decide(ledger, [cid], "approve", "Fiona Finance", None).done == [cid]
    with pytest.raises(CommissionRefused, match="in its hold period until"):
        pay(ledger, [cid], "PAY-1", "Fiona Finance")
    assert balances(ledger)[0]["approved_in_hold"] == 120_000
    clock.advance(days=30)
    assert balances(ledger)[0]["approved_payable"] == 120_000
    payout = pay(ledger, [cid], "PAY-1", "Fiona Finance")
    assert payout["amount_minor"] == 120_000 and payout["partner"] == "bluebird"
    with pytest.raises(CommissionRefused, match="is paid; only approved"):
        pay(ledger, [cid], "PAY-2", "Fiona Finance")
    [paid] = rows(ledger, rid)
    assert paid["status"] == "paid" and paid["paid_reference"] == "PAY-1" and paid["decided_by"] == "Fiona Finance"
    assert [k for k, _, _ in timeline(ledger, rid)] == ["commission_created", "commission_approved", "commission_paid"]
    assert ("commission_paid", "user:Fiona Finance", "p1") in timeline(ledger, rid)


def test_an_amount_change_before_payment_adjusts_and_withdraws_the_approval(ledger: Ledger,
                                                                           tmp_path: Path) -> None:
    rid, cid = approved(ledger, tmp_path)
    set_deal(ledger, rid, "won", amount="15000.00")
    assert compensate(ledger, TERMS).adjusted == 1
    [row] = rows(ledger, rid)
    assert (row["amount_minor"], row["status"], row["deal_amount_minor"]) == (150_000, "pending", 1_500_000)
    assert "approval withdrawn" in str(row["reason"]) or timeline(ledger, rid)[-1][0] == "commission_adjusted"


def test_a_reopened_deal_voids_the_unpaid_commission_and_a_new_win_earns_again(ledger: Ledger,
                                                                              tmp_path: Path) -> None:
    rid = referral(ledger, tmp_path)
    set_deal(ledger, rid, "won")
    compensate(ledger, TERMS)
    set_deal(ledger, rid, "negotiation", amount=None, currency=None, close=None)
    assert compensate(ledger, TERMS).voided == 1
    assert [r["status"] for r in rows(ledger, rid)] == ["void"]
    assert rows(ledger, rid)[0]["reason"] == "deal is negotiation now"
    set_deal(ledger, rid, "won")
    assert compensate(ledger, TERMS).created == 1
    assert [r["status"] for r in rows(ledger, rid)] == ["void", "pending"]


def test_a_deal_lost_after_payment_is_clawed_back_from_the_next_payout(both: Ledger, clock: FakeClock,
                                                                      tmp_path: Path) -> None:
    ledger = both
    first, cid = approved(ledger, tmp_path, name="a")
    clock.advance(days=31)
    pay(ledger, [cid], "PAY-1", "Fiona")
    set_deal(ledger, first, "lost", amount=None, currency=None, close=None)
    assert compensate(ledger, TERMS).clawbacks == 1
    assert compensate(ledger, TERMS).clawbacks == 0
    claw = rows(ledger, first)[-1]
    assert (claw["kind"], claw["status"], claw["amount_minor"]) == ("clawback", "clawback", -120_000)
    assert balances(ledger)[0]["clawback_outstanding"] == -120_000
    second = referral(ledger, tmp_path, email="sam@contoso.example", submitted="2026-11-02T09:00:00Z", name="b")
    set_deal(ledger, second, "won", amount="20000.00")
    compensate(ledger, TERMS)
    cid2 = int(str(rows(ledger, second)[0]["id"]))
    decide(ledger, [cid2], "approve", "Fiona", None)
    clock.advance(days=31)
    payout = pay(ledger, [cid2], "PAY-2", "Fiona")
    assert payout["amount_minor"] == 200_000 - 120_000 and payout["clawback_ids"] == [claw["id"]]
    [balance] = balances(ledger)
    assert balance["clawback_outstanding"] == 0 and balance["clawback_settled"] == -120_000


def test_a_self_referral_is_held_with_its_reason_until_a_named_person_releases_it(
    ledger: Ledger, tmp_path: Path
) -> None:
    rid = referral(ledger, tmp_path, partner="acme", email="ceo@acme.example")
    set_deal(ledger, rid, "won")
    assert compensate(ledger, TERMS).held == 1
    [row] = rows(ledger, rid)
    assert row["status"] == "held" and row["holds"][0]["code"] == "self_referral"  # type: ignore[index]
    assert "acme.example" in row["holds"][0]["detail"]  # type: ignore[index]
    cid = int(str(row["id"]))
    refused = decide(ledger, [cid], "approve", "Fiona", None)
    assert refused.done == [] and "release its hold first" in refused.refused[0]
    assert decide(ledger, [cid], "release", "Paula PM", "subsidiary bought via partner, checked").done == [cid]
    assert decide(ledger, [cid], "approve", "Fiona", None).done == [cid]
    kinds = [k for k, _, _ in timeline(ledger, rid)]
    assert kinds == ["commission_held", "commission_hold_released", "commission_approved"]


def test_the_same_prospect_from_two_partners_and_a_fast_close_are_held(ledger: Ledger, clock: FakeClock,
                                                                       tmp_path: Path) -> None:
    first = referral(ledger, tmp_path, partner="bluebird", submitted="2026-10-01T09:00:00Z", name="a")
    referral(ledger, tmp_path, partner="crane", submitted="2026-10-10T09:00:00Z", name="b")
    fast = referral(ledger, tmp_path, partner="dove", email="lee@fabrikam.example",
                    submitted=(clock.now - timedelta(hours=3)).isoformat(), name="c")
    set_deal(ledger, first, "won")
    set_deal(ledger, fast, "won")
    compensate(ledger, TERMS)
    [dup] = rows(ledger, first)
    assert [h["code"] for h in dup["holds"]] == ["multiple_partners"]  # type: ignore[attr-defined,index]
    assert "crane" in dup["holds"][0]["detail"]  # type: ignore[index]
    [quick] = rows(ledger, fast)
    assert [h["code"] for h in quick["holds"]] == ["fast_close"]  # type: ignore[attr-defined,index]


def test_a_burst_of_referrals_far_above_the_partners_usual_rate_is_held(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "burst.csv"
    lines = [f"eagle,p{i}@co{i}.example,,,,,,2026-10-20T{9 + i // 6:02d}:{i % 6 * 10:02d}:00Z,,burst{i}"
             for i in range(12)]
    path.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime.now(UTC))
    last = ledger.referrals(partner="eagle")[-1]["id"]
    set_deal(ledger, last, "won")
    compensate(ledger, TERMS)
    [row] = rows(ledger, last)
    assert row["status"] == "held" and [h["code"] for h in row["holds"]] == ["referral_burst"]  # type: ignore[attr-defined]


def test_cap_per_period_counts_the_partners_other_commissions_in_the_ledger(ledger: Ledger,
                                                                           tmp_path: Path) -> None:
    capped = parse_terms('[program]\nversion = "cap"\ncurrency = "USD"\npercent = 10\nhold_days = 0\n'
                         "cap_per_period = 2000\nperiod = \"quarter\"\n")
    first = referral(ledger, tmp_path, name="a")
    second = referral(ledger, tmp_path, email="sam@contoso.example", name="b")
    set_deal(ledger, first, "won", amount="12000.00")
    compensate(ledger, capped)
    set_deal(ledger, second, "won", amount="12000.00")
    compensate(ledger, capped)
    assert rows(ledger, first)[0]["amount_minor"] == 120_000
    [row] = rows(ledger, second)
    assert row["amount_minor"] == 80_000 and row["notes"] == "capped_per_period"


def test_a_deal_below_the_minimum_earns_nothing_and_says_so_once(ledger: Ledger, tmp_path: Path) -> None:
    minimum = parse_terms('[program]\nversion = "min"\ncurrency = "USD"\npercent = 10\nhold_days = 0\n'
                          "min_deal = 50000\n")
    rid = referral(ledger, tmp_path)
    set_deal(ledger, rid, "won")
    assert compensate(ledger, minimum).not_due == 1
    assert compensate(ledger, minimum).not_due == 0
    assert rows(ledger, rid) == []
    view = ledger.referral(rid)
    assert view is not None
    assert [(e["kind"], e["reason_code"]) for e in view["timeline"] if e["kind"] == "commission_not_due"] == [
        ("commission_not_due", "below_min_deal")]
    set_deal(ledger, rid, "won", amount="60000.00")  # the deal grows past the minimum: now it earns
    assert compensate(ledger, minimum).created == 1
    assert [r["amount_minor"] for r in rows(ledger, rid)] == [600_000]


def test_a_won_deal_without_an_amount_is_noted_and_nothing_is_voided(ledger: Ledger, tmp_path: Path) -> None:
    rid = referral(ledger, tmp_path)
    set_deal(ledger, rid, "won", amount=None)
    assert compensate(ledger, TERMS).not_due == 1
    set_deal(ledger, rid, "won")
    compensate(ledger, TERMS)
    set_deal(ledger, rid, "won", amount=None)  # the amount blanked in the CRM: the commission stands
    assert compensate(ledger, TERMS).voided == 0
    assert [r["status"] for r in rows(ledger, rid)] == ["pending"]


def test_a_terms_change_after_submission_leaves_the_commission_on_the_version_of_its_submission(
    ledger: Ledger, tmp_path: Path
) -> None:
    versions = parse_terms('[[program]]\neffective_from = 2026-01-01\nversion = "old"\ncurrency = "USD"\n'
                           "percent = 10\nhold_days = 0\n"
                           '[[program]]\neffective_from = 2026-10-15\nversion = "new"\ncurrency = "USD"\n'
                           "percent = 20\nhold_days = 0\n")
    before = referral(ledger, tmp_path, submitted="2026-10-01T09:00:00Z", name="a")
    after = referral(ledger, tmp_path, email="sam@contoso.example", submitted="2026-10-20T09:00:00Z", name="b")
    set_deal(ledger, before, "won")
    set_deal(ledger, after, "won")
    compensate(ledger, versions)
    assert (rows(ledger, before)[0]["terms_version"], rows(ledger, before)[0]["amount_minor"]) == ("old", 120_000)
    assert (rows(ledger, after)[0]["terms_version"], rows(ledger, after)[0]["amount_minor"]) == ("new", 240_000)


@pytest.mark.postgres
def test_two_workers_paying_the_same_commission_at_once_pay_it_once(pg_url: str, tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 11, 1, 12, tzinfo=UTC))
    ledger = Ledger.open(pg_url, clock=clock)
    rid, cid = approved(ledger, tmp_path)
    clock.advance(days=31)
    replicas = [Ledger.open(pg_url, clock=clock) for _ in range(2)]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def pay_once(replica: Ledger, reference: str) -> None:
        start.wait()
        try:
            pay(replica, [cid], reference, "Fiona")
            outcomes.append("paid")
        except CommissionRefused:
            outcomes.append("refused")

    threads = [threading.Thread(target=pay_once, args=(r, f"PAY-{i}")) for i, r in enumerate(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["paid", "refused"]
    paid_events = [e for e in (ledger.referral(rid) or {})["timeline"] if e["kind"] == "commission_paid"]
    assert len(paid_events) == 1
    for replica in (*replicas, ledger):
        replica.close()


def test_the_partner_hears_of_approval_and_payment_by_signed_webhook(
    ledger: Ledger, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from refsync.connector.notify import DeliverySettings, deliver_all
    from refsync.state.notifications import set_partner_webhook
    from tests.receiver import receiving

    secret = "whsec-commission-0123456789"
    monkeypatch.setenv("T_BLUEBIRD_SECRET", secret)
    with receiving(secret) as receiver:
        rid = referral(ledger, tmp_path)
        assert set_partner_webhook(ledger, "bluebird", receiver.url, "env:T_BLUEBIRD_SECRET")
        set_deal(ledger, rid, "won")
        compensate(ledger, TERMS)
        cid = int(str(rows(ledger, rid)[0]["id"]))
        decide(ledger, [cid], "approve", "Fiona", None)
        clock.advance(days=31)
        pay(ledger, [cid], "WIRE-9", "Fiona")
        settings = DeliverySettings(statuses=frozenset({"won"}), timeout=3, max_attempts=3,
                                    allow_private_targets=True)
        counts = deliver_all(ledger, "w1", settings)
    notices = [n for n in receiver.accepted if str(n["event"]).startswith("commission.")]
    assert counts.dead == 0
    assert [(n["event"], n["commission"]["status"], n["commission"]["amount"]) for n in notices] == [
        ("commission.approved", "approved", "1200.00"), ("commission.paid", "paid", "1200.00")]
    assert notices[1]["commission"]["paid_reference"] == "WIRE-9" and notices[1]["partner"] == "bluebird"
    assert [k for k, _, _ in timeline(ledger, rid)] == ["commission_created", "commission_approved", "commission_paid"]


def test_the_daemons_poll_computes_commissions_on_the_replica_holding_the_poller_lease(
    ledger: Ledger, tmp_path: Path
) -> None:
    from refsync.connector.daemon import Daemon
    from refsync.connector.sync import CycleSettings

    rid = referral(ledger, tmp_path)
    set_deal(ledger, rid, "won")
    Daemon(ledger, {}, CycleSettings(terms=TERMS), push_interval=60, poll_interval=60).poll_job()
    assert [r["status"] for r in rows(ledger, rid)] == ["pending"]
    [run] = [r for r in ledger.runs() if r["job"] == "poll"]
    assert run["counts"]["commissions"]["created"] == 1


def test_a_referral_that_loses_the_credit_has_its_unpaid_commission_voided_with_that_reason(
    ledger: Ledger, tmp_path: Path
) -> None:
    rid = referral(ledger, tmp_path)
    set_deal(ledger, rid, "won")
    compensate(ledger, TERMS)
    with ledger.transaction() as txn:  # what attribution does when an earlier referral takes the credit
        row = txn.referral(rid)
        assert row is not None
        row.credited = False
    assert compensate(ledger, TERMS).voided == 1
    [entry] = rows(ledger, rid)
    assert (entry["status"], entry["reason"]) == ("void", "referral no longer holds the credit")


@pytest.mark.postgres
def test_a_payment_committing_while_compensation_adjusts_is_seen_never_overwritten(pg_url: str,
                                                                                   tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    clock = FakeClock(datetime(2026, 11, 1, 12, tzinfo=UTC))
    ledger = Ledger.open(pg_url, clock=clock)
    rid, cid = approved(ledger, tmp_path)
    set_deal(ledger, rid, "won", amount="15000.00")  # the deal grows while finance pays the old amount
    other = create_engine(pg_url)
    with other.connect() as payer:
        payer.execute(text("UPDATE commissions SET status = 'paid', paid_reference = 'WIRE-1' WHERE id = :id"),
                      {"id": cid})  # holds the row lock, like `commissions pay` inside its transaction
        worker = threading.Thread(target=compensate, args=(ledger, TERMS))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive()  # compensation waits for the payment...
        payer.commit()
    worker.join(10)
    other.dispose()
    entries = rows(ledger, rid)
    assert [(e["status"], e["amount_minor"]) for e in entries] == [("paid", 120_000), ("pending", 30_000)]
    ledger.close()  # ...and then tops up the difference instead of un-paying what was paid
