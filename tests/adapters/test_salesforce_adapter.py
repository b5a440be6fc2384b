"""SalesforceAdapter against the Salesforce emulator over real HTTPS (private CA, real sockets)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import trustme

from refsync.adapters.base import ChangeKind, RecordErrorKind, RecordUpdate, RecordUpsert
from refsync.adapters.errors import AuthError, CrmConfigError, RateLimited, TransientError
from refsync.adapters.salesforce import PinnedSession, SalesforceAdapter
from refsync.adapters.sandbox.salesforce_emulator import SalesforceEmulator
from refsync.adapters.sandbox.salesforce_store import ASSIGNMENT_QUEUE_ID
from tests.adapters.profile import all_changes


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SalesforceEmulator]:
    emulator = SalesforceEmulator(tls_dir=tmp_path_factory.mktemp("sf-tls"), seed=11).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def em(running: SalesforceEmulator) -> SalesforceEmulator:
    running.reset()
    return running


@pytest.fixture
def sf(em: SalesforceEmulator) -> SalesforceAdapter:
    return SalesforceAdapter(em.base_url, session_id=em.session_id, ca_bundle=str(em.ca_path), timeout=(3.0, 5.0))


def _lead(ref: str, email: str | None = None, **extra: str) -> RecordUpsert:
    return RecordUpsert(ref, {"LastName": "Lee", "Company": "Northwind", "Email": email or f"{ref.lower()}@example.com",
                              "Referral_Partner__c": "acme", **extra})


def _since() -> datetime:
    """A cursor strictly between what happened before this call and what happens after it."""
    time.sleep(0.01)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    return moment


def test_upsert_of_450_records_takes_three_calls_and_a_replay_creates_nothing(
        sf: SalesforceAdapter, em: SalesforceEmulator) -> None:
    records = [_lead(f"REF{i:04d}") for i in range(450)]
    first = sf.upsert("Lead", "Referral_Id__c", records)
    assert em.calls() == {"composite_upsert": 3}
    assert len(first) == 450 and all(r.ok and r.created for r in first)
    assert len({r.record_id for r in first}) == 450
    again = sf.upsert("Lead", "Referral_Id__c", records)
    assert [r.record_id for r in again] == [r.record_id for r in first]
    assert not any(r.created for r in again)
    assert sf.budget().calls["composite_upsert"] == 6


def test_writes_send_auto_assign_false_so_the_owner_stays(sf: SalesforceAdapter, em: SalesforceEmulator) -> None:
    owner = em.store.user_id("dana-the-rep")
    lead = em.create_record("Lead", {"LastName": "Kim", "Company": "Contoso"}, owner_id=owner)
    [result] = sf.update("Lead", [RecordUpdate(lead, {"Referral_Partner__c": "acme"})])
    assert result.ok
    assert em.get_record("Lead", lead)["OwnerId"] == owner
    # The emulated assignment rule is live: the same write without the header hands the lead to a queue.
    plain = requests.patch(f"{em.base_url}/services/data/v59.0/composite/sobjects", verify=str(em.ca_path),
                           headers={"Authorization": f"Bearer {em.session_id}"},
                           json={"records": [{"attributes": {"type": "Lead"}, "id": lead, "Title": "CTO"}]},
                           timeout=5)
    assert plain.json()[0]["success"]
    assert em.get_record("Lead", lead)["OwnerId"] == ASSIGNMENT_QUEUE_ID


def test_lock_contention_comes_back_per_record_as_transient(sf: SalesforceAdapter, em: SalesforceEmulator) -> None:
    em.set_faults(lock=0.5, seed=3)
    results = sf.upsert("Lead", "Referral_Id__c", [_lead(f"LOCK{i}") for i in range(40)])
    locked = [r for r in results if not r.ok]
    assert 0 < len(locked) < 40
    assert {(r.error.kind, r.error.code) for r in locked if r.error} == {(RecordErrorKind.TRANSIENT,
                                                                         "UNABLE_TO_LOCK_ROW")}
    assert [r.key for r in results] == [f"LOCK{i}" for i in range(40)]
    em.set_faults()
    retried = sf.upsert("Lead", "Referral_Id__c", [_lead(r.key) for r in locked])
    assert all(r.ok and r.created for r in retried)


def test_a_converted_lead_refuses_writes_and_shows_up_as_converted(sf: SalesforceAdapter,
                                                                   em: SalesforceEmulator) -> None:
    [lead] = sf.upsert("Lead", "Referral_Id__c", [_lead("CONV1")])
    since = _since()
    converted = em.convert_lead(lead.record_id, opportunity_name="Northwind renewal")
    [result] = sf.update("Lead", [RecordUpdate(lead.record_id, {"Referral_Partner__c": "globex"})])
    assert not result.ok and result.error is not None
    assert (result.error.kind, result.error.code) == (RecordErrorKind.CONVERTED, "CANNOT_UPDATE_CONVERTED_LEAD")
    change = next(c for c in all_changes(sf, "Lead", since, ["Email"]).changes if c.record_id == lead.record_id)
    assert change.kind is ChangeKind.CONVERTED
    assert dict(change.converted_to) == converted
    opportunity = sf.read("Opportunity", [converted["opportunity"]], ["Referral_Id__c", "Name"])
    assert opportunity[converted["opportunity"]].fields["Referral_Id__c"] is None  # custom fields not mapped


def test_merge_moves_reads_to_the_survivor_and_writes_to_the_loser_fail_as_deleted(
        sf: SalesforceAdapter, em: SalesforceEmulator) -> None:
    survivor, loser = (r.record_id for r in sf.upsert("Lead", "Referral_Id__c", [_lead("M1"), _lead("M2")]))
    em.merge("Lead", survivor, loser)
    got = sf.read("Lead", [loser, survivor], ["Referral_Id__c"])
    assert got[loser].id == survivor and got[loser].fields["Referral_Id__c"] == "M1"
    [result] = sf.update("Lead", [RecordUpdate(loser, {"Referral_Partner__c": "x"})])
    assert result.error is not None and result.error.kind is RecordErrorKind.DELETED
    raw = em.get_raw("Lead", loser)
    assert raw["IsDeleted"] is True and raw["MasterRecordId"] == survivor


def test_changes_page_through_next_records_url_and_cursor_excludes_what_was_seen(
        sf: SalesforceAdapter, em: SalesforceEmulator) -> None:
    since = _since()
    sf.upsert("Lead", "Referral_Id__c", [_lead(f"PAGE{i:03d}") for i in range(450)])
    sf.query_batch_size = 200
    before = em.calls().get("query", 0)
    result = all_changes(sf, "Lead", since, ["Referral_Id__c"])
    assert em.calls()["query"] - before == 3  # 200 + 200 + 50
    assert len({c.record_id for c in result.changes}) == 450
    assert [c.at for c in result.changes] == sorted(c.at for c in result.changes)
    assert result.cursor == max(c.at for c in result.changes)
    assert all_changes(sf, "Lead", result.cursor, ["Referral_Id__c"]).changes == []


def test_opportunity_changes_carry_stage_history_with_who_moved_it(sf: SalesforceAdapter,
                                                                   em: SalesforceEmulator) -> None:
    deal = em.create_record("Opportunity", {"Name": "Big deal", "StageName": "Prospecting", "CloseDate": "2026-12-31"})
    since = _since()
    em.move_stage(deal, "Negotiation/Review", amount=5000.0)
    em.move_stage(deal, "Closed Won", amount=5500.0, close_date="2026-12-15")
    result = all_changes(sf, "Opportunity", since, ["StageName", "Amount"])
    assert [(s.stage, s.amount, s.close_date) for s in result.stage_changes] == [
        ("Negotiation/Review", 5000.0, "2026-12-31"), ("Closed Won", 5500.0, "2026-12-15")]
    assert result.stage_changes[0].changed_by == em.store.user_id("rep")
    [change] = result.changes
    assert change.record.fields["StageName"] == "Closed Won" and change.record.modified_by == em.store.user_id("rep")


def test_find_quotes_values_so_quotes_and_backslashes_cannot_change_the_query(
        sf: SalesforceAdapter, em: SalesforceEmulator) -> None:
    tricky = ["o'hara@example.com", "back\\slash@example.com", 'dq"uote@example.com']
    ids = {email: em.create_record("Lead", {"LastName": "T", "Company": "C", "Email": email}) for email in tricky}
    em.create_record("Lead", {"LastName": "Decoy", "Company": "C", "Email": "decoy@example.com"})
    found = sf.find("Lead", "Email", [*tricky, "x' OR Email != 'y", "x\\' OR Email != null OR Email = \\'"], [])
    assert {k: [r.id for r in v] for k, v in found.items()} == {e: [ids[e]] for e in tricky}
    with pytest.raises(CrmConfigError):
        sf.find("Lead", "Email) OR (Id", ["x"], [])


def test_find_skips_the_escape_table_only_for_values_it_would_leave_unchanged() -> None:
    # find quotes a value without simple-salesforce's translate when none of its characters is one
    # the library escapes: the two must agree on which characters those are, every one of them
    from simple_salesforce.format import quote_soql_value, soql_escapes

    from refsync.adapters.salesforce import _SOQL_ESCAPED

    for code in range(0x3000):
        char = chr(code)
        assert bool(_SOQL_ESCAPED.search(char)) == (code in soql_escapes), repr(char)
        if not _SOQL_ESCAPED.search(char):
            assert quote_soql_value(f"a{char}b") == f"'a{char}b'"


def test_find_sends_every_character_of_a_value_so_the_crm_reads_it_back(sf: SalesforceAdapter,
                                                                       em: SalesforceEmulator) -> None:
    # The SOQL travels as q=... with spaces as '+' (form encoding): a '+' of a value must arrive as
    # '+', never as a space; '&', '=', '#' and '%' must not end or split the parameter; non-ASCII
    # must arrive as the same characters. Each address finds its own lead and nothing else.
    tricky = ["first+tag@example.com", "a&b=c@example.com", "hash#1@example.com", "100%@example.com",
              "zoë.ñandú@exämple.com", "comma,(paren)@example.com"]
    ids = {email: em.create_record("Lead", {"LastName": "T", "Company": "C", "Email": email}) for email in tricky}
    em.create_record("Lead", {"LastName": "Decoy", "Company": "C", "Email": "first tag@example.com"})
    em.create_record("Lead", {"LastName": "Decoy", "Company": "C", "Email": "a@example.com"})
    found = sf.find("Lead", "Email", tricky, [])
    assert {k: [r.id for r in v] for k, v in found.items()} == {e: [ids[e]] for e in tricky}
    for email in tricky:  # and one at a time (a query whose URL holds no escape at all, for the plain ones)
        assert [r.id for r in sf.find("Lead", "Email", [email], [])[email]] == [ids[email]]


def test_find_splits_long_value_lists_to_stay_under_the_url_limit(sf: SalesforceAdapter,
                                                                  em: SalesforceEmulator) -> None:
    sf.upsert("Lead", "Referral_Id__c", [_lead(f"LONG{i:04d}", f"{'x' * 60}{i}@example.com") for i in range(400)])
    before = em.calls().get("query", 0)
    found = sf.find("Lead", "Email", [f"{'x' * 60}{i}@example.com" for i in range(400)], [])
    assert len(found) == 400
    assert em.calls()["query"] - before >= 3


def test_the_proxies_of_the_environment_apply_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # The session reads the environment's proxies once per host (requests reads them on every
    # request): a proxied org goes through its proxy, a host NO_PROXY names does not.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    session = PinnedSession(None, (1.0, 1.0))
    for _ in range(2):
        proxied = session.merge_environment_settings(
            "https://acme.my.salesforce.com/services/data/v59.0/query/?q=SELECT+Id+FROM+Lead", {}, None, True, None)
        assert proxied["proxies"].get("https") == "http://proxy.example:3128"
        direct = session.merge_environment_settings("https://direct.example/services/data/v59.0/sobjects/", {},
                                                    None, True, None)
        assert "https" not in direct["proxies"]
    proxied["proxies"]["https"] = "changed by a caller"
    again = session.merge_environment_settings("https://acme.my.salesforce.com/services/oauth2/token", {}, None,
                                               True, None)
    assert again["proxies"]["https"] == "http://proxy.example:3128"


def test_ca_bundle_wins_over_requests_ca_bundle_environment(sf: SalesforceAdapter, em: SalesforceEmulator,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stranger))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(stranger))
    assert "Referral_Id__c" in sf.describe("Lead").fields
    unpinned = SalesforceAdapter(em.base_url, session_id=em.session_id, timeout=(3.0, 5.0))
    with pytest.raises(CrmConfigError) as caught:
        unpinned.describe("Lead")
    assert caught.value.code == "TLS"


def test_an_expired_session_is_renewed_once_with_credentials(em: SalesforceEmulator) -> None:
    creds = em.credentials
    sf = SalesforceAdapter(em.base_url, username=creds["username"], password=creds["password"],
                           security_token=creds["security_token"], domain=em.base_url, ca_bundle=str(em.ca_path))
    assert "Email" in sf.describe("Lead").fields
    em.expire_sessions()
    assert "Email" in sf.describe("Lead").fields  # re-logged in, same call succeeded
    oauth = SalesforceAdapter(em.base_url, client_id=creds["client_id"], client_secret=creds["client_secret"],
                              ca_bundle=str(em.ca_path))
    em.expire_sessions()
    assert oauth.find("Lead", "Email", ["none@example.com"], []) == {}


def test_an_expired_session_without_credentials_is_an_auth_error(sf: SalesforceAdapter,
                                                                 em: SalesforceEmulator) -> None:
    sf.describe("Lead")
    em.expire_sessions()
    with pytest.raises(AuthError) as caught:
        sf.describe("Lead")
    assert caught.value.code == "INVALID_SESSION_ID"
    wrong = SalesforceAdapter(em.base_url, username=em.credentials["username"], password="nope",
                              security_token="x", domain=em.base_url, ca_bundle=str(em.ca_path))
    with pytest.raises(AuthError):
        wrong.describe("Lead")


@pytest.mark.parametrize(("fault", "error"), [("rate_limit", RateLimited), ("server_error", TransientError),
                                              ("drop", TransientError)])
def test_whole_call_faults_are_classified(sf: SalesforceAdapter, em: SalesforceEmulator, fault: str,
                                          error: type[Exception]) -> None:
    em.set_faults(**{fault: 1.0})
    with pytest.raises(error) as caught:
        sf.upsert("Lead", "Referral_Id__c", [_lead("FAULT1")])
    if fault == "rate_limit":
        assert caught.value.code == "REQUEST_LIMIT_EXCEEDED" and caught.value.retry_after


def test_a_slow_answer_times_out_as_transient(em: SalesforceEmulator) -> None:
    sf = SalesforceAdapter(em.base_url, session_id=em.session_id, ca_bundle=str(em.ca_path), timeout=(2.0, 0.3))
    em.set_faults(slow=1.0, slow_seconds=0.8)
    with pytest.raises(TransientError):
        sf.describe("Lead")


def test_a_removed_field_is_a_configuration_error(sf: SalesforceAdapter, em: SalesforceEmulator) -> None:
    em.remove_field("Lead", "Referral_Medium__c")
    assert "Referral_Medium__c" not in sf.describe("Lead").fields
    with pytest.raises(CrmConfigError) as caught:
        sf.upsert("Lead", "Referral_Id__c", [_lead("RM1", Referral_Medium__c="email")])
    assert caught.value.code == "INVALID_FIELD"
    with pytest.raises(CrmConfigError):
        all_changes(sf, "Lead", _since(), ["Referral_Medium__c"])


def test_per_record_rejections_keep_the_crm_code(sf: SalesforceAdapter) -> None:
    results = sf.upsert("Lead", "Referral_Id__c", [
        _lead("OK1"), RecordUpsert("NOLAST", {"Company": "C"}), _lead("LONG1", Referral_Source__c="s" * 300)])
    assert [r.ok for r in results] == [True, False, False]
    assert [(r.error.kind, r.error.code) for r in results[1:] if r.error] == [
        (RecordErrorKind.REJECTED, "REQUIRED_FIELD_MISSING"), (RecordErrorKind.REJECTED, "STRING_TOO_LONG")]
    dup = sf.upsert("Lead", "Referral_Id__c", [_lead("TWICE"), _lead("TWICE")])
    assert [r.error.kind for r in dup if r.error] == [RecordErrorKind.CONFLICT, RecordErrorKind.CONFLICT]


def test_stages_and_budget_come_from_the_org(sf: SalesforceAdapter) -> None:
    stages = sf.stages("Opportunity")
    assert [s.label for s in stages][:2] == ["Prospecting", "Qualification"]
    won = [s.label for s in stages if s.is_won]
    lost = [s.label for s in stages if s.is_closed and not s.is_won]
    assert (won, lost) == (["Closed Won"], ["Closed Lost"])
    budget = sf.budget()
    assert budget.calls == {"query": 1} and budget.limit_today == 15000 and budget.used_today == 1
