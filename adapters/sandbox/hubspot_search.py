"""The HubSpot sandbox's CRM search: filterGroups, one sort, paging with HubSpot's 10,000 cap.

Comparisons follow the property's type (datetime values may be epoch ms or ISO 8601, numbers
compare numerically, strings case-insensitively), so the adapter's filters mean what they would
mean on HubSpot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from refsync.adapters.sandbox import hubspot_schema as hs
from refsync.adapters.sandbox.hubspot_store import ApiError, Record, Store

OPERATORS = {"EQ", "NEQ", "GT", "GTE", "LT", "LTE", "IN", "NOT_IN", "HAS_PROPERTY", "NOT_HAS_PROPERTY"}
MAX_LIMIT = 200
MAX_GROUPS = 5
MAX_FILTERS = 18


def _bad(message: str) -> ApiError:
    return ApiError(400, hs.error_body(message, "VALIDATION_ERROR"))


def _key(definition: dict[str, Any], value: str) -> Any:
    """A value in the property's own order: ms for datetimes, floats for numbers, folded text."""
    kind = definition["type"]
    if kind in ("datetime", "date"):
        return hs.parse_ms(value)
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return None
    return str(value).casefold()


def _predicate(defs: dict[str, dict[str, Any]], spec: dict[str, Any]) -> Callable[[dict[str, str]], bool]:
    name = spec.get("propertyName")
    op = spec.get("operator")
    if name not in defs:
        raise _bad(f"There was a problem with the request. Property {name!r} does not exist")
    if op not in OPERATORS:
        raise _bad(f"Unsupported filter operator: {op}")
    definition = defs[name]
    if op == "HAS_PROPERTY":
        return lambda props: bool(props.get(name))
    if op == "NOT_HAS_PROPERTY":
        return lambda props: not props.get(name)
    if op in ("IN", "NOT_IN"):
        wanted = {_key(definition, v) for v in spec.get("values") or []}
        if op == "IN":
            return lambda props: bool(props.get(name)) and _key(definition, props[name]) in wanted
        return lambda props: not props.get(name) or _key(definition, props[name]) not in wanted
    if "value" not in spec:
        raise _bad(f"Filter on {name} with operator {op} needs a value")
    target = _key(definition, str(spec["value"]))
    compare: dict[str, Callable[[Any], bool]] = {
        "EQ": lambda v: v == target, "NEQ": lambda v: v != target, "GT": lambda v: v > target,
        "GTE": lambda v: v >= target, "LT": lambda v: v < target, "LTE": lambda v: v <= target,
    }

    def check(props: dict[str, str]) -> bool:
        raw = props.get(name)
        if not raw:
            return op == "NEQ"
        value = _key(definition, raw)
        if value is None or target is None:
            return False
        try:
            return compare[op](value)
        except TypeError:
            return False

    return check


def _sort(defs: dict[str, dict[str, Any]], sorts: list[Any]) -> tuple[str, bool]:
    if len(sorts) > 1:
        raise _bad("Only one sort is allowed per search request.")
    if not sorts:
        return "hs_object_id", False
    sort = sorts[0]
    if isinstance(sort, str):
        name, descending = sort.lstrip("-"), sort.startswith("-")
    else:
        name, descending = sort.get("propertyName", ""), sort.get("direction", "ASCENDING") == "DESCENDING"
    if name not in defs:
        raise _bad(f"There was a problem with the request. Cannot sort on unknown property {name!r}")
    return name, descending


def search(store: Store, obj: str, body: dict[str, Any], cap: int) -> dict[str, Any]:
    """POST /crm/v3/objects/{obj}/search: CollectionResponseWithTotalSimplePublicObject."""
    defs = store.object_props(obj)
    groups = body.get("filterGroups") or []
    if len(groups) > MAX_GROUPS or sum(len(g.get("filters") or []) for g in groups) > MAX_FILTERS:
        raise _bad(f"Too many filters: at most {MAX_GROUPS} filterGroups and {MAX_FILTERS} filters in total.")
    checks = [[_predicate(defs, f) for f in g.get("filters") or []] for g in groups]
    limit = int(body.get("limit") or 10)
    if limit < 1 or limit > MAX_LIMIT:
        raise _bad(f"limit must be between 1 and {MAX_LIMIT}")
    after = int(body.get("after") or 0)
    if after >= cap:
        raise _bad(f"Search results are limited to {cap} records: paging past {cap} is not supported "
                   "(narrow the filters instead).")
    sort_name, descending = _sort(defs, body.get("sorts") or [])
    sort_def = defs[sort_name]
    with store.lock:
        now = store.now_ms()
        matched: list[tuple[Record, dict[str, str]]] = []
        for rec in store.records[obj].values():
            if rec.archived_ms is not None:
                continue
            view = store.search_view(rec, now)
            if view is None:
                continue
            if not checks or any(all(c(view) for c in group) for group in checks):
                matched.append((rec, view))

        def order(item: tuple[Record, dict[str, str]]) -> tuple[Any, ...]:
            raw = item[1].get(sort_name)
            value = _key(sort_def, raw) if raw else None
            return (value is None, value if value is not None else 0, int(item[0].id))

        matched.sort(key=order, reverse=descending)
        page = matched[after:min(after + limit, cap)]
        names = body.get("properties") or []
        results = [store.to_json(rec, names or None, props=view) for rec, view in page]
    answer: dict[str, Any] = {"total": len(matched), "results": results}
    following = after + len(page)  # a page cut short by the cap still points past it (then 400s)
    if following < len(matched):
        answer["paging"] = {"next": {"after": str(following), "link": f"?after={following}"}}
    return answer
