"""Shared fixtures: ledgers on real SQLite and real PostgreSQL.

PostgreSQL tests use $REFSYNC_TEST_PG_URL (default: the local server, database ``test``). When no
server answers they are skipped with the reason, unless $REFSYNC_REQUIRE_PG=1 (CI), where a
missing server fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from refsync.state import db
from refsync.state.ledger import Ledger

if TYPE_CHECKING:
    from refsync.adapters.sandbox.run import RunningSandbox
    from refsync.connector.push import CrmTarget

ROOT = Path(__file__).resolve().parents[1]

PG_URL = os.environ.get("REFSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("REFSYNC_REQUIRE_PG") == "1"


class FakeClock:
    """A clock the tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def _pg_admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database used as the template of each test's database."""
    try:
        admin = _pg_admin_engine()
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no server here"
        message = f"PostgreSQL not reachable at {PG_URL} ({type(exc).__name__}); set REFSYNC_TEST_PG_URL"
        if REQUIRE_PG:
            pytest.fail(message + " — REFSYNC_REQUIRE_PG=1, so this is a failure, not a skip")
        pytest.skip(message)
    admin.dispose()
    name = f"refsync_tmpl_{uuid.uuid4().hex[:10]}"
    with _pg_database(name):
        yield name


@contextmanager
def _pg_database(name: str, template: str | None = None) -> Iterator[str]:
    """A database on the test server, migrated (or copied from a migrated ``template``), dropped
    afterwards: its URL."""
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        if template is None:
            engine = db.make_engine(url)
            db.upgrade(engine)
            engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    with _pg_database(f"refsync_t_{uuid.uuid4().hex[:10]}", template=pg_template) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return _migrated_sqlite(tmp_path / "ledger.db")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh, migrated ledger: once on SQLite, once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def second_ledger_url(ledger_url: str, tmp_path: Path) -> Iterator[str]:
    """A second fresh, migrated ledger of the same kind as ``ledger_url`` (dropped afterwards)."""
    if ledger_url.startswith("sqlite"):
        yield _migrated_sqlite(tmp_path / "second.db")
        return
    with _pg_database(f"{make_url(ledger_url).database}_b") as url:
        yield url


def _migrated_sqlite(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    ledger = Ledger.open(ledger_url, clock=clock)
    yield ledger
    ledger.close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    """Both CRM emulators, in process, for the tests of one module."""
    from refsync.adapters.sandbox.run import start_sandbox

    running = start_sandbox(tmp_path_factory.mktemp("sandbox"), seed=5)
    yield running
    running.stop()


# The one retry policy with waits too short to slow a test (faults still cost their retries).
FAST_RETRY = "[retry]\nattempts = 8\ninitial_wait_seconds = 0.001\nmax_wait_seconds = 0.01\n"


def targets_for(sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, CrmTarget]:
    """Fresh emulators and the CRM targets a config pointing at them builds (the real adapters)."""
    from refsync.connector.config import load_config
    from refsync.connector.crms import build_targets

    sandbox.salesforce.reset()
    sandbox.hubspot.reset()
    monkeypatch.setenv("T_SF_SESSION", sandbox.salesforce.session_id)
    monkeypatch.setenv("T_HS_TOKEN", sandbox.hubspot.access_token)
    config = tmp_path / "refsync.toml"
    config.write_text(
        f'[crm.salesforce]\ninstance_url = "{sandbox.salesforce.base_url}"\n'
        f'ca_bundle = "{sandbox.salesforce.ca_path}"\n'
        f'session_id = "env:T_SF_SESSION"\nmapping = "{ROOT}/mappings/salesforce.toml"\n'
        f'[crm.hubspot]\nbase_url = "{sandbox.hubspot.base_url}"\naccess_token = "env:T_HS_TOKEN"\n'
        f'mapping = "{ROOT}/mappings/hubspot.toml"\n{FAST_RETRY}')
    targets, problems = build_targets(load_config(config))
    assert problems == []
    return targets


@pytest.fixture
def crms(sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, CrmTarget]:
    return targets_for(sandbox, tmp_path, monkeypatch)
