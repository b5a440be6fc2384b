"""Mapping files, live: a changed mapping is rolled out as a planned re-push (actor mapping-change,
never blamed on a rep), `refsync mappings diff` counts what it would rewrite from the ledger alone,
`refsync mappings check --offline` checks structure without credentials, network or ledger.
Real sandbox over HTTP, real SQLite (and PostgreSQL where the fixture runs it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from refsync.adapters.sandbox.run import RunningSandbox
from refsync.connector.attribution import Policy
from refsync.connector.cli import cli
from refsync.connector.config import load_config
from refsync.connector.crms import build_targets
from refsync.connector.imports import import_file
from refsync.connector.mapping import MappingFile, load_mapping
from refsync.connector.mapping_diff import count_rewrites, field_changes
from refsync.connector.poll import poll_target
from refsync.connector.push import CrmTarget
from refsync.connector.reload import where
from refsync.connector.rollout import roll_out
from refsync.connector.sync import CycleSettings, run_cycle
from refsync.state.ledger import Ledger
from refsync.state.notifications import alerts
from refsync.state.rollout import plan_rollout
from tests.conftest import FAST_RETRY

ROOT = Path(__file__).resolve().parents[1]
REFSYNC = str(Path(sys.executable).with_name("refsync"))
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
SETTINGS = CycleSettings(batch_size=200, lease_seconds=60, max_attempts=5)
PARTNER = 'Referral_Partner__c = { from = "partner", rule = "protect" }'
BLAMED = ("attribution_overwritten", "attribution_conflict")


def copy_mappings(tmp_path: Path) -> Path:
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    for name in ("salesforce.toml", "hubspot.toml"):
        shutil.copy(ROOT / "mappings" / name, folder / name)
    return folder


def edit(path: Path, old: str, new: str) -> str:
    """Replace the first occurrence (the lead table's line) and return the file's new hash."""
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return hashlib.sha256(path.read_text().encode()).hexdigest()


def write_config(path: Path, sandbox: RunningSandbox, mappings: Path, ledger_url: str | None = None,
                 extra: str = "") -> Path:
    ledger = f'[ledger]\nurl = "{ledger_url}"\n' if ledger_url else ""
    path.write_text(
        f'{ledger}[crm.salesforce]\ninstance_url = "{sandbox.salesforce.base_url}"\n'
        f'ca_bundle = "{sandbox.salesforce.ca_path}"\nsession_id = "env:T_SF_SESSION"\n'
        f'mapping = "{mappings}/salesforce.toml"\n'
        f'[crm.hubspot]\nbase_url = "{sandbox.hubspot.base_url}"\naccess_token = "env:T_HS_TOKEN"\n'
        f'mapping = "{mappings}/hubspot.toml"\n{FAST_RETRY}{extra}')
    return path


def targets(config: Path) -> dict[str, CrmTarget]:
    built, problems = build_targets(load_config(config))
    assert problems == []
    return built


@pytest.fixture
def setup(sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    sandbox.salesforce.reset()
    sandbox.hubspot.reset()
    monkeypatch.setenv("T_SF_SESSION", sandbox.salesforce.session_id)
    monkeypatch.setenv("T_HS_TOKEN", sandbox.hubspot.access_token)
    mappings = copy_mappings(tmp_path)
    return mappings, write_config(tmp_path / "refsync.toml", sandbox, mappings)


def two_referrals(ledger: Ledger, tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / "r.csv"
    path.write_text(HEADER + "\nacme,dana@northwind.example,Northwind,Dana Lee,partner,referral,q4,,,e1\n"
                    "bluebird,sam@contoso.example,Contoso,Sam Ortiz,event,booth,summit,,,e2\n")
    assert import_file(ledger, path, Policy("first_touch", "flag", 365, "t"), datetime.now(UTC)).rejected == []
    by_partner = {r["partner"]: r["id"] for r in ledger.referrals()}
    return by_partner["acme"], by_partner["bluebird"]


def lead_of(ledger: Ledger, referral_id: str) -> str:
    referral = ledger.referral(referral_id)
    assert referral is not None
    [link] = [lk for lk in referral["links"] if lk["crm"] == "salesforce" and lk["object"] == "Lead"]
    return str(link["record_id"])


def timeline(ledger: Ledger, referral_id: str) -> list[dict]:
    referral = ledger.referral(referral_id)
    assert referral is not None
    return list(referral["timeline"])


def test_value_map_change_is_repushed_as_mapping_change_and_no_rep_is_blamed(
    ledger: Ledger, setup: tuple[Path, Path], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    mappings, config = setup
    acme, bluebird = two_referrals(ledger, tmp_path)
    assert run_cycle(ledger, targets(config), SETTINGS).errors == []
    acme_lead, bluebird_lead = lead_of(ledger, acme), lead_of(ledger, bluebird)
    # A rep works on both leads (an unprotected field): the next poll reads both records again.
    sandbox.salesforce.set_field("Lead", acme_lead, "Company", "Northwind Ltd", by="005REP")
    sandbox.salesforce.set_field("Lead", bluebird_lead, "Company", "Contoso Ltd", by="005REP")
    digest = edit(mappings / "salesforce.toml", PARTNER,
                  'Referral_Partner__c = { from = "partner", rule = "protect", transform = { values = { '
                  '"acme" = "ACME Corp" } } }')

    restarted = targets(config)  # refsync started again with the edited file
    rollout = roll_out(ledger, restarted["salesforce"])
    assert rollout is not None and rollout.planned == 1 and rollout.digest == digest
    # The worst order: the poll sees the rep's edit while the lead still holds the old mapping's value.
    poll_target(ledger, restarted["salesforce"])
    report = run_cycle(ledger, restarted, SETTINGS)

    assert report.errors == []
    assert sandbox.salesforce.get_record("Lead", acme_lead)["Referral_Partner__c"] == "ACME Corp"  # type: ignore[index]
    assert sandbox.salesforce.get_record("Lead", bluebird_lead)["Referral_Partner__c"] == "bluebird"  # type: ignore[index]
    assert [a for a in alerts(ledger) if a["kind"] in BLAMED] == []
    events = timeline(ledger, acme)
    assert not [e for e in events if e["kind"] == "restore_planned"]
    [planned] = [e for e in events if e["kind"] == "mapping_change_planned"]
    assert planned["actor"] == "mapping-change" and planned["crm"] == "salesforce"
    assert planned["detail"]["mapping_hash"] == digest and planned["detail"]["fields"] == ["Lead.Referral_Partner__c"]
    [pushed] = [e for e in events if e["kind"] == "pushed" and e["actor"] == "mapping-change"]
    assert pushed["record_id"] == acme_lead and pushed["detail"]["mapping_hash"] == digest
    assert pushed["detail"]["fields"] == {"Referral_Partner__c": "ACME Corp"}
    assert not [e for e in timeline(ledger, bluebird) if e["actor"] == "mapping-change"]

    # Settled: the next cycles rewrite nothing, blame nobody, and a restart plans nothing again.
    again = run_cycle(ledger, targets(config), SETTINGS)
    assert again.counts()["pushed"] == 0 and [a for a in alerts(ledger) if a["kind"] in BLAMED] == []
    assert len([e for e in timeline(ledger, acme) if e["kind"] == "mapping_change_planned"]) == 1
    # another replica planning the same change at once plans nothing twice
    assert plan_rollout(ledger, "salesforce", {acme: ["Lead.Referral_Partner__c"]}, digest, None, "x") == 0


def test_a_rep_overwrite_after_the_rollout_is_still_restored_and_alerted(
    ledger: Ledger, setup: tuple[Path, Path], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    mappings, config = setup
    acme, _ = two_referrals(ledger, tmp_path)
    run_cycle(ledger, targets(config), SETTINGS)
    edit(mappings / "salesforce.toml", PARTNER,
         'Referral_Partner__c = { from = "partner", rule = "protect", transform = { values = { "acme" = "ACME" } } }')
    restarted = targets(config)
    run_cycle(ledger, restarted, SETTINGS)
    lead = lead_of(ledger, acme)
    sandbox.salesforce.set_field("Lead", lead, "Referral_Partner__c", "someone else", by="005REP")
    run_cycle(ledger, restarted, SETTINGS)
    assert sandbox.salesforce.get_record("Lead", lead)["Referral_Partner__c"] == "ACME"  # type: ignore[index]
    [alert] = [a for a in alerts(ledger) if a["kind"] == "attribution_overwritten"]
    assert alert["record_id"] == lead and alert["referral_id"] == acme


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("REFSYNC_CONFIG", "T_SF_SESSION", "T_HS_TOKEN")}
    return subprocess.run([REFSYNC, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
                          env=env or clean)


def test_mappings_diff_counts_the_records_each_change_would_rewrite_from_the_ledger_alone(
    sqlite_url: str, setup: tuple[Path, Path], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    mappings, _ = setup
    config = write_config(tmp_path / "refsync.toml", sandbox, mappings, sqlite_url)
    ledger = Ledger.open(sqlite_url)
    two_referrals(ledger, tmp_path)
    assert run_cycle(ledger, targets(config), SETTINGS).counts()["pushed"] == 4  # both linked on both CRMs
    ledger.close()
    sf = mappings / "salesforce.toml"
    edit(sf, PARTNER, 'Referral_Partner__c = { from = "partner", rule = "protect", transform = { values = { '
                      '"acme" = "ACME Corp" } } }')  # one of the two leads
    edit(sf, 'Referral_Medium__c = { from = "medium", rule = "protect", transform = { truncate = true } }\n', "")
    edit(sf, "[lead.fields]\n", '[lead.fields]\nDescription = { from = "campaign", rule = "fill_blank" }\n')
    calls = sum(sandbox.salesforce.calls().values())

    done = run_cli("--config", str(config), "mappings", "diff", "--json")  # no CRM credentials in its env

    assert done.returncode == 0, done.stderr
    by_crm = {entry["crm"]: entry for entry in json.loads(done.stdout)}
    assert by_crm["hubspot"]["changed"] is False and by_crm["hubspot"]["records_rewritten"] == 0
    entry = by_crm["salesforce"]
    assert entry["changed"] is True and entry["file"] == str(sf)
    assert entry["file_hash"] == hashlib.sha256(sf.read_bytes()).hexdigest() != entry["active_hash"]
    changes = {(c["object"], c["field"]): (c["change"], c["rewrites"]) for c in entry["fields"]}
    assert changes == {("Lead", "Referral_Partner__c"): ("changed", 1), ("Lead", "Referral_Medium__c"): ("removed", 0),
                       ("Lead", "Description"): ("added", 2)}
    assert entry["records_rewritten"] == 2 and entry["referrals_rewritten"] == 2
    assert sum(sandbox.salesforce.calls().values()) == calls  # nothing asked of the CRM
    text = CliRunner().invoke(cli, ["--config", str(config), "mappings", "diff"], catch_exceptions=False)
    assert "salesforce: " in text.output and "2 records of 2 referrals would be rewritten" in text.output
    assert "Lead.Referral_Partner__c: changed: values['acme']: None -> 'ACME Corp' -> 1 records" in text.output
    assert "hubspot: " in text.output and ": no change" in text.output


def test_offline_check_reports_every_structural_problem_with_file_and_line_and_needs_nothing_else(
    tmp_path: Path
) -> None:
    good = copy_mappings(tmp_path)
    ok = run_cli("mappings", "check", "--offline", str(good / "salesforce.toml"), str(good / "hubspot.toml"),
                 cwd=tmp_path)  # no config, no ledger, no credentials
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("structure OK") == 2
    broken = tmp_path / "broken.toml"
    text = (good / "salesforce.toml").read_text()
    broken.write_text(text.replace('"Closed Won" = "won"', '"Closed Won" = "wonn"')
                      .replace("create = true", "create = true\ncreat = false", 1))
    garbled = tmp_path / "garbled.toml"
    garbled.write_text("crm = \n")
    bad = run_cli("mappings", "check", "--offline", str(broken), str(garbled), str(good / "hubspot.toml"),
                  cwd=tmp_path)
    assert bad.returncode == 2
    typo = next(n for n, line in enumerate(broken.read_text().splitlines(), 1) if line.startswith("creat = false"))
    assert f"{broken}:{typo}: lead.creat: unknown key (did you mean 'create'?); remove it" in bad.stderr
    assert f"{broken}:" in bad.stderr and "'wonn' is not a referral status" in bad.stderr
    assert f"{garbled}: not valid TOML" in bad.stderr
    assert "Traceback" not in bad.stderr and bad.stdout.count("structure OK") == 1  # every file checked


def test_diff_counts_only_records_whose_written_value_changes() -> None:
    old = load_mapping(ROOT / "mappings" / "salesforce.toml").mapping
    text = (ROOT / "mappings" / "salesforce.toml").read_text()
    new_text = (text.replace(PARTNER, 'Referral_Partner__c = { from = "partner", rule = "fill_blank", transform = { '
                             'values = { "acme" = "ACME" } } }', 1)
                .replace('Email = { from = "prospect_email", rule = "create_only" }',
                         'Email = { from = "prospect_email", rule = "create_only" }\n'
                         'Title = { from = "medium", rule = "protect" }'))
    new = MappingFile.model_validate(tomllib.loads(new_text))
    referrals = [{"id": "r1", "partner": "acme", "medium": "email", "links": [{"object": "Lead", "record_id": "L1"}]},
                 {"id": "r2", "partner": "acme", "medium": None, "links": [{"object": "Lead", "record_id": "L2"}]}]
    diff = count_rewrites(field_changes(old, new), old, new, referrals)
    by_field = {c.field: (c.change, c.rewrites) for c in diff.fields}
    # a fill_blank field never overwrites a value; a new field is written where the referral has a value
    assert by_field == {"Referral_Partner__c": ("changed", 0), "Title": ("added", 1)}
    assert diff.records == 1 and diff.referrals == {"r1"}
    assert where("/m/sf.toml:12: lead.fields.X: unknown") == ("/m/sf.toml", 12)
    assert where("/m/sf.toml: not valid TOML: Invalid value (at line 3, column 7)") == ("/m/sf.toml", 3)

