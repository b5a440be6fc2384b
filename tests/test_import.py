"""`refsync import` against a real ledger (SQLite and PostgreSQL): valid rows land, bad rows are
reported with line and column, re-import changes nothing, first-to-refer decides credit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refsync.connector.attribution import Policy
from refsync.connector.imports import ImportReport, import_file
from refsync.state.ledger import Ledger

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
FIRST_FLAG = Policy("first_touch", "flag", 365, "test-v1")


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def run(ledger: Ledger, path: Path, policy: Policy = FIRST_FLAG) -> ImportReport:
    return import_file(ledger, path, policy, NOW)


def problems(report: ImportReport) -> list[tuple[int, str | None]]:
    return [(p.line, p.column) for p in report.rejected]


def test_valid_rows_land_with_the_contract_fields(ledger: Ledger, tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", HEADER + "\n"
                 "acme,Dana.Lee@Northwind.example,Northwind,Dana Lee,partner,referral,q4,2026-10-01T09:00:00Z,,ext-1\n")
    report = run(ledger, path)
    assert (report.imported, report.unchanged, report.rejected) == (1, 0, [])
    [referral] = ledger.referrals()
    assert referral["external_id"] == "ext-1"
    assert referral["partner"] == "acme"
    assert referral["prospect_email"] == "dana.lee@northwind.example"  # normalised
    assert referral["submitted_at"] == "2026-10-01T09:00:00+00:00"
    assert referral["status"] == "submitted"
    assert referral["status_history"][0]["status"] == "submitted"
    assert referral["attribution"]["model"] == "first_touch"
    assert referral["attribution"]["policy_version"] == "test-v1"
    assert referral["attribution"]["reason"] == "sole_referral"
    assert [p["code"] for p in ledger.partners()] == ["acme"]  # a new code created the partner


def test_reimporting_the_same_file_changes_nothing(ledger: Ledger, tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", HEADER + "\n"
                 "acme,a@x.example,,,,,,2026-10-01T09:00:00Z,,ext-1\n"
                 "acme,b@y.example,,,,,,,,\n")  # no external id, no time: identity by content
    assert run(ledger, path).imported == 2
    before = ledger.referrals()
    again = run(ledger, path)
    assert (again.imported, again.unchanged) == (0, 2)
    assert ledger.referrals() == before


def test_bad_rows_are_reported_with_line_and_column_and_good_rows_land(ledger: Ledger, tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", HEADER + "\n"
                 "acme,good@x.example,,,,,,,,e1\n"                       # line 2: ok
                 "acme,not-an-email,,,,,,,,e2\n"                         # line 3: email
                 ",c@x.example,,,,,,,,e3\n"                              # line 4: partner missing
                 "acme,d@x.example,,,,,,yesterday,,e4\n"                 # line 5: date
                 "acme,,,,,,,,,e5\n"                                     # line 6: no email or company
                 "bad code!,f@x.example,,,,,,,,e6\n"                     # line 7: partner syntax
                 "acme,g@x.example,,,,,,2099-01-01T00:00:00Z,,e7\n"      # line 8: future
                 "acme,h@x.example,,,,,,,ftp://x/?ref=a,e8\n")           # line 9: link
    report = run(ledger, path)
    assert report.imported == 1
    assert problems(report) == [(3, "prospect_email"), (4, "partner"), (5, "submitted_at"), (6, None),
                                (7, "partner"), (8, "submitted_at"), (9, "link")]
    assert all(p.reason for p in report.rejected)
    assert [r["external_id"] for r in ledger.referrals()] == ["e1"]


def test_bom_and_windows_line_endings_and_empty_lines_are_read(ledger: Ledger, tmp_path: Path) -> None:
    content = ("\ufeff" + HEADER + "\r\n\r\nacme,a@x.example,,,,,,,,e1\r\n\r\nacme,b@x.example,,,,,,,,e2\r\n")
    report = run(ledger, write(tmp_path, "r.csv", content.encode("utf-8")))
    assert (report.imported, report.rejected) == (2, [])


def test_missing_header_columns_reject_the_file_with_the_fix(ledger: Ledger, tmp_path: Path) -> None:
    report = run(ledger, write(tmp_path, "r.csv", "name,city\nDana,Berlin\n"))
    assert report.imported == 0
    reasons = " ".join(p.reason for p in report.rejected)
    assert "no 'partner'" in reasons and "prospect_email" in reasons
    assert all(p.line == 1 for p in report.rejected)


def test_unknown_column_is_named_and_ignored(ledger: Ledger, tmp_path: Path) -> None:
    report = run(ledger, write(tmp_path, "r.csv", HEADER + ",notes\nacme,a@x.example,,,,,,,,e1,call me\n"))
    assert report.imported == 1
    assert [(n.line, n.column) for n in report.notes if n.column == "notes"] == [(1, "notes")]


def test_overlong_company_is_rejected_and_nothing_is_truncated_silently(ledger: Ledger, tmp_path: Path) -> None:
    report = run(ledger, write(tmp_path, "r.csv", HEADER + "\nacme,,{},,,,,,,e1\nacme,,Short Co,,,,,,,e2\n"
                               .format("C" * 5000)))
    assert problems(report) == [(2, "prospect_company")]
    assert "5000 characters" in report.rejected[0].reason
    assert [r["prospect_company"] for r in ledger.referrals()] == ["Short Co"]


def test_non_utf8_bytes_reject_only_their_row(ledger: Ledger, tmp_path: Path) -> None:
    content = (HEADER + "\nacme,,M\xfcller GmbH,,,,,,,e1\nacme,,Plain Co,,,,,,,e2\n").encode("latin-1")
    report = run(ledger, write(tmp_path, "r.csv", content))
    assert problems(report) == [(2, "prospect_company")]
    assert "not UTF-8" in report.rejected[0].reason
    assert report.imported == 1


def test_jsonl_line_that_is_not_json_is_reported_and_the_rest_land(ledger: Ledger, tmp_path: Path) -> None:
    lines = [json.dumps({"partner": "acme", "prospect_email": "a@x.example", "external_id": "j1"}),
             "{not json",
             json.dumps(["a", "list"]),
             json.dumps({"partner": "acme", "prospect_company": "Beta", "external_id": "j2"})]
    report = run(ledger, write(tmp_path, "r.jsonl", "\n".join(lines) + "\n"))
    assert report.imported == 2
    assert problems(report) == [(2, None), (3, None)]
    assert "not valid JSON" in report.rejected[0].reason


def test_tracking_link_fills_partner_source_medium_campaign(ledger: Ledger, tmp_path: Path) -> None:
    link = "https://go.example/r?ref=bluebird&utm_source=newsletter&utm_medium=email&utm_campaign=fall"
    run(ledger, write(tmp_path, "r.csv", HEADER + f"\n,,Fabrikam Inc,,,,,,{link},e1\n"))
    [referral] = ledger.referrals()
    assert (referral["partner"], referral["source"], referral["medium"]) == ("bluebird", "newsletter", "email")


def test_naive_time_is_read_as_utc_and_says_so(ledger: Ledger, tmp_path: Path) -> None:
    report = run(ledger, write(tmp_path, "r.csv", HEADER + "\nacme,a@x.example,,,,,,2026-10-01 09:00:00,,e1\n"))
    assert any("read as UTC" in n.reason for n in report.notes)
    assert ledger.referrals()[0]["submitted_at"] == "2026-10-01T09:00:00+00:00"


def test_values_that_look_like_sql_or_soql_are_stored_verbatim(ledger: Ledger, tmp_path: Path) -> None:
    nasty = "x'); DROP TABLE referrals; -- \\' OR Name LIKE '%"
    run(ledger, write(tmp_path, "r.jsonl", json.dumps(
        {"partner": "acme", "prospect_company": nasty, "campaign": "' OR 1=1 --", "external_id": "n1"}) + "\n"))
    [referral] = ledger.referrals()
    assert referral["prospect_company"] == nasty
    assert referral["campaign"] == "' OR 1=1 --"


def _two_referrals(tmp_path: Path, first: str, second: str) -> Path:
    return write(tmp_path, "r.csv", HEADER + "\n"
                 f"alpha,dana@northwind.example,,,,,,{first},,a1\n"
                 f"beta,Dana@Northwind.example,,,,,,{second},,b1\n")


def test_first_to_refer_flags_the_later_referral_for_review(ledger: Ledger, tmp_path: Path) -> None:
    report = run(ledger, _two_referrals(tmp_path, "2026-10-01T00:00:00Z", "2026-10-05T00:00:00Z"))
    assert report.duplicates == 1
    alpha, beta = ledger.referrals()
    assert alpha["attribution"]["credited"] and alpha["attribution"]["reason"] == "sole_referral"
    assert beta["attribution"]["reason"] == "duplicate_flagged"
    assert beta["attribution"]["review_required"] and beta["attribution"]["duplicate_of"] == alpha["id"]
    assert beta["status"] == "submitted"
    timeline = ledger.referral(beta["id"])["timeline"]  # type: ignore[index]
    decided = [e for e in timeline if e["kind"] == "attribution_decided"]
    assert decided[0]["reason_code"] == "duplicate_flagged" and decided[0]["policy_version"] == "test-v1"


def test_on_duplicate_decline_declines_the_later_referral(ledger: Ledger, tmp_path: Path) -> None:
    run(ledger, _two_referrals(tmp_path, "2026-10-01T00:00:00Z", "2026-10-05T00:00:00Z"),
        Policy("first_touch", "decline", 365, "v2"))
    alpha, beta = ledger.referrals()
    assert (alpha["status"], beta["status"]) == ("submitted", "declined")
    assert [h["status"] for h in beta["status_history"]] == ["submitted", "declined"]


def test_an_earlier_referral_imported_later_takes_the_credit(ledger: Ledger, tmp_path: Path) -> None:
    run(ledger, write(tmp_path, "late.csv", HEADER + "\nbeta,dana@northwind.example,,,,,,2026-10-05T00:00:00Z,,b1\n"))
    run(ledger, write(tmp_path, "early.csv", HEADER + "\nalpha,dana@northwind.example,,,,,,2026-10-01T00:00:00Z,,a1\n"))
    alpha, beta = ledger.referrals()  # ordered by submitted_at
    assert alpha["partner"] == "alpha" and alpha["attribution"]["reason"] == "first_to_refer"
    assert not beta["attribution"]["credited"] and beta["attribution"]["duplicate_of"] == alpha["id"]
    kinds = [e["kind"] for e in ledger.referral(beta["id"])["timeline"]]  # type: ignore[index]
    assert "attribution_changed" in kinds


def test_last_touch_gives_credit_to_the_later_referral(ledger: Ledger, tmp_path: Path) -> None:
    run(ledger, _two_referrals(tmp_path, "2026-10-01T00:00:00Z", "2026-10-05T00:00:00Z"),
        Policy("last_touch", "flag", 365, "v3"))
    alpha, beta = ledger.referrals()
    assert beta["attribution"]["credited"] and not alpha["attribution"]["credited"]


def test_company_only_referrals_match_on_normalised_company(ledger: Ledger, tmp_path: Path) -> None:
    run(ledger, write(tmp_path, "r.csv", HEADER + "\n"
                      "alpha,,Fabrikam Inc.,,,,,2026-10-01T00:00:00Z,,a1\n"
                      "beta,,fabrikam,,,,,2026-10-02T00:00:00Z,,b1\n"
                      "gamma,,Other Co,,,,,2026-10-03T00:00:00Z,,c1\n"))
    flags = {r["partner"]: r["attribution"]["reason"] for r in ledger.referrals()}
    assert flags == {"alpha": "sole_referral", "beta": "duplicate_flagged", "gamma": "sole_referral"}


def test_company_match_across_imports_needs_one_side_without_email(ledger: Ledger, tmp_path: Path) -> None:
    """Holders already in the ledger: a company-only referral and an email one; a later email of the
    first company is a duplicate, a colleague's email at the second is not, a company-only row is."""
    run(ledger, write(tmp_path, "a.csv", HEADER + "\n"
                      "alpha,,fabrikam.com,,,,,2026-10-01T00:00:00Z,,a1\n"
                      "delta,lee@contoso.com,,,,,,2026-10-01T00:00:00Z,,d1\n"))
    run(ledger, write(tmp_path, "b.csv", HEADER + "\n"
                      "beta,dana@fabrikam.com,,,,,,2026-10-02T00:00:00Z,,b1\n"
                      "eta,sam@contoso.com,,,,,,2026-10-02T00:00:00Z,,e1\n"
                      "epsilon,,Contoso.com,,,,,2026-10-03T00:00:00Z,,x1\n"))
    by_partner = {r["partner"]: r for r in ledger.referrals()}
    reasons = {p: r["attribution"]["reason"] for p, r in by_partner.items()}
    assert reasons == {"alpha": "sole_referral", "delta": "sole_referral", "beta": "duplicate_flagged",
                       "eta": "sole_referral", "epsilon": "duplicate_flagged"}
    assert by_partner["beta"]["attribution"]["duplicate_of"] == by_partner["alpha"]["id"]
    assert by_partner["epsilon"]["attribution"]["duplicate_of"] == by_partner["delta"]["id"]


@pytest.mark.parametrize("policy", [FIRST_FLAG])
def test_referrals_list_filters(ledger: Ledger, tmp_path: Path, policy: Policy) -> None:
    run(ledger, _two_referrals(tmp_path, "2026-10-01T00:00:00Z", "2026-10-05T00:00:00Z"), policy)
    assert [r["partner"] for r in ledger.referrals(partner="beta")] == ["beta"]
    assert [r["partner"] for r in ledger.referrals(since=datetime(2026, 10, 3, tzinfo=UTC))] == ["beta"]
    assert ledger.referrals(status="won") == []


def test_a_declined_duplicate_queues_the_partners_notification(ledger: Ledger, tmp_path: Path) -> None:
    from sqlalchemy import update

    from refsync.state.models import Partner

    run(ledger, write(tmp_path, "a.csv", HEADER + "\nbeta,x@y.example,,,,,,2026-10-01T00:00:00Z,,b0\n"))
    with ledger.transaction() as txn:  # beta has a webhook now
        txn.session.execute(update(Partner).where(Partner.code == "beta").values(
            webhook_url="https://partner.example/hook", webhook_secret="env:BETA_SECRET"))
    run(ledger, _two_referrals(tmp_path, "2026-10-01T00:00:00Z", "2026-10-05T00:00:00Z"),
        Policy("first_touch", "decline", 365, "v2"))
    notices = [op for op in ledger.ops() if op["kind"] == "notify"]
    assert [op["payload"]["status"] for op in notices] == ["declined"]
    declined = next(r for r in ledger.referrals() if r["status"] == "declined")
    assert "notification_queued" in [e["kind"] for e in ledger.referral(declined["id"])["timeline"]]  # type: ignore[index]


def test_credit_moved_within_one_batch_keeps_each_timeline_in_order(ledger: Ledger, tmp_path: Path) -> None:
    """The later-submitted row comes first in the file: it is credited, then loses the credit to the
    next row of the same batch. Its timeline reads in the order things happened, and the winner's
    events follow the winner's own submission."""
    run(ledger, write(tmp_path, "r.csv", HEADER + "\n"
                      "beta,dana@northwind.example,,,,,,2026-10-05T00:00:00Z,,b1\n"
                      "alpha,dana@northwind.example,,,,,,2026-10-01T00:00:00Z,,a1\n"),
        Policy("first_touch", "decline", 365, "v4"))
    alpha, beta = ledger.referrals()
    assert (alpha["status"], beta["status"]) == ("submitted", "declined")
    loser = ledger.referral(beta["id"])
    winner = ledger.referral(alpha["id"])
    assert loser is not None and winner is not None
    assert [e["kind"] for e in loser["timeline"]] == [
        "submitted", "attribution_decided", "attribution_changed"]
    assert [e["kind"] for e in winner["timeline"]] == ["submitted", "attribution_decided"]
    assert [h["status"] for h in loser["status_history"]] == ["submitted", "declined"]
