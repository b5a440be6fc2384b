"""Set-based writes and id lists in the form each ledger database runs fastest.

A first cycle writes hundreds of thousands of rows in batches of a few hundred. Through
SQLAlchemy's ``executemany`` every row goes through its parameter machinery (a dict per row, a
processor call per value), and on PostgreSQL through psycopg's pipeline one statement at a time,
and an ``IN`` list of 500 ids is a new 500-parameter query for psycopg to parse each time (py-spy on
a 10,000-referral first cycle: psycopg 25% of refsync's CPU on PostgreSQL, SQLAlchemy's per-row
work a fifth of landing on SQLite). Here:

- PostgreSQL receives a batch as one statement with one parameter, the rows as a JSON array
  (``INSERT ... SELECT ... FROM json_array_elements(...)``, ``UPDATE ... FROM (SELECT ...)``),
  and an id list as one JSON parameter too (``= ANY(ARRAY(SELECT json_array_elements_text(...)))``):
  short queries psycopg parses once and caches.
- SQLite receives ``executemany`` of plain tuples; each value is converted by its column type's
  own bind processor, so what is stored is exactly what the ORM stores. Id lists are one JSON
  parameter read by ``json_each``.

The statements are built from the table's own metadata (names quoted by the dialect), never
from values: every value is a bound parameter.

Column defaults are the table's own: a column a row leaves out gets its default, once per batch.
Every value goes through its type's processor, ``None`` included (a JSON column stores ``null``
for it, as the ORM does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BindParameter,
    Column,
    ColumnElement,
    Dialect,
    String,
    Table,
    Text,
    any_,
    bindparam,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import QueryableAttribute, Session

Processor = Callable[[Any], Any] | None


def among(session: Session, column: ColumnElement[Any] | QueryableAttribute[Any],
          values: Iterable[Any]) -> ColumnElement[bool]:
    """``column IN values`` with the values as one parameter: a query of fixed text, parsed and
    planned once, instead of one placeholder per value."""
    return _in_json(session.get_bind().dialect.name, column, bindparam(None, _dumps(list(values)), type_=Text))


def among_bound(dialect: str, column: ColumnElement[Any] | QueryableAttribute[Any], name: str) -> ColumnElement[bool]:
    """:func:`among` for a statement built once and run many times (building a statement and
    keying it for the compiled cache cost ~0.5 ms, as much as running it on 500 ids): the values
    are bound at each run to parameter ``name``, as the text :func:`bound_list` writes."""
    return _in_json(dialect, column, bindparam(name, type_=Text))


def bound_list(values: Iterable[Any]) -> str:
    """The values of an :func:`among_bound` parameter."""
    return _dumps(list(values))


def _in_json(dialect: str, column: ColumnElement[Any] | QueryableAttribute[Any],
             param: BindParameter[Any]) -> ColumnElement[bool]:
    if dialect == "postgresql":
        # The values as one JSON parameter: psycopg escapes each element of an array parameter
        # with a regular expression. Text stays text (a VARCHAR(n) cast would cut a longer value
        # into matching another row); other types are cast to the column's.
        each: ColumnElement[Any] = func.json_array_elements_text(sql_cast(param, JSON))
        if not isinstance(column.type, String):
            each = sql_cast(each, column.type)
        # ``= ANY(ARRAY(SELECT ...))``: the list is built once (an init plan) and the column's
        # index searched for it; ``IN (SELECT ...)`` is planned as a hash join over the table.
        return column == any_(func.array(select(each).scalar_subquery()))
    # SQLite: the values as one JSON parameter too (``json_each``): a statement of fixed text,
    # compiled and prepared once, where an ``IN`` list is rendered anew for every call. SQLite
    # searches the column's index for each value, as it does for a list.
    # (``SELECT value FROM json_each(?)``: json_each's own column, named as text; building the
    # table-valued form per call cost half of what a claim's or a prefetch's statement cost to build)
    listed = func.json_each(param)
    return column.in_(select(_JSON_EACH_VALUE).select_from(listed).scalar_subquery())


_JSON_EACH_VALUE: ColumnElement[Any] = literal_column("value")


def core_columns(*attributes: QueryableAttribute[Any]) -> tuple[Column[Any], ...]:
    """The table columns behind mapped attributes: a select of them is plain Core (rows, no ORM
    compile or loading pass), for reads of many rows that build no ORM objects."""
    return tuple(attribute.property.columns[0] for attribute in attributes)  # type: ignore[attr-defined]


def insert_rows(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in one set-based write."""
    if not rows:
        return
    names = _same_keys(table, rows)
    defaults = _defaults(table, names)
    if defaults:
        rows = [{**defaults, **row} for row in rows]
        names += list(defaults)
    connection = session.connection()
    dialect = connection.dialect
    columns = [table.c[name] for name in names]
    quote = dialect.identifier_preparer
    listed = ", ".join(quote.format_column(column) for column in columns)
    if dialect.name == "postgresql":
        statement = f"INSERT INTO {quote.format_table(table)} ({listed}) SELECT {_picked(dialect, columns)} "
        session.execute(text(statement + _ELEMENTS), {"rows": _json_rows(dialect, columns, rows)})  # noqa: S608
        return
    marks = ", ".join("?" for _ in columns)
    connection.exec_driver_sql(f"INSERT INTO {quote.format_table(table)} ({listed}) VALUES ({marks})",  # noqa: S608
                               _tuples(dialect, columns, rows))


def update_rows(session: Session, table: Table, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Set each row's values on the row of ``table`` whose ``key`` column equals the row's ``key``
    (dicts with the same keys), in one set-based write. ``onupdate`` columns are the caller's to
    give: the write sets exactly what it is told."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    names = [name for name in _same_keys(table, rows) if name != key]
    quote = dialect.identifier_preparer
    target = quote.format_table(table)
    if dialect.name == "postgresql":
        columns = [table.c[key]] + [table.c[name] for name in names]
        values = [f"{_value(dialect, column, n)} AS c{n}" for n, column in enumerate(columns)]
        sets = ", ".join(f"{quote.format_column(column)} = v.c{n}" for n, column in enumerate(columns) if n)
        statement = (f"UPDATE {target} SET {sets} FROM (SELECT {', '.join(values)} {_ELEMENTS}) AS v "  # noqa: S608
                     f"WHERE {target}.{quote.format_column(columns[0])} = v.c0")
        session.execute(text(statement), {"rows": _json_rows(dialect, columns, rows)})
        return
    columns = [table.c[name] for name in names] + [table.c[key]]
    sets = ", ".join(f"{quote.format_column(column)} = ?" for column in columns[:-1])
    connection.exec_driver_sql(f"UPDATE {target} SET {sets} WHERE {quote.format_column(columns[-1])} = ?",  # noqa: S608
                               _tuples(dialect, columns, rows))


def _same_keys(table: Table, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows' one set of keys (a key only some rows have would be dropped or fail half-way)."""
    keys = rows[0].keys()
    if any(row.keys() != keys for row in rows):
        raise ValueError(f"{table.name}: bulk rows must all give the same columns")
    return list(keys)


def _defaults(table: Table, given: Sequence[str]) -> dict[str, Any]:
    """The Python-side defaults of the columns ``given`` leaves out (server defaults and
    autoincrement keys are the database's)."""
    found: dict[str, Any] = {}
    for column in table.columns:
        default = column.default
        if column.key in given or default is None:
            continue
        if default.is_scalar:
            found[column.key] = default.arg  # type: ignore[attr-defined]
        elif default.is_callable:
            found[column.key] = default.arg(None)  # type: ignore[attr-defined]  # wrapped: takes a context
        else:
            raise ValueError(f"{table.name}.{column.key}: a default bulk writes cannot compute; give the value")
    return found


def _is_json(column: Column[Any]) -> bool:
    return isinstance(column.type, JSON)


def _processors(dialect: Dialect, columns: Sequence[Column[Any]]) -> list[Processor]:
    """Each column type's bind processor for ``dialect`` (validation, UTC, storage form). JSON goes
    to PostgreSQL as it is, inside the batch's one JSON parameter."""
    as_is = dialect.name == "postgresql"
    return [None if as_is and _is_json(column) else column.type.dialect_impl(dialect).bind_processor(dialect)
            for column in columns]


def _tuples(dialect: Dialect, columns: Sequence[Column[Any]],
            rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows as tuples in ``columns`` order, converted column by column (``map`` and ``zip``
    work in C; a generator per row was most of what converting cost)."""
    return list(zip(*_columns(dialect, columns, rows).values(), strict=True))


def _json_rows(dialect: Dialect, columns: Sequence[Column[Any]], rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as one JSON array of arrays, in ``columns`` order (times as ISO 8601 with their
    offset, decimals as text: each is cast back to its column's type by the statement)."""
    return _dumps(_tuples(dialect, columns, rows))


def _dumps(values: Any) -> str:
    """Rows or ids as one JSON text, by orjson (the standard library took a twentieth of a cycle's
    landing). orjson writes datetimes and dates itself, exactly as ``isoformat()`` does (checked on
    200,000 random values, offsets and years before 1000 included): calling back into Python for
    each one cost a twentieth of a PostgreSQL cycle. Decimals as :func:`_json_value` writes them;
    a subclass of str or int (an enum) through the standard library's rules."""
    try:
        return orjson.dumps(values, default=_json_value, option=_STRICT).decode()
    except TypeError:
        return json.dumps(values, default=_json_value)


_STRICT = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be written in bulk")


def _columns(dialect: Dialect, columns: Sequence[Column[Any]],
             rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for column, process in zip(columns, _processors(dialect, columns), strict=True):
        values = list(map(itemgetter(column.key), rows))
        found[column.key] = values if process is None else list(map(process, values))
    return found


# PostgreSQL reads a batch from one JSON parameter, one element per row: one short statement,
# where arrays per column cost psycopg a regular-expression escape of every value (py-spy: a
# fifth of a first cycle's CPU) and a row per statement costs it a pipeline round each.
_ELEMENTS = "FROM json_array_elements(CAST(:rows AS JSON)) AS r"


def _value(dialect: Dialect, column: Column[Any], n: int) -> str:
    """Element ``n`` of a row ``r`` as ``column``'s type. Text is cast to TEXT, never to the
    column's VARCHAR(n): an explicit cast would cut a long value where the write must refuse it."""
    if _is_json(column):
        return f"r->{n}"
    if isinstance(column.type, String):
        return f"r->>{n}"
    return f"CAST(r->>{n} AS {column.type.compile(dialect)})"


def _picked(dialect: Dialect, columns: Sequence[Column[Any]]) -> str:
    return ", ".join(_value(dialect, column, n) for n, column in enumerate(columns))
