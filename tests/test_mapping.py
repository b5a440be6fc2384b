"""Mapping files: structure errors and schema disagreements named with file and line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from refsync.adapters.base import FieldSchema, ObjectSchema, Stage
from refsync.connector.mapping import check_against_schema, field_values, load_mapping
from refsync.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "mappings"


def first_line(path: Path, text: str) -> int:
    """The line where ``text`` first appears: the line a problem report must name."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def sf_schemas(**overrides: FieldSchema | None) -> dict[str, ObjectSchema]:
    def fields(extra: list[FieldSchema]) -> dict[str, FieldSchema]:
        base = [
            FieldSchema("Referral_Id__c", "string", length=26, unique=True, external_id=True),
            FieldSchema("Referral_Partner__c", "string", length=255),
            FieldSchema("Referral_Source__c", "string", length=255),
            FieldSchema("Referral_Medium__c", "string", length=255),
            FieldSchema("Referral_Campaign__c", "string", length=255),
            FieldSchema("Referral_Submitted_At__c", "datetime"),
            *extra,
        ]
        found = {f.name: f for f in base}
        for name, value in overrides.items():
            if value is None:
                found.pop(name, None)
            else:
                found[name] = value
        return found

    return {
        "Lead": ObjectSchema("Lead", fields([FieldSchema("Email", "email", length=80),
                                             FieldSchema("LastName", "string", length=80),
                                             FieldSchema("Company", "string", length=255)])),
        "Opportunity": ObjectSchema("Opportunity", fields([])),
    }


SF_STAGES = [Stage("default", label, label) for label in (
    "Prospecting", "Qualification", "Needs Analysis", "Value Proposition", "Id. Decision Makers",
    "Perception Analysis", "Proposal/Price Quote", "Negotiation/Review", "Closed Won", "Closed Lost")]


def test_shipped_salesforce_mapping_matches_the_standard_schema() -> None:
    loaded = load_mapping(SHIPPED / "salesforce.toml")
    assert check_against_schema(loaded, sf_schemas(), SF_STAGES) == []
    assert loaded.mapping.status_for("default", "Closed Won") == "won"


def test_schema_problems_are_all_reported_with_file_and_line() -> None:
    loaded = load_mapping(SHIPPED / "salesforce.toml")
    schemas = sf_schemas(
        Referral_Medium__c=None,  # deleted
        Referral_Partner__c=FieldSchema("Referral_Partner__c", "double"),  # wrong type
        Referral_Id__c=FieldSchema("Referral_Id__c", "string", length=10, unique=True),  # too short
        Referral_Source__c=FieldSchema("Referral_Source__c", "string", length=255, updateable=False),
    )
    problems = check_against_schema(loaded, schemas, SF_STAGES[:-1])  # "Closed Lost" unknown
    text = "\n".join(problems)
    path = str(SHIPPED / "salesforce.toml")
    medium_line = first_line(SHIPPED / "salesforce.toml", "Referral_Medium__c =")
    assert f"{path}:{medium_line}: lead.fields.Referral_Medium__c: Lead has no field" in text
    assert "lead.fields.Referral_Partner__c: is a double field" in text
    assert "lead.fields.Referral_Id__c: holds 10 characters, id needs 26" in text
    assert "lead.fields.Referral_Source__c: is not updateable" in text
    assert "stages.default.Closed Lost: the CRM has no stage 'Closed Lost'" in text
    assert all(p.startswith(path + ":") for p in problems)


def test_structure_errors_name_the_line(tmp_path: Path) -> None:
    bad = (SHIPPED / "hubspot.toml").read_text().replace(
        'referral_partner = { from = "partner", rule = "protect" }',
        'referral_partner = { from = "partnr", rule = "guard" }', 1,
    ).replace('"Closed Won" = "won"', '"Closed Won" = "victory"')
    path = tmp_path / "hubspot.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    text = "\n".join(caught.value.problems)
    assert f"{path}:{first_line(path, 'referral_partner =')}: lead.fields.referral_partner.rule" in text
    assert "'victory' is not a referral status" in text


def test_field_values_follow_rules_and_transforms() -> None:
    loaded = load_mapping(SHIPPED / "salesforce.toml")
    referral = {"id": "01ABC", "partner": "acme", "source": "s" * 300, "medium": None, "campaign": "q4",
                "submitted_at": datetime(2026, 10, 1, 9, 0, tzinfo=UTC), "prospect_email": "a@x.example",
                "prospect_name": None, "prospect_company": "Acme"}
    schema = sf_schemas()["Lead"]
    protected = field_values(loaded.mapping.lead, referral, schema, rules=("protect",))
    assert protected["Referral_Submitted_At__c"] == "2026-10-01T09:00:00.000Z"
    assert protected["Referral_Source__c"] == "s" * 255  # truncated to the field's length
    assert "Email" not in protected
    created = field_values(loaded.mapping.lead, referral, schema)
    assert created["LastName"] == "(referred prospect)" and created["Email"] == "a@x.example"
