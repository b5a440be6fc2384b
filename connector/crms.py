"""Building the configured CRMs: adapters with resolved secrets, mappings checked against the live schema."""

from __future__ import annotations

from adapters.base import CrmAdapter
from adapters.errors import CrmConfigError
from connector.budget import BudgetLimits
from connector.config import Config
from connector.errors import ConfigError
from connector.mapping import check_against_schema, load_mapping
from connector.push import CrmTarget


def build_adapters(config: Config) -> dict[str, CrmAdapter]:
    """An adapter per configured CRM; secrets are resolved here, never earlier, never logged."""
    adapters: dict[str, CrmAdapter] = {}
    problems: list[str] = []
    sf = config.crm.salesforce
    if sf is not None:
        from adapters.salesforce import SalesforceAdapter

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
            )
        except ConfigError as exc:
            problems += exc.problems
    hs = config.crm.hubspot
    if hs is not None:
        from adapters.hubspot import HubSpotAdapter

        try:
            adapters["hubspot"] = HubSpotAdapter(
                hs.base_url, hs.access_token.resolve("crm.hubspot.access_token", config.base_dir))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return adapters


def build_targets(config: Config) -> tuple[dict[str, CrmTarget], list[str]]:
    """Targets for every configured CRM, and every mapping problem found against the live schemas."""
    adapters = build_adapters(config)
    targets: dict[str, CrmTarget] = {}
    problems: list[str] = []
    for name, adapter in adapters.items():
        crm_config = getattr(config.crm, name)
        try:
            loaded = load_mapping(config.mapping_path(crm_config.mapping, f"crm.{name}.mapping"))
        except ConfigError as exc:
            problems += exc.problems
            continue
        schemas = {}
        for table in ("lead", "deal"):
            obj = getattr(loaded.mapping, table)
            try:
                schemas[obj.name] = adapter.describe(obj.name)
            except CrmConfigError as exc:
                problems.append(f"{loaded.where(table, 'name')}: {table}.name: {name} refuses '{obj.name}': {exc}")
        for other in loaded.mapping.match_objects():
            if other not in schemas:
                try:
                    schemas[other] = adapter.describe(other)
                except CrmConfigError as exc:
                    problems.append(f"{loaded.where('lead', 'match_objects')}: lead.match_objects: {name} refuses "
                                    f"'{other}': {exc}")
        stages = adapter.stages(loaded.mapping.deal.name)
        problems += check_against_schema(loaded, schemas, stages)
        limits = BudgetLimits(crm_config.daily_call_budget, crm_config.daily_budget_share)
        targets[name] = CrmTarget(name, adapter, loaded.mapping, schemas, stages=stages, limits=limits)
    return targets, problems
