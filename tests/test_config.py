"""Config validation: every problem at once, with file, line, key path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from refsync.connector.config import load_config, parse_config
from refsync.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def problems_of(text: str, path: Path = Path("/etc/refsync/refsync.toml")) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, path)
    return caught.value.problems


def test_shipped_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.crm.salesforce is not None and config.crm.hubspot is not None
    assert config.attribution.model == "first_touch"


def test_every_problem_is_reported_at_once_with_line_and_key_path() -> None:
    text = (
        "[ledger]\n"
        'url = "sqlite:///x.db"\n'
        "[attribution]\n"
        'model = "first"\n'
        "expire_after_days = 0\n"
        "colour = 1\n"
        "[crm.hubspot]\n"
        'access_token = "pat-na1-11112222"\n'
    )
    problems = problems_of(text)
    assert len(problems) == 4
    joined = "\n".join(problems)
    assert "refsync.toml:4: attribution.model" in joined
    assert "refsync.toml:5: attribution.expire_after_days" in joined
    assert "refsync.toml:6: attribution.colour: unknown key" in joined
    assert "refsync.toml:8: crm.hubspot.access_token: literal secrets are not allowed" in joined
    assert "env:NAME" in joined  # says how to move the secret out


def test_unknown_crm_is_refused_with_the_supported_list() -> None:
    problems = problems_of('[crm.zoho]\ntoken = "env:X"\n')
    assert problems == ["/etc/refsync/refsync.toml:1: crm.zoho: unknown CRM; refsync supports hubspot, salesforce"]


def test_salesforce_needs_exactly_one_way_to_authenticate() -> None:
    problems = problems_of('[crm.salesforce]\ninstance_url = "https://x.my.salesforce.com"\n')
    assert "exactly one way to authenticate" in problems[0]
    both = problems_of(
        '[crm.salesforce]\ninstance_url = "https://x"\nsession_id = "env:A"\nusername = "u"\npassword = "env:B"\n'
    )
    assert "exactly one way" in both[0]


def test_password_in_ledger_url_is_refused() -> None:
    problems = problems_of('[ledger]\nurl = "postgresql+psycopg://refsync:hunter22@db/refsync"\n')
    assert "ledger.url" in problems[0] and "env:REFSYNC_LEDGER_URL" in problems[0]


def test_env_and_file_secrets_resolve_and_missing_ones_say_where_they_were_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sf.secret").write_text("s3cr3t-from-file\n")
    config_file = tmp_path / "refsync.toml"
    config_file.write_text(
        '[crm.hubspot]\naccess_token = "env:HS_TOKEN_FOR_TEST"\n'
        '[crm.salesforce]\ninstance_url = "https://x"\nsession_id = "file:sf.secret"\n'
    )
    config = load_config(config_file)
    assert config.crm.salesforce is not None and config.crm.hubspot is not None
    assert config.crm.salesforce.session_id is not None
    assert config.crm.salesforce.session_id.resolve("s", config.base_dir) == "s3cr3t-from-file"
    monkeypatch.delenv("HS_TOKEN_FOR_TEST", raising=False)
    with pytest.raises(ConfigError, match="environment variable HS_TOKEN_FOR_TEST is not set"):
        config.crm.hubspot.access_token.resolve("crm.hubspot.access_token")
    monkeypatch.setenv("HS_TOKEN_FOR_TEST", "tok")
    assert config.crm.hubspot.access_token.resolve("crm.hubspot.access_token") == "tok"


def test_relative_sqlite_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "conf" / "refsync.toml"
    config_file.parent.mkdir()
    config_file.write_text('[ledger]\nurl = "sqlite:///data/ledger.db"\n')
    assert load_config(config_file).ledger_url() == f"sqlite:///{tmp_path}/conf/data/ledger.db"


def test_missing_config_file_lists_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REFSYNC_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"REFSYNC_CONFIG \(unset\), ./refsync.toml"):
        load_config(None)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    problems = problems_of("[ledger\nurl=1\n", tmp_path / "bad.toml")
    assert problems[0].startswith(f"{tmp_path / 'bad.toml'}: not valid TOML")


def test_policy_version_is_stable_and_changes_with_the_policy() -> None:
    a = parse_config('[attribution]\nmodel = "first_touch"\n').attribution.version()
    b = parse_config('[attribution]\nmodel = "first_touch"\n').attribution.version()
    c = parse_config('[attribution]\nmodel = "last_touch"\n').attribution.version()
    assert a == b != c
    assert parse_config('[attribution]\npolicy_version = "2026-q4"\n').attribution.version() == "2026-q4"


def test_mapping_path_beside_the_config_else_the_shipped_default(tmp_path: Path) -> None:
    config_file = tmp_path / "refsync.toml"
    config_file.write_text('[crm.hubspot]\naccess_token = "env:X"\nmapping = "mappings/hubspot.toml"\n')
    config = load_config(config_file)
    shipped = Path(__file__).resolve().parents[1] / "mappings" / "hubspot.toml"
    assert config.mapping_path("mappings/hubspot.toml", "crm.hubspot.mapping") == shipped
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "hubspot.toml").write_text("# the admin's own copy\n")
    own = tmp_path / "mappings" / "hubspot.toml"
    assert config.mapping_path("mappings/hubspot.toml", "crm.hubspot.mapping") == own
    expected = r"crm.hubspot.mapping: mapping file mappings/zoho.toml not found \(looked at"
    with pytest.raises(ConfigError, match=expected):
        config.mapping_path("mappings/zoho.toml", "crm.hubspot.mapping")


@pytest.mark.parametrize(("url", "says"), [
    ("http://hooks.example.com/alerts", "is not https://"),
    ("https://127.0.0.1:9000/alerts", "loopback"),
    ("https://169.254.169.254/latest", "link-local"),
    ("https://[64:ff9b::a00:1]/alerts", "NAT64 form of 10.0.0.1"),
])
def test_an_alert_webhook_url_the_target_policy_refuses_is_a_located_config_error(url: str, says: str) -> None:
    text = f'[logging]\nlevel = "info"\n\n[alerts]\nformat = "json"\nwebhook_url = "{url}"\n'
    [problem] = problems_of(text)
    assert problem.startswith("/etc/refsync/refsync.toml:6: alerts.webhook_url: "), problem
    assert says in problem and "allow_private_targets = true" in problem  # what is wrong and the way out


def test_allow_private_targets_lets_an_internal_alert_receiver_load() -> None:
    text = '[notifications]\nallow_private_targets = true\n[alerts]\nwebhook_url = "http://127.0.0.1:9000/a"\n'
    assert parse_config(text).alerts.webhook_url == "http://127.0.0.1:9000/a"
    public = '[alerts]\nwebhook_url = "https://hooks.slack.com/services/T0/B0/x"\n'
    assert parse_config(public).alerts.webhook_url is not None
    # A reference is checked when it is resolved, at delivery (test_notify); loading it is fine.
    assert parse_config('[alerts]\nwebhook_url = "env:ALERT_URL"\n').alerts.webhook_url == "env:ALERT_URL"


def test_a_refused_alert_url_is_reported_with_the_other_problems_at_once() -> None:
    text = '[attribution]\nmodel = "first"\n[alerts]\nwebhook_url = "https://10.0.0.5/hook"\n'
    problems = problems_of(text)
    assert sorted(p.split(": ")[1] for p in problems) == ["alerts.webhook_url", "attribution.model"], problems
    assert any(p.startswith("/etc/refsync/refsync.toml:4: alerts.webhook_url: ") for p in problems), problems


def test_urls_without_a_scheme_are_refused_with_the_line_and_the_fix() -> None:
    problems = problems_of(
        '[ledger]\nurl = "refsync.db"\n'
        '[crm.salesforce]\ninstance_url = "acme.my.salesforce.com"\nsession_id = "env:SF"\n'
        '[crm.hubspot]\nbase_url = "api.hubapi.com"\naccess_token = "env:HS"\n'
        '[alerts]\nwebhook_url = "hooks.slack.com/services/T0/B0/x"\n')
    assert set(problems) == {
        '/etc/refsync/refsync.toml:2: ledger.url: must be a SQLAlchemy URL starting with sqlite:/// or '
        'postgresql+psycopg:// (for a SQLite file: "sqlite:///refsync.db")',
        "/etc/refsync/refsync.toml:4: crm.salesforce.instance_url: 'acme.my.salesforce.com' has no scheme; "
        'write it as "https://acme.my.salesforce.com"',
        "/etc/refsync/refsync.toml:7: crm.hubspot.base_url: 'api.hubapi.com' has no scheme; write it as "
        '"https://api.hubapi.com"',
        "/etc/refsync/refsync.toml:10: alerts.webhook_url: 'hooks.slack.com/services/T0/B0/x' has no scheme; "
        'write it as "https://hooks.slack.com/services/T0/B0/x", or "env:NAME" / "file:/path" holding it',
    }


def test_a_missing_ca_bundle_is_a_configuration_error_with_file_and_line(tmp_path: Path) -> None:
    text = ('[crm.salesforce]\ninstance_url = "https://127.0.0.1:8443"\nsession_id = "env:SF"\n'
            'ca_bundle = "certs/ca.pem"\n')
    path = tmp_path / "refsync.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}:4: crm.salesforce.ca_bundle: no file at {tmp_path / 'certs/ca.pem'}; ")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs/ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_config(path).crm.salesforce is not None  # relative to the config file, found


def test_misspelt_keys_get_a_suggestion() -> None:
    problems = problems_of('[daemon]\npush_interval = 30\n[crm.hubspot]\nbase_url = "https://x.example"\n'
                           'acess_token = "env:HS"\n[crm.hubspt]\n[notifcations]\nenabled = false\n')
    joined = "\n".join(problems)
    assert ("refsync.toml:2: daemon.push_interval: unknown key (did you mean 'push_interval_seconds'?); "
            "remove it or check its spelling against config.example.toml") in joined
    assert "refsync.toml:5: crm.hubspot.acess_token: unknown key (did you mean 'access_token'?)" in joined
    assert "crm.hubspt: unknown CRM (did you mean 'hubspot'?)" in joined
    assert "refsync.toml:7: notifcations: unknown key (did you mean 'notifications'?)" in joined


def test_an_unknown_key_with_nothing_close_gets_no_guess() -> None:
    [problem] = problems_of("[logging]\ncolour = true\n")
    assert "did you mean" not in problem and "logging.colour: unknown key" in problem


def test_configuration_errors_reach_the_cli_as_exit_2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from refsync.connector.cli import cli

    path = tmp_path / "refsync.toml"
    path.write_text('[crm.hubspot]\nbase_url = "api.hubapi.com"\naccess_token = "env:HS"\n')
    result = CliRunner().invoke(cli, ["status", "--config", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2: crm.hubspot.base_url: 'api.hubapi.com' has no scheme" in result.stderr
