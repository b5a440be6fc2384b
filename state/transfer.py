"""Moving a whole ledger: a copy into another database (SQLite to PostgreSQL when a second replica
is needed), and an online backup of a SQLite ledger.

The copy reads the source in one read transaction (one consistent snapshot) and writes the target
in one transaction: the target ends up with every row, ids kept, or with none. Rows go table by
table in foreign-key order (the models' ``sorted_tables``); a column that points into its own table
(``referrals.duplicate_of``, ``crm_links.superseded_by``) is written in a second pass, so the row
order inside a table never matters. PostgreSQL sequences are moved past the copied ids, so the next
insert does not collide with a copied row.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from refsync.errors import InputError, LedgerError
from refsync.state import db
from refsync.state.models import Base

BATCH = 1000  # rows read and inserted at a time


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    schema: str | None
    tables: dict[str, int]  # rows copied, per table, in the order copied

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "schema": self.schema, "tables": self.tables,
                "rows": sum(self.tables.values())}


def shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def copy_order() -> list[Table]:
    """Every ledger table, each after the tables it references."""
    return list(Base.metadata.sorted_tables)


def self_references(table: Table) -> list[str]:
    """The columns of ``table`` that reference ``table`` itself (written in a second pass)."""
    return [fk.parent.name for fk in table.foreign_keys if fk.column.table is table]


def rows_in_target(engine: Engine) -> dict[str, int]:
    """Rows in each ledger table that exists in ``engine``'s database (a target must have none)."""
    present = set(inspect(engine).get_table_names())
    with db.for_reading(engine).connect() as connection:
        return {t.name: int(connection.scalar(select(func.count()).select_from(t)) or 0)
                for t in copy_order() if t.name in present}


def prepare_target(target: Engine) -> None:
    """Create or migrate an empty target to the newest schema; refuse one that holds any row."""
    held = {name: n for name, n in rows_in_target(target).items() if n}
    if held:
        listed = ", ".join(f"{name} ({n})" for name, n in held.items())
        raise InputError(f"the target ledger {shown(target)} is not empty: {listed}; copy needs an empty database "
                         "(create a new one, or drop this one's tables)")
    db.upgrade(target)


def _batches(connection: Connection, table: Table) -> Iterator[list[dict[str, Any]]]:
    query = select(table).order_by(*table.primary_key.columns)
    result = connection.execution_options(stream_results=True, yield_per=BATCH).execute(query)
    for partition in result.mappings().partitions(BATCH):
        yield [dict(row) for row in partition]


def _copy_table(source: Connection, target: Connection, table: Table) -> int:
    later = self_references(table)
    # The second pass must not stamp an onupdate column (updated_at) with the time of the copy.
    kept = later + [c.name for c in table.columns if c.onupdate is not None and c.name not in later]
    key = [c.name for c in table.primary_key.columns]
    pending: list[dict[str, Any]] = []
    copied = 0
    for rows in _batches(source, table):
        for row in rows:
            if any(row[name] is not None for name in later):
                pending.append({**{f"k_{k}": row[k] for k in key}, **{f"v_{c}": row[c] for c in kept}})
        target.execute(table.insert(), [{**row, **dict.fromkeys(later)} for row in rows])
        copied += len(rows)
    if pending:
        where = [table.c[k] == bindparam(f"k_{k}") for k in key]
        target.execute(table.update().where(*where).values({c: bindparam(f"v_{c}") for c in kept}), pending)
    return copied


def _reset_sequences(target: Connection) -> None:
    """PostgreSQL: each serial/identity id's sequence goes past the largest copied id (explicit ids
    do not advance a sequence). SQLite needs nothing: it takes max(rowid) + 1."""
    if target.dialect.name != "postgresql":
        return
    for table in copy_order():
        if len(table.primary_key.columns) != 1:
            continue
        column = next(iter(table.primary_key.columns)).name
        sequence = target.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column})
        if sequence is None:  # a text key (ULID, name): no sequence
            continue
        # Names come from the models, never from input.
        largest = target.scalar(text(f'SELECT MAX("{column}") FROM "{table.name}"'))  # noqa: S608
        target.execute(text("SELECT setval(:s, :v, :called)"),
                       {"s": sequence, "v": largest or 1, "called": largest is not None})


def _counts(connection: Connection) -> dict[str, int]:
    return {t.name: int(connection.scalar(select(func.count()).select_from(t)) or 0) for t in copy_order()}


def copy_ledger(source: Engine, target: Engine) -> CopyReport:
    """Copy every table of ``source`` (a current ledger) into ``target`` (empty, migrated here), ids
    kept; the row counts of every table are compared before the target commits."""
    if shown(source) == shown(target):
        raise InputError(f"the target is the configured ledger itself ({shown(source)}); give another database")
    db.ensure_current(source)
    try:
        prepare_target(target)
    except OperationalError as exc:
        reason = (str(exc.orig).splitlines() or ["no answer"])[0]
        raise LedgerError(f"cannot reach the target ledger {shown(target)}: {reason}") from exc
    schema = db.current_revision(target)
    copied: dict[str, int] = {}
    reader = db.for_reading(source)
    if source.dialect.name == "postgresql":  # one snapshot for every table (SQLite: the read transaction)
        reader = reader.execution_options(isolation_level="REPEATABLE READ")
    with reader.connect() as src, src.begin(), target.begin() as dst:
        for table in copy_order():
            copied[table.name] = _copy_table(src, dst, table)
        _reset_sequences(dst)
        expected, found = _counts(src), _counts(dst)
        if expected != found:  # raising here rolls the target back: nothing half-copied stays
            wrong = ", ".join(f"{t}: {expected[t]} in the source, {found.get(t)} in the target"
                              for t in expected if expected[t] != found.get(t))
            raise LedgerError(f"the copy did not verify ({wrong}); the target was left empty")
    return CopyReport(shown(source), shown(target), schema, copied)


@dataclass(frozen=True)
class BackupReport:
    source: str
    backup: str
    bytes: int
    schema: str | None

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "backup": self.backup, "bytes": self.bytes, "schema": self.schema}


def backup_sqlite(engine: Engine, destination: Path) -> BackupReport:
    """A consistent copy of a SQLite ledger while it is in use, with SQLite's online backup API
    (https://www.sqlite.org/backup.html, Python's ``sqlite3.Connection.backup``): written to a
    temporary file beside ``destination``, checked, then renamed, so a failed backup leaves no
    partial file; created 0600 like the ledger. An existing ``destination`` is refused."""
    files = db.sqlite_files(engine.url)
    if engine.dialect.name != "sqlite":
        raise InputError(f"ledger backup copies a SQLite ledger; the configured ledger is {shown(engine)}: "
                         "back up PostgreSQL with pg_dump (see \"Running as a service\" in the README)")
    if not files or not files[0].is_file():
        raise InputError(f"the configured ledger {shown(engine)} is not a SQLite file that exists; "
                         "run `refsync init` first, or check [ledger] url")
    db.ensure_current(engine)
    if destination.exists():
        raise InputError(f"{destination} already exists; a backup never overwrites a file: give a new name")
    if not destination.parent.is_dir():
        raise InputError(f"{destination.parent} is not a folder; create it first")
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    try:
        os.close(os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, db.PRIVATE))
        source = sqlite3.connect(files[0], timeout=30)
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)
                verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    raise LedgerError(f"the backup of {files[0]} did not pass SQLite's quick_check: {verdict}")
            finally:
                copy.close()
        finally:
            source.close()
        os.replace(partial, destination)
    except sqlite3.Error as exc:
        raise LedgerError(f"backup of {files[0]} failed: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    copy = sqlite3.connect(destination)
    try:
        schema = copy.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        copy.close()
    return BackupReport(str(files[0]), str(destination), destination.stat().st_size, schema)


def target_engine(url: str) -> Engine:
    """An engine for a copy's target URL; a URL SQLAlchemy cannot read is a usage error."""
    try:
        make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError and ValueError alike
        raise InputError(f"--to {url!r} is not a database URL ({exc}); e.g. "
                         "postgresql+psycopg://refsync@db.internal/refsync") from None
    return db.make_engine(url)
