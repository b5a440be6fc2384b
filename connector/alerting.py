"""Alert sinks: a structured log line always, a webhook (JSON or Slack-shaped) through the outbox,
and anything else that implements :class:`Sink`.

:func:`announce` takes the open alerts no sink has heard of yet. Up to ``storm_threshold`` of them
go out one by one; past it, sinks get one summary (counts by kind and a few examples) instead of a
flood, and every alert is still marked as announced and listed by `refsync alerts`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from refsync.connector.logs import get_logger
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts_to_announce, mark_announced

log = get_logger("refsync.alerts")
EXAMPLES = 5


class Sink(Protocol):
    """Where alerts go. ``ops`` returns outbox ops (dedupe key, payload) to deliver reliably, or
    none when the sink delivers on the spot (a log line)."""

    name: str

    def single(self, alert: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]: ...

    def summary(self, alerts: Sequence[dict[str, Any]], batch_key: str) -> list[tuple[str, dict[str, Any]]]: ...


def summarise(alerts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """An alert storm in one object: how many of each kind, and a few examples."""
    kinds = Counter(a["kind"] for a in alerts)
    return {"event": "alerts.storm", "total": len(alerts), "by_kind": dict(kinds.most_common()),
            "examples": [{k: a[k] for k in ("id", "kind", "referral_id", "crm", "record_id", "message")}
                         for a in alerts[:EXAMPLES]],
            "message": f"{len(alerts)} new alerts at once ("
                       + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
                       + "); run `refsync alerts --open` for the list."}


class LogSink:
    """One structured log line per alert (a summary line in a storm): always on."""

    name = "log"

    def single(self, alert: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        log.warning(alert["message"], alert_id=alert["id"], kind=alert["kind"], referral_id=alert["referral_id"],
                    crm=alert["crm"], record_id=alert["record_id"], count=alert["count"])
        return []

    def summary(self, alerts: Sequence[dict[str, Any]], batch_key: str) -> list[tuple[str, dict[str, Any]]]:
        shape = summarise(alerts)
        log.warning(shape["message"], kind="alerts.storm", total=shape["total"], by_kind=shape["by_kind"])
        return []


def slack_escape(text: object) -> str:
    """``text`` as literal Slack text. Slack reads ``&``, ``<`` and ``>`` as control characters
    (``<!channel>`` pings, ``<url|label>`` hides a link) and says to send exactly these three as
    HTML entities when they are meant literally, and nothing else encoded:
    https://api.slack.com/reference/surfaces/formatting#escaping (Formatting message text,
    "Escaping text"). Alert text carries partner-supplied names, so every value is escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_message(text: str) -> dict[str, Any]:
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def slack_text(alert: dict[str, Any]) -> dict[str, Any]:
    where = " ".join(slack_escape(x) for x in (alert.get("crm"), alert.get("record_id")) if x)
    referral = f" · referral `{slack_escape(alert['referral_id'])}`" if alert.get("referral_id") else ""
    text = (f":rotating_light: *{slack_escape(alert['kind'])}*{referral}{f' · {where}' if where else ''}\n"
            f"{slack_escape(alert['message'])}")
    return _slack_message(text)


@dataclass
class WebhookSink:
    """An alert webhook delivered through the outbox (retries, dead state): ``json`` posts the
    alert as `refsync alerts --json` shows it; ``slack`` posts an incoming-webhook message."""

    format: str = "json"
    name: str = field(default="webhook", init=False)

    def _payload(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"target": "alerts", "body": body}

    def single(self, alert: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        body = slack_text(alert) if self.format == "slack" else {"event": "alert.raised", "alert": alert}
        return [(f"alert:{alert['id']}:{alert['last_seen']}", self._payload(body))]

    def summary(self, alerts: Sequence[dict[str, Any]], batch_key: str) -> list[tuple[str, dict[str, Any]]]:
        shape = summarise(alerts)
        if self.format == "slack":
            lines = "\n".join(f"• {slack_escape(a['kind'])}: {slack_escape(a['message'])}"
                              for a in shape["examples"])
            body: dict[str, Any] = _slack_message(f":rotating_light: *{slack_escape(shape['message'])}*\n{lines}")
        else:
            body = shape
        return [(f"alert-storm:{batch_key}", self._payload(body))]


def build_sinks(webhook: bool, format: str = "json", extra: Sequence[Sink] = ()) -> list[Sink]:
    """The log sink, the webhook sink when an alert webhook URL is configured, and any others."""
    sinks: list[Sink] = [LogSink()]
    if webhook:
        sinks.append(WebhookSink(format))
    return sinks + list(extra)


@dataclass
class Announced:
    alerts: int = 0
    storm: bool = False
    ops: int = 0


def announce(ledger: Ledger, sinks: Sequence[Sink], storm_threshold: int) -> Announced:
    """Tell the sinks about every open alert they have not heard of, summarised in a storm."""
    pending = alerts_to_announce(ledger)
    if not pending:
        return Announced()
    storm = len(pending) > storm_threshold
    ops: list[tuple[str, dict[str, Any]]] = []
    batch_key = f"{pending[0]['id']}-{pending[-1]['id']}"
    for sink in sinks:
        if storm:
            ops += sink.summary(pending, batch_key)
        else:
            for alert in pending:
                ops += sink.single(alert)
    added = mark_announced(ledger, [a["id"] for a in pending], ops)
    return Announced(len(pending), storm, added)
