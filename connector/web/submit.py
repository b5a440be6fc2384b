"""A partner's submission from the portal (one form, or a CSV upload), through exactly the code of
``refsync import`` and ``POST /intake``: :func:`connector.intake.validate_row` (and
:func:`connector.intake.read_csv` for a file), then :func:`connector.imports.import_rows`, where
first-to-refer and deduplication are decided. The answer never says who referred a prospect first."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from refsync.connector.attribution import Policy
from refsync.connector.imports import ImportReport, import_rows
from refsync.connector.intake import NewReferral, read_csv, validate_row
from refsync.state import access, portal
from refsync.state.access import User
from refsync.state.ledger import Ledger

MAX_ROWS = 500  # referrals of one upload: one import batch, like one intake request
# Portal submissions without their own taxonomy are the partner's, through the portal.
DEFAULTS = {"source": "partner", "medium": "portal"}

Outcome = Literal["accepted", "already_referred", "already_submitted", "rejected"]


@dataclass
class Answer:
    line: int
    prospect: str
    outcome: Outcome
    referral_id: str | None = None  # only ever one of the partner's own referrals
    problems: list[tuple[str | None, str]] = field(default_factory=list)


@dataclass
class Submission:
    answers: list[Answer] = field(default_factory=list)
    file_problems: list[tuple[int, str | None, str]] = field(default_factory=list)  # (line, column, reason)

    def count(self, outcome: Outcome) -> int:
        return sum(a.outcome == outcome for a in self.answers)


def _prospect(raw: dict[str, Any]) -> str:
    for key in ("prospect_email", "prospect_company", "prospect_name"):
        value = raw.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:120]
    return "(no prospect given)"


def submit(ledger: Ledger, policy: Policy, user: User, rows: Iterable[tuple[int, dict[str, Any]]],
           submission: Submission | None = None) -> Submission:
    """Validate and import the rows for the user's partner; one answer per row, in order."""
    assert user.partner_code is not None and user.partner_id is not None
    submission = submission or Submission()
    now = ledger.clock()
    valid: list[NewReferral] = []
    pending: dict[int, Answer] = {}
    for line, raw in rows:
        row = {**{k: v for k, v in DEFAULTS.items() if not raw.get(k)}, **{k: v for k, v in raw.items() if v}}
        given = row.get("partner")
        answer = Answer(line, _prospect(row), "rejected")
        if given and str(given).strip() != user.partner_code:
            answer.problems.append(("partner", f"you can refer only as {user.partner_code}; leave the column empty"))
            submission.answers.append(answer)
            continue
        row["partner"] = user.partner_code
        checked = validate_row(line, row, now)
        if isinstance(checked, list):
            answer.problems.extend((p.column, p.reason) for p in checked)
        else:
            valid.append(checked)
            pending[line] = answer
        submission.answers.append(answer)
    actor = f"portal:user{user.id}"
    report = import_rows(ledger, valid, policy, actor, ImportReport(file=actor, rows=[]))
    outcomes = {o.line: o for o in report.rows or []}
    mine = portal.owned(ledger, user.partner_id, [o.referral_id for o in outcomes.values() if o.referral_id])
    for line, answer in pending.items():
        outcome = outcomes[line]
        if outcome.outcome == "rejected":
            answer.problems.extend((p.column, p.reason) for p in outcome.problems)
            continue
        own = mine.get(outcome.referral_id or "")
        if outcome.outcome == "unchanged":
            # The same referral again: the partner's own, or (same external id) someone else's.
            answer.outcome = "already_submitted" if own else "already_referred"
        elif own is not None and own.credited:
            answer.outcome = "accepted"
        else:
            answer.outcome = "already_referred"
        answer.referral_id = own.id if own else None
    access.audit(ledger, "portal_submission", "submitted", actor, {
        "partner": user.partner_code, "email": user.email, "accepted": submission.count("accepted"),
        "already_referred": submission.count("already_referred"),
        "already_submitted": submission.count("already_submitted"), "rejected": submission.count("rejected")})
    return submission


def submit_csv(ledger: Ledger, policy: Policy, user: User, text: str) -> Submission:
    """A CSV upload: the file import's reader (partner column optional), then :func:`submit`."""
    parsed = read_csv(text, partner_given=True)
    rows: list[tuple[int, dict[str, Any]]] = []
    submission = Submission()
    for line, raw in parsed.rows:
        if len(rows) >= MAX_ROWS:
            submission.file_problems.append((line, None, f"more than {MAX_ROWS} rows; this row and the rest were "
                                             "not read: upload them in another file"))
            break
        rows.append((line, raw))
    submission.file_problems.extend((p.line, p.column, p.reason) for p in parsed.problems
                                    if p.severity == "error" or p.line == 1)
    return submit(ledger, policy, user, rows, submission) if rows else submission

