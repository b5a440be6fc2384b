"""The partner portal's pages: the partner's own referrals (counts by stage, a filtered list, one
referral's timeline) and submission. Every read goes through :mod:`state.portal` with the signed-in
user's partner id, so another partner's referral answers 404 like one that does not exist."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from refsync.connector.compensation_report import per_currency
from refsync.connector.web import WebSettings
from refsync.connector.web.auth import Gate, context, forbidden, read_form, too_large
from refsync.connector.web.pages import not_found, render
from refsync.connector.web.submit import submit, submit_csv
from refsync.connector.web.words import LABELS, commission_label, commission_sentence, standing, step_sentence
from refsync.state import portal
from refsync.state.access import Session
from refsync.state.models import OPEN_STATUSES, STATUSES

MAX_UPLOAD = 1024 * 1024  # bytes of a CSV upload, like one intake request
FORM_FIELDS = ("prospect_email", "prospect_company", "prospect_name", "campaign")



def _date(value: str | None) -> tuple[datetime | None, str | None]:
    """A ``YYYY-MM-DD`` filter as a UTC midnight; the reason when it is not a date."""
    if not value:
        return None, None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC), None
    except ValueError:
        return None, f"\"{value[:40]}\" is not a date; use YYYY-MM-DD."


class Portal:
    def __init__(self, gate: Gate, settings: WebSettings) -> None:
        self.gate = gate
        self.settings = settings
        self.ledger = gate.ledger

    async def home(self, request: Request, session: Session) -> Response:
        return await run_in_threadpool(self._home, request, session)

    def _home(self, request: Request, session: Session) -> Response:
        partner_id = session.user.partner_id
        assert partner_id is not None
        query = request.query_params
        status = query.get("status") or None
        if status not in STATUSES:
            status = None
        since, since_problem = _date(query.get("from"))
        until, until_problem = _date(query.get("to"))
        search = (query.get("q") or "").strip()[:200] or None
        page = int(query["page"]) if query.get("page", "").isdigit() and 0 < int(query["page"]) < 10_000 else 1
        counts = portal.counts_by_status(self.ledger, partner_id)
        # per currency, never summed across currencies; held ones count as pending ("under review")
        totals = per_currency((c.kind, c.status, c.amount_minor, c.currency)
                              for c in portal.commissions(self.ledger, partner_id))
        rows, total = portal.referrals(self.ledger, partner_id, status=status, since=since,
                                       until=until + timedelta(days=1) if until else None, search=search,
                                       offset=(page - 1) * portal.PAGE)
        filters = {k: v for k, v in (("status", status), ("from", query.get("from") if since else None),
                                     ("to", query.get("to") if until else None), ("q", search)) if v}
        pages = max(1, -(-total // portal.PAGE))
        return render("portal_home.html", **context(
            session, counts=counts, labels=LABELS, open_statuses=OPEN_STATUSES, statuses=STATUSES,
            open_total=sum(counts.get(s, 0) for s in OPEN_STATUSES), total_all=sum(counts.values()),
            rows=rows, total=total, filters=filters, page=page, pages=pages,
            prev_url="?" + urlencode({**filters, "page": page - 1}) if page > 1 else None,
            next_url="?" + urlencode({**filters, "page": page + 1}) if page < pages else None,
            problems=[p for p in (since_problem, until_problem) if p], commission_totals=totals))

    async def referral(self, request: Request, session: Session) -> Response:
        return await run_in_threadpool(self._referral, request, session)

    def _referral(self, request: Request, session: Session) -> Response:
        referral_id = request.path_params["referral_id"]
        assert session.user.partner_id is not None
        found = portal.referral(self.ledger, session.user.partner_id, referral_id[:64])
        if found is None:
            return not_found(user=session.user, csrf=session.csrf_token)
        steps = [(step.at, step_sentence(step, self.settings.expire_after_days)) for step in found.steps]
        now = self.ledger.clock()
        commissions = [(entry, commission_label(entry), commission_sentence(entry, now))
                       for entry in portal.commissions(self.ledger, session.user.partner_id, found.id)]
        return render("portal_referral.html", **context(session, referral=found, steps=steps, note=standing(found),
                                                        commissions=commissions))

    async def submit_page(self, request: Request, session: Session) -> Response:
        return render("portal_submit.html", **context(session, values={}, submission=None))

    async def submit(self, request: Request, session: Session) -> Response:
        form = await read_form(request, MAX_UPLOAD + 64 * 1024)
        if form is None:
            return too_large()
        if not self.gate.csrf_ok(request, form, session):
            return forbidden("The form expired or did not come from this site. Reload the page and try again.",
                             user=session.user, csrf=session.csrf_token)
        upload = form.get("file")
        if isinstance(upload, UploadFile):
            data = await upload.read(MAX_UPLOAD + 1)
            await upload.close()
            if len(data) > MAX_UPLOAD:
                return too_large()
            if not data.strip():
                return render("portal_submit.html", HTTPStatus.UNPROCESSABLE_ENTITY, **context(
                    session, values={}, submission=None, error="Choose a CSV file with a header row first."))
            text = data.decode("utf-8-sig", errors="surrogateescape")
            submission = await run_in_threadpool(submit_csv, self.ledger, self.settings.policy, session.user, text)
            values: dict[str, Any] = {}
        else:
            values = {k: str(form.get(k) or "").strip() for k in FORM_FIELDS}
            submission = await run_in_threadpool(submit, self.ledger, self.settings.policy, session.user,
                                                 [(1, values)])
        rejected_all = submission.answers and all(a.outcome == "rejected" for a in submission.answers)
        status = HTTPStatus.UNPROCESSABLE_ENTITY if rejected_all or submission.file_problems and not \
            submission.answers else HTTPStatus.OK
        keep = values if rejected_all else {}
        return render("portal_submit.html", status, **context(session, values=keep, submission=submission))
