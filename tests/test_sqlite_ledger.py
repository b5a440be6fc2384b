"""The SQLite ledger under concurrent writers and as a file of personal data: writers queue instead
of failing with "database is locked", readers never wait for them, and the database, -wal and
-shm files are readable by their owner only."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from refsync.connector.attribution import Policy
from refsync.connector.cli import cli
from refsync.connector.imports import import_rows
from refsync.connector.intake import NewReferral, validate_row
from refsync.state.ledger import Ledger
from refsync.state.models import Partner

HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"
POLICY = Policy("first_touch", "flag", 365, "t")
NOW = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which SQLite creates a new database 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_two_transactions_that_read_then_write_both_commit(sqlite_url: str) -> None:
    """Both transactions read first (inside a savepoint, which pysqlite left to SQLite to begin
    deferred), then write. B reads while A's transaction is open, A writes and commits, then B writes. With a
    transaction that starts as a reader, B's stale snapshot cannot become a writer: "database is
    locked" at once. With BEGIN IMMEDIATE, B waits for A at BEGIN and then succeeds."""
    ledger = Ledger.open(sqlite_url)
    a_read, b_read, a_done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer(code: str, first: bool) -> None:
        try:
            if not first:
                assert a_read.wait(5)
            with ledger.transaction() as txn, txn.savepoint():  # as the import's row-by-row path
                txn.session.scalar(select(func.count(Partner.id)))
                (a_read if first else b_read).set()
                if first:
                    b_read.wait(0.3)  # B is inside its transaction by now, unless BEGIN made it wait
                else:
                    a_done.wait(5)
                txn.session.add(Partner(code=code))
                txn.session.flush()
            if first:
                a_done.set()
        except BaseException as exc:  # noqa: BLE001 - the test reports it below
            errors.append(exc)
            a_done.set()

    threads = [threading.Thread(target=writer, args=("a", True)), threading.Thread(target=writer, args=("b", False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert sorted(p["code"] for p in ledger.partners()) == ["a", "b"]
    ledger.close()


def test_concurrent_intake_writes_of_overlapping_rows_all_land(sqlite_url: str) -> None:
    """Four intake requests at once, again and again, whose rows overlap (a partner retrying):
    through the intake's write path every row lands once or is unchanged, none fails. Before,
    the batch redone row by row read inside a savepoint and then wrote, and failed with
    "database is locked" whenever another request committed in between."""
    ledger = Ledger.open(sqlite_url, clock=lambda: NOW)
    errors: list[BaseException] = []

    def rows(first: int) -> list[NewReferral]:
        made = [validate_row(i, {"partner": "acme", "prospect_email": f"p{i}@x.example", "source": "s",
                                 "submitted_at": "2026-09-01T00:00:00Z", "external_id": f"e{i}"}, NOW)
                for i in range(first, first + 20)]
        return [row for row in made if isinstance(row, NewReferral)]

    def intake(thread: int) -> None:
        for round_ in range(25):
            try:
                import_rows(ledger, rows(round_ * 20 + thread * 3), POLICY, "intake")
            except BaseException as exc:  # noqa: BLE001 - the test reports it below
                errors.append(exc)

    threads = [threading.Thread(target=intake, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [str(e) for e in errors] == []
    assert sorted(r["external_id"] for r in ledger.referrals()) == sorted(f"e{i}" for i in range(24 * 20 + 9 + 20))
    ledger.close()


def test_a_reader_does_not_wait_for_an_open_write_transaction(sqlite_url: str) -> None:
    """Reads start deferred: `refsync referrals list` answers while the daemon holds the write lock."""
    ledger = Ledger.open(sqlite_url)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ledger.transaction() as txn:
            txn.session.add(Partner(code="held"))
            txn.session.flush()
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        assert ledger.partners() == [] and ledger.referrals() == []
        assert time.monotonic() - started < 2  # not the 30 s busy timeout
    finally:
        release.set()
        thread.join(10)
    assert [p["code"] for p in ledger.partners()] == ["held"]
    ledger.close()


def _files(database: Path) -> list[Path]:
    return [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{url}"\n')
    return config


def test_ledger_wal_and_shm_are_private_after_init_and_a_run(tmp_path: Path, umask_022: None) -> None:
    database = tmp_path / "data" / "ledger.db"
    url = f"sqlite:///{database}"
    config = _config(tmp_path, url)
    result = CliRunner().invoke(cli, ["--config", str(config), "init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _mode(database) == 0o600

    referrals = tmp_path / "r.csv"
    referrals.write_text(HEADER + "\nacme,a@a.example,,,s,m,c,2026-09-01T00:00:00Z,,1\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "import", str(referrals)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ledger = Ledger.open(url)  # while a process has it open, the -wal and -shm files exist
    try:
        assert len(ledger.referrals()) == 1
        with ledger.transaction() as txn:
            txn.session.add(Partner(code="later"))
        for path in _files(database):
            assert path.exists() and _mode(path) == 0o600, path
    finally:
        ledger.close()
    for path in _files(database):
        assert not path.exists() or _mode(path) == 0o600, path


def test_init_narrows_a_ledger_an_older_refsync_created_world_readable(tmp_path: Path, umask_022: None) -> None:
    database = tmp_path / "ledger.db"
    url = f"sqlite:///{database}"
    database.touch(mode=0o644)
    assert _mode(database) == 0o644
    result = CliRunner().invoke(cli, ["--config", str(_config(tmp_path, url)), "init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _mode(database) == 0o600
