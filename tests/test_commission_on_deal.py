"""The commission written back onto the CRM deal (mapping `from = "commission_amount"` /
`"commission_status"`), as sales sees it: the real CLI, the real adapters over HTTP against the
sandbox CRMs (whose admin plane creates the custom fields, as an org admin would), a real ledger.

A won deal shows its pending commission after the `sync --once` that computed it; approving and paying
show on the next cycle; a reopened paid deal shows the clawback (amount netted to 0). None of these
writes is taken for a rep's overwrite; a rep's edit of them is restored like attribution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.cli import cli
from tests.conftest import FAST_RETRY

ROOT = Path(__file__).resolve().parents[1]
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
TERMS = """
[[program]]
effective_from = 2026-01-01
version = "program-2026"
currency = "USD"
percent = 10
flat = 250
hold_days = 0
"""
SF_FIELDS = {"Commission_Amount__c": "commission_amount", "Commission_Status__c": "commission_status"}
HS_FIELDS = {"refsync_commission_amount": "commission_amount", "refsync_commission_status": "commission_status"}


def with_commission(shipped: str, fields: dict[str, str], dest: Path) -> Path:
    """The shipped mapping with its commented-out commission lines switched on."""
    text = (ROOT / "mappings" / shipped).read_text()
    for name in fields:
        assert f"# {name} = " in text  # shipped commented out, with the note to create the field first
        text = text.replace(f"# {name} = ", f"{name} = ")
    dest.write_text(text)
    return dest


def refsync(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def ledger_url(request: pytest.FixtureRequest) -> str:
    kind = getattr(request, "param", "sqlite")
    return str(request.getfixturevalue("sqlite_url" if kind == "sqlite" else "pg_url"))


def sf_config(sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_url: str) -> Path:
    sandbox.salesforce.reset()
    monkeypatch.setenv("T_SF_SESSION", sandbox.salesforce.session_id)
    (tmp_path / "terms.toml").write_text(TERMS)
    mapping = with_commission("salesforce.toml", SF_FIELDS, tmp_path / "salesforce.toml")
    path = tmp_path / "refsync.toml"
    path.write_text(
        f'[ledger]\nurl = "{ledger_url}"\n[logging]\nformat = "json"\n'
        f'[crm.salesforce]\ninstance_url = "{sandbox.salesforce.base_url}"\n'
        f'ca_bundle = "{sandbox.salesforce.ca_path}"\n'
        f'session_id = "env:T_SF_SESSION"\nmapping = "{mapping}"\n'
        f'[compensation]\nterms = "terms.toml"\n{FAST_RETRY}')
    return path


def hs_config(sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_url: str) -> Path:
    sandbox.hubspot.reset()
    monkeypatch.setenv("T_HS_TOKEN", sandbox.hubspot.access_token)
    (tmp_path / "terms.toml").write_text(TERMS)
    mapping = with_commission("hubspot.toml", HS_FIELDS, tmp_path / "hubspot.toml")
    path = tmp_path / "refsync.toml"
    path.write_text(
        f'[ledger]\nurl = "{ledger_url}"\n[logging]\nformat = "json"\n'
        f'[crm.hubspot]\nbase_url = "{sandbox.hubspot.base_url}"\naccess_token = "env:T_HS_TOKEN"\n'
        f'mapping = "{mapping}"\n[compensation]\nterms = "terms.toml"\n{FAST_RETRY}')
    return path


def shown(sandbox: RunningSandbox, opportunity: str) -> tuple[object, object]:
    record = sandbox.salesforce.get_record("Opportunity", opportunity) or {}
    return record.get("Commission_Amount__c"), record.get("Commission_Status__c")


def overwrite_alerts(config: Path) -> list[dict[str, object]]:
    return json.loads(refsync(config, "alerts", "--kind", "attribution_overwritten", "--json")[1])


@pytest.mark.parametrize("ledger_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_the_opportunity_shows_the_commission_through_its_lifecycle_and_a_reps_edit_is_restored(
    sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_url: str
) -> None:
    config = sf_config(sandbox, tmp_path, monkeypatch, ledger_url)
    sandbox.salesforce.create_field("Opportunity", "Commission_Amount__c", "number")
    sandbox.salesforce.create_field("Opportunity", "Commission_Status__c", "text")
    checked = refsync(config, "mappings", "check")
    assert checked[0] == 0, checked
    assert refsync(config, "init")[0] == 0

    rows = tmp_path / "r.csv"
    rows.write_text(f"{HEADER}\nbluebird,dana@northwind.example,Northwind,Dana,,,,2026-10-01T09:00:00Z,,e1\n")
    assert refsync(config, "import", str(rows))[0] == 0
    assert refsync(config, "sync", "--once")[0] == 0
    [referral] = json.loads(refsync(config, "referrals", "list", "--json")[1])
    view = json.loads(refsync(config, "referrals", "show", referral["id"], "--json")[1])
    [lead] = [lk["record_id"] for lk in view["links"] if lk["object"] == "Lead"]
    opportunity = sandbox.salesforce.convert_lead(lead)["opportunity"]
    assert refsync(config, "sync", "--once")[0] == 0  # the opportunity gets the attribution
    assert shown(sandbox, opportunity) == (None, None)  # no commission yet: the fields are not written

    sandbox.salesforce.move_stage(opportunity, "Closed Won", amount=125_000, close_date="2026-11-20")
    assert refsync(config, "sync", "--once")[0] == 0
    assert shown(sandbox, opportunity) == (12750.0, "pending")  # 10 % of 125,000.00 plus 250.00 flat
    [commission] = json.loads(refsync(config, "commissions", "list", "--json")[1])

    assert refsync(config, "commissions", "approve", str(commission["id"]), "--by", "Fiona")[0] == 0
    assert refsync(config, "sync", "--once")[0] == 0
    assert shown(sandbox, opportunity) == (12750.0, "approved")
    assert refsync(config, "commissions", "pay", str(commission["id"]), "--reference", "WIRE-7",
                   "--by", "Fiona")[0] == 0
    assert refsync(config, "sync", "--once")[0] == 0
    assert shown(sandbox, opportunity) == (12750.0, "paid")

    sandbox.salesforce.move_stage(opportunity, "Negotiation/Review")  # the paid deal reopens
    assert refsync(config, "sync", "--once")[0] == 0
    assert shown(sandbox, opportunity) == (0.0, "clawback")  # 12,750.00 paid, -12,750.00 clawed back
    assert refsync(config, "sync", "--once")[0] == 0  # the poll reads refsync's own writes back
    assert overwrite_alerts(config) == []
    timeline = json.loads(refsync(config, "referrals", "show", referral["id"], "--json")[1])["timeline"]
    assert not [e for e in timeline if e["kind"] == "restore_planned"]
    pushed = [e["detail"]["fields"] for e in timeline if e["kind"] == "pushed"]
    assert [f.get("Commission_Status__c") for f in pushed if "Commission_Status__c" in f] == [
        "pending", "approved", "paid", "clawback"]

    sandbox.salesforce.set_field("Opportunity", opportunity, "Commission_Status__c", "paid", by="rep")
    assert refsync(config, "sync", "--once")[0] == 0
    assert shown(sandbox, opportunity) == (0.0, "clawback")  # restored, as attribution is
    [alert] = overwrite_alerts(config)
    assert "Opportunity.Commission_Status__c" in str(alert["message"])


def test_a_hubspot_deal_in_another_currency_shows_the_status_and_leaves_the_amount_alone(
    sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    config = hs_config(sandbox, tmp_path, monkeypatch, sqlite_url)
    sandbox.hubspot.create_field("deals", "refsync_commission_amount", "number")
    sandbox.hubspot.create_field("deals", "refsync_commission_status", "text")
    assert refsync(config, "mappings", "check")[0] == 0
    assert refsync(config, "init")[0] == 0
    rows = tmp_path / "r.csv"
    rows.write_text(f"{HEADER}\nbluebird,dana@northwind.example,Northwind,Dana,,,,2026-10-01T09:00:00Z,,e1\n"
                    "bluebird,eve@contoso.example,Contoso,Eve,,,,2026-10-01T10:00:00Z,,e2\n")
    assert refsync(config, "import", str(rows))[0] == 0
    assert refsync(config, "sync", "--once")[0] == 0
    deals = {}
    for referral in json.loads(refsync(config, "referrals", "list", "--json")[1]):
        view = json.loads(refsync(config, "referrals", "show", referral["id"], "--json")[1])
        [contact] = [lk["record_id"] for lk in view["links"] if lk["object"] == "contacts"]
        deals[referral["prospect_email"]] = sandbox.hubspot.convert_lead(contact)["deal"]
    sandbox.hubspot.set_field("deals", deals["eve@contoso.example"], "deal_currency_code", "EUR")
    assert refsync(config, "sync", "--once")[0] == 0  # the deals become the referrals' deals
    for deal in deals.values():
        sandbox.hubspot.move_stage(deal, "Closed Won", amount=40_000, close_date="2026-11-20")
    assert refsync(config, "sync", "--once")[0] == 0
    usd = sandbox.hubspot.get_record("deals", deals["dana@northwind.example"]) or {}
    eur = sandbox.hubspot.get_record("deals", deals["eve@contoso.example"]) or {}
    assert float(usd["refsync_commission_amount"]) == 4250.0 and usd["refsync_commission_status"] == "pending"
    # terms in USD, deal in EUR: held for the currency with no amount computed, so none is shown
    held = [c for c in json.loads(refsync(config, "commissions", "list", "--json")[1]) if c["currency"] == "EUR"]
    assert [(c["status"], c["holds"][0]["code"]) for c in held] == [("held", "currency_mismatch")]
    assert not eur.get("refsync_commission_amount") and eur["refsync_commission_status"] == "held"
    sandbox.hubspot.move_stage(deals["dana@northwind.example"], "Contract Sent")  # reopened before payment
    assert refsync(config, "sync", "--once")[0] == 0
    usd = sandbox.hubspot.get_record("deals", deals["dana@northwind.example"]) or {}
    assert float(usd["refsync_commission_amount"]) == 0 and usd["refsync_commission_status"] == "void"
    assert refsync(config, "sync", "--once")[0] == 0
    assert overwrite_alerts(config) == []


def test_commission_attributes_belong_to_the_deal_and_need_a_number_or_text_field(
    sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    config = sf_config(sandbox, tmp_path, monkeypatch, sqlite_url)
    mapping = tmp_path / "salesforce.toml"
    text = mapping.read_text().replace(
        "[lead.fields]\n", '[lead.fields]\nReferral_Campaign_Two__c = { from = "commission_status" }\n', 1)
    mapping.write_text(text)
    line = text.splitlines().index('Referral_Campaign_Two__c = { from = "commission_status" }') + 1
    code, _, err = refsync(config, "mappings", "check")
    assert code == 2 and (f"{mapping}:{line}: lead.fields.Referral_Campaign_Two__c: commission_status is written "
                          "onto the deal only; move it to [deal.fields]") in err

    mapping.write_text(text.replace('Referral_Campaign_Two__c = { from = "commission_status" }\n', "")
                       .replace('Commission_Amount__c = { from = "commission_amount"',
                                'CloseDate = { from = "commission_amount"'))
    sandbox.salesforce.create_field("Opportunity", "Commission_Status__c", "text")
    code, _, err = refsync(config, "mappings", "check")
    assert code != 0 and ("deal.fields.CloseDate: is a date field; commission_amount needs a number (currency, "
                          "double) or text field") in err


def test_a_deal_amount_that_is_not_a_finite_number_counts_as_no_amount() -> None:
    # HubSpot sends every property as text; float() reads "NaN" and "Infinity" too. No deal is worth
    # either, a report must not sum them, and no JSON body may carry one back to a CRM.
    from refsync.connector.poll import _amount

    assert [_amount(v) for v in ("12750", "12750.5", 99.0, "", None, "abc")] == [12750.0, 12750.5, 99.0, None, None,
                                                                                 None]
    assert [_amount(v) for v in ("NaN", "nan", "Infinity", "-inf", float("nan"), "1e999")] == [None] * 6
