"""`refsync report`: what a partner manager reads per partner or channel over a date range."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from connector.attribution import Policy
from connector.cli import cli
from connector.imports import import_file
from state.ledger import Ledger
from state.models import Referral
from state.observe import observing

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
        ob.session.get(Referral, ids["4"]).pipeline_amount = 500  # type: ignore[union-attr]


def _run(ledger_url: str, tmp_path: Path, *args: str) -> str:
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_report_per_partner_counts_funnel_revenue_and_days_to_close(
        ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    _ledger_with_outcomes(ledger, tmp_path)
    lines = json.loads(_run(ledger_url, tmp_path, "--from", "2026-08-01", "--to", "2026-10-01", "--json"))
    acme, bluebird, total = lines
    assert acme["partner"] == "acme" and acme["referrals"] == 3 and acme["won"] == 2 and acme["lost"] == 1
    assert acme["qualified"] == 3 and acme["conversion_rate"] == round(2 / 3, 4)
    assert acme["won_revenue"] == 4000 and acme["median_days_to_close"] == 20
    assert bluebird["referrals"] == 1 and bluebird["open_pipeline_value"] == 500  # the 2025 one is out of range
    assert total["partner"] == "(total)" and total["referrals"] == 4


def test_report_by_channel_as_csv(ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    _ledger_with_outcomes(ledger, tmp_path)
    rows = list(csv.DictReader(io.StringIO(_run(ledger_url, tmp_path, "--by", "channel", "--format", "csv"))))
    first = rows[0]
    assert (first["source"], first["medium"], first["campaign"], first["referrals"]) == ("partner", "referral",
                                                                                          "q4", "4")
    assert rows[-1]["source"] == "(total)" and rows[-1]["referrals"] == "5"
