"""The HubSpot emulator's real answers checked against HubSpot's published OpenAPI specs.

Each response (status and body) is validated with jsonschema against the schema the spec gives
for that path, method and status (``default`` -> ``Error`` for error statuses), with ``$ref``
resolved inside the spec file. A status the spec does not list for the operation fails.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from refsync.adapters.sandbox.hubspot_emulator import HubSpotEmulator
from tests.adapters.profile import SHARED_CRM_API, reference_dir

SPECS = SHARED_CRM_API / "hubspot"
OBJECTS = "Objects_r424_v3_objects.json"
PROPERTIES = "Properties_r145899_v3_properties.json"
PIPELINES = "Pipelines_r145896_v3_pipelines.json"
ASSOCIATIONS = "Associations_r130902_v4_associations.json"
ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")



@pytest.fixture(autouse=True)
def _reference_present() -> None:
    reference_dir("hubspot")  # skips with the reason on a machine without shared/, fails in CI


def _load(name: str) -> dict[str, Any]:
    return json.loads((SPECS / name).read_text())


def check(spec_name: str, path: str, method: str, status: int, body: Any) -> None:
    """Validate one answer against the spec's response schema for (path, method, status)."""
    spec = _load(spec_name)
    operation = spec["paths"][path][method.lower()]
    responses = operation["responses"]
    declared = responses.get(str(status))
    if declared is None:
        assert status >= 400 and "default" in responses, f"{method} {path}: {status} not in {sorted(responses)}"
        declared = responses["default"]
    if "$ref" in declared:
        declared = spec["components"]["responses"][declared["$ref"].rsplit("/", 1)[1]]
    content = declared.get("content") or {}
    if not content:
        assert body is None, f"{method} {path} {status}: the spec declares no body"
        return
    schema = next(iter(content.values()))["schema"]
    uri = f"urn:hubspot:{spec_name}"
    registry = Registry().with_resource(uri, Resource(contents=spec, specification=DRAFT7))
    validator = Draft7Validator({"$ref": f"{uri}#{schema['$ref'][1:]}"} if "$ref" in schema else schema,
                                registry=registry)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{method} {path} {status}: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5])


@pytest.fixture(scope="module")
def hub() -> Iterator[HubSpotEmulator]:
    emu = HubSpotEmulator(seed=3).start()
    yield emu
    emu.stop()


@pytest.fixture()
def api(hub: HubSpotEmulator) -> Any:
    hub.reset()
    pool = urllib3.PoolManager(retries=False)

    def call(method: str, path: str, body: Any = None, token: str | None = hub.access_token) -> tuple[int, Any, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        answer = pool.request(method, hub.base_url + path, body=json.dumps(body) if body is not None else None,
                              headers=headers)
        return answer.status, (json.loads(answer.data) if answer.data else None), answer.headers

    return call


def _upsert(api: Any, *keys: str, email: str | None = None) -> tuple[int, Any, Any]:
    inputs = [{"id": k, "idProperty": "refsync_referral_id",
               "properties": {"referral_partner": "acme", **({"email": email} if email else {})}} for k in keys]
    return api("POST", "/crm/v3/objects/contacts/batch/upsert", {"inputs": inputs})


def test_batch_upsert_200_then_207_with_errors(api: Any, hub: HubSpotEmulator) -> None:
    status, body, headers = _upsert(api, "r1", "r2")
    assert status == 200 and [r["new"] for r in body["results"]] == [True, True]
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/upsert", "POST", status, body)
    assert ISO_MS_Z.match(body["results"][0]["createdAt"]) and ISO_MS_Z.match(body["completedAt"])
    for name in ("Max", "Remaining", "Interval-Milliseconds", "Daily", "Daily-Remaining"):
        assert headers[f"X-HubSpot-RateLimit-{name}"].isdigit()
    hub.set_faults(lock=1.0)
    status, body, _ = _upsert(api, "r1", "r3")
    assert status == 207 and body["numErrors"] == 2 and body["results"] == []
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/upsert", "POST", status, body)


def test_batch_read_and_update_200_and_207(api: Any, hub: HubSpotEmulator) -> None:
    ids = [r["id"] for r in _upsert(api, "a", "b")[1]["results"]]
    hub.delete_record("contacts", ids[1])
    read = {"inputs": [{"id": i} for i in ids], "properties": ["referral_partner"],
            "propertiesWithHistory": ["referral_partner"]}
    status, body, _ = api("POST", "/crm/v3/objects/contacts/batch/read", read)
    assert status == 207 and body["errors"][0]["context"]["ids"] == [ids[1]]
    assert body["results"][0]["propertiesWithHistory"]["referral_partner"][0]["value"] == "acme"
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/read", "POST", status, body)
    update = {"inputs": [{"id": ids[0], "properties": {"referral_source": "event"}}]}
    status, body, _ = api("POST", "/crm/v3/objects/contacts/batch/update", update)
    assert status == 200 and body["results"][0]["properties"]["referral_source"] == "event"
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/update", "POST", status, body)
    update["inputs"].append({"id": ids[1], "properties": {"referral_source": "event"}})
    status, body, _ = api("POST", "/crm/v3/objects/contacts/batch/update", update)
    assert status == 207 and body["errors"][0]["category"] == "OBJECT_NOT_FOUND"
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/update", "POST", status, body)


def test_get_merged_id_answers_the_new_record(api: Any, hub: HubSpotEmulator) -> None:
    a = hub.create_record("contacts", {"email": "a@example.com"})
    b = hub.create_record("contacts", {"email": "b@example.com"})
    new = hub.merge("contacts", a, b)
    status, body, _ = api("GET", f"/crm/v3/objects/contacts/{b}?properties=email,hs_merged_object_ids")
    assert status == 200 and body["id"] == new
    assert body["properties"]["hs_merged_object_ids"].split(";") == [a, b]
    check(OBJECTS, "/crm/v3/objects/{objectType}/{objectId}", "GET", status, body)
    status, body, _ = api("POST", "/crm/v3/objects/contacts/batch/read",
                          {"inputs": [{"id": a}], "properties": [], "propertiesWithHistory": []})
    assert status == 200 and body["results"] == []  # merged-away id left out, no error
    status, body, _ = api("GET", "/crm/v3/objects/contacts/999999")
    assert status == 404
    check(OBJECTS, "/crm/v3/objects/{objectType}/{objectId}", "GET", status, body)


def test_search_paging_total_and_cap(api: Any, hub: HubSpotEmulator) -> None:
    hub.configure(search_cap=4, search_per_second=None)
    _upsert(api, *[f"s{i}" for i in range(6)])
    query = {"filterGroups": [{"filters": [{"propertyName": "referral_partner", "operator": "EQ", "value": "ACME"}]}],
             "sorts": [{"propertyName": "hs_object_id", "direction": "DESCENDING"}], "properties": ["email"],
             "limit": 3}
    status, body, _ = api("POST", "/crm/v3/objects/contacts/search", query)
    assert status == 200 and body["total"] == 6 and body["paging"]["next"]["after"] == "3"
    assert [int(r["id"]) for r in body["results"]] == sorted((int(r["id"]) for r in body["results"]), reverse=True)
    check(OBJECTS, "/crm/v3/objects/{objectType}/search", "POST", status, body)
    status, body, _ = api("POST", "/crm/v3/objects/contacts/search", {**query, "after": "4"})
    assert status == 400 and body["category"] == "VALIDATION_ERROR"
    check(OBJECTS, "/crm/v3/objects/{objectType}/search", "POST", status, body)


def test_search_secondly_limit_body(api: Any) -> None:
    answers = [api("POST", "/crm/v3/objects/deals/search", {"limit": 1}) for _ in range(6)]
    assert [a[0] for a in answers] == [200] * 5 + [429]
    body = answers[-1][1]
    assert body["policyName"] == "SECONDLY" and body["errorType"] == "RATE_LIMIT"
    check(OBJECTS, "/crm/v3/objects/{objectType}/search", "POST", 429, body)


def test_properties_and_pipelines(api: Any) -> None:
    status, body, _ = api("GET", "/crm/v3/properties/deals")
    assert status == 200 and {"refsync_referral_id", "dealstage", "referral_submitted_at"} <= {
        p["name"] for p in body["results"]}
    check(PROPERTIES, "/crm/v3/properties/{objectType}", "GET", status, body)
    status, body, _ = api("GET", "/crm/v3/properties/contacts/refsync_referral_id")
    assert status == 200 and body["hasUniqueValue"] is True
    check(PROPERTIES, "/crm/v3/properties/{objectType}/{propertyName}", "GET", status, body)
    status, body, _ = api("GET", "/crm/v3/properties/contacts/nope")
    assert status == 404
    check(PROPERTIES, "/crm/v3/properties/{objectType}/{propertyName}", "GET", status, body)
    status, body, _ = api("GET", "/crm/v3/pipelines/deals")
    stages = body["results"][0]["stages"]
    assert [s["id"] for s in stages][-2:] == ["closedwon", "closedlost"]
    assert stages[-2]["metadata"] == {"isClosed": "true", "probability": "1.0"}
    check(PIPELINES, "/crm/v3/pipelines/{objectType}", "GET", status, body)


def test_associations_single_and_batch(api: Any, hub: HubSpotEmulator) -> None:
    contact = hub.create_record("contacts", {"email": "c@example.com"})
    deal = hub.convert_lead(contact)["deal"]
    lonely = hub.create_record("deals", {"dealname": "alone"})
    status, body, _ = api("GET", f"/crm/v4/objects/deals/{deal}/associations/contacts")
    assert status == 200 and [r["toObjectId"] for r in body["results"]] == [contact]
    check(ASSOCIATIONS, "/crm/v4/objects/{objectType}/{objectId}/associations/{toObjectType}", "GET", status, body)
    status, body, _ = api("POST", "/crm/v4/associations/deals/contacts/batch/read",
                          {"inputs": [{"id": deal}, {"id": lonely}]})
    assert status == 207 and body["results"][0]["from"]["id"] == deal
    check(ASSOCIATIONS, "/crm/v4/associations/{fromObjectType}/{toObjectType}/batch/read", "POST", status, body)


def test_error_bodies_401_400_409(api: Any, hub: HubSpotEmulator) -> None:
    status, body, _ = api("GET", "/crm/v3/objects/contacts", token="bad")
    assert status == 401 and body["category"] == "INVALID_AUTHENTICATION"
    check(OBJECTS, "/crm/v3/objects/{objectType}", "GET", status, body)
    hub.remove_field("contacts", "referral_medium")
    status, body, _ = api("POST", "/crm/v3/objects/contacts/batch/update",
                          {"inputs": [{"id": "1", "properties": {"referral_medium": "x"}}]})
    assert status == 400 and body["errors"][0]["code"] == "PROPERTY_DOESNT_EXIST"
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/update", "POST", status, body)
    _upsert(api, "x1", email="dup@example.com")
    status, body, _ = _upsert(api, "x2", "x3", email="dup@example.com")
    assert status == 409 and body["category"] == "CONFLICT"
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/upsert", "POST", status, body)
    status, body, _ = api("POST", "/crm/v3/objects/contacts/batch/read",
                          {"inputs": [{"id": str(i)} for i in range(101)], "properties": [],
                           "propertiesWithHistory": []})
    assert status == 400
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/read", "POST", status, body)


def test_ten_secondly_429_has_retry_after(api: Any, hub: HubSpotEmulator) -> None:
    hub.set_faults(rate_limit=1.0, retry_after=3)
    status, body, headers = api("GET", "/crm/v3/objects/contacts")
    assert status == 429 and headers["Retry-After"] == "3" and body["policyName"] == "TEN_SECONDLY_ROLLING"
    check(OBJECTS, "/crm/v3/objects/{objectType}", "GET", status, body)
    assert hub.calls()["object_list"] == 1


# -- live-org behaviour (issue 10): the emulator's new answers, checked against the specs ----------
def test_date_property_refuses_a_time_of_day_with_invalid_date(api: Any) -> None:
    contact = api("POST", "/crm/v3/objects/contacts", {"properties": {"email": "d@example.com"}})[1]["id"]
    update = {"inputs": [{"id": contact, "properties": {"referral_submitted_on": "1759311000000"}}]}
    status, body, _ = api("POST", "/crm/v3/objects/contacts/batch/update", update)
    assert status == 400 and body["category"] == "VALIDATION_ERROR"
    assert body["errors"][0]["code"] == "INVALID_DATE"
    assert "1759311000000 is at 9:30:00.000 UTC, not midnight!" in body["message"]
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/update", "POST", status, body)
    update["inputs"][0]["properties"]["referral_submitted_on"] = "1759276800000"  # 2025-10-01 00:00 UTC
    status, body, _ = api("POST", "/crm/v3/objects/contacts/batch/update", update)
    assert status == 200 and body["results"][0]["properties"]["referral_submitted_on"] == "2025-10-01"
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/update", "POST", status, body)


def test_stage_history_and_pipelines_carry_ids_per_pipeline(api: Any, hub: HubSpotEmulator) -> None:
    deal = hub.create_record("deals", {"dealname": "renewal", "pipeline": "75431234"})
    hub.move_stage(deal, "Closed Won")
    status, body, _ = api("POST", "/crm/v3/objects/deals/batch/read",
                          {"inputs": [{"id": deal}], "properties": ["pipeline", "dealstage"],
                           "propertiesWithHistory": ["dealstage"]})
    assert status == 200
    assert [e["value"] for e in body["results"][0]["propertiesWithHistory"]["dealstage"]] == ["148300102", "148300101"]
    check(OBJECTS, "/crm/v3/objects/{objectType}/batch/read", "POST", status, body)
    status, body, _ = api("GET", "/crm/v3/pipelines/deals")
    assert [(p["id"], p["label"]) for p in body["results"]] == [("default", "Sales Pipeline"), ("75431234", "Renewals")]
    assert "Closed Won" in {s["label"] for s in body["results"][1]["stages"]}
    check(PIPELINES, "/crm/v3/pipelines/{objectType}", "GET", status, body)


def test_search_filters_contacts_on_lastmodifieddate_apart_from_hs_lastmodifieddate(
        api: Any, hub: HubSpotEmulator) -> None:
    hub.configure(search_per_second=None)
    contact = hub.create_record("contacts", {"email": "t@example.com"})
    stamp = (hub.get_record("contacts", contact) or {})["lastmodifieddate"]
    time.sleep(0.003)  # a later millisecond
    hub.system_touch("contacts", contact)
    query = {"filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GT", "value": stamp}]}],
             "properties": ["lastmodifieddate", "hs_lastmodifieddate"], "limit": 10}
    status, body, _ = api("POST", "/crm/v3/objects/contacts/search", query)
    assert status == 200 and body["total"] == 0  # a system touch does not move lastmodifieddate
    query["filterGroups"][0]["filters"][0]["propertyName"] = "hs_lastmodifieddate"
    status, body, _ = api("POST", "/crm/v3/objects/contacts/search", query)
    assert status == 200 and body["total"] == 1
    props = body["results"][0]["properties"]
    assert props["hs_lastmodifieddate"] > props["lastmodifieddate"] == stamp
    check(OBJECTS, "/crm/v3/objects/{objectType}/search", "POST", status, body)


def test_search_answers_old_values_until_the_index_catches_up(api: Any, hub: HubSpotEmulator) -> None:
    hub.configure(search_per_second=None)
    contact = hub.create_record("contacts", {"email": "lag@example.com", "referral_partner": "acme"})
    hub.configure(indexing_lag_ms=60_000)  # search trails writes by a minute from now on
    hub.set_field("contacts", contact, "referral_partner", "someone-else")
    query = {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": "lag@example.com"}]}],
             "properties": ["referral_partner"], "limit": 10}
    status, body, _ = api("POST", "/crm/v3/objects/contacts/search", query)
    assert status == 200 and body["results"][0]["properties"]["referral_partner"] == "acme"  # not indexed yet
    check(OBJECTS, "/crm/v3/objects/{objectType}/search", "POST", status, body)
    status, body, _ = api("POST", "/crm/v3/objects/contacts/batch/read",
                          {"inputs": [{"id": contact}], "properties": ["referral_partner"],
                           "propertiesWithHistory": []})
    assert body["results"][0]["properties"]["referral_partner"] == "someone-else"  # the record itself is current


def test_daily_limit_429_and_the_account_time_zone(api: Any, hub: HubSpotEmulator) -> None:
    hub.configure(time_zone="Europe/Berlin")
    status, body, _ = api("GET", "/account-info/v3/details")
    # the documented shape (developers.hubspot.com/docs/api-reference/latest/account/account-information/
    # get-account-details); no OpenAPI file of it is in crm-api/hubspot
    assert status == 200 and body["timeZone"] == "Europe/Berlin" and body["utcOffset"] in ("+01:00", "+02:00")
    assert {"portalId", "accountType", "companyCurrency", "additionalCurrencies", "utcOffsetMilliseconds",
            "uiDomain", "dataHostingLocation"} <= set(body)
    hub.configure(daily_limit=0)
    status, body, headers = api("GET", "/crm/v3/objects/contacts")
    assert status == 429 and body["policyName"] == "DAILY" and "Retry-After" not in headers
    check(OBJECTS, "/crm/v3/objects/{objectType}", "GET", status, body)
