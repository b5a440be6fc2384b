"""The ledger side of a mapping change: which referrals are linked on a CRM, and the planned
re-push of those a new mapping rewrites (push ops plus one audit event each, actor
``mapping-change``, carrying the mapping's content hash).

A re-push op is keyed ``push:{crm}:{referral_id}:mapping:{hash}``: a change is rolled out once per
referral, whatever restarts, replicas or reloads of the same file happen in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite

from refsync.state.commissions import DEAL_ATTRIBUTES, deal_values
from refsync.state.ledger import Ledger
from refsync.state.models import AuditEvent, CrmLink, Partner, Referral, SyncOp
from refsync.state.outbox import _chunks

ACTOR = "mapping-change"  # the audit actor and op reason of a mapping change's re-push
OUTSTANDING = ("pending", "in_flight", "failed", "dead")  # a re-push not landed (a dead one awaits a retry)


def rollout_key(crm: str, referral_id: str, digest: str) -> str:
    return f"push:{crm}:{referral_id}:mapping:{digest[:16]}"


def rollout_prefix(crm: str, referral_id: str) -> str:
    return f"push:{crm}:{referral_id}:mapping:"


ATTRIBUTES = ("id", "source", "medium", "campaign", "submitted_at", "prospect_email", "prospect_company",
              "prospect_name", "external_id", "status", "referral_code")


def linked_referrals(ledger: Ledger, crm: str) -> list[dict[str, Any]]:
    """Credited referrals with an active link on ``crm`` (those a mapping change may rewrite): their
    mapped attributes and those links (``object``, ``record_id``). One streamed join, in id order."""
    columns = [getattr(Referral, name) for name in ATTRIBUTES]
    query = (select(*columns, Partner.code, CrmLink.object, CrmLink.record_id)
             .join(Partner, Partner.id == Referral.partner_id).join(CrmLink, CrmLink.referral_id == Referral.id)
             .where(CrmLink.crm == crm, CrmLink.state == "active", Referral.credited.is_(True),
                    Referral.merged_into.is_(None)).order_by(Referral.id, CrmLink.id))
    found: dict[str, dict[str, Any]] = {}
    with ledger.transaction() as txn:
        for row in txn.session.execute(query.execution_options(yield_per=5000)):
            *values, partner, obj, record_id = row
            referral = found.get(values[0])
            if referral is None:
                referral = found[values[0]] = {**dict(zip(ATTRIBUTES, values, strict=True)), "partner": partner,
                                               "links": []}
            referral["links"].append({"object": obj, "record_id": record_id})
        # what the deal shows of the commissions: a mapping that starts writing it rewrites those deals
        shown = deal_values(txn.session, list(found))
    for referral_id, referral in found.items():
        referral.update(shown.get(referral_id, dict.fromkeys(DEAL_ATTRIBUTES)))
    return list(found.values())


def plan_rollout(ledger: Ledger, crm: str, fields_by_referral: Mapping[str, Sequence[str]], digest: str,
                 previous: str | None, path: str) -> int:
    """A re-push op and a ``mapping_change_planned`` audit event for each referral not planned yet
    for this mapping hash; returns how many were planned now."""
    now = ledger.clock()
    planned = 0
    ids = sorted(fields_by_referral)
    payload: dict[str, Any] = {"reason": ACTOR, "mapping_hash": digest}
    for chunk in _chunks(ids):
        with ledger.transaction() as txn:
            # Replicas that reload the same file at once: the dedupe key lets one of them plan each
            # referral, the others skip it (ON CONFLICT DO NOTHING on SQLite and PostgreSQL alike).
            dialect = txn.session.get_bind().dialect.name
            statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(SyncOp) \
                .on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(SyncOp.referral_id)
            rows = [{"kind": "push", "dedupe_key": rollout_key(crm, rid, digest), "referral_id": rid, "crm": crm,
                     "payload": payload, "state": "pending", "attempts": 0, "next_attempt_at": now,
                     "created_at": now, "updated_at": now} for rid in chunk]
            new = [str(rid) for rid in txn.session.scalars(statement, rows)]
            if not new:
                continue
            txn.session.execute(insert(AuditEvent), [
                {"referral_id": rid, "at": now, "actor": ACTOR, "kind": "mapping_change_planned",
                 "reason_code": "mapping_changed", "crm": crm, "object": None, "record_id": None,
                 "detail": {"mapping_hash": digest, "previous_hash": previous, "mapping_file": path,
                            "fields": list(fields_by_referral[rid])}} for rid in new])
            planned += len(new)
    return planned


def outstanding_rollouts(ledger: Ledger, crm: str) -> set[str]:
    """Referrals whose mapping-change re-push to ``crm`` has not landed."""
    with ledger.transaction() as txn:
        return {r for r in txn.session.scalars(select(SyncOp.referral_id).where(
            SyncOp.crm == crm, SyncOp.kind == "push", SyncOp.state.in_(OUTSTANDING),
            SyncOp.dedupe_key.like(f"push:{crm}:%:mapping:%"))) if r}
