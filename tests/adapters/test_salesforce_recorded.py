"""SalesforceAdapter against Salesforce's own answers: recorded, documented and third-party error bodies
(``shared/crm-api/salesforce`` beside the checkout) replayed with ``responses``, no emulator involved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import responses

from refsync.adapters.base import RecordErrorKind, RecordUpdate, RecordUpsert
from refsync.adapters.errors import AuthError, CrmConfigError, RateLimited, TransientError
from refsync.adapters.retrying import CallPolicy, RetrySettings
from refsync.adapters.salesforce import SalesforceAdapter
from tests.adapters.profile import recorded_body, reference_dir

BASE = "https://acme.my.salesforce.com/services/data/v59.0/"


@pytest.fixture(autouse=True)
def _reference_present() -> None:
    reference_dir("salesforce")  # skips with the reason on a machine without shared/, fails in CI


def body(name: str) -> Any:
    return recorded_body("salesforce", name)


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def sf() -> SalesforceAdapter:
    return SalesforceAdapter("https://acme.my.salesforce.com", session_id="SESSION")


def _upsert(sf: SalesforceAdapter, n: int = 1) -> list[Any]:
    return sf.upsert("Lead", "Referral_Id__c", [RecordUpsert(f"R{i}", {"LastName": "x"}) for i in range(n)])


def test_daily_request_limit_is_a_long_rate_limit(mocked: responses.RequestsMock, sf: SalesforceAdapter) -> None:
    mocked.patch(BASE + "composite/sobjects/Lead/Referral_Id__c",
                 json=body("thirdparty/request_limit_exceeded_daily_403.json"), status=403)
    with pytest.raises(RateLimited) as caught:
        _upsert(sf)
    assert caught.value.code == "REQUEST_LIMIT_EXCEEDED"
    assert caught.value.retry_after == 3600.0  # no Retry-After from Salesforce: the rolling 24 h window


def test_concurrent_request_limit_is_transient_and_retried_in_place(mocked: responses.RequestsMock) -> None:
    waits: list[float] = []
    sf = SalesforceAdapter("https://acme.my.salesforce.com", session_id="SESSION",
                           retry=CallPolicy(RetrySettings(attempts=3, initial_wait_seconds=0.01), sleep=waits.append))
    url = BASE + "composite/sobjects/Lead/Referral_Id__c"
    mocked.patch(url, json=body("thirdparty/request_limit_exceeded_concurrent_403.json"), status=403)
    with pytest.raises(TransientError) as caught:
        _upsert(sf)
    assert caught.value.code == "REQUEST_LIMIT_EXCEEDED"
    assert len(waits) == 2  # three tries, two backoffs
    assert sf.budget().calls == {"composite_upsert": 3}


def test_invalid_session_is_an_auth_error_without_credentials(mocked: responses.RequestsMock,
                                                              sf: SalesforceAdapter) -> None:
    mocked.get(BASE + "sobjects/Lead/describe", json=body("thirdparty/invalid_session_401.json"), status=401)
    with pytest.raises(AuthError):
        sf.describe("Lead")
    assert len(mocked.calls) == 1  # no re-login attempt from simple-salesforce


def test_per_record_lock_and_partial_results(mocked: responses.RequestsMock, sf: SalesforceAdapter) -> None:
    lock = body("thirdparty/unable_to_lock_row.json")[0]
    partial = body("sfdocs/collections_update_response_partial_allOrNone_false.json")
    partial.append({"success": False, "errors": [{"statusCode": lock["errorCode"], "message": lock["message"],
                                                   "fields": lock["fields"]}]})
    mocked.patch(BASE + "composite/sobjects", json=partial)
    results = sf.update("Account", [RecordUpdate("001RM000003oCprYAE", {"Name": "a"}),
                                    RecordUpdate("001xx000003DGb2999", {"Name": "b"}),
                                    RecordUpdate("001RM000003oCpzYAE", {"Name": "c"})])
    assert [r.ok for r in results] == [True, False, False]
    assert results[0].record_id == "001RM000003oCprYAE"
    assert [(r.error.kind, r.error.code) for r in results[1:] if r.error] == [
        (RecordErrorKind.REJECTED, "MALFORMED_ID"), (RecordErrorKind.TRANSIENT, "UNABLE_TO_LOCK_ROW")]
    assert results[1].error and results[1].error.fields == ("Id",)
    sent = json.loads(mocked.calls[0].request.body)
    assert sent["allOrNone"] is False and mocked.calls[0].request.headers["Sforce-Auto-Assign"] == "FALSE"


def test_whole_lock_error_is_transient(mocked: responses.RequestsMock, sf: SalesforceAdapter) -> None:
    mocked.patch(BASE + "composite/sobjects/Lead/Referral_Id__c", json=body("thirdparty/unable_to_lock_row.json"),
                 status=400)
    with pytest.raises(TransientError):
        _upsert(sf)


def test_upsert_results_keep_created_and_a_short_answer_is_missing(mocked: responses.RequestsMock,
                                                                   sf: SalesforceAdapter) -> None:
    recorded = body("recorded/TestUpsert.test_simple_upsert__rest__21.json")  # 4 results: 3 updated, 1 created
    mocked.patch(BASE + "composite/sobjects/Lead/Referral_Id__c", json=recorded)
    results = _upsert(sf, 5)
    assert [r.created for r in results[:4]] == [False, False, False, True]
    assert results[4].ok is False and results[4].error and results[4].error.kind is RecordErrorKind.MISSING


def test_duplicate_value_and_deleted_and_converted_per_record(mocked: responses.RequestsMock,
                                                              sf: SalesforceAdapter) -> None:
    deleted = body("thirdparty/entity_is_deleted.json")[0]
    mocked.patch(BASE + "composite/sobjects/Lead/Referral_Id__c", json=[
        {"success": False, "errors": [{"statusCode": "DUPLICATE_VALUE", "message": "duplicate value found: "
                                       "Referral_Id__c duplicates value on record with id: 00Q000000000001",
                                       "fields": []}]},
        {"success": False, "errors": [{"statusCode": deleted["errorCode"], "message": deleted["message"],
                                       "fields": []}]},
        {"success": False, "errors": [{"statusCode": "CANNOT_UPDATE_CONVERTED_LEAD",
                                       "message": "cannot reference converted lead", "fields": []}]},
        {"success": False, "errors": [{"statusCode": "INVALID_FIELD_FOR_INSERT_UPDATE",
                                       "message": "Unable to create/update fields: IsConverted.",
                                       "fields": ["IsConverted"]}]}])
    kinds = [r.error.kind for r in _upsert(sf, 4) if r.error]
    assert kinds == [RecordErrorKind.CONFLICT, RecordErrorKind.DELETED, RecordErrorKind.CONVERTED,
                     RecordErrorKind.CONFIG]


def test_not_found_describe_and_invalid_field_query_are_config_errors(mocked: responses.RequestsMock,
                                                                      sf: SalesforceAdapter) -> None:
    mocked.get(BASE + "sobjects/Foo/describe", json=body("sfdocs/error_not_found_404.json"), status=404)
    mocked.get(BASE + "queryAll/", json=body("thirdparty/invalid_field_400.json"), status=400)
    with pytest.raises(CrmConfigError) as missing:
        sf.describe("Foo")
    assert missing.value.code == "NOT_FOUND"
    with pytest.raises(CrmConfigError) as bad_field:
        sf.read("Lead", ["00Q000000000001AAA"], ["foo__c"])
    assert bad_field.value.code == "INVALID_FIELD"


def test_invalid_type_from_a_recorded_composite_body_is_a_config_error(mocked: responses.RequestsMock,
                                                                       sf: SalesforceAdapter) -> None:
    recorded = body("recorded/TestCountSObjects.test_count_sobjects__errors__00.json")["compositeResponse"][1]
    mocked.get(BASE + "query/", json=recorded["body"], status=recorded["httpStatusCode"])
    with pytest.raises(CrmConfigError) as caught:
        sf.find("XYZZY", "Email", ["a@b.c"], [])
    assert caught.value.code == "INVALID_TYPE"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(mocked: responses.RequestsMock, sf: SalesforceAdapter, status: int) -> None:
    mocked.patch(BASE + "composite/sobjects", body="<html>upstream error</html>", status=status)
    with pytest.raises(TransientError):
        sf.update("Lead", [RecordUpdate("00Q000000000001AAA", {"LastName": "x"})])


def test_query_pages_follow_next_records_url(mocked: responses.RequestsMock, sf: SalesforceAdapter) -> None:
    page1 = body("sfdocs/query_page1.json")
    page1["records"][0]["Id"] = "001D000000IRFmaIAH"
    mocked.get(BASE + "query/", json=page1, headers={"Sforce-Limit-Info": "api-usage=18/15000"})
    mocked.get("https://acme.my.salesforce.com" + page1["nextRecordsUrl"], json={
        "totalSize": 2, "done": True, "records": [{"attributes": {"type": "Account"}, "Id": "001D000000IRFmbIAH",
                                                   "Name": "Test 2"}]}, headers={"Sforce-Limit-Info":
                                                                                 "api-usage=19/15000"})
    found = sf.find("Account", "Name", ["Test 1", "Test 2"], ["Name"])
    assert sorted(found) == ["Test 1", "Test 2"]
    budget = sf.budget()
    assert budget.calls == {"query": 2} and (budget.used_today, budget.limit_today) == (19, 15000)


def test_documented_duplicates_detected_is_a_duplicate_naming_no_record(mocked: responses.RequestsMock,
                                                                        sf: SalesforceAdapter) -> None:
    mocked.patch(BASE + "composite/sobjects/Lead/Referral_Id__c",
                 json=body("sfdocs/collections_duplicates_detected_allOrNone_false.json"))
    first, second = _upsert(sf, 2)
    assert first.ok and second.error is not None
    assert (second.error.kind, second.error.code, second.error.matches) == (
        RecordErrorKind.DUPLICATE, "DUPLICATES_DETECTED", ())


def test_duplicate_result_ids_are_read_and_save_past_rules_only_when_asked(mocked: responses.RequestsMock,
                                                                         sf: SalesforceAdapter) -> None:
    single = body("thirdparty/duplicates_detected_duplicate_result.json")[0]
    error = {"statusCode": single["errorCode"], "message": single["message"], "fields": [],
             "duplicateResult": single["duplicateResult"]}
    mocked.patch(BASE + "composite/sobjects/Lead/Referral_Id__c", json=[{"success": False, "errors": [error]}])
    [result] = _upsert(sf)
    assert result.error is not None and [(m.object, m.id) for m in result.error.matches] == [
        ("Contact", "0038M0000016Wv8QAE")]
    assert "Sforce-Duplicate-Rule-Header" not in mocked.calls[0].request.headers
    sf.upsert("Lead", "Referral_Id__c", [RecordUpsert("R1", {"LastName": "x"})], save_duplicates=True)
    assert mocked.calls[1].request.headers["Sforce-Duplicate-Rule-Header"] == "allowSave=true"


def test_find_on_leads_asks_for_what_a_converted_lead_became(mocked: responses.RequestsMock,
                                                             sf: SalesforceAdapter) -> None:
    page = body("sfdocs/query_page1.json")
    page.update(done=True, records=[{"attributes": {"type": "Lead"}, "Id": "00Q000000000001AAA",
                                     "Email": "a@b.example", "IsConverted": True,
                                     "ConvertedContactId": "0038M0000016Wv8QAE", "ConvertedOpportunityId": None,
                                     "ConvertedAccountId": "001RM000003oCprYAE"}])
    page.pop("nextRecordsUrl", None)
    mocked.get(BASE + "query/", json=page)
    [found] = sf.find("Lead", "Email", ["a@b.example"], [])["a@b.example"]
    assert found.fields["IsConverted"] is True and found.fields["ConvertedContactId"] == "0038M0000016Wv8QAE"
    soql = mocked.calls[0].request.url
    assert all(name in soql for name in ("IsConverted", "ConvertedContactId", "ConvertedOpportunityId"))
