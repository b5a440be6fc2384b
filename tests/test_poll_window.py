"""The poll window against a CRM whose listing trails its writes (HubSpot's search index:
crm-api/hubspot/README.md, "search is eventually consistent"), as a property: whatever the writes,
their indexing delays (up to the lag refsync allows for) and the times refsync polls at, once the
CRM has been quiet for a while every record's last change has been handled, and a poll right after
a burst lists only what is new.

The CRM here is a model (a list of versions per record, each visible from its indexing time), so
thousands of write and poll histories run in seconds; the real adapters and emulators are covered
by tests/test_quiet_poll.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from refsync.connector.poll import PollWindow

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LAG = timedelta(minutes=4)  # HubSpot: the two-minute overlap and the adapter's two-minute look-back


@dataclass
class Crm:
    """Versions per record: (stamp, visible from). A listing shows each record as its newest
    visible version, as HubSpot's search answers a record's old values until it has indexed."""

    versions: dict[str, list[tuple[datetime, datetime]]] = field(default_factory=dict)

    def write(self, record: str, at: datetime, delay: timedelta) -> None:
        self.versions.setdefault(record, []).append((at, at + delay))

    def listing(self, now: datetime, lower: datetime) -> list[tuple[str, datetime]]:
        found = []
        for record, versions in self.versions.items():
            visible = [stamp for stamp, from_ in versions if from_ <= now]
            if visible and visible[-1] >= lower:
                found.append((record, visible[-1]))
        return sorted(found, key=lambda pair: pair[1])

    def last_stamps(self) -> dict[str, datetime]:
        return {record: versions[-1][0] for record, versions in self.versions.items()}


@dataclass
class Poller:
    """What poll_target does with a window: plan, list, skip what was handled, move on."""

    cursor: datetime | None = None
    window: dict[str, object] = field(default_factory=dict)
    handled: dict[str, datetime] = field(default_factory=dict)
    listed: list[int] = field(default_factory=list)  # records listed per poll

    def poll(self, crm: Crm, now: datetime, takes: timedelta = timedelta(0)) -> None:
        """A poll that began ``takes`` before ``now`` and read its last page at ``now`` (a long
        listing sees changes made after it began)."""
        started = now - takes
        window = PollWindow.load(self.window, self.cursor, started, LAG)  # type: ignore[arg-type]
        plan = window.plan(started, LAG)
        lower = self.cursor if plan == "defer" and self.cursor is not None else window.settled
        listing = crm.listing(now, lower)
        self.listed.append(len(listing))
        for record, stamp in listing:
            if self.handled.get(record) != stamp:
                self.handled[record] = stamp
            self.cursor = stamp if self.cursor is None else max(self.cursor, stamp)
        self.window = window.after(plan, self.cursor, started, now, LAG).value()


WRITES = st.lists(st.tuples(st.integers(0, 9), st.integers(0, 900_000), st.integers(0, 240_000)),
                  min_size=1, max_size=60)  # (record, at ms after START, indexing delay ms <= LAG)
# (ms between polls, ms the listing took: up to the whole gap, at most three minutes)
POLLS = st.lists(st.tuples(st.integers(1, 400_000), st.integers(0, 180_000)), min_size=1, max_size=40)


@settings(max_examples=400, deadline=None)
@given(writes=WRITES, gaps=POLLS)
def test_every_last_change_is_handled_once_the_crm_has_been_quiet(
    writes: list[tuple[int, int, int]], gaps: list[tuple[int, int]]
) -> None:
    crm, poller = Crm(), Poller()
    # (when, 0 write / 1 poll, record, indexing delay or listing time): a write first at one moment
    events: list[tuple[datetime, int, str, timedelta]] = [
        (START + timedelta(milliseconds=at), 0, f"r{record}", timedelta(milliseconds=delay))
        for record, at, delay in writes]
    moment = START
    for gap, takes in gaps:
        moment += timedelta(milliseconds=gap)
        events.append((moment, 1, "", timedelta(milliseconds=min(gap, takes))))
    for at, kind, record, delay in sorted(events):
        if kind == 0:
            crm.write(record, at, delay)
        else:
            poller.poll(crm, at, delay)
    quiet = max(event[0] for event in events) + timedelta(seconds=1)
    for minutes in range(0, 21, 2):  # a daemon polling every two minutes after the last write
        poller.poll(crm, quiet + timedelta(minutes=minutes))
    assert poller.handled == crm.last_stamps()


def test_polls_right_after_a_burst_list_only_what_is_new_and_the_window_once_more_later() -> None:
    crm, poller = Crm(), Poller()
    poller.poll(crm, START)
    for i in range(500):  # a burst of 500 writes in ten seconds, indexed at once
        crm.write(f"r{i}", START + timedelta(milliseconds=20 * i), timedelta(0))
    burst_end = START + timedelta(seconds=10)
    poller.poll(crm, burst_end + timedelta(seconds=1))
    assert poller.listed[-1] == 500
    for seconds in (20, 40, 60):  # inside the lag: what is new only (the newest record, at the cursor)
        poller.poll(crm, burst_end + timedelta(seconds=seconds))
        assert poller.listed[-1] == 1
    poller.poll(crm, burst_end + timedelta(minutes=5))  # the lag has passed: the window once more
    assert poller.listed[-1] == 500
    for minutes in (7, 30, 600):  # then nothing twice, however long it stays quiet
        poller.poll(crm, burst_end + timedelta(minutes=minutes))
        assert poller.listed[-1] == 1
    assert poller.handled == crm.last_stamps()


def test_a_stamp_first_seen_at_the_end_of_a_long_listing_waits_the_lag_from_then() -> None:
    """A listing that takes a while sees changes made after it began; the lag is counted from when
    it ended, or a change made just before one of them and indexed late would be settled past."""
    crm, poller = Crm(), Poller()
    at = lambda seconds: START + timedelta(seconds=seconds)  # noqa: E731
    poller.poll(crm, at(0))
    crm.write("late", at(9), timedelta(seconds=239))  # stamped 9 s, listed from 248 s
    crm.write("seen", at(10), timedelta(0))
    poller.poll(crm, at(15), takes=timedelta(seconds=10))  # began at 5 s, saw "seen" by 15 s
    assert poller.handled == {"seen": at(10)}
    poller.poll(crm, at(246))  # 241 s after the listing began, 231 s after it ended: not yet
    poller.poll(crm, at(300))
    assert poller.handled == crm.last_stamps()
