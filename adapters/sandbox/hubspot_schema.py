"""The HubSpot sandbox's fixed account setup: property definitions, the deals pipeline, error bodies.

Kept apart from the emulator's state so the shapes HubSpot documents (Property, Pipeline, Error)
live in one place and the OpenAPI tests can point at them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

OBJECTS = ("contacts", "companies", "deals")
OBJECT_TYPE_IDS = {"contacts": "0-1", "companies": "0-2", "deals": "0-3"}
SINGULAR = {"contacts": "CONTACT", "companies": "COMPANY", "deals": "DEAL"}

EPOCH_ISO = "1970-01-01T00:00:00.000Z"

# (internal id, label, probability, closed)
DEAL_STAGES: tuple[tuple[str, str, str, bool], ...] = (
    ("appointmentscheduled", "Appointment Scheduled", "0.2", False),
    ("qualifiedtobuy", "Qualified To Buy", "0.4", False),
    ("presentationscheduled", "Presentation Scheduled", "0.6", False),
    ("decisionmakerboughtin", "Decision Maker Bought-In", "0.8", False),
    ("contractsent", "Contract Sent", "0.9", False),
    ("closedwon", "Closed Won", "1.0", True),
    ("closedlost", "Closed Lost", "0.0", True),
)
DEFAULT_PIPELINE = ("default", "Sales Pipeline")
# A second pipeline as portals add them: numeric stage ids, and labels that repeat across pipelines
# ("Closed Won" is in both), so a stage id only means something with its pipeline id
# (developers.hubspot.com/docs/api/crm/pipelines; crm-api/hubspot/README.md).
RENEWALS_PIPELINE = ("75431234", "Renewals")
RENEWAL_STAGES: tuple[tuple[str, str, str, bool], ...] = (
    ("148300101", "Renewal Due", "0.5", False),
    ("148300102", "Closed Won", "1.0", True),
    ("148300103", "Closed Lost", "0.0", True),
)
PIPELINES: dict[str, tuple[str, tuple[tuple[str, str, str, bool], ...]]] = {
    DEFAULT_PIPELINE[0]: (DEFAULT_PIPELINE[1], DEAL_STAGES),
    RENEWALS_PIPELINE[0]: (RENEWALS_PIPELINE[1], RENEWAL_STAGES),
}
ACCOUNT_TIME_ZONE = "US/Eastern"  # the sandbox portal's time zone (GET /account-info/v3/details)


def stage_of(stage_id: str) -> tuple[str, tuple[str, str, str, bool]] | None:
    """(pipeline id, stage) of a deal stage id; ids are unique across a portal's pipelines."""
    for pipeline_id, (_label, stages) in PIPELINES.items():
        for stage in stages:
            if stage[0] == stage_id:
                return pipeline_id, stage
    return None
LIFECYCLE_STAGES = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity",
                    "customer", "evangelist", "other")
CURRENCIES = ("USD", "EUR", "GBP")

REFERRAL_PROPERTIES = ("refsync_referral_id", "referral_partner", "referral_source", "referral_medium",
                       "referral_campaign", "referral_submitted_at")


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as HubSpot writes timestamps: ISO 8601, milliseconds, Z."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_ms(value: str) -> int | None:
    """A datetime property value (epoch ms or ISO 8601) as epoch milliseconds; None if it is neither."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _prop(name: str, label: str, type_: str = "string", field_type: str = "text", *, read_only: bool = False,
          unique: bool = False, options: tuple[str | tuple[str, str], ...] = (), custom: bool = False,
          calculated: bool = False) -> dict[str, Any]:
    opts = []
    for order, option in enumerate(options):
        value, text = option if isinstance(option, tuple) else (option, option.replace("_", " ").title())
        opts.append({"label": text, "value": value, "displayOrder": order, "hidden": False})
    return {
        "name": name, "label": label, "type": type_, "fieldType": field_type, "description": "",
        "groupName": "refsync" if custom else "contactinformation", "options": opts,
        "displayOrder": -1, "calculated": calculated, "externalOptions": False, "hasUniqueValue": unique,
        "hidden": False, "hubspotDefined": not custom, "formField": custom,
        "createdAt": EPOCH_ISO, "updatedAt": EPOCH_ISO, "archived": False,
        "modificationMetadata": {"archivable": custom, "readOnlyDefinition": not custom,
                                 "readOnlyValue": read_only},
    }


def _common() -> list[dict[str, Any]]:
    return [
        _prop("hs_object_id", "Record ID", "number", "number", read_only=True, unique=True),
        _prop("createdate", "Create Date", "datetime", "date", read_only=True),
        _prop("lastmodifieddate", "Last Modified Date", "datetime", "date", read_only=True),
        _prop("hs_lastmodifieddate", "Object last modified date/time", "datetime", "date", read_only=True),
        _prop("hs_merged_object_ids", "Merged record IDs", "enumeration", "checkbox", read_only=True),
        _prop("hs_updated_by_user_id", "Updated by user ID", "number", "number", read_only=True),
        _prop("hubspot_owner_id", "Owner", "enumeration", "select"),
    ]


def _referral() -> list[dict[str, Any]]:
    return [
        _prop("refsync_referral_id", "Referral ID", unique=True, custom=True),
        _prop("referral_partner", "Referral partner", custom=True),
        _prop("referral_source", "Referral source", custom=True),
        _prop("referral_medium", "Referral medium", custom=True),
        _prop("referral_campaign", "Referral campaign", custom=True),
        _prop("referral_submitted_at", "Referral submitted at", "datetime", "date", custom=True),
        # a date picker made in the UI: type "date", which takes midnight UTC only
        _prop("referral_submitted_on", "Referral submitted on", "date", "date", custom=True),
    ]


def default_properties() -> dict[str, dict[str, dict[str, Any]]]:
    """Property definitions per object, keyed by name (a fresh copy: remove_field mutates it)."""
    contacts = _common() + [
        _prop("email", "Email"),
        _prop("firstname", "First Name"),
        _prop("lastname", "Last Name"),
        _prop("company", "Company Name"),
        _prop("lifecyclestage", "Lifecycle Stage", "enumeration", "radio", options=LIFECYCLE_STAGES),
    ] + _referral()
    companies = _common() + [_prop("name", "Company name"), _prop("domain", "Company Domain Name")]
    stage_options = tuple((sid, label) for _label, stages in PIPELINES.values() for sid, label, _p, _c in stages)
    deals = _common() + [
        _prop("dealname", "Deal Name"),
        _prop("amount", "Amount", "number", "number"),
        _prop("dealstage", "Deal Stage", "enumeration", "radio", options=stage_options),
        _prop("pipeline", "Pipeline", "enumeration", "select", options=(DEFAULT_PIPELINE, RENEWALS_PIPELINE)),
        _prop("closedate", "Close Date", "datetime", "date"),
        _prop("deal_currency_code", "Currency", "enumeration", "select", options=CURRENCIES),
        _prop("closed_lost_reason", "Closed Lost Reason", "string", "textarea"),
        _prop("hs_is_closed", "Is Deal Closed?", "bool", "booleancheckbox", read_only=True,
              options=(("true", "Yes"), ("false", "No")), calculated=True),
        _prop("hs_is_closed_won", "Is Closed Won", "bool", "booleancheckbox", read_only=True,
              options=(("true", "Yes"), ("false", "No")), calculated=True),
    ] + _referral()
    # hs_updated_by_user_id is set by HubSpot for UI edits only; keep it out of "default" reads.
    return {"contacts": {p["name"]: p for p in contacts}, "companies": {p["name"]: p for p in companies},
            "deals": {p["name"]: p for p in deals}}


DEFAULT_READ = {"contacts": ("firstname", "lastname", "email"), "companies": ("name", "domain"),
                "deals": ("dealname", "amount", "closedate", "pipeline", "dealstage")}


def pipelines_body() -> dict[str, Any]:
    """GET /crm/v3/pipelines/deals: the default pipeline and a second one."""
    results = []
    for position, (pipeline_id, (pipeline_label, stage_list)) in enumerate(PIPELINES.items()):
        stages = [{
            "id": sid, "label": label, "displayOrder": order, "archived": False,
            "createdAt": EPOCH_ISO, "updatedAt": EPOCH_ISO, "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT",
            "metadata": {"isClosed": "true" if closed else "false", "probability": probability},
        } for order, (sid, label, probability, closed) in enumerate(stage_list)]
        results.append({"id": pipeline_id, "label": pipeline_label, "displayOrder": position, "archived": False,
                        "createdAt": EPOCH_ISO, "updatedAt": EPOCH_ISO, "stages": stages})
    return {"results": results}


def account_details(portal_id: int, time_zone: str) -> dict[str, Any]:
    """GET /account-info/v3/details (developers.hubspot.com/docs/api-reference/latest/account/
    account-information/get-account-details): the portal's time zone and its current UTC offset."""
    from zoneinfo import ZoneInfo

    offset = datetime.now(ZoneInfo(time_zone)).utcoffset()
    offset_ms = int(offset.total_seconds() * 1000) if offset is not None else 0
    sign, minutes = ("-" if offset_ms < 0 else "+"), abs(offset_ms) // 60_000
    return {"portalId": portal_id, "accountType": "STANDARD", "timeZone": time_zone, "companyCurrency": "USD",
            "additionalCurrencies": [], "utcOffset": f"{sign}{minutes // 60:02d}:{minutes % 60:02d}",
            "utcOffsetMilliseconds": offset_ms, "uiDomain": "app.hubspot.com", "dataHostingLocation": "na1"}


def midnight_problem(ms: int) -> str | None:
    """Why epoch ms cannot be a ``date`` property value: HubSpot takes midnight UTC only, and says
    ``1635535865 is at 22:18:55.865 UTC, not midnight!`` (INVALID_DATE; HubSpot/hubspot-api-php#74)."""
    rest = ms % 86_400_000
    if rest == 0:
        return None
    hours, minutes, seconds, millis = rest // 3_600_000, rest // 60_000 % 60, rest // 1000 % 60, rest % 1000
    return f"{ms} is at {hours}:{minutes:02d}:{seconds:02d}.{millis:03d} UTC, not midnight!"


def error_body(message: str, category: str, *, context: dict[str, list[str]] | None = None,
               errors: list[dict[str, Any]] | None = None, sub_category: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """HubSpot's whole-call error body (the spec's ``Error``), with a fresh correlation id."""
    body: dict[str, Any] = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()),
                            "category": category}
    if context:
        body["context"] = context
    if errors:
        body["errors"] = errors
    if sub_category:
        body["subCategory"] = sub_category
    body["links"] = {"knowledge-base": "https://www.hubspot.com/products/service/knowledge-base"}
    body.update(extra)
    return body


def record_error(message: str, category: str, ids: list[str]) -> dict[str, Any]:
    """One element of a 207 answer's ``errors[]`` (the spec's ``StandardError``)."""
    return {"status": "error", "category": category, "message": message, "context": {"ids": ids},
            "errors": [], "links": {}}


def validation_error(problems: list[tuple[str, str, str]]) -> dict[str, Any]:
    """HubSpot's 400 for bad property values; ``problems`` are (property, code, message).

    HubSpot embeds a JSON list in ``message``; we also give ``errors[]`` with the code, which the
    spec allows, so a client can classify without parsing the message."""
    embedded = [{"isValid": False, "message": msg, "error": code, "name": name, "localizedErrorMessage": msg}
                for name, code, msg in problems]
    errors = [{"message": msg, "code": code, "context": {"propertyName": [name]}} for name, code, msg in problems]
    return error_body(f"Property values were not valid: {json.dumps(embedded)}", "VALIDATION_ERROR",
                      errors=errors)
