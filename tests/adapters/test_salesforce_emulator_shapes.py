"""The Salesforce emulator answers with the same shapes (keys and JSON types) as the bodies recorded
from a live org and quoted from Salesforce's docs, so an adapter tested against it meets real ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from refsync.adapters.sandbox.salesforce_emulator import SalesforceEmulator
from tests.adapters.profile import recorded_body, reference_dir


@pytest.fixture(autouse=True)
def _reference_present() -> None:
    reference_dir("salesforce")  # skips with the reason on a machine without shared/, fails in CI


def ref(name: str) -> Any:
    return recorded_body("salesforce", name)


def shape(value: Any) -> Any:
    """Keys and JSON types, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


@pytest.fixture(scope="module")
def em(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SalesforceEmulator]:
    emulator = SalesforceEmulator(tls_dir=tmp_path_factory.mktemp("shapes"), seed=1).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def api(em: SalesforceEmulator) -> Any:
    em.reset()
    session = requests.Session()
    session.trust_env = False
    session.verify = str(em.ca_path)
    session.headers["Authorization"] = f"Bearer {em.session_id}"

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        return session.request(method, f"{em.base_url}/services/data/v59.0/{path}", timeout=5, **kwargs)

    return call


@pytest.mark.parametrize("obj", ["Lead", "Opportunity"])
def test_describe_has_the_recorded_keys_and_field_shapes(api: Any, obj: str) -> None:
    recorded = ref(f"recorded/GET_sobjects_{obj}_describe__00.json")
    answer = api("GET", f"sobjects/{obj}/describe")
    assert answer.status_code == 200 and answer.headers["Sforce-Limit-Info"].startswith("api-usage=")
    served = answer.json()
    assert set(served) == set(recorded)
    recorded_fields = {f["name"]: f for f in recorded["fields"]}
    served_fields = {f["name"]: f for f in served["fields"]}
    assert set(recorded_fields) <= set(served_fields)
    for name, field in served_fields.items():
        assert set(field) == set(recorded["fields"][0]), name
    for name in ("Id", "Email", "OwnerId", "SystemModstamp", "StageName", "Amount", "IsWon"):
        if name in recorded_fields:
            assert shape(served_fields[name]) == shape(recorded_fields[name]), name
    ext = served_fields["Referral_Id__c"]
    assert (ext["externalId"], ext["unique"], ext["length"], ext["custom"]) == (True, True, 26, True)
    if obj == "Opportunity":
        assert served_fields["StageName"]["picklistValues"] == recorded_fields["StageName"]["picklistValues"]


def test_upsert_update_and_query_answers_match_recorded_shapes(api: Any) -> None:
    upsert = api("PATCH", "composite/sobjects/Lead/Referral_Id__c", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Lead"}, "Referral_Id__c": "R1", "LastName": "A", "Company": "C"}]})
    assert shape(upsert.json()) == shape(ref("recorded/TestUpsert.test_simple_upsert__rest__09.json"))
    lead_id = upsert.json()[0]["id"]
    assert len(lead_id) == 18 and lead_id.startswith("00Q")
    again = api("PATCH", "composite/sobjects/Lead/Referral_Id__c", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Lead"}, "Referral_Id__c": "R1", "LastName": "B"}]}).json()
    assert again == [{"id": lead_id, "success": True, "errors": [], "created": False}]
    update = api("PATCH", "composite/sobjects", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Lead"}, "id": lead_id, "LastName": "C"},
        {"attributes": {"type": "Lead"}, "id": "00Qxx000003DGb2999", "LastName": "D"}]})
    assert shape(update.json()) == shape(ref("sfdocs/collections_update_response_partial_allOrNone_false.json"))
    query = api("GET", "query", params={"q": "select Id, LastName from Lead"})
    assert query.json()["records"][0]["attributes"]["url"] == f"/services/data/v59.0/sobjects/Lead/{lead_id}"
    api("PATCH", "composite/sobjects/Account/Id", json={"allOrNone": False, "records": [
        {"attributes": {"type": "Account"}, "Name": "Sitwell-Bluth"}]})
    accounts = api("GET", "query/", params={"q": "select Name from Account"}).json()
    assert accounts == {**ref("recorded/TestUpsert.test_simple_upsert__rest__11.json"), "records": [
        {"attributes": accounts["records"][0]["attributes"], "Name": "Sitwell-Bluth"}]}


def test_all_or_none_rolls_back_with_the_documented_body(api: Any, em: SalesforceEmulator) -> None:
    lead = em.create_record("Lead", {"LastName": "A", "Company": "C"})
    answer = api("PATCH", "composite/sobjects", json={"allOrNone": True, "records": [
        {"attributes": {"type": "Lead"}, "id": lead, "LastName": "B"},
        {"attributes": {"type": "Lead"}, "id": "001xx000003DGb2999", "LastName": "D"}]}).json()
    documented = ref("sfdocs/collections_update_response_allOrNone_true.json")
    assert shape(answer) == shape(documented)
    assert [a["errors"][0]["statusCode"] for a in answer] == [d["errors"][0]["statusCode"] for d in documented]
    assert em.get_record("Lead", lead)["LastName"] == "A"


def test_error_bodies_match_the_reference_ones(api: Any, em: SalesforceEmulator) -> None:
    bad_field = api("GET", "query", params={"q": "SELECT foo__c FROM Lead"})
    assert bad_field.status_code == 400 and shape(bad_field.json()) == shape(ref("thirdparty/invalid_field_400.json"))
    assert bad_field.json()[0]["message"].startswith("No such column 'foo__c' on entity 'Lead'")
    bad_type = api("GET", "query", params={"q": "select Id from XYZZY"})
    assert bad_type.status_code == 400 and bad_type.json()[0]["errorCode"] == "INVALID_TYPE"
    assert api("GET", "sobjects/Foo/describe").json() == ref("sfdocs/error_not_found_404.json")
    malformed = api("GET", "sobjects/Lead/001900K0001pPuOAAU")
    assert malformed.status_code == 400 and shape(malformed.json()) == shape(ref("sfdocs/error_malformed_id_400.json"))
    lead = em.create_record("Lead", {"LastName": "A", "Company": "C"})
    em.delete_record("Lead", lead)
    gone = api("GET", f"sobjects/Lead/{lead}")
    assert (gone.status_code, gone.json()) == (404, ref("thirdparty/entity_is_deleted.json"))
    expired = requests.get(f"{em.base_url}/services/data/v59.0/limits", verify=str(em.ca_path), timeout=5,
                           headers={"Authorization": "Bearer stale"})
    assert (expired.status_code, expired.json()) == (401, ref("thirdparty/invalid_session_401.json"))
    em.set_faults(rate_limit=1.0)
    limited = api("GET", "limits")
    assert (limited.status_code, limited.json()) == (403, ref("thirdparty/request_limit_exceeded_daily_403.json"))
    assert "Retry-After" not in limited.headers


def test_updated_and_deleted_resources_have_the_documented_shape(api: Any, em: SalesforceEmulator) -> None:
    lead = em.create_record("Lead", {"LastName": "A", "Company": "C"})
    em.delete_record("Lead", lead)
    window = {"start": "2000-01-01T00:00:00+00:00", "end": "2100-01-01T00:00:00+00:00"}
    deleted = api("GET", "sobjects/Lead/deleted/", params=window).json()
    assert shape(deleted) == shape(ref("sfdocs/sobject_deleted_response.json")) and deleted["deletedRecords"][0][
        "id"] == lead
    em.create_record("Lead", {"LastName": "B", "Company": "C"})
    assert shape(api("GET", "sobjects/Lead/updated/", params=window).json()) == shape(
        ref("sfdocs/sobject_updated_response.json"))


def test_admin_plane_over_http_is_not_counted(em: SalesforceEmulator) -> None:
    em.reset()

    def admin(method: str, **kwargs: Any) -> Any:
        answer = requests.post(f"{em.admin_url}/{method}", json=kwargs, verify=str(em.ca_path), timeout=5)
        assert answer.status_code == 200, answer.text
        return answer.json()["result"]

    lead = admin("create_record", object_name="Lead", fields={"LastName": "A", "Company": "C"})
    ids = admin("convert_lead", lead_id=lead)
    assert set(ids) == {"account", "contact", "opportunity"}
    admin("move_stage", deal_id=ids["opportunity"], stage="Closed Won", amount=10.0)
    record = admin("get_record", object_name="Opportunity", record_id=ids["opportunity"])
    assert (record["IsClosed"], record["IsWon"], record["Amount"]) == (True, True, 10.0)
    assert admin("calls") == {}


def test_the_emulators_duplicate_rule_error_has_salesforces_shape() -> None:
    from refsync.adapters.sandbox.salesforce_store import OrgStore

    store = OrgStore()
    contact = store.create_record("Contact", {"LastName": "Ng", "Email": "al@litware.example"}, None, "rep")
    new = {"attributes": {"type": "Lead"}, "Referral_Id__c": "R1", "LastName": "Ng", "Company": "Litware",
           "Email": "AL@litware.example"}
    [blocked] = store.collection_upsert("Lead", "Referral_Id__c", [new], False, False, lambda: False)
    documented = ref("sfdocs/collections_duplicates_detected_allOrNone_false.json")[1]
    assert blocked.keys() == documented.keys() and blocked["success"] is False
    error = blocked["errors"][0]
    assert {k: error[k] for k in documented["errors"][0]} == documented["errors"][0]
    reference = ref("thirdparty/duplicates_detected_duplicate_result.json")[0]["duplicateResult"]
    result = error["duplicateResult"]
    assert result.keys() == reference.keys()
    assert result["matchResults"][0].keys() == reference["matchResults"][0].keys()
    match = result["matchResults"][0]["matchRecords"][0]
    assert match.keys() == reference["matchResults"][0]["matchRecords"][0].keys()
    assert match["record"]["Id"] == contact and match["record"]["attributes"]["type"] == "Contact"
    [saved] = store.collection_upsert("Lead", "Referral_Id__c", [new], False, False, lambda: False, allow_save=True)
    assert saved["success"] is True and saved["created"] is True
