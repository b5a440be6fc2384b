"""Alerts people can act on, through the CLI over a real ledger: ack (listed, no more paging),
silences, accepting an orphaned link's loss, deciding a flagged duplicate; states in `alerts --json`,
in the exit code and in the scraped `refsync_open_alerts`; the import raising duplicate_referral."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from refsync.connector.alerting import announce
from refsync.connector.cli import cli
from refsync.connector.reconcile import ReconcileSettings, reconcile
from refsync.state import reconciliation as repo
from refsync.state.ledger import Ledger
from refsync.state.notifications import AlertSpec, sync_alerts
from refsync.state.observe import observing
from tests.conftest import FakeClock
from tests.test_http import TOKEN, referral, scrape, start

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"


class Pager:
    """A sink that records what would have paged someone."""

    name = "pager"

    def __init__(self) -> None:
        self.paged: list[int] = []

    def single(self, alert: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        self.paged.append(alert["id"])
        return []

    def summary(self, alerts: Sequence[dict[str, Any]], batch_key: str) -> list[tuple[str, dict[str, Any]]]:
        self.paged += [a["id"] for a in alerts]
        return []


def pages(ledger: Ledger) -> list[int]:
    pager = Pager()
    announce(ledger, [pager], storm_threshold=50)
    return pager.paged


@pytest.fixture
def config(ledger_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "refsync.toml"
    path.write_text(f'[ledger]\nurl = "{ledger_url}"\n[attribution]\non_duplicate = "flag"\n')
    return path


def refsync(config: Path, *args: str) -> tuple[int, Any, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    out: Any = result.stdout
    if "--json" in args and result.exit_code in (0, 1) and out.strip():
        out = json.loads(out)
    return result.exit_code, out, result.stderr


def orphan(n: int, crm: str = "salesforce", referral_id: str | None = None) -> AlertSpec:
    return AlertSpec("orphaned_link", f"orphaned_link:{crm}:Lead:{n}", f"Lead {n} is gone", crm, referral_id, str(n))


def by_record(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["record_id"]: r for r in rows}


def test_an_acknowledged_alert_stays_listed_stops_paging_and_pages_again_only_after_reopening(
        ledger: Ledger, config: Path) -> None:
    sync_alerts(ledger, [orphan(1)], [])
    code, rows, _ = refsync(config, "alerts", "--json")
    assert code == 1 and rows[0]["state"] == "open"
    alert_id = rows[0]["id"]

    code, out, _ = refsync(config, "alerts", "ack", str(alert_id), "--by", "dana", "--note", "restoring it")
    assert code == 0 and "acknowledged by dana" in out
    code, [row], _ = refsync(config, "alerts", "--json")
    assert code == 0  # nothing open: acknowledged is not a problem for a cron check
    assert (row["state"], row["acknowledged_by"], row["note"]) == ("acknowledged", "dana", "restoring it")
    assert row["acknowledged_at"] is not None and row["resolved_at"] is None
    assert pages(ledger) == []

    sync_alerts(ledger, [orphan(1)], [])  # the same problem again: counted, still quiet
    assert pages(ledger) == []
    code, [row], _ = refsync(config, "alerts", "--json")
    assert (row["count"], row["state"]) == (2, "acknowledged")

    sync_alerts(ledger, [], [("orphaned_link", "salesforce")])  # resolved...
    sync_alerts(ledger, [orphan(1)], [])  # ...and back: someone must look again
    code, [row], _ = refsync(config, "alerts", "--json")
    assert code == 1 and row["state"] == "open" and row["acknowledged_by"] is None
    assert pages(ledger) == [alert_id]


def test_an_unknown_alert_or_silence_id_is_exit_2_with_a_clear_message(ledger: Ledger, config: Path) -> None:
    sync_alerts(ledger, [AlertSpec("dead_op", "dead_op:7", "op 7 gave up")], [])
    for args in (["ack", "999", "--by", "x"], ["accept", "999", "--by", "x"]):
        code, _, err = refsync(config, "alerts", *args)
        assert code == 2 and "no alert with id 999" in err, err
    code, _, err = refsync(config, "alerts", "unsilence", "42")
    assert code == 2 and "no silence with id 42" in err
    [row] = refsync(config, "alerts", "--json")[1]
    code, _, err = refsync(config, "alerts", "accept", str(row["id"]), "--by", "x")
    assert code == 2 and "only the loss of an orphaned_link can be accepted" in err
    code, _, err = refsync(config, "alerts", "silence", "--kind", "dead_ops", "--for", "1d")
    assert code == 2 and "no such alert kind" in err
    code, _, err = refsync(config, "alerts", "silence", "--kind", "dead_op", "--for", "soon")
    assert code == 2 and "7d" in err


def test_a_silence_quiets_matching_alerts_open_now_and_raised_later_until_it_ends(
        ledger: Ledger, config: Path, clock: FakeClock) -> None:
    clock.now = datetime.now(UTC)  # the CLI's silence starts now, by the real clock
    sync_alerts(ledger, [orphan(1), orphan(2)], [])
    code, made, _ = refsync(config, "alerts", "silence", "--kind", "orphaned_link", "--crm", "salesforce",
                            "--for", "7d", "--by", "ops", "--note", "org migration", "--json")
    assert code == 0 and made["matching_open_alerts"] == 2 and made["active"] is True
    sync_alerts(ledger, [orphan(3), orphan(4, crm="hubspot")], [])  # new: one matches, one does not

    code, rows, _ = refsync(config, "alerts", "--json")
    states = {r["record_id"]: r["state"] for r in rows}
    assert states == {"1": "silenced", "2": "silenced", "3": "silenced", "4": "open"} and code == 1
    assert by_record(rows)["3"]["silenced_until"] == made["until"]
    assert [by_record(rows)["4"]["id"]] == pages(ledger)  # only the one not silenced pages
    code, [listed], _ = refsync(config, "alerts", "silences", "--json")
    assert (listed["id"], listed["kind"], listed["crm"], listed["matching_open_alerts"]) == (
        made["id"], "orphaned_link", "salesforce", 3)
    assert [r["record_id"] for r in refsync(config, "alerts", "--state", "silenced", "--json")[1]] == ["3", "2", "1"]

    clock.advance(days=8)  # the silence ended: what is still open pages now
    assert sorted(pages(ledger)) == sorted(by_record(rows)[n]["id"] for n in ("1", "2", "3"))


def test_a_silence_of_one_record_leaves_the_others_and_unsilence_lifts_it(ledger: Ledger, config: Path) -> None:
    sync_alerts(ledger, [orphan(1), orphan(2)], [])
    code, made, _ = refsync(config, "alerts", "silence", "--kind", "orphaned_link", "--record", "2", "--for", "12h",
                            "--json")
    assert code == 0 and made["matching_open_alerts"] == 1
    rows = by_record(refsync(config, "alerts", "--json")[1])
    assert (rows["1"]["state"], rows["2"]["state"]) == ("open", "silenced")
    assert refsync(config, "alerts", "ack", str(rows["1"]["id"]), "--by", "lee")[0] == 0
    assert refsync(config, "alerts")[0] == 0  # one acknowledged, one silenced: exit 0

    assert refsync(config, "alerts", "unsilence", str(made["id"]))[0] == 0
    assert refsync(config, "alerts", "silences", "--json")[1] == []
    [ended] = refsync(config, "alerts", "silences", "--all", "--json")[1]
    assert ended["lifted_at"] is not None and ended["active"] is False
    code, rows_after, _ = refsync(config, "alerts", "--json")
    assert code == 1 and by_record(rows_after)["2"]["state"] == "open"


def test_metrics_count_open_acknowledged_and_silenced_alerts_apart(ledger: Ledger, config: Path) -> None:
    sync_alerts(ledger, [orphan(1), orphan(2), orphan(3), AlertSpec("dead_op", "dead_op:1", "op 1 gave up")], [])
    rows = by_record(refsync(config, "alerts", "--json")[1])
    refsync(config, "alerts", "ack", str(rows["1"]["id"]), "--by", "dana")
    refsync(config, "alerts", "silence", "--kind", "orphaned_link", "--record", "2", "--for", "1d")
    api = start(ledger, None)
    try:
        metrics = scrape(api)
    finally:
        api.server.stop()

    def gauge(kind: str, state: str) -> float:
        return metrics[("refsync_open_alerts", (("kind", kind), ("state", state)))]

    assert [gauge("orphaned_link", s) for s in ("open", "acknowledged", "silenced")] == [1, 1, 1]
    assert [gauge("dead_op", s) for s in ("open", "acknowledged", "silenced")] == [1, 0, 0]
    assert gauge("crm_unavailable", "open") == 0  # every known kind has its series


def test_accepting_an_orphaned_links_loss_records_it_and_it_is_never_checked_again(
        ledger: Ledger, config: Path, tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(HEADER + "\nacme,a@north.example,North,,,,,2026-10-01T09:00:00Z,,e1\n")
    assert refsync(config, "import", str(tmp_path / "r.csv"))[0] == 0
    [ref] = ledger.referrals()
    with observing(ledger, "salesforce") as ob:
        ob.link(ref["id"], "Lead", "00Q000000000001", "lead").state = "deleted"
    sync_alerts(ledger, [AlertSpec("orphaned_link", "orphaned_link:salesforce:Lead:00Q000000000001",
                                   "Lead gone; restore it or accept the loss", "salesforce", ref["id"],
                                   "00Q000000000001")], [])
    [alert] = refsync(config, "alerts", "--json")[1]

    code, out, err = refsync(config, "alerts", "accept", str(alert["id"]), "--by", "dana", "--note", "spam lead")
    assert code == 0 and "loss is accepted by dana" in out, err
    [alert] = refsync(config, "alerts", "--json")[1]
    assert (alert["state"], alert["resolution"], alert["acknowledged_by"]) == ("resolved", "accepted", "dana")
    shown = refsync(config, "referrals", "show", ref["id"], "--json")[1]
    [event] = [e for e in shown["timeline"] if e["kind"] == "link_loss_accepted"]
    assert (event["actor"], event["record_id"], event["detail"]["note"]) == ("dana", "00Q000000000001", "spam lead")
    assert [lk["state"] for lk in shown["links"]] == ["lost"]
    assert [row for page in repo.linked_pages(ledger, "salesforce") for row in page] == []  # reconcile skips it
    code, _, err = refsync(config, "alerts", "accept", str(alert["id"]), "--by", "dana")
    assert code == 2 and "resolved already" in err


def import_pair(config: Path, tmp_path: Path) -> tuple[str, str]:
    """Two partners refer one prospect; the later referral is flagged (on_duplicate = "flag")."""
    (tmp_path / "r.csv").write_text(HEADER + "\n"
                                    "acme,pat@north.example,North,,,,,2026-10-01T09:00:00Z,,e1\n"
                                    "beta,pat@north.example,North,,,,,2026-10-03T09:00:00Z,,e2\n")
    assert refsync(config, "import", str(tmp_path / "r.csv"))[0] == 0
    listed = refsync(config, "referrals", "list", "--json")[1]
    first, later = (next(r["id"] for r in listed if r["external_id"] == e) for e in ("e1", "e2"))
    return first, later


def test_the_import_raises_duplicate_referral_at_once_offering_the_decision(
        ledger: Ledger, config: Path, tmp_path: Path) -> None:
    first, later = import_pair(config, tmp_path)
    code, [alert], _ = refsync(config, "alerts", "--kind", "duplicate_referral", "--json")
    assert code == 1 and alert["referral_id"] == later and alert["state"] == "open"
    assert f"refsync referrals decide {later} --credit" in alert["message"] and first in alert["message"]
    reconcile(ledger, {}, ReconcileSettings())  # the reconcile finds the same one: no second alert
    [again] = refsync(config, "alerts", "--kind", "duplicate_referral", "--json")[1]
    assert (again["id"], again["count"], again["state"]) == (alert["id"], 2, "open")


def test_the_intake_raises_duplicate_referral_for_the_holder_that_lost_credit(ledger: Ledger) -> None:
    api = start(ledger, TOKEN)
    try:
        assert api.json("POST", "/intake", referral(1, submitted_at="2026-10-05T09:00:00Z"))[0] == 201
        earlier = {**referral(1, submitted_at="2026-10-01T09:00:00Z"), "partner": "beta", "external_id": "b-1"}
        status, body = api.json("POST", "/intake", earlier)
    finally:
        api.server.stop()
    assert status == 201
    [later] = [r for r in ledger.referrals() if r["id"] != body["results"][0]["referral_id"]]
    [alert] = [a for a in refsync_alerts(ledger) if a["kind"] == "duplicate_referral"]
    assert alert["referral_id"] == later["id"] and later["attribution"]["review_required"] is True


def refsync_alerts(ledger: Ledger) -> list[dict[str, Any]]:
    from refsync.state.notifications import alerts

    return alerts(ledger)


def test_deciding_a_duplicate_with_credit_moves_credit_and_resolves_the_alert(
        ledger: Ledger, config: Path, tmp_path: Path) -> None:
    first, later = import_pair(config, tmp_path)
    code, decided, err = refsync(config, "referrals", "decide", later, "--credit", "--by", "lee", "--note",
                                 "beta's contract names this account", "--json")
    assert code == 0, err
    assert decided == {"referral_id": later, "credited": True, "reason": "credited_by_review", "status": "submitted",
                       "credit_taken_from": first, "credit_taken_from_status": "declined", "alerts_resolved": 1}
    now_credited = refsync(config, "referrals", "show", later, "--json")[1]
    assert now_credited["attribution"]["credited"] is True and now_credited["attribution"]["review_required"] is False
    assert any(e["kind"] == "duplicate_decided" and e["actor"] == "lee" for e in now_credited["timeline"])
    lost = refsync(config, "referrals", "show", first, "--json")[1]
    assert (lost["status"], lost["attribution"]["credited"], lost["attribution"]["duplicate_of"]) == (
        "declined", False, later)
    assert lost["attribution"]["reason"] == "duplicate_declined"
    assert any(e["kind"] == "attribution_changed" and e["actor"] == "lee" for e in lost["timeline"])
    [alert] = refsync(config, "alerts", "--kind", "duplicate_referral", "--json")[1]
    assert (alert["state"], alert["resolution"]) == ("resolved", "credited")
    reconcile(ledger, {}, ReconcileSettings())  # decided: the ledger check does not raise it again
    assert refsync(config, "alerts", "--kind", "duplicate_referral")[0] == 0
    code, _, err = refsync(config, "referrals", "decide", later, "--decline", "--by", "lee")
    assert code == 2 and "not a flagged duplicate" in err


def test_declining_a_duplicate_keeps_it_without_credit(ledger: Ledger, config: Path, tmp_path: Path) -> None:
    first, later = import_pair(config, tmp_path)
    code, out, err = refsync(config, "referrals", "decide", later, "--decline", "--by", "lee")
    assert code == 0 and "stays without credit (declined)" in out, err
    declined = refsync(config, "referrals", "show", later, "--json")[1]
    assert (declined["status"], declined["attribution"]["credited"]) == ("declined", False)
    assert declined["attribution"]["review_required"] is False
    assert refsync(config, "referrals", "show", first, "--json")[1]["attribution"]["credited"] is True
    [alert] = refsync(config, "alerts", "--kind", "duplicate_referral", "--json")[1]
    assert (alert["state"], alert["resolution"], alert["acknowledged_by"]) == ("resolved", "declined", "lee")
    code, _, err = refsync(config, "referrals", "decide", "01NOPE", "--credit", "--by", "lee")
    assert code == 2 and "no referral with id 01NOPE" in err
    code, _, err = refsync(config, "referrals", "decide", later, "--by", "lee")
    assert code == 2 and "--credit or --decline" in err
