"""The Salesforce side of the shared adapter conformance suite: the emulator and a real adapter on it."""

from __future__ import annotations

from pathlib import Path

from refsync.adapters.salesforce import SalesforceAdapter
from refsync.adapters.sandbox.salesforce_emulator import SalesforceEmulator
from tests.adapters.profile import ConformanceProfile


def salesforce_profile(directory: Path) -> tuple[ConformanceProfile, SalesforceEmulator]:
    """A started emulator over HTTPS with its CA in ``directory`` (the caller stops it), and the
    profile driving SalesforceAdapter against it."""
    emulator = SalesforceEmulator(tls_dir=directory, seed=7).start()
    adapter = SalesforceAdapter(emulator.base_url, session_id=emulator.session_id, ca_bundle=str(emulator.ca_path),
                                timeout=(5.0, 10.0))
    profile = ConformanceProfile(
        adapter=adapter, admin=emulator, lead_object="Lead", deal_object="Opportunity",
        id_field="Referral_Id__c", email_field="Email", partner_field="Referral_Partner__c",
        stage_field="StageName", lead_required={"LastName": "Referred", "Company": "Referred Inc"},
        deal_required={"Name": "Referred deal", "StageName": "Prospecting", "CloseDate": "2026-12-31"},
        won_stage="Closed Won", small_pages={"page_records": 150, "query_batch_size": 200})
    return profile, emulator
