"""Ledger rows as plain JSON-ready dicts: the documented ``--json`` shapes of the contract."""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Row

from refsync.state.models import AuditEvent, Referral, SyncOp
from refsync.times import iso_text

iso = iso_text  # value.isoformat(), None stays None


def referral_json(referral: Referral) -> dict[str, Any]:
    """The contract's referral shape, plus the prospect and attribution details we also know."""
    return {
        "id": referral.id,
        "external_id": referral.external_id,
        "partner": referral.partner.code,
        "prospect_email": referral.prospect_email,
        "prospect_company": referral.prospect_company,
        "prospect_name": referral.prospect_name,
        "source": referral.source,
        "medium": referral.medium,
        "campaign": referral.campaign,
        "status": referral.status,
        "submitted_at": iso(referral.submitted_at),
        "status_history": [
            {"status": t.to_status, "at": iso(t.at), "source": t.source, "crm": t.crm, "owner_id": t.owner_id}
            for t in referral.transitions
        ],
        "links": [
            {"crm": link.crm, "object": link.object, "record_id": link.record_id, "role": link.role,
             "state": link.state}
            for link in referral.links
        ],
        "outcome": {
            "amount": float(referral.outcome_amount) if referral.outcome_amount is not None else None,
            "currency": referral.outcome_currency,
            "close_date": iso(referral.outcome_close_date),
            "reason": referral.outcome_reason,
        },
        "attribution": {
            "model": referral.attribution_model,
            "policy_version": referral.policy_version,
            "reason": referral.attribution_reason,
            "credited": referral.credited,
            "review_required": referral.review_required,
            "duplicate_of": referral.duplicate_of,
            "merged_into": referral.merged_into,
        },
    }


def audit_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "kind": event.kind,
        "reason_code": event.reason_code,
        "actor": event.actor,
        "policy_version": event.policy_version,
        "crm": event.crm,
        "object": event.object,
        "record_id": event.record_id,
        "detail": event.detail,
    }


# The columns op_json reads: a Core row of these serves as well as an ORM object.
OP_FIELDS = ("id", "kind", "state", "referral_id", "crm", "object", "record_id", "payload", "attempts",
             "next_attempt_at", "lease_owner", "lease_expires_at", "last_error_class", "last_error_code",
             "last_error_message")
OP_COLUMNS = tuple(getattr(SyncOp, name) for name in OP_FIELDS)
# The order ops are claimed in (when each was due, then id), for rows of OP_COLUMNS.
claim_order = itemgetter(OP_FIELDS.index("next_attempt_at"), OP_FIELDS.index("id"))


def op_row_json(row: Sequence[Any]) -> dict[str, Any]:
    """The contract's op shape from the values of :data:`OP_FIELDS`, in order: unpacked by
    position (a claim turns thousands of rows into ops; reading each column by name cost more than
    the claim's SQL)."""
    (op_id, kind, state, referral_id, crm, obj, record_id, payload, attempts, next_attempt_at, lease_owner,
     lease_expires_at, error_class, error_code, error_message) = row
    return {"id": op_id, "kind": kind, "state": state, "referral_id": referral_id, "crm": crm, "object": obj,
            "record_id": record_id, "payload": payload, "attempts": attempts,
            "next_attempt_at": iso(next_attempt_at), "lease_owner": lease_owner,
            "lease_expires_at": iso(lease_expires_at),
            "last_error": ({"class": error_class, "code": error_code, "message": error_message}
                           if error_class else None)}


def op_json(op: SyncOp | Row[Any]) -> dict[str, Any]:
    """The contract's op shape, from an ORM object or a row of :data:`OP_COLUMNS`."""
    return op_row_json([getattr(op, name) for name in OP_FIELDS])
