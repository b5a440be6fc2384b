"""Building the configured CRMs, and keeping each one ready on its own.

:func:`build_targets` makes an adapter and a target per configured CRM and checks each mapping
against that CRM's schema (from the ledger's cache while fresh, else read live). A configuration
wrong on its face (a mapping file that does not parse, a mapped field never seen in the CRM, an
unknown object) is a problem the caller turns into exit 2. A CRM that is down, refuses our
credentials or cannot have its schema read is only *not ready*: it is left waiting with a log line,
a ``crm_unavailable`` alert and its reason in ``/readyz`` and ``refsync status``, every other CRM
syncs, and :func:`ensure_ready` (run before each job's work) picks it up when it comes back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from refsync.adapters.base import CrmAdapter
from refsync.adapters.errors import AuthError, CrmConfigError, CrmError, RateLimited
from refsync.connector import schemas as schema_cache
from refsync.connector.budget import BudgetLimits
from refsync.connector.config import Config
from refsync.connector.logs import error_signature, get_logger
from refsync.connector.mapping import load_mapping
from refsync.connector.push import CrmTarget
from refsync.errors import ConfigError
from refsync.state.crmstate import remember, remembered, remembered_everywhere
from refsync.state.ledger import Ledger
from refsync.state.notifications import sync_alerts
from refsync.state.observe import observing

log = get_logger("refsync.crms")
READINESS = "readiness"  # the crm_state key holding {"ready", "reason", "since"}
STARTING = "not checked yet"
# CRM error codes that mean "no such object": the mapping names something the CRM never had.
UNKNOWN_OBJECT = {"NOT_FOUND", "INVALID_TYPE", "OBJECT_NOT_FOUND"}


def build_adapters(config: Config) -> dict[str, CrmAdapter]:
    """An adapter per configured CRM; secrets are resolved here, never earlier, never logged.
    Every adapter sends its calls through the one retry policy of the ``[retry]`` table."""
    adapters: dict[str, CrmAdapter] = {}
    problems: list[str] = []
    policy = config.retry.policy()
    sf = config.crm.salesforce
    if sf is not None:
        from refsync.adapters.salesforce import SalesforceAdapter

        try:
            adapters["salesforce"] = SalesforceAdapter(
                sf.instance_url,
                session_id=(sf.session_id.resolve("crm.salesforce.session_id", config.base_dir)
                            if sf.session_id else None),
                username=sf.username,
                password=sf.password.resolve("crm.salesforce.password", config.base_dir) if sf.password else None,
                security_token=(sf.security_token.resolve("crm.salesforce.security_token", config.base_dir)
                                if sf.security_token else None),
                domain=sf.domain,
                client_id=sf.client_id,
                client_secret=(sf.client_secret.resolve("crm.salesforce.client_secret", config.base_dir)
                               if sf.client_secret else None),
                ca_bundle=str(config.path(sf.ca_bundle)) if sf.ca_bundle else None,
                api_version=sf.api_version,
                retry=policy,
            )
        except ConfigError as exc:
            problems += exc.problems
    hs = config.crm.hubspot
    if hs is not None:
        from refsync.adapters.hubspot import HubSpotAdapter

        try:
            adapters["hubspot"] = HubSpotAdapter(
                hs.base_url, hs.access_token.resolve("crm.hubspot.access_token", config.base_dir), retry=policy)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return adapters


def build_targets(config: Config, ledger: Ledger | None = None) -> tuple[dict[str, CrmTarget], list[str]]:
    """A target for every configured CRM whose mapping file parses, and every configuration problem
    found (mapping files, mapped fields never seen in the CRM). A CRM that cannot be reached is a
    target that is not ready, not a problem. Without a ledger nothing is cached or remembered."""
    adapters = build_adapters(config)
    targets: dict[str, CrmTarget] = {}
    problems: list[str] = []
    refresh = timedelta(seconds=config.daemon.schema_refresh_seconds)
    for name, adapter in adapters.items():
        crm_config = getattr(config.crm, name)
        try:
            loaded = load_mapping(config.mapping_path(crm_config.mapping, f"crm.{name}.mapping"))
        except ConfigError as exc:
            problems += exc.problems
            continue
        limits = BudgetLimits(crm_config.daily_call_budget, crm_config.daily_budget_share)
        target = CrmTarget(name, adapter, loaded.mapping, {}, limits=limits, loaded=loaded, not_ready=STARTING,
                           schema_refresh=refresh)
        found = ensure_ready(ledger, target)
        problems += found
        if not found:
            targets[name] = target
    return targets, problems


def ensure_ready(ledger: Ledger | None, target: CrmTarget) -> list[str]:
    """Make ``target`` ready when its CRM answers (schemas from the cache or the CRM, mapping
    checked, drift noted), or leave it waiting with the reason. A ready target's schemas are read
    again when stale; a failed refresh keeps the ones held. Returns configuration problems."""
    was_ready = target.ready
    try:
        read = schema_cache.load(ledger, target, target.schema_refresh)
        problems = schema_cache.reckon(ledger, target) if read or not was_ready else []
    except CrmConfigError as exc:
        if exc.code in UNKNOWN_OBJECT or getattr(exc.__cause__, "status", None) == 404:
            assert target.loaded is not None
            return [f"{target.loaded.path}: {target.name} has no object among "
                    f"{[o.name for o in target.mapping.objects()]}: {exc}"]
        _not_ready(ledger, target, f"{_crm(target)} refused refsync's setup ({exc.code or 'config'}): {exc}",
                   misconfigured=True)
        return []
    except AuthError as exc:
        _not_ready(ledger, target, f"{_crm(target)} refused refsync's credentials: {exc}", misconfigured=True)
        return []
    except RateLimited as exc:
        _not_ready(ledger, target, f"{_crm(target)} rate limited refsync for {exc.retry_after or 0:.0f} s: {exc}",
                   keep_ready=was_ready)
        return []
    except CrmError as exc:
        _not_ready(ledger, target, f"{_crm(target)} unreachable: {exc}", keep_ready=was_ready)
        return []
    if problems:
        if target.not_ready == STARTING:
            return problems  # at start-up: the caller stops with exit 2
        _not_ready(ledger, target, f"{_crm(target)} mapping does not match the CRM: " + "; ".join(problems))
        return problems
    _ready(ledger, target)
    return []


def _crm(target: CrmTarget) -> str:
    return {"salesforce": "Salesforce", "hubspot": "HubSpot"}.get(target.name, target.name)


def _not_ready(ledger: Ledger | None, target: CrmTarget, reason: str, *, keep_ready: bool = False,
               misconfigured: bool = False) -> None:
    if keep_ready:  # a ready CRM whose schema refresh failed goes on with the schemas it holds
        log.warning("schema refresh failed; keeping the schemas read before", crm=target.name, error=reason)
        return
    # The same outage in other words (a wait of 37 s, then 36 s) is not news: one line, one alert.
    changed = target.not_ready is None or error_signature(target.not_ready) != error_signature(reason)
    target.misconfigured = misconfigured
    now = ledger.clock() if ledger is not None else datetime.now().astimezone()
    if target.ready:
        target.not_ready_since = now
    elif target.not_ready == STARTING:  # a new process: the CRM may have been waiting since an earlier one
        target.not_ready_since = _waiting_since(ledger, target) or now
    target.not_ready = reason
    if not changed:
        return
    log.error("CRM not ready; its work waits, the other CRMs sync", crm=target.name, reason=reason)
    if ledger is None:
        return
    with observing(ledger, target.name) as ob:
        ob.raise_alert("crm_unavailable", f"crm_unavailable:{target.name}",
                       f"{reason}. Nothing is lost: its work waits and refsync tries again every cycle.")
    _remember(ledger, target)


UNAVAILABLE_AFTER_ROUNDS = 3  # failed rounds in a row before a ready CRM that stopped answering pages


def failed_round(ledger: Ledger, target: CrmTarget, failures: int, error: str) -> None:
    """A ready CRM failed a whole round (unreachable, credentials refused) for the ``failures``-th
    time in a row: from UNAVAILABLE_AFTER_ROUNDS on, that is one ``crm_unavailable`` alert
    (counted again each round), the same one a CRM that never became ready raises."""
    if failures < UNAVAILABLE_AFTER_ROUNDS:
        return
    with observing(ledger, target.name) as ob:
        ob.raise_alert("crm_unavailable", f"crm_unavailable:{target.name}",
                       f"{_crm(target)} failed {failures} rounds in a row: {error}. Nothing is lost: its work waits "
                       "and refsync tries again every cycle.")


def answered_again(ledger: Ledger, target: CrmTarget) -> None:
    """A CRM that had failed rounds answered: its ``crm_unavailable`` alert resolves."""
    sync_alerts(ledger, [], scope=[("crm_unavailable", target.name)])


def _waiting_since(ledger: Ledger | None, target: CrmTarget) -> datetime | None:
    """Since when an earlier process recorded this CRM as not ready, if it did."""
    stored = remembered(ledger, target.name, READINESS) if ledger is not None else None
    if stored is None or stored[0].get("ready") or not stored[0].get("since"):
        return None
    return datetime.fromisoformat(str(stored[0]["since"]))


def _ready(ledger: Ledger | None, target: CrmTarget) -> None:
    if target.ready:
        return
    if target.not_ready != STARTING:
        log.info("CRM ready again; its work resumes", crm=target.name)
    target.not_ready, target.not_ready_since = None, ledger.clock() if ledger is not None else None
    target.misconfigured = False
    if ledger is not None:
        sync_alerts(ledger, [], scope=[("crm_unavailable", target.name)])
        _remember(ledger, target)


def _remember(ledger: Ledger, target: CrmTarget) -> None:
    since = target.not_ready_since or ledger.clock()
    remember(ledger, target.name, READINESS, {"ready": target.ready, "reason": target.not_ready,
                                              "since": since.isoformat()})


def readiness(targets: dict[str, CrmTarget]) -> dict[str, dict[str, Any]]:
    """Each CRM's readiness as ``/readyz`` and ``status --json`` show it."""
    return {name: {"ready": t.ready, "reason": t.not_ready,
                   "since": t.not_ready_since.isoformat() if t.not_ready_since else None}
            for name, t in targets.items()}


def remembered_readiness(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """The readiness each CRM's last run recorded (for ``refsync status`` in another process)."""
    return {crm: {"ready": bool(value.get("ready")), "reason": value.get("reason"), "since": value.get("since")}
            for crm, (value, _at) in sorted(remembered_everywhere(ledger, READINESS).items())}
