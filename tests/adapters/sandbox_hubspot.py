"""The HubSpot side of the shared adapter conformance suite: the emulator and a real adapter on it."""

from __future__ import annotations

from pathlib import Path

from refsync.adapters.hubspot import HubSpotAdapter
from refsync.adapters.sandbox.hubspot_emulator import HubSpotEmulator
from tests.adapters.profile import ConformanceProfile


def hubspot_profile(directory: Path) -> tuple[ConformanceProfile, HubSpotEmulator]:
    """A started emulator (the caller stops it) and the profile driving HubSpotAdapter against it.

    ``directory`` is unused (HubSpot's sandbox is plain HTTP: no certificates to write) but kept
    so both CRMs' profile factories have one signature."""
    del directory
    emulator = HubSpotEmulator(seed=7).start()
    adapter = HubSpotAdapter(emulator.base_url, emulator.access_token, timeout=5.0)
    profile = ConformanceProfile(
        adapter=adapter, admin=emulator, lead_object="contacts", deal_object="deals",
        id_field="refsync_referral_id", email_field="email", partner_field="referral_partner",
        stage_field="dealstage", lead_required={"lastname": "Referred"},
        deal_required={"dealname": "Referred deal", "pipeline": "default", "dealstage": "appointmentscheduled"},
        won_stage="Closed Won", small_pages={"page_records": 120, "search_page": 50})
    return profile, emulator
