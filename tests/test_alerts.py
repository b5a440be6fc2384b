"""Alert sinks and the alerts command: one log line per alert, webhook ops through the outbox (JSON
or Slack-shaped), a storm summarised into one message, and `alerts --resolved`."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from refsync.connector.alerting import announce, build_sinks
from refsync.connector.cli import cli
from refsync.connector.notify import DeliverySettings, deliver_all
from refsync.state.ledger import Ledger
from refsync.state.notifications import AlertSpec, alerts, sync_alerts
from tests.receiver import receiving


def _specs(n: int, kind: str = "orphaned_link") -> list[AlertSpec]:
    return [AlertSpec(kind, f"{kind}:salesforce:Lead:{i}", f"Lead {i} was deleted; restore it.", "salesforce",
                      None, str(i)) for i in range(n)]


def test_same_problem_twice_is_one_alert_with_a_count_and_resolves_when_gone(ledger: Ledger) -> None:
    scope = [("orphaned_link", "salesforce")]
    sync_alerts(ledger, _specs(2), scope)
    sync_alerts(ledger, _specs(2), scope)
    assert sorted(a["count"] for a in alerts(ledger)) == [2, 2]
    result = sync_alerts(ledger, _specs(1), scope)
    assert result.resolved == 1 and len(alerts(ledger, open_only=True)) == 1
    assert len(alerts(ledger, resolved_only=True)) == 1


def test_each_new_alert_becomes_one_signed_webhook_and_is_announced_once(ledger: Ledger) -> None:
    sync_alerts(ledger, _specs(3), [])
    with receiving("alert-secret") as receiver:
        settings = DeliverySettings(statuses=frozenset(), timeout=3, allow_private_targets=True,
                                    alert_url=lambda: receiver.url,
                                    alert_secret=lambda: "alert-secret")
        first = announce(ledger, build_sinks(webhook=True), storm_threshold=50)
        second = announce(ledger, build_sinks(webhook=True), storm_threshold=50)
        delivered = deliver_all(ledger, "w1", settings)
    assert first.alerts == 3 and not first.storm and second.alerts == 0
    assert delivered.delivered == 3 and receiver.rejected == []
    assert {m["alert"]["record_id"] for m in receiver.accepted} == {"0", "1", "2"}


def test_alert_storm_is_one_summary_message_in_slack_shape(ledger: Ledger) -> None:
    sync_alerts(ledger, _specs(2000) + _specs(5, "dead_op"), [])
    with receiving("s") as receiver:
        settings = DeliverySettings(statuses=frozenset(), timeout=3, allow_private_targets=True,
                                    alert_url=lambda: receiver.url,
                                    alert_secret=lambda: "s")
        announced = announce(ledger, build_sinks(webhook=True, format="slack"), storm_threshold=50)
        deliver_all(ledger, "w1", settings)
    assert announced.storm and announced.alerts == 2005
    [message] = receiver.accepted
    assert "2005 new alerts at once (2000 orphaned_link, 5 dead_op)" in message["text"]
    assert message["blocks"][0]["type"] == "section"


def test_alerts_command_filters_resolved_and_prints_the_contract_shape(
        ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    sync_alerts(ledger, _specs(2), [("orphaned_link", "salesforce")])
    sync_alerts(ledger, _specs(1), [("orphaned_link", "salesforce")])
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "alerts", "--resolved", "--json"])
    [row] = json.loads(result.stdout)
    assert set(row) >= {"id", "kind", "referral_id", "crm", "record_id", "message", "first_seen", "last_seen",
                        "resolved_at"}
    assert row["record_id"] == "1" and row["resolved_at"] is not None
    assert result.exit_code == 0  # no open alert among those listed


def test_slack_alert_escapes_what_slack_would_parse_as_a_mention_or_link(ledger: Ledger) -> None:
    """A company name such as ``<!channel> <https://evil.example|fix>`` reaches Slack as literal
    text: no channel ping, no hidden link (Slack's "Escaping text": &, <, > as entities)."""
    hostile = "Acme & Co <!channel> <https://evil.example|fix>"
    sync_alerts(ledger, [AlertSpec("dead_op", "dead_op:1", f"could not push {hostile}", "salesforce", None, "<1>")],
                [])
    with receiving("s") as receiver:
        settings = DeliverySettings(statuses=frozenset(), timeout=3, allow_private_targets=True,
                                    alert_url=lambda: receiver.url,
                                    alert_secret=lambda: "s")
        announce(ledger, build_sinks(webhook=True, format="slack"), storm_threshold=50)
        deliver_all(ledger, "w1", settings)
    [message] = receiver.accepted
    for text in (message["text"], message["blocks"][0]["text"]["text"]):
        assert "<" not in text and ">" not in text
        assert "Acme &amp; Co &lt;!channel&gt; &lt;https://evil.example|fix&gt;" in text
        assert "salesforce &lt;1&gt;" in text


def test_slack_storm_summary_escapes_example_messages(ledger: Ledger) -> None:
    sync_alerts(ledger, [AlertSpec("dead_op", f"dead_op:{i}", f"<!here> {i}", "salesforce", None, str(i))
                         for i in range(3)], [])
    [(_, payload)] = build_sinks(webhook=True, format="slack")[1].summary(alerts(ledger), "b")
    assert "<!here>" not in payload["body"]["text"] and "&lt;!here&gt; 0" in payload["body"]["text"]
