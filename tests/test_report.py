"""`refsync report`: what a partner manager reads per partner or channel over a date range."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.cli import cli
from refsync.connector.imports import import_file
from refsync.connector.sync import CycleSettings, run_cycle
from refsync.state.ledger import Ledger
from refsync.state.models import Referral
from refsync.state.observe import observing
from tests.conftest import targets_for

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"


def _ledger_with_outcomes(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\n" + "\n".join([
        "acme,a@a.example,,,partner,referral,q4,2026-09-01T00:00:00Z,,1",
        "acme,b@b.example,,,partner,referral,q4,2026-09-02T00:00:00Z,,2",
        "acme,c@c.example,,,event,booth,summit,2026-09-03T00:00:00Z,,3",
        "bluebird,d@d.example,,,partner,referral,q4,2026-09-04T00:00:00Z,,4",
        "bluebird,e@e.example,,,partner,referral,q4,2025-01-01T00:00:00Z,,old",
    ]) + "\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime(2026, 10, 1, tzinfo=UTC))
    ids = {r["external_id"]: r["id"] for r in ledger.referrals()}
    with observing(ledger, "salesforce") as ob:
        for ext, path_, amount in (("1", ["qualified", "won"], 1000), ("2", ["qualified", "lost"], None),
                                   ("3", ["qualified", "won"], 3000), ("4", ["proposal"], None)):
            referral = ob.referral(ids[ext])
            assert referral is not None
            for step, status in enumerate(path_):
                ob.transition(referral, status, referral.submitted_at + timedelta(days=10 * (step + 1)), None)
            if amount:
                ob.outcome(referral, amount, "USD", None, None)
        open_deal = ob.session.get(Referral, ids["4"])
        assert open_deal is not None
        open_deal.pipeline_amount, open_deal.pipeline_currency = 500, "USD"


def _run(ledger_url: str, tmp_path: Path, *args: str) -> str:
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_report_per_partner_counts_funnel_revenue_and_days_to_close(
        ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    _ledger_with_outcomes(ledger, tmp_path)
    report = json.loads(_run(ledger_url, tmp_path, "--from", "2026-08-01", "--to", "2026-10-01", "--json"))
    acme, bluebird, total = report["lines"]
    assert acme["partner"] == "acme" and acme["referrals"] == 3 and acme["won"] == 2 and acme["lost"] == 1
    assert acme["qualified"] == 3 and acme["conversion_rate"] == round(2 / 3, 4)
    assert acme["won_revenue"] == {"USD": 4000} and acme["median_days_to_close"] == 20
    assert bluebird["referrals"] == 1 and bluebird["open_pipeline_value"] == {"USD": 500}
    assert total["partner"] == "(total)" and total["referrals"] == 4
    assert report["excluded"] == {"other_partner": 0, "outside_period": 1, "merged": 0}  # the 2025 one


def test_report_by_channel_as_csv(ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    _ledger_with_outcomes(ledger, tmp_path)
    rows = list(csv.DictReader(io.StringIO(_run(ledger_url, tmp_path, "--by", "channel", "--format", "csv"))))
    first = rows[0]
    assert (first["source"], first["medium"], first["campaign"], first["referrals"]) == ("partner", "referral",
                                                                                          "q4", "4")
    assert rows[-1]["source"] == "(total)" and rows[-1]["referrals"] == "5"


HOSTILE = ['=HYPERLINK("http://x")', "+cmd|' /C calc'!A0", "@SUM(1)", "-2+3", "\tq4", "\r=1+1"]


def test_report_csv_neutralises_formula_cells_and_keeps_numbers(
        ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    """Campaigns a partner chose arrive in a spreadsheet as text, never as formulas (OWASP CSV
    injection); the numbers beside them stay numbers."""
    path = tmp_path / "hostile.csv"
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(HEADER.split(","))
    for i, campaign in enumerate(HOSTILE):
        writer.writerow(["acme", f"p{i}@p.example", "", "", "partner", "referral", campaign if i < 4 else f"c{i}",
                         f"2026-09-0{i + 1}T00:00:00Z", "", f"h{i}"])
    path.write_text(rows.getvalue())
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime(2026, 10, 1, tzinfo=UTC))
    # The import trims whitespace, so tab- and CR-led values are put in as an older ledger may hold them.
    with ledger.transaction() as txn:
        for referral in txn.session.scalars(select(Referral).where(Referral.external_id.in_(["h4", "h5"]))):
            referral.campaign = HOSTILE[int(referral.external_id[1:])]  # type: ignore[index]
    assert {r["campaign"] for r in ledger.referrals()} == set(HOSTILE)  # stored as given

    out = _run(ledger_url, tmp_path, "--by", "campaign", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(out, newline="")))
    assert len(parsed) == len(HOSTILE) + 1  # one line per campaign and the total: the CSV still parses
    assert {line["campaign"] for line in parsed[:-1]} == {"'" + c for c in HOSTILE}
    for line in parsed[:-1]:
        assert line["referrals"] == "1" and line["conversion_rate"] == "0.0"
    assert parsed[-1]["campaign"] == "(total)" and parsed[-1]["referrals"] == str(len(HOSTILE))


def test_spreadsheet_safe_leaves_numbers_and_plain_text_alone() -> None:
    from refsync.connector.report import spreadsheet_safe

    assert spreadsheet_safe(-12.5) == -12.5 and spreadsheet_safe(-3) == -3 and spreadsheet_safe(None) is None
    assert spreadsheet_safe("q4-summit") == "q4-summit" and spreadsheet_safe("") == ""
    assert spreadsheet_safe("-2+3") == "'-2+3" and spreadsheet_safe("@x") == "'@x"


def _outcomes(ledger: Ledger, tmp_path: Path, rows: list[tuple[str, str, str, int | None, str | None]]) -> None:
    """Referrals (external id, partner, status, amount, currency): won ones get an outcome, open
    ones a deal amount as the poll reads it."""
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "\n" + "\n".join(
        f"{partner},{ext}@x.example,,,partner,referral,q4,2026-09-0{i + 1}T00:00:00Z,,{ext}"
        for i, (ext, partner, *_rest) in enumerate(rows)) + "\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime(2026, 10, 1, tzinfo=UTC))
    ids = {r["external_id"]: r["id"] for r in ledger.referrals()}
    with observing(ledger, "hubspot") as ob:
        for ext, _partner, status, amount, currency in rows:
            referral = ob.referral(ids[ext])
            assert referral is not None
            ob.transition(referral, status, referral.submitted_at + timedelta(days=5), None)
            if status == "won":
                ob.outcome(referral, amount, currency, None, None)
            else:
                ob.pipeline(referral, amount, currency)


def test_amounts_in_different_currencies_are_never_added_together(
        ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    _outcomes(ledger, tmp_path, [("w1", "acme", "won", 1000, "USD"), ("w2", "acme", "won", 900, "EUR"),
                                 ("w3", "acme", "won", 100, "USD"), ("o1", "acme", "proposal", 5000, "GBP"),
                                 ("o2", "acme", "qualified", 70, None)])
    report = json.loads(_run(ledger_url, tmp_path, "--json"))
    acme, total = report["lines"]
    assert acme["won_revenue"] == {"EUR": 900, "USD": 1100}
    assert acme["open_pipeline_value"] == {"GBP": 5000, "unknown": 70}
    assert total["won_revenue"] == acme["won_revenue"] and report["currencies"] == ["EUR", "GBP", "USD", "unknown"]
    [line, _total] = list(csv.DictReader(io.StringIO(_run(ledger_url, tmp_path, "--format", "csv"))))
    assert (line["won_revenue_USD"], line["won_revenue_EUR"], line["won_revenue_GBP"]) == ("1100.0", "900.0", "0.0")
    assert (line["open_pipeline_value_GBP"], line["open_pipeline_value_unknown"]) == ("5000.0", "70.0")
    assert "won_revenue" not in line
    table = _run(ledger_url, tmp_path)
    assert "1,100.00 USD" in table and "900.00 EUR" in table and "2,000" not in table


def test_report_counts_add_up_to_referrals_list_with_what_was_left_out(
        ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    _ledger_with_outcomes(ledger, tmp_path)
    with ledger.transaction() as txn:  # one acme referral was merged into another (its credit moved there)
        merged, survivor = txn.session.scalars(select(Referral).where(Referral.external_id.in_(["2", "1"]))
                                               .order_by(Referral.external_id.desc())).all()
        merged.merged_into = survivor.id
    _run(ledger_url, tmp_path)  # writes the config
    listed = CliRunner().invoke(cli, ["--config", str(tmp_path / "refsync.toml"), "referrals", "list", "--json"])
    for args, excluded in (
        ([], {"other_partner": 0, "outside_period": 0, "merged": 1}),
        (["--from", "2026-08-01", "--to", "2026-09-04"], {"other_partner": 0, "outside_period": 2, "merged": 1}),
        (["--partner", "acme", "--from", "2026-08-01"], {"other_partner": 2, "outside_period": 0, "merged": 1}),
    ):
        report = json.loads(_run(ledger_url, tmp_path, "--json", *args))
        assert report["excluded"] == excluded, args
        assert report["lines"][-1]["referrals"] + sum(excluded.values()) == len(json.loads(listed.stdout)) == 5
        assert report["ledger_referrals"] == 5
    table = _run(ledger_url, tmp_path, "--from", "2026-08-01", "--to", "2026-09-04")
    assert ("left out: 3 referrals of the ledger (2 submitted outside the period; 1 merged into another referral "
            "(counted there))") in table
    out = CliRunner().invoke(cli, ["--config", str(tmp_path / "refsync.toml"), "report", "--format", "csv"])
    assert out.stdout.splitlines()[0].startswith("partner,") and "left out: 1 referrals" in out.stderr


def test_open_pipeline_value_comes_from_what_the_poll_reads(
        ledger: Ledger, ledger_url: str, sandbox: RunningSandbox, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No reconcile runs: the deal's amount and currency the poll read are the report's figures."""
    crms = targets_for(sandbox, tmp_path, monkeypatch)
    path = tmp_path / "p.csv"
    submitted = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(HEADER + f"\nacme,ana@adatum.example,Adatum,Ana,partner,referral,q4,{submitted},,p1\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime.now(UTC))
    settings = CycleSettings(batch_size=200, lease_seconds=60, max_attempts=5)
    assert run_cycle(ledger, crms, settings).errors == []
    [referral] = ledger.referrals()
    [contact] = [lk["record_id"] for lk in referral["links"] if lk["object"] == "contacts"]
    deal = sandbox.hubspot.convert_lead(contact)["deal"]  # sales opens a deal for the referred contact
    assert run_cycle(ledger, crms, settings).errors == []
    assert any(lk["record_id"] == deal for lk in ledger.referrals()[0]["links"])
    sandbox.hubspot.set_field("deals", deal, "deal_currency_code", "EUR")
    sandbox.hubspot.move_stage(deal, "Qualified To Buy", amount=12500)
    assert run_cycle(ledger, crms, settings).errors == []
    [acme, _total] = json.loads(_run(ledger_url, tmp_path, "--json"))["lines"]
    assert acme["open_pipeline_value"] == {"EUR": 12500}
    sandbox.hubspot.move_stage(deal, "Contract Sent", amount=14000)
    assert run_cycle(ledger, crms, settings).errors == []
    [acme, _total] = json.loads(_run(ledger_url, tmp_path, "--json"))["lines"]
    assert acme["open_pipeline_value"] == {"EUR": 14000}
    sandbox.hubspot.delete_record("deals", deal)  # a deleted deal is no pipeline any more
    crms["hubspot"].adapter.deletion_check_every = timedelta(0)  # type: ignore[attr-defined] # list archived now
    assert run_cycle(ledger, crms, settings).errors == []
    [acme, _total] = json.loads(_run(ledger_url, tmp_path, "--json"))["lines"]
    assert acme["open_pipeline_value"] == {}
