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


def test_each_unknown_stage_status_carries_its_own_line_and_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "hubspot.toml"
    path.write_text((SHIPPED / "hubspot.toml").read_text()
                    .replace('"Closed Won" = "won"', '"Closed Won" = "Won"')
                    .replace('"Qualified To Buy" = "qualified"', '"Qualified To Buy" = "qualifed"'))
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    won, qualified = first_line(path, '"Closed Won" ='), first_line(path, '"Qualified To Buy" =')
    assert won != qualified
    problems = caught.value.problems
    assert (f"{path}:{won}: stages.Sales Pipeline.Closed Won: 'Won' is not a referral status "
            "(did you mean 'won'?); use one of:") in "\n".join(problems)
    assert (f"{path}:{qualified}: stages.Sales Pipeline.Qualified To Buy: 'qualifed' is not a referral status "
            "(did you mean 'qualified'?)") in "\n".join(problems)
    assert len(problems) == 2


def test_misspelt_mapping_keys_and_attributes_get_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "hubspot.toml"
    path.write_text((SHIPPED / "hubspot.toml").read_text()
                    .replace('referral_partner = { from = "partner", rule = "protect" }',
                             'referral_partner = { from = "partnr", rule = "protect" }', 1)
                    .replace("create = true", "craete = true", 1))
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    text = "\n".join(caught.value.problems)
    assert "unknown referral attribute 'partnr' (did you mean 'partner'?)" in text
    assert f"{path}:{first_line(path, 'craete =')}: lead.craete: unknown key (did you mean 'create'?)" in text


def test_a_mapped_field_missing_from_the_describe_suggests_close_names(tmp_path: Path) -> None:
    path = tmp_path / "salesforce.toml"
    path.write_text((SHIPPED / "salesforce.toml").read_text()
                    .replace("Referral_Campaign__c =", "Referral_Campaign_c =", 1)
                    .replace('"Closed Won" = "won"', '"Closed Wonn" = "won"'))
    problems = check_against_schema(load_mapping(path), sf_schemas(), SF_STAGES)
    text = "\n".join(problems)
    line = first_line(path, "Referral_Campaign_c =")
    assert (f"{path}:{line}: lead.fields.Referral_Campaign_c: Lead has no field 'Referral_Campaign_c' "
            "(did you mean 'Referral_Campaign__c'") in text  # the closest first
    assert "the CRM has no stage 'Closed Wonn' in pipeline 'default' (did you mean 'Closed Won'" in text
