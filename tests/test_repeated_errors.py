"""Errors that repeat every round are logged once with a count, never a whole query or request per
line, and a CRM that stops answering becomes one crm_unavailable alert (resolved when it answers)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from refsync.adapters.errors import CrmConfigError, TransientError, abbreviate
from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector import logs
from refsync.connector.push import CrmTarget
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts

SOQL_URL = ("Salesforce unreachable: ConnectionError: HTTPSConnectionPool(host='acme.my.salesforce.com', port=443): "
            "Max retries exceeded with url: /services/data/v59.0/query/?q=SELECT+Id%2C+Email%2C+"
            + "Partner_Referral_Id__c%2C+" * 300 + "FROM+Lead+WHERE+Id+IN+%28%2700Q1%27%29 (Caused by "
            "NewConnectionError('<urllib3.connection.HTTPSConnection object at 0x7f0a1c2d3e40>: Failed to establish "
            "a new connection: [Errno 111] Connection refused'))")
MALFORMED = ("Salesforce answered 400 MALFORMED_QUERY: \nSELECT Id, " + "Referral_Campaign__c, " * 400
             + "Name FROM Lead WHERE Id IN ('00Q1')\n ^\nERROR at Row:1:Column:4012\nNo such column 'Referral_X__c'")


def capture() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_crm_error_reads_as_its_code_and_a_short_message_never_the_query_or_request() -> None:
    unreachable = TransientError(SOQL_URL, crm="salesforce")
    assert len(SOQL_URL) > 7000 and len(str(unreachable)) < 400
    assert "SELECT" not in str(unreachable) and "%2C" not in str(unreachable) and "0x7f" not in str(unreachable)
    assert "Connection refused" in str(unreachable) and unreachable.message == SOQL_URL  # the whole text kept
    malformed = str(CrmConfigError(MALFORMED, crm="salesforce", code="MALFORMED_QUERY"))
    assert malformed.startswith("Salesforce answered 400 MALFORMED_QUERY: SELECT … FROM Lead …")
    assert "No such column 'Referral_X__c'" in malformed and len(malformed) < 400


def test_every_log_lines_error_is_abbreviated_wherever_it_comes_from() -> None:
    stream = capture()
    logs.get_logger("t").error("push failed", error=SOQL_URL, crm="salesforce")
    [line] = lines(stream)
    assert line["error"] == abbreviate(SOQL_URL) and len(stream.getvalue()) < 800


def test_the_same_error_every_round_is_logged_once_then_counted() -> None:
    stream = capture()
    now = [0.0]
    repeats = logs.RepeatedErrors(logs.get_logger("t"), every_seconds=600, clock=lambda: now[0])
    for second in range(0, 300, 30):  # ten rounds in five minutes: one line
        now[0] = second
        repeats.error("poll:salesforce", "poll failed", f"Salesforce unreachable (retry in {second % 7} s)")
    assert [line["event"] for line in lines(stream)] == ["poll failed"]
    now[0] = 650  # ten minutes after the line: one line with the count
    repeats.error("poll:salesforce", "poll failed", "Salesforce unreachable (retry in 3 s)")
    now[0] = 700
    repeats.error("poll:salesforce", "poll failed", "HubSpot refused the token")  # a new error: said at once
    now[0] = 710
    repeats.error("poll:salesforce", "poll failed", "HubSpot refused the token")
    repeats.clear("poll:salesforce", "poll", crm="salesforce")
    events = [(line["event"], line.get("repeated")) for line in lines(stream)]
    assert events == [("poll failed", None), ("poll failed (repeated 10 more times)", 10), ("poll failed", None),
                      ("poll:salesforce: the error before was repeated 1 more times, then cleared", 1),
                      ("poll: recovered after 2 failed rounds", None)]


def test_the_daemon_logs_a_crm_outage_once_and_raises_one_crm_unavailable_alert(
        ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox, tmp_path: Path) -> None:
    from refsync.connector.daemon import Daemon
    from refsync.connector.sync import CycleSettings

    daemon = Daemon(ledger, {"salesforce": crms["salesforce"]}, CycleSettings(), push_interval=60,
                    poll_interval=60)
    stream = capture()
    sandbox.salesforce.set_faults(drop=1.0)  # Salesforce stops answering after it was ready
    try:
        for _ in range(5):
            daemon._guarded("poll", daemon.poll_job)()
    finally:
        sandbox.salesforce.set_faults()
    failed = [line for line in lines(stream) if line["event"].startswith("poll failed")]
    assert len(failed) == 1 and failed[0]["crm"] == "salesforce" and len(failed[0]["error"]) <= 400
    assert "Traceback" not in stream.getvalue()
    [alert] = [a for a in alerts(ledger) if a["kind"] == "crm_unavailable"]
    assert alert["state"] == "open" and alert["count"] == 3  # raised at the third failed round, counted since
    assert "failed 5 rounds in a row" in alert["message"]

    daemon._guarded("poll", daemon.poll_job)()  # it answers again
    [alert] = [a for a in alerts(ledger) if a["kind"] == "crm_unavailable"]
    assert alert["state"] == "resolved"
    assert any("recovered after 5 failed rounds" in line["event"] for line in lines(stream))


def test_a_job_that_keeps_failing_is_logged_once_not_a_traceback_per_round(
        ledger: Ledger, crms: dict[str, CrmTarget]) -> None:
    from refsync.connector.daemon import Daemon
    from refsync.connector.sync import CycleSettings
    from refsync.errors import LedgerError

    daemon = Daemon(ledger, crms, CycleSettings(), push_interval=60, poll_interval=60)
    stream = capture()

    def ledger_down() -> None:
        raise LedgerError("the ledger at postgresql://db/refsync does not answer: " + "SELECT referrals.id " * 500)

    for _ in range(4):
        daemon._guarded("push", ledger_down)()
    [line] = lines(stream)
    assert line["event"] == "push job failed; will retry on the next round" and line["job"] == "push"
    assert len(line["error"]) <= 400 and "Traceback" not in stream.getvalue()


def test_a_crm_that_never_became_ready_is_one_log_line_and_one_alert_however_many_rounds(
        ledger: Ledger, crms: dict[str, CrmTarget], sandbox: RunningSandbox) -> None:
    from refsync.connector.crms import STARTING
    from refsync.connector.daemon import Daemon
    from refsync.connector.sync import CycleSettings

    target = crms["hubspot"]
    target.not_ready, target.schemas = STARTING, {}  # as at a start with HubSpot down
    daemon = Daemon(ledger, {"hubspot": target}, CycleSettings(), push_interval=60, poll_interval=60)
    stream = capture()
    sandbox.hubspot.set_faults(drop=1.0)
    try:
        for _ in range(4):
            daemon._guarded("push", daemon.push_job)()
    finally:
        sandbox.hubspot.set_faults()
    output = lines(stream)
    assert [line["event"] for line in output if line["level"] == "error"] == [
        "CRM not ready; its work waits, the other CRMs sync"]
    [alert] = [a for a in alerts(ledger) if a["kind"] == "crm_unavailable"]
    assert alert["count"] == 1 and alert["crm"] == "hubspot" and alert["state"] == "open"
