"""One contract, every CRM: the real adapters against their sandbox emulators over real HTTP.

Each case states something the sync engine relies on; the ``profile`` fixture runs it once for
Salesforce and once for HubSpot (see ``conftest.py``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from refsync.adapters.base import ChangeKind, RecordUpdate, RecordUpsert
from tests.adapters.profile import ConformanceProfile, all_changes


def _lead(p: ConformanceProfile, ref: str, email: str, **extra: str) -> RecordUpsert:
    return RecordUpsert(ref, {**p.lead_required, p.email_field: email, p.partner_field: "acme", **extra})


def _since() -> datetime:
    """A cursor strictly between what happened before this call and what happens after it."""
    time.sleep(0.01)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    return moment


def test_describe_lists_the_referral_id_as_a_unique_external_id(profile: ConformanceProfile) -> None:
    schema = profile.adapter.describe(profile.lead_object)
    field = schema.fields[profile.id_field]
    assert field.unique
    assert profile.partner_field in schema.fields and profile.email_field in schema.fields


def test_upsert_creates_then_updates_and_a_replay_changes_nothing(profile: ConformanceProfile) -> None:
    p = profile
    first = p.adapter.upsert(p.lead_object, p.id_field, [_lead(p, "01JREFA", "ann@example.com")])
    assert [(r.ok, r.created) for r in first] == [(True, True)]
    again = p.adapter.upsert(p.lead_object, p.id_field, [_lead(p, "01JREFA", "ann@example.com")])
    assert [(r.ok, r.created, r.record_id) for r in again] == [(True, False, first[0].record_id)]
    found = p.adapter.find(p.lead_object, p.email_field, ["ann@example.com"], [p.id_field])
    assert [r.id for r in found["ann@example.com"]] == [first[0].record_id]


def test_batch_results_come_back_one_per_input_in_order(profile: ConformanceProfile) -> None:
    p = profile
    records = [_lead(p, f"01JORD{i:02d}", f"order{i}@example.com") for i in range(5)]
    results = p.adapter.upsert(p.lead_object, p.id_field, records)
    assert [r.key for r in results] == [r.external_id for r in records]
    stored = p.adapter.read(p.lead_object, [r.record_id for r in results if r.record_id], [p.id_field])
    assert [stored[r.record_id].fields[p.id_field] for r in results] == [r.external_id for r in records]


def test_update_by_id_changes_the_field(profile: ConformanceProfile) -> None:
    p = profile
    [created] = p.adapter.upsert(p.lead_object, p.id_field, [_lead(p, "01JUPD", "upd@example.com")])
    [result] = p.adapter.update(p.lead_object, [RecordUpdate(created.record_id, {p.partner_field: "globex"})])
    assert result.ok and result.key == created.record_id
    assert p.admin.get_record(p.lead_object, created.record_id)[p.partner_field] == "globex"


def test_find_by_email_ignores_case(profile: ConformanceProfile) -> None:
    p = profile
    rid = p.admin.create_record(p.lead_object, {**p.lead_required, p.email_field: "Dana.Lee@Example.com"})
    found = p.adapter.find(p.lead_object, p.email_field, ["dana.lee@example.com", "nobody@example.com"], [])
    assert [r.id for r in found["dana.lee@example.com"]] == [rid]
    assert "nobody@example.com" not in found


def test_read_follows_a_merge_to_the_survivor(profile: ConformanceProfile) -> None:
    p = profile
    a = p.admin.create_record(p.lead_object, {**p.lead_required, p.email_field: "a@merge.example"})
    b = p.admin.create_record(p.lead_object, {**p.lead_required, p.email_field: "b@merge.example"})
    survivor = p.admin.merge(p.lead_object, a, b)
    got = p.adapter.read(p.lead_object, [b], [p.email_field])
    assert got[b] is not None and got[b].id == survivor


def test_a_deleted_record_reads_as_none(profile: ConformanceProfile) -> None:
    p = profile
    rid = p.admin.create_record(p.lead_object, {**p.lead_required, p.email_field: "gone@example.com"})
    p.admin.delete_record(p.lead_object, rid)
    assert p.adapter.read(p.lead_object, [rid], [p.email_field]) == {rid: None}


def test_changes_since_a_cursor_see_an_edit_a_delete_and_a_merge(profile: ConformanceProfile) -> None:
    p = profile
    edited, deleted, survivor, loser = (
        p.admin.create_record(p.lead_object, {**p.lead_required, p.email_field: f"c{i}@changes.example"})
        for i in range(4))
    since = _since()
    p.admin.set_field(p.lead_object, edited, p.partner_field, "initech", by="rep")
    p.admin.delete_record(p.lead_object, deleted)
    kept = p.admin.merge(p.lead_object, survivor, loser)
    result = all_changes(p.adapter, p.lead_object, since, [p.partner_field])
    kinds = {(c.kind, c.record_id) for c in result.changes}
    assert (ChangeKind.UPDATED, edited) in kinds
    assert (ChangeKind.DELETED, deleted) in kinds
    merged = [c for c in result.changes if c.kind is ChangeKind.MERGED]
    assert merged and merged[0].merged_into == kept
    edit = next(c for c in result.changes if c.record_id == edited and c.kind is ChangeKind.UPDATED)
    assert edit.record is not None and edit.record.fields[p.partner_field] == "initech"
    assert result.cursor > since
    p.admin.set_field(p.lead_object, edited, p.partner_field, "globex", by="rep")
    later = all_changes(p.adapter, p.lead_object, result.cursor, [p.partner_field])
    again = next(c for c in later.changes if c.record_id == edited and c.kind is ChangeKind.UPDATED)
    assert again.record is not None and again.record.fields[p.partner_field] == "globex"
    # anything older than the cursor may come again (look-back windows), but only what was reported before
    reported = {(c.kind, c.record_id) for c in result.changes}
    assert all(c.at >= result.cursor or (c.kind, c.record_id) in reported for c in later.changes), [
        (c.kind, c.record_id, c.at, result.cursor) for c in later.changes]


def test_change_pages_read_every_record_once_when_hundreds_share_one_timestamp(
        profile: ConformanceProfile, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk import gives hundreds of records one modification time; pages must neither lose nor
    repeat any of them where a page boundary cuts through that timestamp, and must end."""
    p = profile
    for name, value in p.small_pages.items():
        monkeypatch.setattr(p.adapter, name, value)
    since = _since()
    p.admin.hold_clock(True)
    try:
        tied = [p.admin.create_record(p.lead_object, {**p.lead_required, p.email_field: f"tie{i}@pages.example"})
                for i in range(300)]
        assert p.adapter.find(p.lead_object, p.email_field, ["tie0@pages.example"], [p.email_field])
        p.admin.set_field(p.lead_object, tied[0], p.email_field, "moved@pages.example")
        found = p.adapter.find(p.lead_object, p.email_field, ["moved@pages.example"], [p.email_field])
        assert [r.id for r in found.get("moved@pages.example", [])] == [tied[0]], "a held clock hides no edit"
    finally:
        p.admin.hold_clock(False)
    spread = [p.admin.create_record(p.lead_object, {**p.lead_required, p.email_field: f"late{i}@pages.example"})
              for i in range(150)]
    pages = list(p.adapter.change_pages(p.lead_object, since, [p.email_field]))
    seen = [c.record_id for page in pages for c in page.changes if c.kind is ChangeKind.UPDATED]
    assert len(pages) >= 3, [len(page.changes) for page in pages]
    assert sorted(seen) == sorted(tied + spread), "every record exactly once"
    # a page ends at the first CRM answer that reaches page_records (no answer here is over 200)
    assert all(len(page.changes) <= p.small_pages["page_records"] + 200 for page in pages)
    cursors = [page.cursor for page in pages]
    assert cursors == sorted(cursors) and cursors[0] > since
    # resuming from any page's cursor re-reads at most what that page boundary shares, never loses one
    middle = pages[1].cursor
    resumed = {c.record_id for page in p.adapter.change_pages(p.lead_object, middle, [p.email_field])
               for c in page.changes}
    after_first_two = {c.record_id for page in pages[2:] for c in page.changes}
    assert after_first_two <= resumed


def test_each_page_carries_the_stage_history_of_its_own_deals(
        profile: ConformanceProfile, monkeypatch: pytest.MonkeyPatch) -> None:
    p = profile
    for name, value in p.small_pages.items():
        monkeypatch.setattr(p.adapter, name, value)
    deals = [p.admin.create_record(p.deal_object, dict(p.deal_required)) for _ in range(260)]
    since = _since()
    for deal in deals:
        p.admin.move_stage(deal, p.won_stage, amount=500.0)
    name_field = next(iter(p.deal_required))
    for deal in deals[:30]:  # edited again later: their records move to the last page, their moves stay early
        p.admin.set_field(p.deal_object, deal, name_field, "Renamed deal", by="rep")
    pages = list(p.adapter.change_pages(p.deal_object, since, [p.stage_field]))
    assert len(pages) >= 2
    moved: list[str] = []
    for page in pages:
        own = {c.record_id for c in page.changes}
        assert {s.record_id for s in page.stage_changes} <= own, "a deal's history travels with the deal"
        moved += [s.record_id for s in page.stage_changes if s.stage == p.won_stage]
    assert sorted(moved) == sorted(deals), "every move exactly once"


def test_changes_report_stage_moves(profile: ConformanceProfile) -> None:
    p = profile
    deal = p.admin.create_record(p.deal_object, dict(p.deal_required))
    since = _since()
    p.admin.move_stage(deal, p.won_stage, amount=1200.0, close_date="2026-12-01")
    result = all_changes(p.adapter, p.deal_object, since, [p.stage_field])
    moves = [s for s in result.stage_changes if s.record_id == deal]
    assert moves and moves[-1].stage == p.won_stage
    assert moves[-1].amount == 1200.0


def test_changes_already_handled_are_left_out_and_nothing_more_is_read_about_them(
        profile: ConformanceProfile) -> None:
    """A poll re-reading its overlap window must not pay for (or re-handle) what it handled."""
    p = profile
    deals = [p.admin.create_record(p.deal_object, dict(p.deal_required)) for _ in range(3)]
    since = _since()
    for deal in deals:
        p.admin.move_stage(deal, p.won_stage, amount=100.0)
    first = all_changes(p.adapter, p.deal_object, since, [p.stage_field])
    handled = {c.record_id: c.at for c in first.changes}
    assert set(deals) <= set(handled) and {s.record_id for s in first.stage_changes} >= set(deals)
    before = p.admin.calls()
    again = all_changes(p.adapter, p.deal_object, since, [p.stage_field], handled=handled)
    assert (again.changes, again.stage_changes) == ([], [])
    made = {k: v - before.get(k, 0) for k, v in p.admin.calls().items() if v - before.get(k, 0)}
    assert sum(made.values()) == 1, f"one query or search, no association, history or batch read: {made}"
    name_field = next(iter(p.deal_required))
    p.admin.set_field(p.deal_object, deals[0], name_field, "Renamed deal", by="rep")
    later = all_changes(p.adapter, p.deal_object, since, [p.stage_field], handled=handled)
    assert [c.record_id for c in later.changes] == [deals[0]], "a record changed since is reported again"


def test_budget_counts_the_calls_made(profile: ConformanceProfile) -> None:
    p = profile
    before = p.adapter.budget().total_calls
    p.adapter.describe(p.lead_object)
    p.adapter.find(p.lead_object, p.email_field, ["x@budget.example"], [])
    assert p.adapter.budget().total_calls - before >= 2
    assert sum(p.admin.calls().values()) >= 2


def test_a_blanked_field_reads_back_blank(profile: ConformanceProfile) -> None:
    p = profile
    [created] = p.adapter.upsert(p.lead_object, p.id_field, [_lead(p, "01JBLANK", "blank@example.com")])
    p.admin.set_field(p.lead_object, created.record_id, p.partner_field, None, by="rep")
    record = p.adapter.read(p.lead_object, [created.record_id], [p.partner_field])[created.record_id]
    assert record is not None and record.fields.get(p.partner_field) in (None, "")
