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

from refsync.state.ledger import Ledger
from refsync.state.models import AuditEvent, CrmLink, Referral, SyncOp
from refsync.state.outbox import _chunks

ACTOR = "mapping-change"  # the audit actor and op reason of a mapping change's re-push
OUTSTANDING = ("pending", "in_flight", "failed", "dead")  # a re-push not landed (a dead one awaits a retry)


def rollout_key(crm: str, referral_id: str, digest: str) -> str:
    return f"push:{crm}:{referral_id}:mapping:{digest[:16]}"


def rollout_prefix(crm: str, referral_id: str) -> str:
    return f"push:{crm}:{referral_id}:mapping:"


def linked_referral_ids(ledger: Ledger, crm: str) -> list[str]:
    """Credited referrals with an active link on ``crm``: those a mapping change may rewrite."""
    with ledger.transaction() as txn:
        return list(txn.session.scalars(
            select(CrmLink.referral_id).distinct().join(Referral, Referral.id == CrmLink.referral_id)
            .where(CrmLink.crm == crm, CrmLink.state == "active", Referral.credited.is_(True),
                   Referral.merged_into.is_(None)).order_by(CrmLink.referral_id)))


def plan_rollout(ledger: Ledger, crm: str, fields_by_referral: Mapping[str, Sequence[str]], digest: str,
                 previous: str | None, path: str) -> int:
    """A re-push op and a ``mapping_change_planned`` audit event for each referral not planned yet
    for this mapping hash; returns how many were planned now."""
    now = ledger.clock()
    planned = 0
    ids = sorted(fields_by_referral)
    for chunk in _chunks(ids):
        with ledger.transaction() as txn:
            keys = {rollout_key(crm, rid, digest): rid for rid in chunk}
            known = set(txn.session.scalars(select(SyncOp.dedupe_key).where(SyncOp.dedupe_key.in_(list(keys)))))
            new = [rid for key, rid in keys.items() if key not in known]
            if not new:
                continue
            payload: dict[str, Any] = {"reason": ACTOR, "mapping_hash": digest}
            txn.session.execute(insert(SyncOp), [
                {"kind": "push", "dedupe_key": rollout_key(crm, rid, digest), "referral_id": rid, "crm": crm,
                 "payload": payload, "state": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now,
                 "updated_at": now} for rid in new])
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
