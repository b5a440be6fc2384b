"""Compensation end to end, as finance would run it: the real CLI, the real adapters over HTTP against the
sandbox CRMs, a real ledger. A deal won in Salesforce comes back through `sync --once` as a
pending commission; a self-referral is held; approving, paying, the payouts view, and a clawback when
the paid deal reopens follow, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.cli import cli
from tests.conftest import FAST_RETRY

ROOT = Path(__file__).resolve().parents[1]
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
TERMS = """
[[program]]
effective_from = 2026-01-01
version = "program-2026"
currency = "USD"
percent = 10
flat = 250
hold_days = 0

[partner.acme]
domains = ["acme.example"]
"""


@pytest.fixture
def ledger_url(request: pytest.FixtureRequest) -> str:
    """SQLite unless a test asks for PostgreSQL too (the whole flow runs on both)."""
    kind = getattr(request, "param", "sqlite")
    return str(request.getfixturevalue("sqlite_url" if kind == "sqlite" else "pg_url"))


@pytest.fixture
def config(sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_url: str) -> Path:
    sandbox.salesforce.reset()
    sandbox.hubspot.reset()
    monkeypatch.setenv("T_SF_SESSION", sandbox.salesforce.session_id)
    (tmp_path / "terms.toml").write_text(TERMS)
    path = tmp_path / "refsync.toml"
    path.write_text(
        f'[ledger]\nurl = "{ledger_url}"\n[logging]\nformat = "json"\n'
        f'[crm.salesforce]\ninstance_url = "{sandbox.salesforce.base_url}"\n'
        f'ca_bundle = "{sandbox.salesforce.ca_path}"\n'
        f'session_id = "env:T_SF_SESSION"\nmapping = "{ROOT}/mappings/salesforce.toml"\n'
        f'[compensation]\nterms = "terms.toml"\n{FAST_RETRY}')
    assert refsync(path, "init")[0] == 0
    return path


def refsync(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def win(sandbox: RunningSandbox, config: Path, referral_id: str, amount: int) -> str:
    view = json.loads(refsync(config, "referrals", "show", referral_id, "--json")[1])
    [lead] = [lk["record_id"] for lk in view["links"] if lk["object"] == "Lead"]
    converted = sandbox.salesforce.convert_lead(lead)
    assert refsync(config, "sync", "--once")[0] == 0  # the opportunity gets the attribution
    sandbox.salesforce.move_stage(converted["opportunity"], "Closed Won", amount=amount, close_date="2026-11-20")
    return str(converted["opportunity"])


@pytest.mark.parametrize("ledger_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_a_won_deal_becomes_a_pending_commission_through_sync_once_is_paid_and_clawed_back_on_reopen(
    sandbox: RunningSandbox, config: Path, tmp_path: Path
) -> None:
    rows = tmp_path / "r.csv"
    rows.write_text(f"{HEADER}\nbluebird,dana@northwind.example,Northwind,Dana,,,,2026-10-01T09:00:00Z,,e1\n"
                    "acme,ceo@acme.example,Acme,Ceo,,,,2026-10-02T09:00:00Z,,e2\n")
    assert refsync(config, "import", str(rows))[0] == 0
    assert refsync(config, "sync", "--once")[0] == 0
    referrals = {r["partner"]: r["id"] for r in json.loads(refsync(config, "referrals", "list", "--json")[1])}
    opportunity = win(sandbox, config, referrals["bluebird"], 125_000)
    win(sandbox, config, referrals["acme"], 40_000)
    code, out, _ = refsync(config, "sync", "--once", "--json")  # bluebird's win came in with acme's conversion
    assert code == 0 and json.loads(out)["commissions"] == {
        "created": 0, "held": 1, "adjusted": 0, "voided": 0, "clawbacks": 0, "not_due": 0, "no_terms": 0}

    code, out, _ = refsync(config, "commissions", "list", "--json")
    listed = {c["partner"]: c for c in json.loads(out)}
    assert code == 0
    fair, own = listed["bluebird"], listed["acme"]
    assert {k: fair[k] for k in ("referral_id", "amount", "currency", "status", "terms_version")} == {
        "referral_id": referrals["bluebird"], "amount": "12750.00", "currency": "USD", "status": "pending",
        "terms_version": "program-2026"}  # 10 % of 125,000.00 plus 250.00 flat
    assert set(fair) >= {"id", "referral_id", "partner", "amount", "currency", "status", "terms_version",
                         "payable_after", "reason"}
    assert own["status"] == "held" and own["reason"].startswith("self_referral: the prospect's domain acme.example")
    assert refsync(config, "sync", "--once")[0] == 0  # a second cycle changes nothing
    assert len(json.loads(refsync(config, "commissions", "list", "--json")[1])) == 2

    code, _, err = refsync(config, "commissions", "approve", str(own["id"]), str(fair["id"]), "--by", "Fiona")
    assert code == 1 and "release its hold first" in err
    code, out, _ = refsync(config, "commissions", "pay", str(fair["id"]), "--reference", "WIRE-7", "--by", "Fiona",
                           "--json")
    assert code == 0 and json.loads(out)["amount"] == "12750.00"
    code, _, err = refsync(config, "commissions", "pay", str(fair["id"]), "--reference", "WIRE-8", "--by", "Fiona")
    assert code == 1 and "nothing was paid" in err
    assert refsync(config, "commissions", "reject", str(own["id"]), "--by", "Paula", "--reason", "own company")[0] == 0

    payouts = json.loads(refsync(config, "payouts", "--json")[1])
    assert {(p["partner"], p["paid"], p["held"], p["owed"]) for p in payouts} == {
        ("bluebird", "12750.00", "0.00", "0.00"), ("acme", "0.00", "0.00", "0.00")}
    sandbox.salesforce.move_stage(opportunity, "Negotiation/Review")  # the paid deal reopens in Salesforce
    assert refsync(config, "sync", "--once")[0] == 0
    [claw] = json.loads(refsync(config, "commissions", "list", "--status", "clawback", "--json")[1])
    assert (claw["partner"], claw["amount"], claw["reason"]) == (
        "bluebird", "-12750.00", "deal is negotiation now, after payment")
    [owing] = json.loads(refsync(config, "payouts", "--partner", "bluebird", "--json")[1])
    assert (owing["clawback_outstanding"], owing["owed"]) == ("-12750.00", "-12750.00")
    timeline = json.loads(refsync(config, "referrals", "show", referrals["bluebird"], "--json")[1])["timeline"]
    paid = [e for e in timeline if e["kind"] == "commission_paid"]
    assert [(e["actor"], e["policy_version"]) for e in paid] == [("user:Fiona", "program-2026")]
    assert [c["status"] for c in json.loads(refsync(config, "commissions", "list", "--state", "rejected",
                                                    "--json")[1])] == ["rejected"]
    report = {(r["partner"], r["period"]): r for r in json.loads(refsync(config, "commissions", "report",
                                                                         "--json")[1])}
    assert report[("bluebird", "2026-11")]["paid"] == "12750.00" and report[("acme", "2026-11")]["earned"] == "0.00"
    code, out, _ = refsync(config, "commissions", "report", "--period", "quarter", "--format", "csv")
    header = "partner,period,currency,entries,earned,pending,approved,paid,clawed_back"
    assert code == 0 and out.splitlines()[0] == header
    assert "bluebird,2026-Q4,USD,2,12750.00,0.00,0.00,12750.00,-12750.00" in out.splitlines()  # paid, clawed back
    # `refsync report` carries the same compensation reports, with its --formats
    assert refsync(config, "report", "--commissions", "--period", "quarter", "--format", "csv")[1] == out
    forecast = refsync(config, "commissions", "report", "--forecast", "--json")
    assert forecast[0] == 0 and refsync(config, "report", "--forecast", "--json")[1] == forecast[1]


def test_terms_check_reports_every_problem_with_its_line_and_exit_2(config: Path, tmp_path: Path) -> None:
    code, out, _ = refsync(config, "terms", "check")
    assert code == 0 and "1 versions" in out and "program-2026" in out
    (tmp_path / "terms.toml").write_text('[program]\ncurrency = "USD"\npercent = 101\nhold_days = -1\n')
    code, _, err = refsync(config, "terms", "check")
    assert code == 2
    assert "terms.toml:3: program.percent: Input should be less than or equal to 100" in err
    assert "terms.toml:4: program.hold_days: Input should be greater than or equal to 0" in err
    code, _, err = refsync(config, "sync", "--once")  # a broken terms file stops the cycle before it starts
    assert code == 2 and "program.percent" in err


def test_the_shipped_example_terms_pass_terms_check(config: Path, tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples" / "terms.toml", tmp_path / "terms.toml")
    code, out, _ = refsync(config, "terms", "check", "--json")
    assert code == 0 and [v["version"] for v in json.loads(out)["versions"]][2] == "acme-2026"
