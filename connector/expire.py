"""Expiry: referrals left in an early open status past ``attribution.expire_after_days`` become
``expired``, each with a status transition (source ``expiry``), an audit event carrying the policy
version, and a partner notification.

Only referrals before a deal exists (submitted, accepted, contacted, qualified) and without a live
opportunity/deal link expire: a referral whose deal is already moving is never expired. The window
runs from ``submitted_at``, the same clock first-to-refer uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from refsync.connector.logs import get_logger
from refsync.state import reconciliation as repo
from refsync.state.ledger import Ledger

log = get_logger("refsync.expire")


@dataclass
class ExpiryCounts:
    expired: int = 0
    candidates: int = 0


def expire_referrals(ledger: Ledger, days: int, policy_version: str, batch: int = 500,
                     dry_run: bool = False) -> ExpiryCounts:
    """Expire every referral past its window, ``batch`` per transaction; ``dry_run`` only counts."""
    counts = ExpiryCounts()
    cutoff = ledger.clock() - timedelta(days=days)
    if dry_run:
        counts.candidates = len(repo.expiry_candidates(ledger, cutoff, 10**9))
        return counts
    with ledger.transaction() as txn:
        run_id = txn.start_run("expire")
    while ids := repo.expiry_candidates(ledger, cutoff, batch):
        counts.candidates += len(ids)
        expired = repo.expire(ledger, ids, days, policy_version)
        counts.expired += expired
        if expired == 0:  # nothing moved: do not spin on rows another replica holds
            break
    with ledger.transaction() as txn:
        txn.finish_run(run_id, "ok", {"expired": counts.expired, "candidates": counts.candidates})
    if counts.expired:
        log.info("referrals expired", expired=counts.expired, after_days=days)
    return counts
