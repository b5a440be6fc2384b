"""What the shared adapter conformance suite needs to know about one CRM under test."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import CrmAdapter
from adapters.sandbox.admin import SandboxAdmin


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
