"""Fixtures of the adapter tests: the shared conformance ``profile``, once per CRM."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from tests.adapters.profile import ConformanceProfile


@pytest.fixture(scope="module", params=["salesforce", "hubspot"])
def _running_profile(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ConformanceProfile, Any]]:
    """One emulator per CRM and test module (starting one costs a TLS CA for Salesforce)."""
    directory = tmp_path_factory.mktemp(f"{request.param}-sandbox")
    if request.param == "salesforce":
        from tests.adapters.sandbox_salesforce import salesforce_profile

        profile, emulator = salesforce_profile(directory)
    else:
        if importlib.util.find_spec("tests.adapters.sandbox_hubspot") is None:
            pytest.skip("tests/adapters/sandbox_hubspot.py (the HubSpot conformance profile) does not exist yet")
        from tests.adapters.sandbox_hubspot import hubspot_profile

        profile, emulator = hubspot_profile(directory)
    yield profile, emulator
    emulator.stop()


@pytest.fixture
def profile(_running_profile: tuple[ConformanceProfile, Any]) -> ConformanceProfile:
    """The CRM under test, its emulator reset: no records, faults or counted calls left over."""
    profile, emulator = _running_profile
    emulator.reset()
    return profile
