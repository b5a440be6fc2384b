"""The API budget per CRM: a pure decision on whether refsync may spend another call today.

Two limits, either or both: ``daily_call_budget`` (refsync's own calls per UTC day, counted from
the recorded runs) and ``daily_budget_share`` (the share of the org's daily allocation, as the CRM
reports usage for every integration, that refsync will not push beyond).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetLimits:
    daily_calls: int | None = None
    share: float | None = None


def exhausted(limits: BudgetLimits, calls_today: int, reported_used: int | None,
              reported_limit: int | None) -> str | None:
    """Why no further call may be made today, or None while the budget allows it."""
    if limits.daily_calls is not None and calls_today >= limits.daily_calls:
        return (f"refsync made {calls_today} API calls today, its daily_call_budget is {limits.daily_calls}; "
                "writes resume at 00:00 UTC (or raise the budget)")
    if limits.share is not None and reported_used is not None and reported_limit:
        ceiling = int(reported_limit * limits.share)
        if reported_used >= ceiling:
            return (f"the org used {reported_used} of its {reported_limit} daily API calls, over refsync's share "
                    f"({limits.share:.0%} = {ceiling}); writes resume when the CRM's usage drops")
    return None
