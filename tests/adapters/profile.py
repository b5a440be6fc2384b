"""What the shared adapter conformance suite needs to know about one CRM under test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from refsync.adapters.base import ChangeSet, CrmAdapter
from refsync.adapters.sandbox.admin import SandboxAdmin

SHARED_CRM_API = Path(__file__).resolve().parents[2].parent / "shared" / "crm-api"
# Reference bodies refsync's tests need that shared/crm-api lacks, each with its source (README.md there).
OWN_CRM_API = Path(__file__).resolve().parent / "reference"


@dataclass
class ConformanceProfile:
    adapter: CrmAdapter
    admin: SandboxAdmin
    lead_object: str  # "Lead" / "contacts"
    deal_object: str  # "Opportunity" / "deals"
    id_field: str  # "Referral_Id__c" / "refsync_referral_id"
    email_field: str  # "Email" / "email"
    partner_field: str  # "Referral_Partner__c" / "referral_partner"
    stage_field: str  # "StageName" / "dealstage"
    lead_required: dict  # extra fields a new lead-like record needs (e.g. LastName, Company)
    deal_required: dict  # extra fields a new deal-like record needs
    won_stage: str  # a closed-won stage label
    small_pages: dict[str, int]  # adapter attributes that make change_pages page after a few hundred records


def all_changes(adapter: CrmAdapter, object_name: str, since: datetime, fields: Sequence[str],
                handled: dict[str, datetime] | None = None) -> ChangeSet:
    """Every page of ``change_pages`` joined, the last page's cursor kept; checks pages ascend."""
    changes: list = []
    stage_changes: list = []
    cursor = since
    for page in adapter.change_pages(object_name, since, fields, handled=handled):
        assert page.cursor >= cursor, f"page cursor went back: {page.cursor} < {cursor}"
        changes += page.changes
        stage_changes += page.stage_changes
        cursor = page.cursor
    return ChangeSet(changes, stage_changes, cursor)


def reference_required() -> bool:
    """Whether missing reference data is a failure here: in CI (``.ci/run`` sets
    REFSYNC_REQUIRE_SHARED=1; hosted CI services set CI=true or CI=1), never a skip."""
    import os

    return os.environ.get("REFSYNC_REQUIRE_SHARED") == "1" or os.environ.get("CI", "").lower() in ("true", "1")


def reference_dir(*parts: str) -> Path:
    """The recorded CRM reference data in ``../shared/crm-api`` beside the checkout.

    Missing on a machine without ``shared/``: the tests using it skip with the reason, except in CI
    (see :func:`reference_required`), where a missing reference is a failure, not a skip."""
    import pytest

    path = SHARED_CRM_API.joinpath(*parts)
    if not path.is_dir():
        message = f"CRM reference data not found at {path} (the shared/ folder beside the checkout)"
        if reference_required():
            pytest.fail(message)
        pytest.skip(message)
    return path


def recorded_body(*parts: str) -> Any:
    """A reference body: refsync's own (``tests/adapters/reference``) or shared/crm-api's: the recorded
    ``body`` of a cassette, or the file itself (shared missing: skipped with the reason, or failed in
    CI, as :func:`reference_dir` decides)."""
    import json

    own = OWN_CRM_API.joinpath(*parts)
    if own.is_file():
        data = json.loads(own.read_text())
    else:
        reference_dir(*parts[:-1])
        data = json.loads(SHARED_CRM_API.joinpath(*parts).read_text())
    return data["body"] if isinstance(data, dict) and "_source" in data else data
