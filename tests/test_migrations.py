"""The migrated schema equals the models, on SQLite and PostgreSQL, and `init` is idempotent."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from refsync.errors import LedgerError
from refsync.state import db
from refsync.state.ledger import Ledger
from refsync.state.models import Base


def test_migrated_schema_equals_the_models(ledger_url: str) -> None:
    engine = db.make_engine(ledger_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_upgrade_twice_changes_nothing(ledger_url: str) -> None:
    engine = db.make_engine(ledger_url)
    head = db.head_revision(engine)
    assert db.upgrade(engine) == (head, head)
    engine.dispose()


def test_sqlite_ledger_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_uninitialised_ledger_is_refused_with_the_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LedgerError, match="run `refsync init` first"):
        Ledger.open(f"sqlite:///{tmp_path / 'empty.db'}")


def test_unreachable_ledger_is_a_ledger_error() -> None:
    with pytest.raises(LedgerError, match="cannot reach the ledger"):
        Ledger.open("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")


def test_upgrading_an_old_ledger_keeps_its_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(db.alembic_config(engine), "0001")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO partners (id, code, created_at) VALUES (1, 'acme', '2026-01-01')"))
        connection.execute(text(
            "INSERT INTO referrals (id, fingerprint, partner_id, submitted_at, status, status_changed_at, credited,"
            " review_required, attribution_model, policy_version, attribution_reason, revision, created_at,"
            " updated_at) VALUES ('01OLD', 'fp', 1, '2026-01-01', 'submitted', '2026-01-01', 1, 0, 'first_touch',"
            " 'v1', 'sole_referral', 1, '2026-01-01', '2026-01-01')"))
        connection.execute(text(
            "INSERT INTO crm_links (referral_id, crm, object, record_id, role, state, created_at, updated_at)"
            " VALUES ('01OLD', 'salesforce', 'Lead', '00Q1', 'lead', 'active', '2026-01-01', '2026-01-01')"))
    before, after = db.upgrade(engine)
    assert (before, after) == ("0001", db.head_revision(engine))
    ledger = Ledger(engine)
    [referral] = ledger.referrals()
    assert referral["id"] == "01OLD" and referral["links"][0]["record_id"] == "00Q1"
