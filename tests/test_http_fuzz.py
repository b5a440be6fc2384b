"""Schemathesis against the running intake over real HTTP: whatever it sends (bodies generated from
/openapi.json, and mutated away from it), no 5xx and every answer matches the description."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings, strategies
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from refsync.state.ledger import Ledger
from tests.test_http import TOKEN, start


def test_intake_never_answers_5xx_and_keeps_to_its_schema(sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url)
    running = start(ledger, TOKEN)
    host, port = running.server.address
    try:
        operation = schemathesis.openapi.from_url(f"http://{host}:{port}/openapi.json")["/intake"]["POST"]
        calls: list[int] = []

        cases = strategies.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                                  operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: Any) -> None:
            # Every check but the two about acceptance: the intake answers per item, so a request of
            # the right shape can be refused item by item (a bad email: 422) and one with some bad
            # items still lands the others (201). What is checked: no 5xx, answers match the schema.
            response = case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                                              excluded_checks=[positive_data_acceptance, negative_data_rejection])
            calls.append(response.status_code)

        fuzz()
        assert len(calls) >= 20 and all(status < 500 for status in calls)
        assert {201, 422} & set(calls) and {400, 413} & set(calls)  # both kinds of case reached the server
    finally:
        running.server.stop()
        ledger.close()
