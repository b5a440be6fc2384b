"""The HubSpot sandbox's admin plane (:class:`SandboxAdmin`): a sales rep and the account itself.

Mixed into :class:`HubSpotEmulator`; every method is also reachable over HTTP through
``admin_call`` (``POST {admin_url}/{method}``, JSON keyword arguments, JSON answer). Admin calls
are not API calls: they are not counted and never faulted.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from refsync.adapters.sandbox import hubspot_schema as hs
from refsync.adapters.sandbox.hubspot_store import ApiError, Store

if TYPE_CHECKING:
    import random
    import threading

ADMIN_METHODS = ("create_record", "get_record", "set_field", "change_owner", "delete_record", "merge",
                 "convert_lead", "move_stage", "remove_field", "restore_field", "set_faults", "hold_clock", "calls",
                 "reset", "configure", "associate", "count_values", "system_touch", "create_field")
FAULTS = ("rate_limit", "server_error", "slow", "drop", "lock", "retry_after", "slow_seconds", "seed")


class AdminMixin:
    store: Store
    rng: random.Random
    _faults: dict[str, float]
    _counts: Counter[str]
    _guard: threading.Lock
    _daily_used: int
    _recent: deque[float]
    _recent_search: deque[float]
    search_cap: int
    search_per_second: int | None
    burst_limit: int | None
    daily_limit: int
    time_zone: str

    def admin_call(self, method: str, kwargs: dict[str, Any]) -> Any:
        """Run one admin method by name (the HTTP admin plane)."""
        if method not in ADMIN_METHODS:
            raise KeyError(f"unknown admin method {method!r}; one of {', '.join(ADMIN_METHODS)}")
        return getattr(self, method)(**kwargs)

    def _values(self, object_name: str, values: dict[str, Any]) -> dict[str, str]:
        try:
            return self.store.normalise(object_name, values, internal=True)
        except ApiError as exc:
            raise ValueError(exc.body["message"]) from exc

    def _live(self, object_name: str, record_id: str) -> Any:
        rec, _merged = self.store.resolve(object_name, str(record_id))
        if rec is None:
            raise KeyError(f"{object_name} {record_id} does not exist")
        return rec

    # -- the sales rep ---------------------------------------------------------------------------
    def create_record(self, object_name: str, fields: dict[str, Any], owner_id: str | None = None) -> str:
        values = dict(fields)
        if owner_id is not None:
            values["hubspot_owner_id"] = owner_id
        with self.store.lock:
            clean = self._values(object_name, values)
            self.store.check_unique(object_name, [(None, clean)])
            return self.store.create(object_name, clean, self.store.user("rep")).id

    def get_record(self, object_name: str, record_id: str) -> dict[str, Any] | None:
        rec, _merged = self.store.resolve(object_name, str(record_id))
        return dict(rec.props) if rec is not None else None

    def count_values(self, object_name: str, field: str) -> dict[str, int]:
        with self.store.lock:
            counts: dict[str, int] = {}
            for rec in self.store.records[object_name].values():
                if rec.archived_ms is None and rec.props.get(field):
                    counts[rec.props[field]] = counts.get(rec.props[field], 0) + 1
            return counts

    def set_field(self, object_name: str, record_id: str, field: str, value: Any, by: str = "rep") -> None:
        with self.store.lock:
            rec = self._live(object_name, record_id)
            self.store.write(rec, self._values(object_name, {field: value}), self.store.user(by))

    def change_owner(self, object_name: str, record_id: str, owner_id: str) -> None:
        self.set_field(object_name, record_id, "hubspot_owner_id", owner_id)

    def delete_record(self, object_name: str, record_id: str) -> None:
        with self.store.lock:
            self.store.archive(self._live(object_name, record_id))

    def merge(self, object_name: str, survivor_id: str, loser_id: str) -> str:
        """HubSpot mints a new id for the merged record; both old ids then read as it."""
        try:
            return self.store.merge(object_name, str(survivor_id), str(loser_id)).id
        except ApiError as exc:
            raise ValueError(exc.body["message"]) from exc

    def convert_lead(self, lead_id: str, opportunity_name: str | None = None) -> dict[str, str]:
        """HubSpot has no lead conversion: sales creates a deal and associates it with the contact."""
        with self.store.lock:
            contact = self._live("contacts", lead_id)
            name = opportunity_name or " ".join(
                p for p in (contact.props.get("firstname"), contact.props.get("lastname"),
                            contact.props.get("company")) if p) or f"Deal for contact {contact.id}"
            values = {"dealname": name, "pipeline": hs.DEFAULT_PIPELINE[0], "dealstage": hs.DEAL_STAGES[0][0]}
            if contact.props.get("hubspot_owner_id"):
                values["hubspot_owner_id"] = contact.props["hubspot_owner_id"]
            deal = self.store.create("deals", values, self.store.user("rep"))
            self.store.associate("contacts", contact.id, "deals", deal.id)
            return {"contact": contact.id, "deal": deal.id}

    def move_stage(self, deal_id: str, stage: str, amount: float | None = None,
                   close_date: str | None = None) -> None:
        """Move a deal to the stage with this label in its pipeline (or this internal id); history keeps
        the move."""
        with self.store.lock:
            deal = self._live("deals", deal_id)
            pipeline = deal.props.get("pipeline") or hs.DEFAULT_PIPELINE[0]
            stages = hs.PIPELINES[pipeline][1]
            match = next((s for s in stages if stage in (s[0], s[1])), None)
            if match is None:
                raise ValueError(f"no deal stage labelled {stage!r} in pipeline {pipeline}; one of "
                                 f"{[s[1] for s in stages]}")
            values: dict[str, Any] = {"dealstage": match[0]}
            if amount is not None:
                values["amount"] = amount
            if close_date is not None:
                values["closedate"] = close_date
            elif match[3] and not deal.props.get("closedate"):
                values["closedate"] = hs.iso_ms(self.store.now_ms())
            self.store.write(deal, self._values("deals", values), self.store.user("rep"))

    def system_touch(self, object_name: str, record_id: str) -> None:
        """HubSpot itself recomputes a property of the record (no user, no integration)."""
        with self.store.lock:
            self.store.touch(self._live(object_name, record_id))

    def associate(self, from_object: str, from_id: str, to_object: str, to_id: str) -> None:
        with self.store.lock:
            a = self._live(from_object, from_id)
            b = self._live(to_object, to_id)
            self.store.associate(from_object, a.id, to_object, b.id)

    # -- the account -----------------------------------------------------------------------------
    def remove_field(self, object_name: str, field: str) -> None:
        self.store.remove_property(object_name, field)

    def restore_field(self, object_name: str, field: str) -> None:
        self.store.restore_property(object_name, field)

    def create_field(self, object_name: str, field: str, kind: str = "text", label: str = "") -> None:
        self.store.create_property(object_name, field, kind, label)

    def set_faults(self, **rates: float) -> None:
        """Fault rates (0..1): rate_limit, server_error, slow, drop, lock; retry_after and slow_seconds in s;
        ``seed`` makes the faults repeatable."""
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if "seed" in rates:
            self.rng.seed(rates.pop("seed"))
        self._faults = {k: float(v) for k, v in rates.items()}

    def configure(self, search_cap: int | None = None, search_per_second: int | None = -1,
                  burst_limit: int | None = -1, daily_limit: int | None = None,
                  indexing_lag_ms: int | None = None, seed: int | None = None,
                  time_zone: str | None = None) -> None:
        """Tunables beyond SandboxAdmin: a smaller search cap for fast tests, limits, search indexing lag
        (search answers with a record's old values for that long after a write), the portal's time zone.

        ``search_per_second`` / ``burst_limit`` of None switch that limit off (-1 leaves it as is)."""
        if search_cap is not None:
            self.search_cap = search_cap
        if search_per_second != -1:
            self.search_per_second = search_per_second
        if burst_limit != -1:
            self.burst_limit = burst_limit
        if daily_limit is not None:
            self.daily_limit = daily_limit
        if indexing_lag_ms is not None:
            self.store.indexing_lag_ms = indexing_lag_ms
        if seed is not None:
            self.rng.seed(seed)
        if time_zone is not None:
            self.time_zone = time_zone

    def hold_clock(self, held: bool = True) -> None:
        """Every write carries one timestamp until released (``held=False``): a bulk import's ties."""
        self.store.clock.hold(held)

    def calls(self) -> dict[str, int]:
        with self._guard:
            return dict(self._counts)

    def reset(self) -> None:
        """Forget records, faults and counters; limits go back to HubSpot's."""
        self.store.reset()
        self.store.indexing_lag_ms = 0
        self._faults = {}
        with self._guard:
            self._counts.clear()
            self._daily_used = 0
            self._recent.clear()
            self._recent_search.clear()
        self.search_cap, self.search_per_second, self.burst_limit = 10_000, 5, None
        self.daily_limit = 1_000_000
        self.time_zone = hs.ACCOUNT_TIME_ZONE
