"""The program dashboard for staff: sync health per CRM, open alerts by kind with what to do, and
the funnel per partner and per channel over a chosen period. The funnel is :func:`connector.report.build`
over :func:`state.reports.report_rows`, the very code of ``refsync report``, so the numbers agree."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from refsync.connector.compensation_report import per_currency
from refsync.connector.crms import remembered_readiness
from refsync.connector.report import build
from refsync.connector.web import WebSettings
from refsync.connector.web.actions import FLASH_COOKIE, clear_flash, commission_view, read_flash
from refsync.connector.web.auth import Gate, context
from refsync.connector.web.charts import bars, columns
from refsync.connector.web.pages import money, render
from refsync.state.access import Session
from refsync.state.commissions import commission_rows
from refsync.state.health import crm_health, duplicates_to_decide, open_alerts_by_kind, referrals_per_month
from refsync.state.reports import report_rows

# What to do about each kind of alert (the README's table "Reconcile and alerts", for ops).
ADVICE = {
    "unattributed_win": "If the partner referred it, set the deal's referral id field to the referral's id; "
                        "refsync keeps it from then on.",
    "attribution_overwritten": "Nothing, unless it recurs: refsync restores the field.",
    "attribution_conflict": "Find the workflow, integration or user that keeps overwriting the field and stop it.",
    "ledger_open_crm_closed": "Run `refsync sync --once`; if it stays, add the deal stage to the mapping's [stages].",
    "orphaned_link": "Restore the record from the CRM's recycle bin (the alert resolves), or accept the loss.",
    "duplicate_referral": "Decide which referral keeps the credit.",
    "dead_op": "Fix the cause named in the message, then `refsync retry ID`.",
    "mapping_drift": "Restore the field in the CRM or fix the mapping file; the other fields keep syncing.",
    "crm_unavailable": "Fix the credentials or wait for the CRM; the alert resolves when it answers.",
    "push_unlinked": "Read the message: merge the duplicates or allow saves past the rule, restore the record, "
                     "then `refsync retry`.",
    "poison_record": "Correct the referral's value named in the message, then `refsync retry`.",
    "deal_contested": "If another deal is the referral's, set its referral id field to the referral id.",
    "crm_status_conflict": "Check which CRM's deal is right and correct the other one's stage.",
    "stale_referral": "Ask the owner to work the referral or close it before it expires.",
}
FUNNEL = ("referrals", "accepted", "qualified", "won")


def _date(value: str | None) -> tuple[datetime | None, str | None]:
    if not value:
        return None, None
    try:
        parsed = datetime.fromisoformat(value[:40])
    except ValueError:
        return None, f"\"{value[:40]}\" is not a date; use YYYY-MM-DD."
    return (parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed), None


class Dashboard:
    def __init__(self, gate: Gate, settings: WebSettings) -> None:
        self.gate = gate
        self.settings = settings
        self.ledger = gate.ledger

    async def home(self, request: Request, session: Session) -> Response:
        return await run_in_threadpool(self._home, request, session)

    def _home(self, request: Request, session: Session) -> Response:
        start_text, end_text = request.query_params.get("from") or "", request.query_params.get("to") or ""
        start, start_problem = _date(start_text)
        end, end_problem = _date(end_text)
        problems = [p for p in (start_problem, end_problem) if p]
        if start and end and end <= start:
            problems.append(f"\"to\" ({end_text}) must be after \"from\" ({start_text}).")
            start = end = None
        rows = list(report_rows(self.ledger, start, end))
        by_partner, by_channel = build(rows, "partner"), build(rows, "channel")
        total = by_partner[-1]
        health = crm_health(self.ledger, self.settings.crms)
        readiness = remembered_readiness(self.ledger)
        alerts = open_alerts_by_kind(self.ledger)
        charts = {
            "funnel": bars("Funnel: referrals, accepted, qualified, won", [(c, total[c]) for c in FUNNEL]),
            "over_time": columns("Referrals submitted per month", referrals_per_month([r.submitted_at for r in rows])),
            # one bar per partner and currency: amounts in different currencies are never added up
            "revenue": bars("Won revenue per partner", [(f'{line["partner"]} ({currency})', amount)
                                                        for line in by_partner[:-1]
                                                        for currency, amount in line["won_revenue"].items()][:15],
                            money),
        }
        # what waits for a person: flagged duplicates, and commissions pending or held (with the holds' reasons)
        to_approve = sorted((commission_view(r) for status in ("pending", "held")
                             for r in commission_rows(self.ledger, status=status)), key=lambda r: r["id"])
        waiting = per_currency((r["kind"], r["status"], r["amount_minor"], r["currency"]) for r in to_approve)
        response = render("dashboard.html", **context(
            session, health=health, readiness=readiness, budgets=self.settings.budgets, alerts=alerts, advice=ADVICE,
            by_partner=by_partner, by_channel=by_channel, charts=charts, start=start_text if start else "",
            end=end_text if end else "", problems=problems, flash=read_flash(request, session),
            duplicates=duplicates_to_decide(self.ledger), to_approve=to_approve, waiting=waiting,
            can_act=session.user.role == "admin"))
        if FLASH_COOKIE in request.cookies:
            clear_flash(response, self.settings)  # shown once
        return response
