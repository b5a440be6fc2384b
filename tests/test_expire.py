"""Expiry: referrals left open past the window become expired with a transition, an audit event
and a partner notification; a referral whose deal is already moving is never expired."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from refsync.connector.attribution import Policy
from refsync.connector.expire import expire_referrals
from refsync.connector.imports import import_file
from refsync.state.ledger import Ledger
from refsync.state.notifications import set_partner_webhook
from refsync.state.observe import observing

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"


def _import(ledger: Ledger, tmp_path: Path, rows: list[str]) -> dict[str, str]:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime(2026, 10, 30, tzinfo=UTC))
    return {r["external_id"]: r["id"] for r in ledger.referrals()}


def test_old_open_referral_expires_with_transition_audit_and_notification(
        ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _import(ledger, tmp_path, ["acme,old@a.example,,,,,,2026-07-01T00:00:00Z,,old",
                                     "acme,new@b.example,,,,,,2026-10-20T00:00:00Z,,new"])
    monkeypatch.setenv("T_SECRET", "s")
    set_partner_webhook(ledger, "acme", "https://partner.example/hook", "env:T_SECRET")
    counts = expire_referrals(ledger, 90, "policy-7")
    assert counts.expired == 1
    old = ledger.referral(ids["old"])
    assert old is not None and old["status"] == "expired"
    assert old["status_history"][-1]["source"] == "expiry"
    [event] = [e for e in old["timeline"] if e["kind"] == "status_changed"]
    assert event["reason_code"] == "expired" and event["policy_version"] == "policy-7"
    assert event["actor"] == "refsync:expiry" and event["detail"]["reason"] == "expired_after_90_days"
    assert "notification_queued" in [e["kind"] for e in old["timeline"]]
    [op] = ledger.ops()
    assert op["kind"] == "notify" and op["payload"]["status"] == "expired" and op["crm"] == "webhook"
    assert ledger.referral(ids["new"])["status"] == "submitted"  # type: ignore[index]
    assert expire_referrals(ledger, 90, "policy-7").expired == 0


def test_referral_with_a_moving_deal_is_not_expired(ledger: Ledger, tmp_path: Path) -> None:
    ids = _import(ledger, tmp_path, ["acme,deal@a.example,,,,,,2026-06-01T00:00:00Z,,deal",
                                     "acme,opp@a.example,,,,,,2026-06-01T00:00:00Z,,opp"])
    with observing(ledger, "salesforce") as ob:
        ob.link(ids["deal"], "Opportunity", "006000000000001AAA", "opportunity")
        referral = ob.referral(ids["opp"])
        assert referral is not None
        ob.transition(referral, "proposal", datetime(2026, 6, 5, tzinfo=UTC), None)
    assert expire_referrals(ledger, 90, "p").expired == 0
    assert {r["status"] for r in ledger.referrals()} == {"submitted", "proposal"}


def test_dry_run_counts_without_expiring(ledger: Ledger, tmp_path: Path) -> None:
    _import(ledger, tmp_path, ["acme,old@a.example,,,,,,2026-07-01T00:00:00Z,,old"])
    assert expire_referrals(ledger, 90, "p", dry_run=True).candidates == 1
    assert ledger.referrals()[0]["status"] == "submitted"
