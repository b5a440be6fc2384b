"""Engines, SQLite pragmas and Alembic migrations: how the ledger database is reached and shaped."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError

from refsync.errors import LedgerError

MIGRATIONS = Path(__file__).parent / "migrations"


# How a SQLite transaction starts, per connection: an execution option, IMMEDIATE unless a reader
# says DEFERRED (see make_engine and :func:`for_reading`).
SQLITE_BEGIN = "refsync_sqlite_begin"
PRIVATE = 0o600  # the ledger holds prospects' names and emails


# What orjson would write differently from the standard library goes to the standard library:
# datetimes, dataclasses and subclasses of str and int (enums) are refused by orjson with these.
_ORJSON_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def json_text(value: Any) -> str:
    """The text a JSON column stores (the engine's ``json_serializer``): orjson, compact. Each of
    a first cycle's ops, events and audit rows carries JSON, and the standard library took a
    twentieth of landing them (py-spy). What orjson refuses with the options above (a datetime, a
    non-text key) goes to the standard library, which writes it or refuses it as before."""
    try:
        return orjson.dumps(value, option=_ORJSON_STRICT).decode()
    except TypeError:
        return json.dumps(value)


def json_value(text: str | bytes) -> Any:
    """A stored JSON value (the engine's ``json_deserializer``); what orjson refuses and the
    standard library reads (``NaN``, a lone surrogate escape) is read by the standard library."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE``.

    pysqlite starts a transaction only at the first write, so a transaction that read first is a
    reader that must upgrade to a writer; when another connection wrote meanwhile, SQLite cannot
    let it and answers "database is locked" at once, without waiting out the busy timeout. Taking
    the write lock at BEGIN makes concurrent writers queue on the busy timeout instead. This is
    SQLAlchemy's recipe for pysqlite ("Serializable isolation / Savepoints / Transactional DDL",
    https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl):
    switch off the driver's own BEGIN on connect and emit ours on the engine's ``begin`` event;
    it also makes SAVEPOINT (``LedgerTxn.savepoint``) work as documented. Readers ask for a
    deferred BEGIN through :func:`for_reading` so they neither wait for nor block writers (WAL).
    """
    kwargs.setdefault("json_serializer", json_text)
    kwargs.setdefault("json_deserializer", json_value)
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30})
        _create_private(url)
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # the recipe: pysqlite emits no BEGIN of its own
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            if ":memory:" not in url:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Connection) -> None:
            mode = connection.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
            connection.exec_driver_sql(f"BEGIN {mode}")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def for_reading(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions start deferred on SQLite: for paths that only
    read, which then run beside a writer and on a ledger file they may not write."""
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"})


def sqlite_files(url: str | URL) -> list[Path]:
    """The files of a file-based SQLite ledger (database, -wal, -shm); none for memory or URIs."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return []
    main = Path(database)
    return [main, main.with_name(main.name + "-wal"), main.with_name(main.name + "-shm")]


def _create_private(url: str) -> None:
    """Create a missing SQLite ledger file 0600 before SQLite opens it: SQLite creates a new
    database 0644, and it gives the -wal and -shm files the permissions of the database file, so
    all three are private from the start."""
    files = sqlite_files(url)
    if not files or files[0].exists():
        return
    files[0].parent.mkdir(parents=True, exist_ok=True)
    # Without O_EXCL: when another process created it a moment ago, this opens it unchanged.
    os.close(os.open(files[0], os.O_RDWR | os.O_CREAT, PRIVATE))


def make_private(url: str | URL) -> None:
    """Narrow an existing SQLite ledger's files to 0600 (`refsync init` on a ledger an older
    refsync created 0644)."""
    for path in sqlite_files(url):
        if path.exists() and path.stat().st_mode & 0o777 != PRIVATE:
            path.chmod(PRIVATE)


def alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database); LedgerError if unreachable."""
    try:
        with for_reading(engine).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        raise LedgerError(f"cannot reach the ledger at {engine.url!r}: {exc.orig}") from exc


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Create or migrate the ledger to the newest schema; returns (before, after) revisions."""
    before = current_revision(engine)
    make_private(engine.url)
    command.upgrade(alembic_config(engine), "head")
    return before, current_revision(engine)


def ensure_current(engine: Engine) -> None:
    """Refuse to work on a ledger that is missing or behind: the fix is `refsync init`."""
    current, head = current_revision(engine), head_revision(engine)
    if current is None:
        raise LedgerError(f"the ledger at {engine.url!r} is not initialised; run `refsync init` first")
    if current != head:
        raise LedgerError(
            f"the ledger at {engine.url!r} is at schema {current}, this refsync needs {head}; "
            "run `refsync init` to migrate it"
        )
