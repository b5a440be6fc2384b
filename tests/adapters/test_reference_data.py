"""Tests that need ``../shared/crm-api`` fail, not skip, in CI when it is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adapters import profile


@pytest.mark.parametrize("env", [{"REFSYNC_REQUIRE_SHARED": "1"}, {"CI": "true"}, {"CI": "1"}])
def test_missing_reference_data_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            env: dict[str, str]) -> None:
    for name in ("REFSYNC_REQUIRE_SHARED", "CI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(profile, "SHARED_CRM_API", tmp_path / "absent")
    with pytest.raises(pytest.fail.Exception, match="CRM reference data not found"):
        profile.recorded_body("salesforce", "sfdocs", "query_page1.json")


def test_missing_reference_data_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REFSYNC_REQUIRE_SHARED", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(profile, "SHARED_CRM_API", tmp_path / "absent")
    with pytest.raises(pytest.skip.Exception):
        profile.reference_dir("salesforce")


def test_ci_entry_point_requires_the_reference_data() -> None:
    script = Path(__file__).resolve().parents[2] / ".ci" / "run"
    assert "export REFSYNC_REQUIRE_SHARED=1" in script.read_text()
