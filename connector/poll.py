"""Poll-back and the attribution guard: what changed on the CRM, and what it means for a referral.

Per CRM and object: read changes since the cursor (minus an overlap window, so late-indexed or
same-millisecond changes are not lost) a page at a time, then in ledger transactions of at most
OBSERVE_BATCH changes, the page's cursor kept with its last one:
- stage moves become status transitions (with the owner at that moment) and outcomes;
- a protected field that someone else changed is restored, until another writer has overwritten
  it ``restore_limit`` times within the window: then refsync stops and raises a conflict;
- owner changes are recorded, attribution stays;
- a converted lead links its contact, account and opportunity, and the opportunity gets the
  attribution; on HubSpot a deal associated with a referred contact becomes the referral's deal when
  :mod:`connector.deal_claims` says so (created after the referral, in a mapped pipeline, earliest);
- a merge moves the link to the survivor (the attribution model decides between two referrals);
- a deleted record marks its link deleted and raises an alert, nothing is re-created.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from refsync.adapters.base import Change, ChangeKind, ChangeSet, CrmRecord, Stage, StageChange
from refsync.connector.deal_claims import DealCandidate, choose_deal, qualifies
from refsync.connector.logs import get_logger
from refsync.connector.mapping import COMMISSION_ATTRIBUTES, ObjectMap, field_values
from refsync.connector.push import CrmTarget, as_instant, as_moment, same_value
from refsync.state.commissions import DEAL_ATTRIBUTES, deal_values
from refsync.state.ledger import Ledger
from refsync.state.models import OPEN_STATUSES, STATUSES, CrmLink, Referral
from refsync.state.observe import LinkView, Observation, ReferralView, cursor, keep_poll_window, observing, poll_memory

log = get_logger("refsync.poll")
OVERLAP = timedelta(minutes=2)
OBSERVE_BATCH = 2000  # changes observed per ledger transaction
# How long past the overlap the handled records of a page are kept: an adapter may look further
# back than the overlap on its own (HubSpot's search look-back, 2 minutes). Kept too long costs a
# little memory; dropped too early, a record is handled once more, as before.
HANDLED_SLACK = timedelta(minutes=10)
FIRST_POLL_LOOKBACK = timedelta(days=30)
EARLY = set(STATUSES[:4])  # submitted, accepted, contacted, qualified: before an opportunity exists
Plan = Literal["settle", "relist", "defer"]  # how a poll lists (PollWindow.plan)


@dataclass
class PollWindow:
    """Where a poll of one object lists changes from, so that a poll right after activity lists
    only what is new, and the overlap window is listed again once, when it has settled.

    A poll can miss a change stamped before the newest one it saw: HubSpot's search index trails
    writes (crm-api/hubspot/README.md, "search is eventually consistent"), a Salesforce save can
    commit a little after its stamp. Both are covered by re-listing from before the cursor (the
    overlap, plus the adapter's own look-back). Re-listing on every poll costs a call per page of
    everything changed in that window, on every poll until something newer comes along: 50
    searches per HubSpot poll after 10,000 writes. Instead:

    - ``settled``: every change stamped before it has been seen; a settling poll lists from here
      (first the overlap and the adapter's look-back before the cursor, as polls always did);
    - ``pending``: the newest stamp seen since, and ``seen_at``, when this host first saw it. Every
      change stamped up to ``pending`` was made before ``seen_at``, so once ``lag`` has passed on
      this host's clock (elapsed time: no comparison across clocks) it is visible, and one poll
      from ``settled`` sees all of them: it settles, and ``settled`` moves up to ``pending``.
    - Until then a poll lists from the cursor (what is new), its details (stage history,
      deletions) still reaching back to ``settled``; ``latest`` keeps the newest stamp it saw and
      when, so the settling poll also settles that one if it was seen ``lag`` ago.

    With nothing pending, ``settled`` is the cursor itself: a quiet poll lists nothing twice, however
    long it stays quiet (before, every poll listed the last window of activity again until
    something newer came along). At most ``MAX_DEFERRED`` polls in a row wait for the lag to pass,
    so a clock that stands still cannot defer forever."""

    settled: datetime
    pending: datetime | None = None
    seen_at: datetime | None = None
    latest: datetime | None = None  # the newest stamp seen while waiting, and when it was first seen
    latest_seen_at: datetime | None = None
    deferred: int = 0

    MAX_DEFERRED = 30

    @classmethod
    def load(cls, value: dict[str, Any], position: datetime | None, now: datetime, lag: timedelta) -> PollWindow:
        if position is None:  # the first poll of this object
            return cls(settled=now - FIRST_POLL_LOOKBACK)

        def moment(key: str) -> datetime | None:
            found = datetime.fromisoformat(value[key]) if value.get(key) else None
            return min(found, now) if found is not None and key.endswith("seen_at") else found  # clock set back

        try:
            return cls(datetime.fromisoformat(value["settled"]), moment("pending"), moment("seen_at"),
                       moment("latest"), moment("latest_seen_at"), int(value.get("deferred", 0)))
        except (KeyError, TypeError, ValueError):  # none kept yet (an earlier version): the overlap, as before
            return cls(settled=position - lag, pending=position, seen_at=now)

    def plan(self, now: datetime, lag: timedelta) -> Plan:
        """``settle``: list from ``settled``, ``pending`` is certain by now; ``relist``: list from
        ``settled`` (nothing pending, or waited long enough in polls); ``defer``: from the cursor."""
        if self.pending is None or self.seen_at is None:
            return "relist"
        if now - self.seen_at >= lag:
            return "settle"
        return "relist" if self.deferred >= self.MAX_DEFERRED else "defer"

    def after(self, plan: Plan, position: datetime | None, started: datetime, finished: datetime,
              lag: timedelta) -> PollWindow:
        """The window once a poll that began listing at ``started`` has read every page (at
        ``finished``: a stamp first seen in this poll counts as seen then, the safe side);
        ``position`` is the cursor now (the newest stamp seen so far)."""
        if position is None:
            return self
        if position == self.latest and self.latest_seen_at is not None:
            seen = self.latest_seen_at
        elif position == self.pending and self.seen_at is not None:
            seen = self.seen_at
        else:
            seen = finished
        if plan == "defer":
            return PollWindow(self.settled, self.pending, self.seen_at, position, seen, self.deferred + 1)
        # What any listing from ``settled`` makes as sure as the overlap always did (everything up
        # to the overlap and look-back before the newest stamp), and a settling one everything up
        # to ``pending``, and to the newest stamp if that too was seen ``lag`` ago.
        settled = max(self.settled, position - lag)
        if plan == "settle" and self.pending is not None:
            settled = max(settled, self.pending, *([position] if started - seen >= lag else []))
        elif self.pending is not None and self.seen_at is not None and self.pending > settled:
            return PollWindow(settled, self.pending, self.seen_at, position, seen)  # still to settle
        return PollWindow(settled, position, seen) if position > settled else PollWindow(settled)

    def value(self) -> dict[str, Any]:
        moments = {"settled": self.settled, "pending": self.pending, "seen_at": self.seen_at, "latest": self.latest,
                   "latest_seen_at": self.latest_seen_at}
        return {**{k: v.isoformat() if v else None for k, v in moments.items()}, "deferred": self.deferred}


@dataclass
class PollCounts:
    changes: int = 0
    transitions: int = 0
    repairs: int = 0
    conflicts: int = 0
    links: int = 0
    merges: int = 0
    deletions: int = 0
    owner_changes: int = 0
    calls: int = 0
    notes: list[str] = field(default_factory=list)


def _date(value: Any) -> date | None:
    if not value:
        return None
    text = str(value)
    if text.isdigit():  # HubSpot epoch milliseconds
        return datetime.fromtimestamp(int(text) / 1000).date()
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _amount(value: Any) -> float | None:
    """A deal's amount as the CRM holds it; None when blank or not a finite number (``float()``
    also reads "NaN" and "Infinity", which no deal is worth and no JSON body may carry)."""
    try:
        amount = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return amount if amount is None or math.isfinite(amount) else None


class StageBook:
    """Resolves a deal's stage (label or internal id) to the referral status the mapping gives it.

    The mapping is keyed by pipeline and stage labels; HubSpot's ``pipeline`` and ``dealstage``
    properties hold internal ids (crm-api/hubspot/README.md), resolved here per pipeline id."""

    def __init__(self, target: CrmTarget, stages: list[Stage]) -> None:
        self.mapping = target.mapping
        self.by_id = {s.internal_id: s for s in stages}
        self.pipelines = {s.pipeline_id: s.pipeline for s in stages if s.pipeline_id} | {
            s.pipeline: s.pipeline for s in stages}

    def covers(self, pipeline: str) -> bool:
        """Whether the mapping maps stages of this pipeline (label): its deals are referral deals."""
        return pipeline in self.mapping.stages

    def pipeline_of(self, record: CrmRecord) -> str:
        field_name = self.mapping.pipeline_field
        if field_name and record.fields.get(field_name):
            raw = str(record.fields[field_name])
            return self.pipelines.get(raw, raw)
        current = self.by_id.get(str(record.fields.get(self.mapping.stage_field, "")))
        return current.pipeline if current else "default"

    def status(self, pipeline: str, stage_value: str | None) -> str | None:
        if not stage_value:
            return None
        stage = self.by_id.get(stage_value)
        label = stage.label if stage else stage_value
        pipeline = stage.pipeline if stage else pipeline
        return self.mapping.status_for(pipeline, label)


def _move(ob: Observation, referral: Referral, status: str, at: datetime, owner: str | None) -> bool:
    if referral.status == status or referral.merged_into:
        return False
    detail = "reopened" if referral.status in ("won", "lost") and status in OPEN_STATUSES else None
    if referral.status in ("won", "lost"):
        _conflicting_crm(ob, referral, status)
    log.info("status changed", referral_id=referral.id, crm=ob.crm, status_from=referral.status, status_to=status,
             owner_id=owner, note=detail)
    return ob.transition(referral, status, at, owner, detail)


def _conflicting_crm(ob: Observation, referral: Referral, status: str) -> None:
    """A referral closed by one CRM's deal and moved by another's: both CRMs carry a deal for it
    and they disagree. refsync follows the latest move, as always; someone has to tell which deal
    is right, so it says so."""
    closed_by = ob.last_move_crm(referral.id)
    if closed_by is None or closed_by == ob.crm:
        return
    ob.raise_alert(
        "crm_status_conflict", f"crm_status_conflict:{referral.id}",
        f"referral {referral.id}: its deal in {closed_by} is {referral.status}, its deal in {ob.crm} moved it to "
        f"{status}; refsync follows the latest move ({status}). Check which deal is right and correct the other "
        "one's stage; `refsync referrals show` has both moves.",
        referral_id=referral.id)


def snapshot_predates_write(modified_at: datetime | None, last_written_at: datetime | None) -> bool:
    """Whether a search snapshot may predate refsync's own last write to the record, so that its
    values prove nothing: HubSpot's search index trails writes (crm-api/hubspot/README.md)."""
    if modified_at is None or last_written_at is None:
        return True
    return modified_at <= last_written_at


def _overwritten(desired: dict[str, Any], record: CrmRecord) -> list[str]:
    fields = record.fields
    # equal values (nearly all of them) are settled by ``!=`` alone, before same_value's forms
    return [name for name, value in desired.items()
            if name in fields and value != fields[name] and value is not None and value != ""
            and not same_value(value, fields[name])]


# The fields of a mapped object that carry a commission, by the object (a poll asks per record).
_COMMISSION_FIELDS: dict[int, tuple[ObjectMap, list[str]]] = {}


def _commission_fields(obj: ObjectMap) -> list[str]:
    known = _COMMISSION_FIELDS.get(id(obj))
    if known is not None and known[0] is obj:
        return known[1]
    if len(_COMMISSION_FIELDS) >= 64:  # mappings are few; a long-lived daemon reloads some
        _COMMISSION_FIELDS.clear()
    names = [n for n, f in obj.fields.items() if f.source in COMMISSION_ATTRIBUTES]
    _COMMISSION_FIELDS[id(obj)] = (obj, names)
    return names


def _guard(ob: Observation, target: CrmTarget, obj: ObjectMap, referral: Referral | ReferralView,
           record: CrmRecord, counts: PollCounts, link: CrmLink | LinkView | None = None) -> None:
    """Restore protected fields someone else changed; stop fighting a writer that keeps at it.

    A snapshot older than refsync's last write to the record is never evidence of an overwrite:
    the record itself is read (batch read, not search) and judged instead."""
    mapping = target.mapping
    schema = target.schemas.get(obj.name)
    partner = referral.partner_code if isinstance(referral, ReferralView) else referral.partner.code
    view = {"id": referral.id, "partner": partner, "source": referral.source,
            "medium": referral.medium, "campaign": referral.campaign, "submitted_at": referral.submitted_at,
            "prospect_email": referral.prospect_email, "prospect_company": referral.prospect_company,
            "prospect_name": referral.prospect_name, "external_id": referral.external_id,
            "status": referral.status, "referral_code": referral.referral_code}
    commission = _commission_fields(obj)
    if commission:
        view.update(deal_values(ob.session, [referral.id]).get(referral.id, dict.fromkeys(DEAL_ATTRIBUTES)))
    desired = field_values(obj, view, schema, rules=("protect",))
    changed = _overwritten(desired, record)
    if changed and snapshot_predates_write(record.modified_at, link.last_written_at if link else None):
        fresh = target.adapter.read(obj.name, [record.id], target.fields_of(obj)).get(record.id)
        if fresh is None:
            return  # deleted since: the deletion check reports it
        record = fresh
        changed = _overwritten(desired, record)
    if set(changed) & set(commission) and not ob.revision_pushed(referral.id, referral.revision):
        # A commission changed since refsync last wrote this record: its planned push writes the new
        # amount and status; what the record holds now is refsync's own earlier write.
        log.debug("commission fields differ while their push is planned; not restoring", referral_id=referral.id,
                  crm=target.name, record_id=record.id, fields=[n for n in changed if n in commission])
        changed = [n for n in changed if n not in commission]
    if not changed:
        return
    if ob.rolling_out(referral.id):
        # A mapping change is being rolled out to this record: its planned re-push writes the new
        # values; the old ones (or a rep's edit meanwhile) are not blamed on anyone here.
        log.debug("protected field differs while a mapping change's re-push is pending; not restoring",
                  referral_id=referral.id, crm=target.name, object=obj.name, record_id=record.id, fields=changed)
        return
    window = timedelta(hours=mapping.restore_window_hours)
    writer = record.modified_by or "unknown writer"
    stamp = record.modified_at.isoformat() if record.modified_at else ob.now.isoformat()
    restore = False
    for name in changed:
        key = f"{target.name}:{record.id}:{name}"
        if ob.restores_since(record.id, name, window) >= mapping.restore_limit:
            counts.conflicts += 1
            log.error("another writer keeps overwriting a protected field; refsync stopped restoring it",
                      referral_id=referral.id, crm=target.name, object=obj.name, record_id=record.id, field=name,
                      writer=writer)
            ob.raise_alert(
                "attribution_conflict", f"attribution_conflict:{key}",
                f"{writer} keeps overwriting {obj.name}.{name} on {record.id} (referral {referral.id}); refsync "
                f"stopped restoring it after {mapping.restore_limit} restores in {mapping.restore_window_hours}h. "
                "Find that writer (workflow, integration, user) and stop it, then run `refsync sync --once`.",
                referral_id=referral.id, record_id=record.id)
            continue
        restore = True
        log.warning("protected field overwritten; restoring", referral_id=referral.id, crm=target.name,
                    object=obj.name, record_id=record.id, field=name, writer=writer)
        ob.audit(referral.id, "restore_planned", name, actor=f"crm:{target.name}:{writer}", obj=obj.name,
                 record_id=record.id, detail={"field": name, "found": record.fields.get(name),
                                              "restoring": desired[name]})
        ob.raise_alert(
            "attribution_overwritten", f"attribution_overwritten:{key}",
            f"{obj.name}.{name} on {record.id} was changed by {writer}; refsync restored the referral's "
            f"value ({referral.id}). Nothing to do unless it happens again.",
            referral_id=referral.id, record_id=record.id)
    if restore and ob.enqueue_restore(referral.id, obj.name, record.id, stamp):
        counts.repairs += 1


def _observe_record(ob: Observation, target: CrmTarget, obj: ObjectMap, record: CrmRecord, book: StageBook,
                    stage_changes: list[StageChange], counts: PollCounts,
                    claims: dict[str, list[str]] | None = None) -> None:
    mapping = target.mapping
    links = ob.record_links(obj.name, record.id)
    if not links:
        links = _discover(ob, target, obj, record, counts, claims or {})
    owner = str(record.fields.get(mapping.owner_field)) if mapping.owner_field and record.fields.get(
        mapping.owner_field) else record.owner_id
    for link in links:
        seen = ob.referral_view(link.referral_id)
        if seen is None or seen.merged_into:
            continue
        if owner and link.owner_id and owner != link.owner_id:
            counts.owner_changes += 1
            ob.audit(seen.id, "owner_changed", "crm_owner_changed", actor=f"crm:{target.name}",
                     obj=obj.name, record_id=record.id, detail={"from": link.owner_id, "to": owner})
        ob.seen(link, owner or link.owner_id)
        if link.state == "active" and seen.credited and ob.was_pushed(seen.id, record.id):
            _guard(ob, target, obj, seen, record, counts, link)
        if obj is not mapping.deal:
            continue
        referral = ob.referral(seen.id)  # a deal's poll changes the referral: its ORM object (prefetched)
        if referral is None:
            continue
        pipeline = book.pipeline_of(record)
        # every stage the deal passed through since the last poll, in order, at the time the CRM
        # recorded it; the current stage alone (at the record's last change) only without history.
        history = sorted(stage_changes, key=lambda c: c.at)
        for change in _unapplied(ob, referral, history):
            status = book.status(change.pipeline or pipeline, change.stage)
            if status and _move(ob, referral, status, change.at, owner):
                counts.transitions += 1
        status = None if history else book.status(pipeline, str(record.fields.get(mapping.stage_field) or ""))
        if status and _move(ob, referral, status, record.modified_at or ob.now, owner):
            counts.transitions += 1
        if referral.status in OPEN_STATUSES and link.state == "active" and mapping.amount_field in record.fields:
            # the open pipeline value of `refsync report` follows the deal as the poll reads it
            ob.pipeline(referral, _amount(record.fields.get(mapping.amount_field or "")),
                        record.fields.get(mapping.currency_field or "") or None)
        if referral.status in ("won", "lost"):
            ob.outcome(referral, _amount(record.fields.get(mapping.amount_field or "")),
                       record.fields.get(mapping.currency_field or "") or None,
                       _date(record.fields.get(mapping.close_date_field or "")),
                       record.fields.get(mapping.lost_reason_field or "") or None)


def _unapplied(ob: Observation, referral: Referral, history: list[StageChange]) -> list[StageChange]:
    """The stage moves of ``history`` (ascending) not yet applied to the referral: those after its
    last change. While it is at an early status that time may be refsync's own (the import, a
    decision), not the CRM's: on a CRM whose clock is behind refsync's every move would look older
    and be dropped. Then the moves after the last one this CRM's polls recorded (else after the
    submission) count, and at least the latest one, the deal's current stage."""
    newer = [c for c in history if c.at > referral.status_changed_at]
    if referral.status not in EARLY or len(newer) == len(history):
        return newer
    floor = ob.last_crm_move(referral.id) or referral.submitted_at
    return [c for c in history if c.at > floor] or history[-1:]


def _discover(ob: Observation, target: CrmTarget, obj: ObjectMap, record: CrmRecord, counts: PollCounts,
              claims: dict[str, list[str]]) -> list:
    """Link a record we did not know: it carries our referral id, or (HubSpot) it is a deal of a
    referred contact that :func:`_claims` gave to a referral."""
    found = []
    referral_id = record.fields.get(obj.id_field)
    if referral_id and ob.referral(str(referral_id)) is not None:
        found.append(ob.link(str(referral_id), obj.name, record.id, obj.role))
    elif obj is target.mapping.deal and record.fields.get("ContactId"):
        found += _contact_opportunity(ob, target, obj, record)
    elif obj is target.mapping.deal:
        for claimant in claims.get(record.id, []):
            found.append(ob.link(claimant, obj.name, record.id, obj.role))
            ob.enqueue_push(claimant, f"deal:{record.id}")
    counts.links += len(found)
    return found


def _claims(ob: Observation, target: CrmTarget, obj: ObjectMap, book: StageBook,
            batch: Sequence[Change]) -> dict[str, list[str]]:
    """Deal id -> the referrals whose deal it becomes, for the unknown deals of referred contacts in
    this batch (:func:`connector.deal_claims.choose_deal`); every other qualifying deal raises
    ``deal_contested`` for a human to decide."""
    candidates: dict[str, list[DealCandidate]] = {}
    for change in batch:
        record = change.record
        if change.kind is not ChangeKind.UPDATED or record is None or record.fields.get(obj.id_field) \
                or ob.record_links(obj.name, record.id):
            continue
        contacts = [str(c) for c in record.fields.get("associations.contacts") or []]
        created = as_moment(record.fields.get("createdate"))
        candidate = DealCandidate(record.id, created, book.pipeline_of(record))
        for links in ob.links(target.mapping.lead.name, contacts).values():
            for lead_link in links:
                candidates.setdefault(lead_link.referral_id, []).append(candidate)
    claims: dict[str, list[str]] = {}
    covered = [p for p in book.pipelines.values() if book.covers(p)]
    for referral_id, found in candidates.items():
        referral = ob.referral(referral_id)
        if referral is None or referral.merged_into:
            continue
        current = next((lk.record_id for lk in ob.links_of_referrals([referral_id]) if lk.object == obj.name), None)
        choice = choose_deal(referral.submitted_at, found, covered, current)
        if choice.deal is not None and choice.deal != current:
            claims.setdefault(choice.deal, []).append(referral_id)
        for other in choice.contested:
            _contest(ob, target, obj, referral_id, other, choice.deal)
    return claims


def _contest(ob: Observation, target: CrmTarget, obj: ObjectMap, referral_id: str, other: str,
             kept: str | None) -> None:
    """Another new deal of the referred person could be the referral's: a human decides."""
    log.warning("several new deals could be the referral's; a human decides", referral_id=referral_id,
                crm=target.name, object=obj.name, record_id=other, kept=kept)
    ob.raise_alert(
        "deal_contested", f"deal_contested:{target.name}:{referral_id}:{other}",
        f"{obj.name} {other} was created after referral {referral_id} on the same contact, but "
        f"{obj.name} {kept} (created earlier) became its deal. If {other} is the referral's "
        f"deal, set its {obj.id_field} to the referral id.",
        referral_id=referral_id, record_id=other)


def _merge(ob: Observation, target: CrmTarget, obj: ObjectMap, change: Change, counts: PollCounts) -> None:
    survivor = change.merged_into
    old_links = ob.links(obj.name, [change.record_id]).get(change.record_id, [])
    if not survivor or not old_links:
        return
    counts.merges += 1
    survivor_links = ob.links(obj.name, [survivor]).get(survivor, [])
    for link in old_links:
        link.state = "merged"
        new = ob.link(link.referral_id, obj.name, survivor, link.role, link.owner_id)
        link.superseded_by = new.id
        moved = ob.referral(link.referral_id)
        if moved is not None and moved.merged_into:
            # It lost credit to the survivor's referral in an earlier merge of this same record (HubSpot
            # lists several merged-away ids, in any order): its link stays superseded, as on Salesforce.
            _supersede(ob, obj, survivor, moved.id, moved.merged_into)
        ob.audit(link.referral_id, "record_merged", "link_moved_to_survivor", actor=f"crm:{target.name}",
                 obj=obj.name, record_id=survivor, detail={"merged_away": change.record_id})
        ob.enqueue_push(link.referral_id, f"merge:{survivor}")
    referrals = {lk.referral_id for lk in [*old_links, *survivor_links]}
    candidates = [r for r in (ob.referral(rid) for rid in referrals) if r is not None and r.merged_into is None]
    if len(candidates) < 2:
        return
    model = candidates[0].attribution_model
    ordered = sorted(candidates, key=lambda r: (r.submitted_at, r.id))
    winner = ordered[-1] if model == "last_touch" else ordered[0]
    for loser in candidates:
        if loser is winner:
            continue
        loser.merged_into = winner.id
        loser.credited = False
        _supersede(ob, obj, survivor, loser.id, winner.id)
        loser.attribution_reason = "merged_into_other_referral"
        loser.revision += 1
        ob.audit(loser.id, "referral_merged", "merged_into_other_referral", obj=obj.name, record_id=survivor,
                 detail={"winner": winner.id, "model": model})
        ob.audit(winner.id, "referral_merged", "kept_credit_on_merge", obj=obj.name, record_id=survivor,
                 detail={"loser": loser.id, "model": model})


def _supersede(ob: Observation, obj: ObjectMap, survivor: str, loser_id: str, winner_id: str) -> None:
    """The loser's link to the merged record gives way to the winner's (both CRMs record it alike)."""
    winner_link = ob.link(winner_id, obj.name, survivor, obj.role)
    for link in ob.links(obj.name, [survivor]).get(survivor, []):
        if link.referral_id == loser_id:
            link.state = "superseded"
            link.superseded_by = winner_link.id


def _convert(ob: Observation, target: CrmTarget, change: Change, counts: PollCounts) -> None:
    mapping = target.mapping
    links = ob.links(mapping.lead.name, [change.record_id]).get(change.record_id, [])
    objects = {"opportunity": mapping.deal.name, "contact": "Contact", "account": "Account"}
    for link in links:
        if link.state == "converted":
            continue
        link.state = "converted"
        referral = ob.referral(link.referral_id)
        for role, record_id in change.converted_to.items():
            if record_id and role in objects:
                ob.link(link.referral_id, objects[role], record_id, role)
                counts.links += 1
        log.info("lead converted; following it", referral_id=link.referral_id, crm=target.name,
                 object=mapping.lead.name, record_id=change.record_id, converted_to=dict(change.converted_to))
        ob.audit(link.referral_id, "lead_converted", "followed_conversion", actor=f"crm:{target.name}",
                 obj=mapping.lead.name, record_id=change.record_id, detail=dict(change.converted_to))
        ob.enqueue_push(link.referral_id, f"converted:{change.record_id}")
        if referral is not None and referral.status in EARLY and change.converted_to.get("opportunity"):
            if _move(ob, referral, "opportunity", change.at, link.owner_id):
                counts.transitions += 1


def _contact_opportunity(ob: Observation, target: CrmTarget, obj: ObjectMap, record: CrmRecord) -> list:
    """Salesforce: an opportunity opened on a contact a referral waits on (its lead was converted
    without one, or it was a customer already) becomes that referral's opportunity when it was
    created after the referral was submitted; the referral then pushes its attribution onto it.
    Opportunity.ContactId is the primary contact (recorded Opportunity describe)."""
    candidate = DealCandidate(record.id, as_instant(record.fields.get("CreatedDate")), "default")
    found = []
    for contact_link in ob.links("Contact", [str(record.fields["ContactId"])]).get(str(record.fields["ContactId"]), []):
        referral = ob.referral(contact_link.referral_id)
        if referral is None or referral.merged_into or not referral.credited or contact_link.state != "active":
            continue
        if record.fields.get("IsClosed") or not qualifies(referral.submitted_at, candidate, ("default",)):
            continue
        current = next((lk.record_id for lk in ob.links_of_referrals([referral.id]) if lk.object == obj.name), None)
        if current is not None:  # it has its opportunity already: the earlier one keeps it
            _contest(ob, target, obj, referral.id, record.id, current)
            continue
        found.append(ob.link(referral.id, obj.name, record.id, obj.role))
        ob.audit(referral.id, "opportunity_followed", "new_opportunity_of_contact", actor=f"crm:{target.name}",
                 obj=obj.name, record_id=record.id, detail={"contact": contact_link.record_id})
        ob.enqueue_push(referral.id, f"deal:{record.id}")
    return found


def _delete(ob: Observation, target: CrmTarget, obj: ObjectMap, change: Change, counts: PollCounts) -> None:
    for link in ob.links(obj.name, [change.record_id]).get(change.record_id, []):
        link.state = "deleted"
        counts.deletions += 1
        referral = ob.referral(link.referral_id) if obj is target.mapping.deal else None
        if referral is not None and referral.status in OPEN_STATUSES:
            ob.pipeline(referral, None, None)  # a deleted deal is no open pipeline any more
        log.warning("linked record deleted in the CRM", referral_id=link.referral_id, crm=target.name,
                    object=obj.name, record_id=change.record_id)
        ob.audit(link.referral_id, "record_deleted", "link_orphaned", actor=f"crm:{target.name}", obj=obj.name,
                 record_id=change.record_id)
        ob.raise_alert(
            "orphaned_link", f"orphaned_link:{target.name}:{obj.name}:{change.record_id}",
            f"{obj.name} {change.record_id} carrying referral {link.referral_id} was deleted in {target.name}; "
            "refsync will not re-create it. Restore it from the recycle bin, or accept the loss with "
            "`refsync alerts accept ALERT_ID --by NAME`.",
            referral_id=link.referral_id, record_id=change.record_id)


def poll_target(ledger: Ledger, target: CrmTarget) -> PollCounts:
    """Poll the lead-like and deal-like objects of one CRM once."""
    counts = PollCounts()
    before = target.adapter.budget().total_calls
    if target.stages is None:
        target.stages = target.adapter.stages(target.mapping.deal.name)
    book = StageBook(target, target.stages)
    mapping = target.mapping
    lag = OVERLAP + target.adapter.lookback
    for obj in (mapping.lead, mapping.deal):
        position = cursor(ledger, target.name, obj.name)
        extra = [f for f in (mapping.owner_field, mapping.stage_field, mapping.pipeline_field, mapping.amount_field,
                             mapping.currency_field, mapping.close_date_field, mapping.lost_reason_field)
                 if f and (obj is mapping.deal or f == mapping.owner_field)]
        if obj is mapping.deal:  # Salesforce: a new opportunity of a referred contact is followed (_discover)
            extra += ["ContactId", "CreatedDate", "IsClosed"]
        fields = target.present(obj.name, [*obj.fields, *extra])
        # What earlier polls (of any process) handled in the overlap window is not read again in
        # detail, re-handled or counted, and is listed again only once it has settled (PollWindow):
        # a quiet poll costs one query or search per object, right after activity too.
        memory = poll_memory(ledger, target.name, obj.name)
        now = ledger.clock()
        window = PollWindow.load(memory.window, position, now, lag)
        plan = window.plan(now, lag)
        # handled records are kept as far back as this window lists, and the usual slack past it
        forget_before = window.settled - lag - HANDLED_SLACK
        for page in target.adapter.change_pages(obj.name, window.settled, fields, handled=memory.handled,
                                                poll_state=memory.state,
                                                search_from=position if plan == "defer" else window.settled):
            _observe_page(ledger, target, obj, page, book, counts, forget_before)
            position = page.cursor if position is None else max(position, page.cursor)
        keep_poll_window(ledger, target.name, obj.name, window.after(plan, position, now, ledger.clock(), lag).value())
    counts.calls = target.adapter.budget().total_calls - before
    return counts


def _observe_page(ledger: Ledger, target: CrmTarget, obj: ObjectMap, page: ChangeSet, book: StageBook,
                  counts: PollCounts, forget_before: datetime) -> None:
    """One page of changes, in transactions of OBSERVE_BATCH; the cursor moves with the page's last
    transaction, so a poll stopped anywhere resumes after the last page it finished."""
    by_record: dict[str, list[StageChange]] = {}
    for stage_change in page.stage_changes:
        by_record.setdefault(stage_change.record_id, []).append(stage_change)
    starts = range(0, len(page.changes), OBSERVE_BATCH) or range(1)
    for start in starts:
        batch = page.changes[start:start + OBSERVE_BATCH]
        with observing(ledger, target.name) as ob:
            ob.prefetch(obj.name, [c.record_id for c in batch if c.kind is ChangeKind.UPDATED],
                        editable=obj is target.mapping.deal)
            _observe_batch(ob, target, obj, batch, book, by_record, counts)
            ob.remember_handled(obj.name, {c.record_id: c.at for c in batch}, page.cursor, start,
                                forget_before=min(forget_before, page.cursor - OVERLAP - HANDLED_SLACK))
            if start == starts[-1]:
                ob.set_cursor(obj.name, page.cursor)
                if page.poll_state is not None:
                    ob.keep_poll_state(obj.name, page.poll_state)


def _observe_batch(ob: Observation, target: CrmTarget, obj: ObjectMap, batch: Sequence[Change], book: StageBook,
                   by_record: dict[str, list[StageChange]], counts: PollCounts) -> None:
    claims = _claims(ob, target, obj, book, batch) if obj is target.mapping.deal else {}
    for change in batch:
        counts.changes += 1
        if change.kind is ChangeKind.UPDATED and change.record is not None:
            _observe_record(ob, target, obj, change.record, book, by_record.get(change.record_id, []), counts,
                            claims)
        elif change.kind is ChangeKind.MERGED:
            _merge(ob, target, obj, change, counts)
        elif change.kind is ChangeKind.CONVERTED:
            _convert(ob, target, change, counts)
        elif change.kind is ChangeKind.DELETED:
            _delete(ob, target, obj, change, counts)
