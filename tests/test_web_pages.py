"""The pure parts of the web pages: partner words, charts, the portal's base URL and its config keys."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from refsync.connector.config import parse_config
from refsync.connector.web import base_url, is_web_path
from refsync.connector.web.charts import bars, columns
from refsync.connector.web.words import LABELS, standing, step_sentence
from refsync.errors import ConfigError
from refsync.state.models import STATUSES
from refsync.state.portal import PartnerReferral, Step

AT = datetime(2026, 11, 1, tzinfo=UTC)


def referral(**changes: object) -> PartnerReferral:
    values: dict[str, object] = dict(id="01X", prospect_name="Dana", prospect_email="d@n.example",
                                     prospect_company="N", status="submitted", submitted_at=AT, status_changed_at=AT,
                                     credited=True, review_required=False, merged=False, outcome_amount=None,
                                     outcome_currency=None, outcome_close_date=None)
    values.update(changes)
    return PartnerReferral(**values)  # type: ignore[arg-type]


def test_every_status_has_a_partner_label_and_a_sentence_without_codes() -> None:
    assert set(LABELS) == set(STATUSES)
    for status in STATUSES:
        sentence = step_sentence(Step(status, AT, "crm_poll", "submitted"), 90)
        assert sentence.endswith((".", "!")) and "_" not in sentence
    assert "90 days" in step_sentence(Step("expired", AT, "expiry", "submitted"), 90)
    assert step_sentence(Step("contacted", AT, "crm_poll", "proposal"), 90) == 'The referral went back to "In contact".'


def test_a_duplicate_is_explained_without_naming_who_holds_the_credit() -> None:
    assert standing(referral()) is None
    flagged = standing(referral(credited=False, review_required=True))
    assert flagged is not None and "already referred" in flagged and "Under review" in flagged
    declined = standing(referral(credited=False, status="declined"))
    assert declined is not None and "already referred" in declined


def test_charts_are_svg_with_escaped_labels_and_a_title() -> None:
    svg = str(bars("Won revenue", [("<script>alert(1)</script>", 5.0), ("b", 10.0)]))
    assert svg.startswith("<svg") and "<title" in svg and "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'width="0"' not in svg  # a non-zero value always shows a bar
    assert "nothing in this period" in str(bars("Funnel", []))
    assert str(columns("Per month", [("2026-10", 3), ("2026-11", 0)])).count("<rect") == 2


def test_links_use_public_url_else_the_listen_address() -> None:
    assert base_url("127.0.0.1:8787", None) == "http://127.0.0.1:8787"
    assert base_url("0.0.0.0:9000", None) == "http://127.0.0.1:9000"
    assert base_url("[::1]:9000", None) == "http://[::1]:9000"
    assert base_url("0.0.0.0:9000", "https://partners.example.com/") == "https://partners.example.com"
    assert is_web_path("/portal/referrals/x") and is_web_path("/") and not is_web_path("/portalx")
    assert not is_web_path("/intake")


def test_portal_config_keys_are_checked_with_the_fix() -> None:
    config = parse_config('[http]\npublic_url = "https://p.example.com"\nsession_hours = 8\ninvite_days = 3\n')
    assert (config.http.public_url, config.http.session_hours, config.http.invite_days) == \
        ("https://p.example.com", 8, 3)
    with pytest.raises(ConfigError, match="http.public_url"):
        parse_config('[http]\npublic_url = "partners.example.com"\n')
    with pytest.raises(ConfigError, match="http.session_hours"):
        parse_config("[http]\nsession_hours = 0\n")
