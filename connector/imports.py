"""`refsync import`: validated rows into the ledger, with first-to-refer decided on the way in.

Rows are written in batches of one transaction each, every row inside its own savepoint, so a row
the database refuses is reported and the rest of its batch still lands. Rows the ledger already
holds (same external id, or same content) are counted as unchanged: re-importing changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from refsync.connector import attribution
from refsync.connector.attribution import Policy, Rival
from refsync.connector.intake import NewReferral, RowProblem, read_file, validated
from refsync.connector.logs import get_logger
from refsync.errors import LedgerError
from refsync.state.ledger import Ledger, LedgerTxn
from refsync.state.models import OPEN_STATUSES, Referral
from refsync.state.notifications import duplicate_alert, enqueue_status_notice, raise_alert
from refsync.state.trail import Holder, Landing, Trail

BATCH = 500
# The ledger itself is unavailable (connection lost, locked): no row's fault, the whole write fails
# and the caller retries. Every other exception a row's write raises is that row's problem.
UNAVAILABLE = (OperationalError, LedgerError)
log = get_logger("refsync.import")


@dataclass(frozen=True)
class RowOutcome:
    """What happened to one row: the HTTP intake answers each item with it."""

    line: int
    outcome: Literal["imported", "unchanged", "rejected"]
    referral_id: str | None = None
    problems: tuple[RowProblem, ...] = ()


@dataclass
class ImportReport:
    file: str
    imported: int = 0
    unchanged: int = 0
    rejected: list[RowProblem] = field(default_factory=list)
    notes: list[RowProblem] = field(default_factory=list)
    duplicates: int = 0
    # Per-row outcomes, kept only when asked for (``[]`` instead of None): a file import of a
    # million rows must not hold a million outcomes in memory.
    rows: list[RowOutcome] | None = None

    @property
    def rejected_rows(self) -> int:
        return len({p.line for p in self.rejected})

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "imported": self.imported,
            "unchanged": self.unchanged,
            "duplicates_flagged_or_declined": self.duplicates,
            "rejected_rows": self.rejected_rows,
            "problems": [
                {"line": p.line, "column": p.column, "reason": p.reason, "severity": p.severity}
                for p in [*self.rejected, *self.notes]
            ],
        }


class Holders:
    """The referrals that hold credit for the prospects of one batch, kept current as rows land.

    Loaded with one query per batch; the same matching rules as a per-row lookup: same email, or
    same company key where one side has no email; the earliest holder within the window counts.
    """

    def __init__(self, holders: Iterable[Holder], window: timedelta) -> None:
        self.window = window
        self.by_email: dict[str, list[Holder]] = {}
        self.by_company: dict[str, list[Holder]] = {}
        for holder in holders:
            self.add(holder)

    def add(self, referral: Holder) -> None:
        if referral.prospect_email:
            self.by_email.setdefault(referral.prospect_email, []).append(referral)
        if referral.company_key:
            self.by_company.setdefault(referral.company_key, []).append(referral)

    def replace(self, landing: Landing, referral: Referral) -> None:
        """``referral`` is ``landing`` loaded to be changed: later rows see the change."""
        for index in (self.by_email.get(landing.prospect_email or ""), self.by_company.get(landing.company_key or "")):
            if index is not None:
                index[:] = [referral if r is landing else r for r in index]

    def rival(self, row: NewReferral) -> Holder | None:
        candidates: list[Holder] = []
        if row.prospect_email:
            candidates += self.by_email.get(row.prospect_email, [])
        if row.company_key:
            candidates += [r for r in self.by_company.get(row.company_key, [])
                           if not row.prospect_email or not r.prospect_email]
        live = [r for r in candidates if r.credited and r.status not in ("declined", "expired")
                and r.merged_into is None and abs(r.submitted_at - row.submitted_at) <= self.window]
        return min(live, key=lambda r: r.submitted_at, default=None)


def _record(trail: Trail, holders: Holders, row: NewReferral, policy: Policy, actor: str) -> tuple[str, bool]:
    """Insert one referral with its attribution decision; its id, and True when credit is contested."""
    txn = trail.txn
    holder = holders.rival(row)
    rival = Rival(holder.id, holder.submitted_at, holder.status) if holder else None
    decision = attribution.decide(row.submitted_at, rival, policy)
    referral = trail.referral({
        "external_id": row.external_id,
        "fingerprint": row.fingerprint,
        "partner_id": txn.partner_id(row.partner),
        "referral_code": row.referral_code,
        "prospect_email": row.prospect_email,
        "prospect_company": row.prospect_company,
        "prospect_name": row.prospect_name,
        "prospect_domain": row.prospect_domain,
        "company_key": row.company_key,
        "source": row.source,
        "medium": row.medium,
        "campaign": row.campaign,
        "link": row.link,
        "submitted_at": row.submitted_at,
        "status": decision.status,
        "credited": decision.credited,
        "review_required": decision.review_required,
        "duplicate_of": decision.duplicate_of,
        "attribution_model": policy.model,
        "policy_version": policy.version,
        "attribution_reason": decision.reason,
    })
    trail.transition(referral.id, None, "submitted", row.submitted_at, "import")
    trail.audit(referral.id, "submitted", "imported", actor, detail={"line": row.line, "partner": row.partner})
    trail.audit(
        referral.id, "attribution_decided", decision.reason, "refsync", policy_version=policy.version,
        detail={"model": policy.model, "credited": decision.credited, "rival": rival.id if rival else None},
    )
    if decision.status == "declined":
        trail.transition(referral.id, "submitted", "declined", txn.clock(), "attribution", detail=decision.reason)
        # the notification op points at the referral, and its audit event follows the trail
        enqueue_status_notice(txn.session, trail.loaded(referral.id), "submitted", "declined", txn.clock(),
                              "attribution", txn.clock())
    if decision.review_required:  # flagged for a person: the alert is raised now, not at the next reconcile
        trail.flush()  # the alert points at the referral
        raise_alert(txn.session, duplicate_alert(referral.id, row.partner, row.prospect_email or row.prospect_company,
                                                 decision.duplicate_of), txn.clock(), new=True)
    if decision.rival_loses and holder is not None:
        _demote(trail, holders, holder, referral.id, decision, policy)
    holders.add(referral)
    return referral.id, rival is not None


def _demote(
    trail: Trail, holders: Holders, holder: Holder, winner_id: str, decision: attribution.Decision, policy: Policy
) -> None:
    txn = trail.txn
    trail.flush()  # the winner must exist before the holder points at it (self-referencing FK)
    if isinstance(holder, Landing):  # a referral of this same batch: changed as an ORM object
        landed = trail.loaded(holder.id)
        holders.replace(holder, landed)
        holder = landed
    previous = holder.status
    holder.credited = False
    holder.duplicate_of = winner_id
    holder.attribution_reason = decision.rival_reason or ""
    holder.review_required = decision.rival_status != "declined"
    holder.revision += 1
    if decision.rival_status and decision.rival_status != previous:
        holder.status = decision.rival_status
        holder.status_changed_at = txn.clock()
        trail.transition(holder.id, previous, decision.rival_status, txn.clock(), "attribution",
                         detail=decision.rival_reason)
        trail.flush()  # the notice's audit event (ORM) comes after the transition it announces
        enqueue_status_notice(txn.session, holder, previous, decision.rival_status, txn.clock(), "attribution",
                              txn.clock())
    trail.audit(
        holder.id, "attribution_changed", decision.rival_reason or "", "refsync", policy_version=policy.version,
        detail={"model": policy.model, "credit_moved_to": winner_id},
    )
    if holder.review_required and holder.status in OPEN_STATUSES:
        partner = holder.partner.code if holder.partner is not None else "?"
        raise_alert(txn.session, duplicate_alert(holder.id, partner, holder.prospect_email or holder.prospect_company,
                                                 winner_id), txn.clock())


Validated = NewReferral | list[RowProblem]


def _batches(items: Iterable[Validated], size: int) -> Iterable[list[Validated]]:
    batch: list[Validated] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _existing_ids(txn: LedgerTxn, rows: Sequence[NewReferral]) -> dict[str, str]:
    """The ids of the referrals the ledger already holds for these rows, keyed like
    ``known_fingerprints`` (fingerprint, or ``ext:`` + external id): an unchanged row is answered
    with the referral it matched."""
    found: dict[str, str] = {}
    fingerprints = [r.fingerprint for r in rows]
    external_ids = [r.external_id for r in rows if r.external_id]
    if fingerprints:
        for referral_id, fp in txn.session.execute(
                select(Referral.id, Referral.fingerprint).where(Referral.fingerprint.in_(fingerprints))):
            found[fp] = referral_id
    if external_ids:
        for referral_id, ext in txn.session.execute(
                select(Referral.id, Referral.external_id).where(Referral.external_id.in_(external_ids))):
            found[f"ext:{ext}"] = referral_id
    return found


def _write_batch(
    ledger: Ledger, rows: list[NewReferral], policy: Policy, window: timedelta, actor: str,
    report: ImportReport, per_row: bool,
) -> None:
    """Write one batch in one transaction; with ``per_row`` each row gets its own savepoint."""
    outcome = ImportReport(report.file, rows=[] if report.rows is not None else None)
    with ledger.transaction() as txn, txn.session.no_autoflush:
        trail = Trail(txn)
        txn.know_partners({r.partner for r in rows})
        known = txn.known_fingerprints(
            [r.fingerprint for r in rows], [r.external_id for r in rows if r.external_id]
        )
        ids = _existing_ids(txn, rows) if outcome.rows is not None else {}
        any_email = {r.company_key for r in rows if r.company_key and not r.prospect_email}
        holders = Holders(txn.credit_holders(
            {r.prospect_email for r in rows if r.prospect_email}, any_email,
            {r.company_key for r in rows if r.company_key and r.prospect_email} - any_email,
        ), window)
        for row in rows:
            ext_key = f"ext:{row.external_id}" if row.external_id else None
            if row.fingerprint in known or (ext_key and ext_key in known):
                outcome.unchanged += 1
                if outcome.rows is not None:
                    match = ids.get(row.fingerprint) or (ids.get(ext_key) if ext_key else None)
                    outcome.rows.append(RowOutcome(row.line, "unchanged", match))
                continue
            if per_row:
                problem: RowProblem | None = None
                trail.discard()  # what a refused row before this one added went with its savepoint
                try:
                    with txn.savepoint():
                        referral_id, contested = _record(trail, holders, row, policy, f"{actor}:{row.line}")
                        trail.flush()
                except UNAVAILABLE:
                    raise
                except IntegrityError as exc:
                    problem = RowProblem(
                        row.line, "external_id" if row.external_id else None,
                        f"the ledger refused the row ({exc.orig}); it conflicts with a row already imported",
                    )
                except Exception as exc:  # noqa: BLE001 - a value the ledger refuses is this row's problem only
                    log.warning("the ledger refused a row", line=row.line, error=type(exc).__name__)
                    problem = RowProblem(row.line, None, f"the ledger refused the row ({type(exc).__name__}); "
                                         "check its values")
                if problem is not None:
                    outcome.rejected.append(problem)
                    if outcome.rows is not None:
                        outcome.rows.append(RowOutcome(row.line, "rejected", problems=(problem,)))
                    continue
            else:
                referral_id, contested = _record(trail, holders, row, policy, f"{actor}:{row.line}")
            known.add(row.fingerprint)
            ids[row.fingerprint] = referral_id
            if ext_key:
                known.add(ext_key)
                ids[ext_key] = referral_id
            outcome.imported += 1
            outcome.duplicates += contested
            outcome.notes.extend(row.notes)
            if outcome.rows is not None:
                outcome.rows.append(RowOutcome(row.line, "imported", referral_id, row.notes))
        trail.flush()
    # Counted only once the transaction committed: a failed batch reports nothing twice.
    report.imported += outcome.imported
    report.unchanged += outcome.unchanged
    report.duplicates += outcome.duplicates
    report.rejected.extend(outcome.rejected)
    report.notes.extend(outcome.notes)
    if report.rows is not None and outcome.rows is not None:
        report.rows.extend(outcome.rows)


def import_rows(
    ledger: Ledger, rows: Sequence[NewReferral], policy: Policy, actor: str,
    report: ImportReport | None = None,
) -> ImportReport:
    """Write validated rows with first-to-refer decided, exactly as ``refsync import`` does.

    Shared by the file import and the HTTP intake so both decide credit the same way. Rows go in
    batches of one transaction each; when another writer inserted one of a batch's rows meanwhile,
    the batch is redone row by row so only the conflicting rows are reported. Rows the ledger
    already holds are unchanged. Counts are added to ``report`` (a new one when None); give it
    ``rows=[]`` to also get each row's outcome with its referral id.
    """
    report = report if report is not None else ImportReport(file=actor)
    window = timedelta(days=policy.window_days)
    for start in range(0, len(rows), BATCH):
        batch = list(rows[start:start + BATCH])
        try:
            _write_batch(ledger, batch, policy, window, actor, report, per_row=False)
        except UNAVAILABLE:
            raise
        except Exception:  # noqa: BLE001 - redone row by row below, where each failure is located
            # Someone else wrote one of these rows meanwhile, or one row holds a value the ledger
            # refuses: redo the batch row by row, so only those rows are reported and the rest land.
            _write_batch(ledger, batch, policy, window, actor, report, per_row=True)
    return report


def import_file(
    ledger: Ledger, path: Path, policy: Policy, now: datetime,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import ``path``; every row either lands, is unchanged, or is reported with its line."""
    parsed = read_file(path)
    report = ImportReport(file=str(path))
    actor = f"import:{path.name}"
    with ledger.transaction() as txn:
        run_id = txn.start_run("import")
    status, error = "failed", None
    try:
        for number, batch in enumerate(_batches(validated(parsed, now), BATCH), start=1):
            if number in (4, 20) or number % 100 == 0:  # the table grows by orders of magnitude early on
                ledger.refresh_statistics()
            rows = [r for r in batch if isinstance(r, NewReferral)]
            for item in batch:
                if not isinstance(item, NewReferral):
                    report.rejected.extend(item)
            import_rows(ledger, rows, policy, actor, report)
            if progress:
                progress(len(batch))
        for problem in parsed.problems:  # file-level and unreadable-row problems, known once all rows were read
            (report.notes if problem.severity == "note" else report.rejected).append(problem)
        report.rejected.sort(key=lambda p: p.line)
        status = "ok" if not report.rejected else "rejected_rows"
    except BaseException as exc:  # the run is finished as failed, then the error goes on (Ctrl-C too)
        error = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        # Always finished with its outcome: a run left "running" reads as an import still going.
        with ledger.transaction() as txn:
            txn.finish_run(run_id, status, {
                "imported": report.imported, "unchanged": report.unchanged, "rejected": report.rejected_rows,
            }, error)
    log.info("import finished", file=str(path), imported=report.imported, unchanged=report.unchanged,
             rejected=report.rejected_rows)
    return report

