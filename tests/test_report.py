"""`refsync report`: what a partner manager reads per partner or channel over a date range."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from refsync.connector.attribution import Policy
from refsync.connector.cli import cli
from refsync.connector.imports import import_file
from refsync.state.ledger import Ledger
from refsync.state.models import Referral
from refsync.state.observe import observing

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
