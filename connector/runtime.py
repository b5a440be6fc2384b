"""Process-wide settings of a refsync process, applied once at start (`refsync` command, benchmarks)."""

from __future__ import annotations

import gc

# The cyclic garbage collector's thresholds. CPython's default (700 container allocations between
# young collections) made a first sync of 10,000 referrals spend a sixth of its CPU collecting: the
# poll and the push build tens of thousands of short-lived rows, dicts and records per batch, nearly
# all freed by reference counting anyway. A young collection per 50,000 allocations costs a few MB
# of late-freed cycles at most; the older generations keep their default ratios.
GC_THRESHOLDS = (50_000, 10, 10)


def tune_gc() -> None:
    """Collect cyclic garbage less often (see :data:`GC_THRESHOLDS`)."""
    gc.set_threshold(*GC_THRESHOLDS)
