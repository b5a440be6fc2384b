"""The API budget: refsync stops before spending more than it may."""

from __future__ import annotations

from refsync.connector.budget import BudgetLimits, exhausted


def test_own_daily_calls_limit() -> None:
    assert exhausted(BudgetLimits(daily_calls=100), 99, None, None) is None
    reason = exhausted(BudgetLimits(daily_calls=100), 100, None, None)
    assert reason is not None and "daily_call_budget is 100" in reason


def test_share_of_the_orgs_allocation_as_the_crm_reports_it() -> None:
    limits = BudgetLimits(share=0.5)
    assert exhausted(limits, 0, 7499, 15000) is None
    assert exhausted(limits, 0, 7500, 15000) is not None
    assert exhausted(limits, 0, None, None) is None  # the CRM said nothing yet: no basis to stop


def test_no_limits_never_stop() -> None:
    assert exhausted(BudgetLimits(), 10**9, 10**9, 1) is None
