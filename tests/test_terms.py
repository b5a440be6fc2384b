"""The terms file: the shipped example loads, and every mistake comes back at once with its line and fix."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from refsync.connector.terms import load_terms, parse_terms
from refsync.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_terms(text, Path("terms.toml"))
    return caught.value.problems


def test_the_shipped_example_loads_with_every_version_and_domain() -> None:
    book = load_terms(ROOT / "examples" / "terms.toml")
    assert [t.effective_from for t in book.program] == [date(2026, 1, 1), date(2026, 7, 1)]
    assert book.program[0].min_deal_minor == 100_000 and book.program[1].flat_minor == 25_000
    assert book.partners["acme"][0].version == "acme-2026"
    assert book.domains["bluebird"] == ("bluebird.example",) and "bluebird" not in book.partners
    assert book.terms_for("bluebird", date(2026, 7, 2), date(2026, 8, 1)) == book.program[1]
    assert book.holds.burst_factor == Decimal(5)


def test_a_single_table_is_one_version_and_versions_get_distinct_derived_ids() -> None:
    book = parse_terms('[program]\ncurrency = "EUR"\npercent = 7.5\nhold_days = 0\n'
                       '[[partner."x-1"]]\neffective_from = 2026-01-01\ncurrency = "EUR"\nflat = 99.99\nhold_days = 3\n'
                       '[[partner."x-1"]]\neffective_from = 2026-02-01\ncurrency = "EUR"\nflat = 120\nhold_days = 3\n')
    assert book.program[0].percent == Decimal("7.5") and book.program[0].version.startswith("program@always#")
    first, second = book.partners["x-1"]
    assert first.flat_minor == 9_999 and second.flat_minor == 12_000
    assert first.version.startswith("partner:x-1@2026-01-01#") and first.version != second.version


def test_an_edited_version_gets_a_new_id_so_old_commissions_keep_theirs() -> None:
    before = parse_terms('[program]\ncurrency = "USD"\npercent = 10\nhold_days = 30\n').program[0].version
    after = parse_terms('[program]\ncurrency = "USD"\npercent = 11\nhold_days = 30\n').program[0].version
    assert before != after


def test_every_problem_is_reported_at_once_with_its_line_key_and_fix() -> None:
    text = "\n".join([
        'applies_to = "closed"',                        # 1
        "[holds]",                                      # 2
        "burst_factor = 1",                             # 3
        "[program]",                                    # 4
        'currency = "usd"',                             # 5
        "percent = 120",                                # 6
        "hold_days = 30",                               # 7
        "bonus = 5",                                    # 8
        '[[partner."acme"]]',                           # 9
        "effective_from = 2026-01-01",                  # 10
        'currency = "USD"',                             # 11
        "percent = 10",                                 # 12
        "tiers = [{ from = 100, percent = 5 }]",        # 13
        "flat = 10.555",                                # 14
        '[[partner."acme"]]',                           # 15
        "effective_from = 2026-02-01",                  # 16
        "percent = 10",                                 # 17
        '[partner."bluebird"]',                         # 18
        'domains = ["https://bluebird.example"]',       # 19
    ])
    found = problems(text)
    expected = [
        ("terms.toml:1: applies_to:", "'submitted' or 'won'"),
        ("terms.toml:3: holds.burst_factor:", "greater than 1"),
        ("terms.toml:5: program.currency:", "'usd' must be an ISO 4217 code in capitals"),
        ("terms.toml:6: program.percent:", "less than or equal to 100"),
        ("terms.toml:8: program.bonus:", "unknown key"),
        ("terms.toml:9: partner.acme:", "percent and tiers both set"),
        ("terms.toml:15: partner.acme:", "currency is missing"),
        ("terms.toml:19: partner.bluebird.domains:", 'must be a domain name like "partner.example"'),
    ]
    for prefix, fix in expected:
        assert any(p.startswith(prefix) and fix in p for p in found), (prefix, found)
    first_acme = next(p for p in found if p.startswith("terms.toml:9:"))
    assert "tiers must start with { from = 0" in first_acme and "round it to 10.56" in first_acme
    assert "hold_days is missing" in next(p for p in found if p.startswith("terms.toml:15:"))


def test_two_versions_with_one_start_date_or_one_label_are_refused_with_the_line() -> None:
    version = ('[[partner.acme]]\neffective_from = 2026-01-01\nversion = "a"\ncurrency = "USD"\npercent = 5\n'
               "hold_days = 1\n")
    found = problems(version + version)
    assert any(p.startswith("terms.toml:8: partner.acme: effective_from 2026-01-01 is also") for p in found)
    assert any(p.startswith("terms.toml:8: partner.acme: version \"a\" is already used") for p in found)


def test_a_program_table_without_terms_and_bad_toml_are_explained() -> None:
    assert problems('[program]\ndomains = ["x.example"]\n') == [
        "terms.toml:1: program: sets no terms; add currency, hold_days and percent, flat or tiers"]
    [syntax] = problems('[partner.acme]\npercent = 1\n[partner.acme\npercent = 2\n')
    assert syntax.startswith("terms.toml: not valid TOML: ") and "(at line 3" in syntax


def test_a_missing_terms_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_terms(tmp_path / "nope.toml")
    assert caught.value.problems[0].startswith("compensation.terms: cannot read terms file")


def test_a_later_table_of_the_same_partner_is_a_new_version_as_the_contract_says() -> None:
    # TOML refuses a table declared twice; the contract lets admins write a later [partner."CODE"].
    text = ('[program]\ncurrency = "USD"\npercent = 10\nhold_days = 30\n\n'
            '[partner."acme"]\ncurrency = "USD"\npercent = 8\nhold_days = 30\neffective_from = 2026-01-01\n\n'
            '[partner."acme"]  # from July\ncurrency = "USD"\npercent = 12\nhold_days = 30\n'
            'effective_from = 2026-07-01\n')
    book = parse_terms(text)
    assert [(t.effective_from, t.percent) for t in book.partners["acme"]] == [
        (date(2026, 1, 1), Decimal("8")), (date(2026, 7, 1), Decimal("12"))]
    with pytest.raises(ConfigError) as caught:
        parse_terms(text.replace("percent = 12", 'percent = "x"'))
    [problem] = caught.value.problems
    assert problem.startswith("<terms>:14: partner.acme.percent: "), problem  # the second table's line
