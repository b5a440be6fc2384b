"""The emulators' clock: epoch milliseconds that never go backwards, and can be held still."""

from __future__ import annotations

import threading
import time


class Clock:
    """``strict``: every reading is later than the one before (Salesforce: two changes never share a
    SystemModstamp). Held (the ``hold_clock`` admin action), every reading is the held instant, as
    when a bulk import gives hundreds of records one timestamp. ``ticks`` counts readings: every
    change takes one, so a cache keyed on it notices each change, held or not."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.last = 0
        self.held: int | None = None
        self.ticks = 0
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            self.ticks += 1
            if self.held is not None:
                return self.held
            self.last = max(int(time.time() * 1000), self.last + (1 if self.strict else 0))
            return self.last

    def hold(self, held: bool) -> None:
        if not held:
            self.held = None
        elif self.held is None:
            self.held = self.now_ms()
