"""Reconcile: the ledger against each CRM in full, raising, counting and resolving discrepancy alerts.

Per CRM, with batched reads only (``adapter.read`` 100/200 ids a call, ``adapter.change_pages`` for
recent deals, ``adapter.describe`` once per mapped object):
- ``mapping_drift``: a mapped field removed, renamed or made read-only; it is named in the alert
  and left out of reads (push leaves it out of writes), everything else syncs; resolved when fixed;
- ``orphaned_link``: a linked record is gone (resolved when it comes back);
- ``attribution_overwritten`` / ``attribution_conflict``: a protected field differs; a restore is
  planned unless another writer already won ``restore_limit`` times within the window;
- ``ledger_open_crm_closed``: the linked deal is closed in the CRM, the referral still open;
- ``unattributed_win``: a recent closed-won deal without attribution whose contact, email or
  company domain matches a referral.
Then, once, from the ledger: ``duplicate_referral``, ``dead_op``, ``stale_referral``.

Each check covers its kinds completely, so an open alert of a covered kind that is not found again
is resolved. A CRM that fails mid-way resolves nothing of its kinds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from refsync.adapters.base import ChangeKind, CrmRecord, ObjectSchema, Stage
from refsync.adapters.errors import CrmError
from refsync.connector.attribution import FREEMAIL
from refsync.connector.logs import get_logger
from refsync.connector.mapping import ObjectMap, drifted_fields, field_values
from refsync.connector.push import CrmTarget, same_value
from refsync.connector.rollout import roll_out
from refsync.state import reconciliation as repo
from refsync.state.ledger import Ledger
from refsync.state.models import OPEN_STATUSES
from refsync.state.notifications import AlertSpec, AlertSync, duplicate_alert, sync_alerts
from refsync.state.rollout import outstanding_rollouts

log = get_logger("refsync.reconcile")
CRM_KINDS = ("mapping_drift", "orphaned_link", "attribution_overwritten", "attribution_conflict",
             "ledger_open_crm_closed", "unattributed_win")
LEDGER_KINDS = ("duplicate_referral", "dead_op", "stale_referral")
CONTACT = {"salesforce": ("Contact", "Email", "ContactId"), "hubspot": ("contacts", "email", "associations.contacts")}


@dataclass(frozen=True)
class ReconcileSettings:
    stale_after_days: int = 30
    won_lookback_days: int = 90
    page_size: int = 5000


@dataclass
class ReconcileReport:
    records_read: int = 0
    deals_checked: int = 0
    repairs: int = 0
    api_calls: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    alerts: AlertSync = field(default_factory=AlertSync)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, Any]:
        return {"records_read": self.records_read, "deals_checked": self.deals_checked, "repairs": self.repairs,
                "api_calls": sum(self.api_calls.values()), "api_calls_by_crm": dict(self.api_calls),
                "found": dict(sorted(self.by_kind.items())), "raised": self.alerts.raised,
                "seen_again": self.alerts.seen_again, "resolved": self.alerts.resolved,
                "seconds": round(self.seconds, 2), "errors": list(self.errors)}


# -- pure decisions ----------------------------------------------------------------------------
def readable_fields(obj: ObjectMap, schema: ObjectSchema) -> list[str]:
    """Mapped fields that still exist (a removed field would fail a whole Salesforce query)."""
    return [name for name in obj.fields if name in schema.fields]


def stage_of(stages: Sequence[Stage], value: Any) -> Stage | None:
    text = str(value or "")
    return next((s for s in stages if s.internal_id == text), None) or next(
        (s for s in stages if s.label == text), None)


def company_domain(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    domain = email.rsplit("@", 1)[1].lower()
    return None if domain in FREEMAIL else domain


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value)) if value not in (None, "") else None
    except InvalidOperation:
        return None


# -- per CRM -----------------------------------------------------------------------------------
class _CrmCheck:
    def __init__(self, ledger: Ledger, target: CrmTarget, settings: ReconcileSettings) -> None:
        self.ledger = ledger
        self.target = target
        self.settings = settings
        self.crm = target.name
        self.found: list[AlertSpec] = []
        self.undecided: set[tuple[str, str]] = set()  # records with a push on its way: judged next time
        self.records_read = 0
        self.deals_checked = 0
        self.repairs = 0

    def alert(self, kind: str, key: str, message: str, referral_id: str | None = None,
              record_id: str | None = None) -> None:
        self.found.append(AlertSpec(kind, f"{kind}:{key}", message, self.crm, referral_id, record_id))

    def run(self) -> None:
        mapping = self.target.mapping
        adapter = self.target.adapter
        schemas = {obj.name: adapter.describe(obj.name) for obj in mapping.objects()}
        self.target.schemas.update(schemas)  # push and poll see today's schema
        for obj in mapping.objects():
            for name, problem in drifted_fields(obj, schemas[obj.name]):
                self.alert("mapping_drift", f"{self.crm}:{obj.name}:{name}",
                           f"{self.crm} {obj.name}.{name} was {problem}, so refsync leaves it out of reads and writes "
                           f"while every other field keeps syncing; restore the field in {self.crm} or fix "
                           f"[{'lead' if obj is mapping.lead else 'deal'}.fields] in the mapping file, then run "
                           "`refsync mappings check`.")
        stages = adapter.stages(mapping.deal.name)
        self._links(schemas, stages)
        self._unattributed_wins(schemas, stages)

    def _links(self, schemas: dict[str, ObjectSchema], stages: list[Stage]) -> None:
        mapping = self.target.mapping
        objects = {obj.name: obj for obj in mapping.objects()}
        # a dead mapping-change re-push too: its record keeps the old mapping's values on purpose
        pending = repo.outstanding_pushes(self.ledger, self.crm) | outstanding_rollouts(self.ledger, self.crm)
        window = timedelta(hours=mapping.restore_window_hours)
        restores = repo.restore_counts(self.ledger, self.crm, self.ledger.clock() - window)
        repairs: list[tuple[str, str, str, str, dict[str, Any]]] = []
        revived: list[int] = []
        amounts: dict[str, tuple[Decimal | None, str | None]] = {}
        for page in repo.linked_pages(self.ledger, self.crm, self.settings.page_size):
            by_object: dict[str, list[repo.LinkRow]] = {}
            for row in page:
                if row.object in objects:
                    by_object.setdefault(row.object, []).append(row)
            for name, rows in by_object.items():
                obj = objects[name]
                extra = [f for f in (mapping.stage_field, mapping.amount_field, mapping.currency_field)
                         if f and obj is mapping.deal and f in schemas[name].fields]
                fields = list(dict.fromkeys([*readable_fields(obj, schemas[name]), *extra]))
                records = self.target.adapter.read(name, [r.record_id for r in rows], fields)
                self.records_read += len(rows)
                for row in rows:
                    record = records.get(row.record_id)
                    if record is None:
                        self.alert("orphaned_link", f"{self.crm}:{name}:{row.record_id}",
                                   f"{name} {row.record_id} carrying referral {row.referral['id']} no longer exists "
                                   f"in {self.crm}; restore it from the recycle bin, or accept the loss with "
                                   "`refsync alerts accept ALERT_ID --by NAME`.",
                                   row.referral["id"], row.record_id)
                        continue
                    if row.state == "deleted":
                        revived.append(row.link_id)
                    if record.id != row.record_id:
                        continue  # merged away: the poll moves the link to the survivor
                    self._fields(obj, schemas[name], row, record, pending, restores, repairs)
                    if obj is mapping.deal:
                        self._deal(row, record, stages, amounts)
        if repairs:
            stamp = f"reconcile-{self.ledger.clock().date().isoformat()}"
            self.repairs = repo.plan_repairs(self.ledger, self.crm, repairs, stamp)
        if revived:
            repo.revive_links(self.ledger, self.crm, revived)
        repo.record_pipeline(self.ledger, amounts)

    def _fields(self, obj: ObjectMap, schema: ObjectSchema, row: repo.LinkRow, record: CrmRecord,
                pending: set[str], restores: dict[tuple[str, str], int],
                repairs: list[tuple[str, str, str, str, dict[str, Any]]]) -> None:
        referral = row.referral
        if referral["id"] in pending:
            self.undecided.add((self.crm, record.id))
            return
        if not referral["credited"] or referral["merged_into"] or row.state != "active":
            return
        desired = field_values(obj, referral, schema, rules=("protect",))
        mapping = self.target.mapping
        writer = record.modified_by or "another writer"
        for name, value in desired.items():
            if name not in schema.fields or value in (None, "") or same_value(value, record.fields.get(name)):
                continue
            key = f"{self.crm}:{record.id}:{name}"
            if restores.get((record.id, name), 0) >= mapping.restore_limit:
                self.alert("attribution_conflict", key,
                           f"{writer} keeps overwriting {obj.name}.{name} on {record.id} (referral {referral['id']}); "
                           f"refsync stopped restoring it after {mapping.restore_limit} restores in "
                           f"{mapping.restore_window_hours}h. Find that writer (workflow, integration, user) and stop "
                           "it, then run `refsync sync --once`.", referral["id"], record.id)
                continue
            self.alert("attribution_overwritten", key,
                       f"{obj.name}.{name} on {record.id} holds {record.fields.get(name)!r} instead of referral "
                       f"{referral['id']}'s {value!r}; refsync queued a restore. Nothing to do unless it recurs.",
                       referral["id"], record.id)
            repairs.append((referral["id"], obj.name, record.id, name,
                            {"field": name, "found": record.fields.get(name), "restoring": value,
                             "by": "reconcile"}))

    def _deal(self, row: repo.LinkRow, record: CrmRecord, stages: list[Stage],
              amounts: dict[str, tuple[Decimal | None, str | None]]) -> None:
        mapping = self.target.mapping
        referral = row.referral
        if referral["merged_into"] or row.state != "active":
            return
        stage = stage_of(stages, record.fields.get(mapping.stage_field))
        if referral["status"] in OPEN_STATUSES:
            amounts[referral["id"]] = (_decimal(record.fields.get(mapping.amount_field or "")),
                                       record.fields.get(mapping.currency_field or "") or None)
        if stage is not None and stage.is_closed and referral["status"] in OPEN_STATUSES:
            self.alert("ledger_open_crm_closed", f"{self.crm}:{record.id}",
                       f"{mapping.deal.name} {record.id} is {stage.label} in {self.crm} but referral "
                       f"{referral['id']} is still {referral['status']}; run `refsync sync --once`, and if it stays "
                       "open add the stage to [stages] in the mapping file.", referral["id"], record.id)

    def _unattributed_wins(self, schemas: dict[str, ObjectSchema], stages: list[Stage]) -> None:
        mapping = self.target.mapping
        deal = mapping.deal
        contact_obj, email_field, contact_ref = CONTACT.get(self.crm, ("", "", ""))
        fields = [f for f in (deal.id_field, mapping.stage_field, mapping.amount_field, contact_ref)
                  if f and f in schemas[deal.name].fields]
        since = self.ledger.clock() - timedelta(days=self.settings.won_lookback_days)
        wins: list[CrmRecord] = []
        self.deals_checked = 0
        for page in self.target.adapter.change_pages(deal.name, since, fields):  # only the wins are kept
            wins += [c.record for c in page.changes if c.kind is ChangeKind.UPDATED and c.record is not None
                     and (stage := stage_of(stages, c.record.fields.get(mapping.stage_field))) is not None
                     and stage.is_won and not c.record.fields.get(deal.id_field)]
            self.deals_checked += len(page.changes)
        wins = [w for w in wins if w.id not in repo.linked_referrals(self.ledger, self.crm, [w.id for w in wins])]
        if not wins:
            return
        contacts_of = {w.id: self._contact_ids(w, contact_ref) for w in wins}
        contact_ids = sorted({c for ids in contacts_of.values() for c in ids})
        by_contact = repo.linked_referrals(self.ledger, self.crm, contact_ids)
        emails: dict[str, str] = {}
        if contact_ids and contact_obj:
            for cid, rec in self.target.adapter.read(contact_obj, contact_ids, [email_field]).items():
                if rec is not None and rec.fields.get(email_field):
                    emails[cid] = str(rec.fields[email_field]).lower()
        domains = {cid: d for cid, e in emails.items() if (d := company_domain(e))}
        candidates = repo.referrals_matching(self.ledger, list(emails.values()), list(domains.values()))
        for win in wins:
            match = self._match(contacts_of[win.id], by_contact, emails, domains, candidates)
            if match is None:
                continue
            referral_id, partner, how = match
            amount = win.fields.get(mapping.amount_field or "")
            self.alert("unattributed_win", f"{self.crm}:{win.id}",
                       f"Closed-won {deal.name} {win.id}{f' ({amount})' if amount else ''} matches referral "
                       f"{referral_id} from partner {partner} by {how} but carries no attribution; if the partner "
                       f"referred it, set {deal.id_field} = {referral_id} on the deal (refsync then keeps it), else "
                       "dismiss it.", referral_id, win.id)

    @staticmethod
    def _contact_ids(win: CrmRecord, contact_ref: str) -> list[str]:
        value = win.fields.get(contact_ref)
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        return [str(value)] if value else []

    @staticmethod
    def _match(contacts: list[str], by_contact: dict[str, str], emails: dict[str, str], domains: dict[str, str],
               candidates: list[dict[str, Any]]) -> tuple[str, str, str] | None:
        for cid in contacts:
            if cid in by_contact:
                partner = next((c["partner"] for c in candidates if c["id"] == by_contact[cid]), "?")
                return by_contact[cid], partner, f"its contact {cid}"
        for cid in contacts:
            email = emails.get(cid)
            hit = next((c for c in candidates if email and c["prospect_email"] == email), None)
            if hit:
                return hit["id"], hit["partner"], f"email {email}"
        for cid in contacts:
            domain = domains.get(cid)
            hit = next((c for c in candidates if domain and domain in (c["prospect_domain"], c["company_key"])), None)
            if hit:
                return hit["id"], hit["partner"], f"company domain {domain}"
        return None


def _ledger_checks(ledger: Ledger, settings: ReconcileSettings) -> list[AlertSpec]:
    found: list[AlertSpec] = []
    for dup in repo.flagged_duplicates(ledger):
        found.append(duplicate_alert(dup["id"], dup["partner"], dup["prospect"], dup["duplicate_of"]))
    for shared in repo.shared_records(ledger):
        ids = ", ".join(shared["referrals"])
        found.append(AlertSpec(
            "duplicate_referral", f"duplicate_referral:{shared['crm']}:{shared['record_id']}",
            f"{shared['object']} {shared['record_id']} in {shared['crm']} is linked to {len(shared['referrals'])} "
            f"credited referrals ({ids}); keep one credited and decline the others.",
            crm=shared["crm"], referral_id=shared["referrals"][0], record_id=shared["record_id"]))
    for op in repo.dead_ops(ledger):
        found.append(AlertSpec(
            "dead_op", f"dead_op:{op['id']}",
            f"{op['kind']} op {op['id']} to {op['crm']} gave up ({op['error']}: {op['message']}); fix the cause, then "
            f"`refsync retry {op['id']}`.", crm=op["crm"], referral_id=op["referral_id"], record_id=op["record_id"]))
    cutoff = ledger.clock() - timedelta(days=settings.stale_after_days)
    for stale in repo.stale_referrals(ledger, cutoff):
        found.append(AlertSpec(
            "stale_referral", f"stale_referral:{stale['id']}",
            f"Referral {stale['id']} from {stale['partner']} has been {stale['status']} since "
            f"{stale['since'].date().isoformat()} with no movement; ask its owner to work or close it before it "
            "expires.", referral_id=stale["id"]))
    return found


def reconcile(ledger: Ledger, targets: Mapping[str, CrmTarget], settings: ReconcileSettings) -> ReconcileReport:
    """Compare the ledger with every CRM in full and bring the alerts up to date; the run is recorded."""
    report = ReconcileReport()
    started = time.monotonic()
    with ledger.transaction() as txn:
        run_id = txn.start_run("reconcile")
    found: list[AlertSpec] = []
    undecided: set[tuple[str, str]] = set()
    scope: list[tuple[str, str | None]] = [(kind, None) for kind in LEDGER_KINDS]
    for name, target in targets.items():
        roll_out(ledger, target)  # a mapping changed since the last run is re-pushed, not reported as overwrites
        check = _CrmCheck(ledger, target, settings)
        before = target.adapter.budget().total_calls
        try:
            check.run()
        except CrmError as exc:
            report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log.error("reconcile of this CRM failed; its alerts stay as they were", crm=name, error=str(exc))
        else:
            scope += [(kind, name) for kind in CRM_KINDS]
            found += check.found
            undecided |= check.undecided
        report.api_calls[name] = target.adapter.budget().total_calls - before
        report.records_read += check.records_read
        report.deals_checked += check.deals_checked
        report.repairs += check.repairs
    found += _ledger_checks(ledger, settings)
    for spec in found:
        report.by_kind[spec.kind] = report.by_kind.get(spec.kind, 0) + 1
    report.alerts = sync_alerts(ledger, found, scope, undecided)
    report.seconds = time.monotonic() - started
    with ledger.transaction() as txn:
        txn.finish_run(run_id, "failed" if report.errors else "ok", report.counts(), "; ".join(report.errors) or None)
    log.info("reconcile finished", **{k: v for k, v in report.counts().items() if k not in ("errors",)})
    return report
