"""HubSpotAdapter against the HubSpot emulator, over real HTTP, through the real hubspot-api-client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from refsync.adapters.base import ChangeKind, RecordErrorKind, RecordUpdate, RecordUpsert
from refsync.adapters.errors import AuthError, CrmConfigError, RateLimited, TransientError
from refsync.adapters.hubspot import HubSpotAdapter
from refsync.adapters.sandbox.hubspot_emulator import HubSpotEmulator
from tests.adapters.profile import all_changes

ID = "refsync_referral_id"


@pytest.fixture(scope="module")
def emulator() -> Iterator[HubSpotEmulator]:
    emu = HubSpotEmulator(seed=11).start()
    yield emu
    emu.stop()


@pytest.fixture()
def hub(emulator: HubSpotEmulator) -> HubSpotEmulator:
    emulator.reset()
    return emulator


@pytest.fixture()
def adapter(hub: HubSpotEmulator) -> HubSpotAdapter:
    return HubSpotAdapter(hub.base_url, hub.access_token, timeout=5.0)


def _referrals(count: int, start: int = 0) -> list[RecordUpsert]:
    return [RecordUpsert(f"ref-{i}", {"email": f"Prospect{i}@Example.com", "referral_partner": "acme"})
            for i in range(start, start + count)]


def test_upsert_250_takes_three_calls_then_updates_in_place(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    first = adapter.upsert("contacts", ID, _referrals(250))
    assert [r.key for r in first] == [f"ref-{i}" for i in range(250)]
    assert all(r.ok and r.created for r in first)
    assert hub.calls()["batch_upsert"] == 3
    again = adapter.upsert("contacts", ID, [RecordUpsert("ref-3", {"referral_partner": "globex"})])
    assert again[0].ok and not again[0].created and again[0].record_id == first[3].record_id
    assert hub.get_record("contacts", first[3].record_id)["referral_partner"] == "globex"
    assert adapter.budget().calls["batch_upsert"] == 4


def test_partial_failure_207_maps_each_record(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    alive = hub.create_record("contacts", {"email": "a@example.com"})
    gone = hub.create_record("contacts", {"email": "b@example.com"})
    hub.delete_record("contacts", gone)
    results = adapter.update("contacts", [RecordUpdate(gone, {"referral_partner": "acme"}),
                                          RecordUpdate(alive, {"referral_partner": "acme"})])
    assert results[0].error is not None and results[0].error.kind is RecordErrorKind.DELETED
    assert results[0].error.code == "OBJECT_NOT_FOUND"
    assert results[1].ok and hub.get_record("contacts", alive)["referral_partner"] == "acme"


def test_lock_errors_in_207_are_transient_and_not_written(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    hub.set_faults(lock=0.5)
    results = adapter.upsert("contacts", ID, _referrals(40))
    failed = [r for r in results if not r.ok]
    assert 0 < len(failed) < 40
    assert all(r.error is not None and r.error.kind is RecordErrorKind.TRANSIENT for r in failed)
    hub.set_faults()
    found = adapter.read("contacts", [r.record_id for r in results if r.ok], [ID])
    assert {rec.fields[ID] for rec in found.values() if rec} == {r.key for r in results if r.ok}


def test_merged_away_id_missing_from_results_is_missing_and_read_follows_new_id(
        adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    a = hub.create_record("contacts", {"email": "one@example.com", "referral_partner": "acme"})
    b = hub.create_record("contacts", {"email": "two@example.com"})
    since = datetime.now(UTC)
    survivor = hub.merge("contacts", a, b)
    assert survivor not in (a, b)  # HubSpot mints a new id
    results = adapter.update("contacts", [RecordUpdate(b, {"referral_source": "event"})])
    assert not results[0].ok and results[0].error is not None
    assert results[0].error.kind is RecordErrorKind.MISSING
    read = adapter.read("contacts", [a, b], ["email", "referral_partner"])
    assert read[a] is not None and read[a].id == survivor and read[a].fields["referral_partner"] == "acme"
    assert read[b] is not None and read[b].id == survivor
    changes = all_changes(adapter, "contacts", since, ["email"]).changes
    merged = {(c.record_id, c.merged_into) for c in changes if c.kind is ChangeKind.MERGED}
    assert merged == {(a, survivor), (b, survivor)}


def test_unique_collision_is_one_409_and_every_record_conflicts(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    hub.create_record("contacts", {"email": "taken@example.com"})
    records = [RecordUpsert("ref-new", {"email": "fresh@example.com"}),
               RecordUpsert("ref-dup", {"email": "TAKEN@example.com"})]
    results = adapter.upsert("contacts", ID, records)
    assert [r.error.kind if r.error else None for r in results] == [RecordErrorKind.CONFLICT] * 2
    assert adapter.find("contacts", "email", ["fresh@example.com"], ["email"]) == {}  # nothing written
    alone = adapter.upsert("contacts", ID, records[:1])
    assert alone[0].ok and alone[0].created


def test_find_matches_emails_case_insensitively_in_batches(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    adapter.upsert("contacts", ID, _referrals(150))
    wanted = [f"PROSPECT{i}@example.COM" for i in range(0, 150, 2)] + ["nobody@example.com"]
    found = adapter.find("contacts", "email", wanted, ["email", ID])
    assert set(found) == set(wanted[:-1])
    assert found["PROSPECT4@example.COM"][0].fields[ID] == "ref-4"


def test_changes_past_the_search_cap_lose_nothing(hub: HubSpotEmulator) -> None:
    hub.configure(search_cap=100, search_per_second=None)
    adapter = HubSpotAdapter(hub.base_url, hub.access_token, timeout=5.0, search_cap=100, search_per_second=None)
    since = datetime.now(UTC)
    written = adapter.upsert("contacts", ID, _referrals(250))  # 3 batches: 100 records share a timestamp
    changes = all_changes(adapter, "contacts", since, [ID]).changes
    updated = [c.record_id for c in changes if c.kind is ChangeKind.UPDATED]
    assert len(updated) == len(set(updated)) == 250
    assert set(updated) == {r.record_id for r in written}
    assert all(c.record is not None and c.record.fields[ID] for c in changes)


def test_changes_report_deletions_and_advance_the_cursor(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    since = datetime.now(UTC)
    rid = hub.create_record("contacts", {"email": "del@example.com"})
    hub.delete_record("contacts", rid)
    result = all_changes(adapter, "contacts", since, ["email"])
    assert [(c.kind, c.record_id) for c in result.changes] == [(ChangeKind.DELETED, rid)]
    assert result.cursor >= since
    assert adapter.read("contacts", [rid], ["email"]) == {rid: None}


def test_the_deletion_check_position_travels_in_poll_state_to_a_new_adapter(hub: HubSpotEmulator) -> None:
    """A new process handed the kept position does not list archived records again within the
    check interval, and once due lists from where the last check began: nothing archived between
    is missed, however long the gap."""
    since = datetime.now(UTC)
    first = HubSpotAdapter(hub.base_url, hub.access_token, timeout=5.0)
    pages = list(first.change_pages("contacts", since, ["email"], poll_state={}))
    [state] = [p.poll_state for p in pages if p.poll_state is not None]
    assert hub.calls()["object_list"] == 1
    rid = hub.create_record("contacts", {"email": "late@example.com"})
    hub.delete_record("contacts", rid)
    second = HubSpotAdapter(hub.base_url, hub.access_token, timeout=5.0)
    quiet = list(second.change_pages("contacts", since, ["email"], poll_state=state))
    assert hub.calls()["object_list"] == 1 and all(p.poll_state is None for p in quiet)
    assert rid not in {c.record_id for p in quiet for c in p.changes}
    due = {**state, "deletions_checked_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat()}
    later = datetime.now(UTC) + timedelta(minutes=30)  # the poll's own window has moved past the deletion
    pages = list(second.change_pages("contacts", later, ["email"], poll_state=due))
    assert (ChangeKind.DELETED, rid) in {(c.kind, c.record_id) for p in pages for c in p.changes}
    assert hub.calls()["object_list"] == 2


def test_stage_history_and_deal_associations(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    contact = hub.create_record("contacts", {"email": "buyer@example.com"})
    deal = hub.convert_lead(contact)["deal"]
    hub.move_stage(deal, "Qualified To Buy")
    time.sleep(0.005)
    hub.move_stage(deal, "Closed Won", amount=1200.0, close_date="2026-12-01T00:00:00Z")
    result = all_changes(adapter, "deals", since, ["dealname", "dealstage"])
    updated = [c for c in result.changes if c.kind is ChangeKind.UPDATED]
    assert updated[0].record is not None and updated[0].record.fields["associations.contacts"] == [contact]
    stages = [s.stage for s in result.stage_changes if s.record_id == deal]
    assert stages == ["Appointment Scheduled", "Qualified To Buy", "Closed Won"]
    won = result.stage_changes[-1]
    assert won.amount == 1200.0 and won.close_date.startswith("2026-12-01") and won.changed_by
    assert any(s.is_won and s.label == "Closed Won" for s in adapter.stages("deals"))


def test_search_secondly_limit_is_rate_limited_for_one_second(hub: HubSpotEmulator) -> None:
    unpaced = HubSpotAdapter(hub.base_url, hub.access_token, timeout=5.0, search_per_second=None)
    with pytest.raises(RateLimited) as caught:
        for _ in range(8):
            unpaced.find("contacts", "email", ["x@example.com"], ["email"])
    assert caught.value.retry_after == 1.0 and caught.value.code == "SECONDLY"


def test_paced_adapter_stays_under_the_search_limit(adapter: HubSpotAdapter) -> None:
    for _ in range(7):
        adapter.find("contacts", "email", ["x@example.com"], ["email"])
    assert adapter.budget().calls["search"] == 7


def test_ten_secondly_429_uses_retry_after(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    hub.set_faults(rate_limit=1.0, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        adapter.upsert("contacts", ID, _referrals(1))
    assert caught.value.retry_after == 7.0 and caught.value.code == "TEN_SECONDLY_ROLLING"


@pytest.mark.parametrize("faults", [{"slow": 1.0, "slow_seconds": 1.0}, {"drop": 1.0}, {"server_error": 1.0}])
def test_timeouts_drops_and_5xx_are_transient(hub: HubSpotEmulator, faults: dict[str, float]) -> None:
    adapter = HubSpotAdapter(hub.base_url, hub.access_token, timeout=0.3)
    hub.set_faults(**faults)
    with pytest.raises(TransientError):
        adapter.read("contacts", ["1001"], ["email"])
    assert hub.calls()["batch_read"] == 1  # no retry inside the adapter


def test_bad_token_is_auth_error(hub: HubSpotEmulator) -> None:
    with pytest.raises(AuthError):
        HubSpotAdapter(hub.base_url, "wrong-token").describe("contacts")


def test_removed_property_is_a_config_error(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    hub.remove_field("contacts", "referral_campaign")
    assert "referral_campaign" not in adapter.describe("contacts").fields
    with pytest.raises(CrmConfigError) as caught:
        adapter.upsert("contacts", ID, [RecordUpsert("ref-1", {"referral_campaign": "spring"})])
    assert caught.value.code == "PROPERTY_DOESNT_EXIST"
    with pytest.raises(CrmConfigError):
        adapter.describe("widgets")


def test_describe_reports_types_and_the_unique_id_property(adapter: HubSpotAdapter) -> None:
    fields = adapter.describe("deals").fields
    assert fields[ID].unique and fields[ID].external_id and fields[ID].updateable
    assert fields["referral_submitted_at"].type == "datetime"
    assert fields["dealstage"].type == "enum" and "closedwon" in fields["dealstage"].options
    assert not fields["hs_is_closed"].updateable


def test_budget_reports_daily_usage_from_headers(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    hub.configure(daily_limit=500)
    adapter.describe("contacts")
    adapter.stages("deals")
    adapter.stages("deals")  # read each time: the engine caches stages in the ledger
    budget = adapter.budget()
    assert budget.calls == {"properties": 1, "pipelines": 2}
    assert budget.limit_today == 500 and budget.used_today == 3 and budget.remaining_today == 497


def test_admin_plane_over_http_is_not_counted(hub: HubSpotEmulator) -> None:
    import json

    import urllib3

    pool = urllib3.PoolManager(retries=False)

    def admin(method: str, **kwargs: object) -> object:  # None comes back as {"result": null}
        answer = pool.request("POST", f"{hub.admin_url}/{method}", body=json.dumps(kwargs),
                              headers={"Content-Type": "application/json"})
        assert answer.status == 200, answer.data
        return json.loads(answer.data)

    contact = admin("create_record", object_name="contacts", fields={"email": "http@example.com"})
    admin("set_field", object_name="contacts", record_id=contact, field="referral_partner", value="x", by="alice")
    record = admin("get_record", object_name="contacts", record_id=contact)
    assert isinstance(record, dict) and record["referral_partner"] == "x" and record["hs_updated_by_user_id"]
    bad = pool.request("POST", f"{hub.admin_url}/set_field", body=json.dumps(
        {"object_name": "contacts", "record_id": contact, "field": "no_such_field", "value": "x"}))
    assert bad.status == 400 and b"PROPERTY_DOESNT_EXIST" in bad.data
    assert admin("calls") == {}


# -- live-org behaviour (issue 10) ----------------------------------------------------------------
def test_system_touch_moves_hs_lastmodifieddate_but_not_lastmodifieddate(hub: HubSpotEmulator) -> None:
    contact = hub.create_record("contacts", {"email": "stamp@example.com"})
    before = hub.get_record("contacts", contact) or {}
    time.sleep(0.005)
    hub.system_touch("contacts", contact)
    after = hub.get_record("contacts", contact) or {}
    assert after["lastmodifieddate"] == before["lastmodifieddate"]
    assert after["hs_lastmodifieddate"] > before["hs_lastmodifieddate"]


def test_contacts_touched_by_a_system_process_are_neither_skipped_nor_read_forever(hub: HubSpotEmulator) -> None:
    adapter = HubSpotAdapter(hub.base_url, hub.access_token, timeout=5.0, search_per_second=None)
    adapter.search_page = 2
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = []
    for n in range(5):
        ids.append(hub.create_record("contacts", {"email": f"p{n}@example.com"}))
        time.sleep(0.003)
    hub.system_touch("contacts", ids[0])  # its hs_lastmodifieddate is now ahead of every other contact
    result = all_changes(adapter, "contacts", since, ["email"])
    seen = [c.record_id for c in result.changes if c.kind is ChangeKind.UPDATED]
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    stamps = [hub.get_record("contacts", i)["lastmodifieddate"] for i in ids]  # type: ignore[index]
    assert result.cursor == datetime.fromisoformat(max(stamps).replace("Z", "+00:00"))
    assert adapter.budget().calls["search"] <= 4


def test_stage_history_resolves_stage_ids_per_pipeline(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    deal = hub.create_record("deals", {"dealname": "renewal", "pipeline": "75431234"})
    time.sleep(0.003)
    hub.move_stage(deal, "Closed Won")
    result = all_changes(adapter, "deals", since, ["dealname", "dealstage"])
    moves = [(s.pipeline, s.stage) for s in result.stage_changes if s.record_id == deal]
    assert moves == [("Renewals", "Renewal Due"), ("Renewals", "Closed Won")]
    assert {(s.pipeline_id, s.pipeline) for s in adapter.stages("deals")} == {
        ("default", "Sales Pipeline"), ("75431234", "Renewals")}


def test_a_date_property_refuses_a_time_of_day_with_hubspots_invalid_date(adapter: HubSpotAdapter) -> None:
    [late, midnight] = adapter.upsert("contacts", ID, [
        RecordUpsert("d1", {"referral_submitted_on": "2026-10-01T09:30:00.000Z"})]) + adapter.upsert(
        "contacts", ID, [RecordUpsert("d2", {"referral_submitted_on": "2026-10-01"})])
    assert late.error is not None and late.error.kind is RecordErrorKind.REJECTED
    assert late.error.code == "INVALID_DATE" and "not midnight" in late.error.message
    assert midnight.ok


def test_mapping_check_refuses_a_datetime_mapped_onto_a_date_property(adapter: HubSpotAdapter, tmp_path: Path) -> None:
    from refsync.connector.mapping import check_against_schema, load_mapping

    root = Path(__file__).resolve().parents[2]
    base = (root / "mappings" / "hubspot.toml").read_text()
    schemas = {name: adapter.describe(name) for name in ("contacts", "deals")}
    for transform, refused in (('{ format = "datetime" }', True), ('{ format = "epoch_ms" }', True),
                               ('{ format = "date" }', False)):
        path = tmp_path / "hubspot.toml"
        path.write_text(base.replace('company = { from = "prospect_company", rule = "fill_blank" }',
                                     'company = { from = "prospect_company", rule = "fill_blank" }\n'
                                     f'referral_submitted_on = {{ from = "submitted_at", transform = {transform} }}'))
        problems = check_against_schema(load_mapping(path), schemas, adapter.stages("deals"))
        about_date = [p for p in problems if "referral_submitted_on" in p and "midnight" in p]
        assert bool(about_date) is refused, (transform, problems)


def test_daily_limit_waits_until_the_portals_midnight_not_utcs(adapter: HubSpotAdapter, hub: HubSpotEmulator) -> None:
    from refsync.adapters.hubspot import seconds_to_midnight

    hub.configure(time_zone="America/Los_Angeles")
    adapter.time_zone()  # the engine reads it with the schemas (connector/schemas.py), before any limit
    hub.configure(daily_limit=0)
    with pytest.raises(RateLimited) as caught:
        adapter.read("contacts", ["1"], ["email"])
    assert caught.value.code == "DAILY"
    expected = seconds_to_midnight("America/Los_Angeles")
    assert caught.value.retry_after is not None and abs(caught.value.retry_after - expected) < 5
    assert abs(expected - seconds_to_midnight("UTC")) > 3600  # Los Angeles is 7 or 8 hours behind UTC
    assert adapter.time_zone() == "America/Los_Angeles" and adapter.budget().calls["account_details"] == 1


def test_seconds_to_midnight_follows_the_portals_time_zone_and_dst() -> None:
    from refsync.adapters.hubspot import seconds_to_midnight

    now = datetime(2026, 3, 8, 6, 0, tzinfo=UTC)  # 01:00 in New York, the night clocks go forward
    assert seconds_to_midnight("America/New_York", now) == 22 * 3600  # 23 local hours, one skipped
    assert seconds_to_midnight("UTC", now) == 18 * 3600


class _Recorder:
    """Stands in for urllib3's PoolManager (the transport under the HubSpot client): records each
    request and answers 200 with an empty JSON object."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, str], Any]] = []

    def request(self, method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None,
                **_: Any) -> Any:
        import urllib3

        self.sent.append((method, url, dict(headers or {}), json.loads(body) if body else None))
        return urllib3.HTTPResponse(body=b"{}", status=200, headers={"Content-Type": "application/json"},
                                    preload_content=False)


@pytest.mark.parametrize(("method", "path"), [
    ("upsert_with_http_info", "/crm/v3/objects/{objectType}/batch/upsert"),
    ("update_with_http_info", "/crm/v3/objects/{objectType}/batch/update"),
    ("do_search_with_http_info", "/crm/v3/objects/{objectType}/search"),
])
def test_bodies_encoded_by_refsync_go_out_as_the_client_sends_them(method: str, path: str) -> None:
    # Batch writes and searches skip the generated methods' body walk and standard-library
    # encoding (adapters/hubspot.py _posted). What HubSpot receives must not change: the same
    # method, URL, headers (bearer token, User-Agent, JSON types) and JSON body.
    from refsync.adapters.hubspot import _posted

    adapter = HubSpotAdapter("https://api.hubapi.example", "pat-na1-secret")
    api = adapter._search_api if "search" in method else adapter._batch
    body = {"inputs": [{"id": "r-1", "idProperty": "referral_id", "properties": {"referral_partner": "acme é",
                                                                                "n": "1"}}],
            "filterGroups": [{"filters": [{"propertyName": "email", "operator": "IN", "values": ["a+b@x.io"]}]}]}
    recorder = _Recorder()
    api.api_client.rest_client.pool_manager = recorder
    getattr(api, method)("contacts", body, _preload_content=False, _request_timeout=5.0)
    _posted(api, path)("contacts", body, _request_timeout=5.0)
    client_sent, ours = recorder.sent
    assert ours == client_sent
    assert ours[0] == "POST" and ours[1] == "https://api.hubapi.example" + path.replace("{objectType}", "contacts")
    assert ours[2]["Authorization"] == "Bearer pat-na1-secret" and ours[2]["Content-Type"] == "application/json"


def test_a_refused_batch_raises_what_the_client_raises(hub: HubSpotEmulator) -> None:
    # the same exception class and status as the generated method, so classify() treats both alike
    from refsync.adapters.hubspot import _posted

    bad = HubSpotAdapter(hub.base_url, "wrong-token", timeout=5.0)
    for call in (lambda: bad._batch.upsert_with_http_info("contacts", {"inputs": []}, _preload_content=False),
                 lambda: _posted(bad._batch, "/crm/v3/objects/{objectType}/batch/upsert")("contacts", {"inputs": []})):
        with pytest.raises(Exception) as caught:
            call()
        assert (type(caught.value).__name__, caught.value.status) == ("UnauthorizedException", 401)  # type: ignore[attr-defined]
