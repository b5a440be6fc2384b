"""The SOQL subset the Salesforce emulator understands, and its evaluation over stored records.

Supported: ``SELECT f, ... FROM Obj [WHERE ...] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n]`` where conditions use ``= != <> < > <= >=``, ``[NOT] IN (...)``, ``LIKE``, ``AND``/``OR``/
``NOT`` and parentheses over string (with the backslash escapes ``simple_salesforce.format_soql``
produces), number, ``true``/``false``/``null``, date and datetime literals. String comparisons are
case-insensitive, as in Salesforce. Anything else is a ``MALFORMED_QUERY``, so an adapter relying on
more than this fails loudly in tests instead of silently matching nothing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "ASC", "DESC",
            "LIMIT", "NULLS", "FIRST", "LAST", "TRUE", "FALSE", "NULL"}


class SoqlError(Exception):
    """A query Salesforce would refuse: ``code`` is MALFORMED_QUERY, INVALID_FIELD or INVALID_TYPE."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Literal:
    value: Any
    kind: str  # string, number, bool, null, date, datetime
    like_escaped: frozenset[int] = frozenset()  # positions of \% and \_ in a LIKE pattern


@dataclass
class Compare:
    field: str
    op: str  # = != < > <= >= in notin like
    values: list[Literal]
    # The literals coerced to the field's type, per type: computed once per query, not per record.
    coerced: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def wanted(self, kind: str) -> list[Any]:
        if kind not in self.coerced:
            self.coerced[kind] = [_literal(lit, kind) for lit in self.values]
        return self.coerced[kind]

    def wanted_set(self, kind: str) -> frozenset[Any] | list[Any]:
        key = f"set:{kind}"
        if key not in self.coerced:
            values = self.wanted(kind)
            try:
                self.coerced[key] = frozenset(values)
            except TypeError:
                self.coerced[key] = values
        return self.coerced[key]


@dataclass
class BoolOp:
    op: str  # and, or, not
    items: list[Any]


@dataclass
class Query:
    fields: list[str]
    object: str
    where: Any = None
    order: list[tuple[str, bool, bool | None]] = field(default_factory=list)  # field, desc, nulls_first
    limit: int | None = None


def _unescape(body: str) -> tuple[str, frozenset[int]]:
    out: list[str] = []
    like: set[int] = set()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "%_":
                like.add(len(out))
                out.append(nxt)
            elif nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
            else:
                raise SoqlError("MALFORMED_QUERY", f"Invalid string literal escape sequence: \\{nxt}")
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out), frozenset(like)


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token at position {pos}: {text[pos:pos + 20]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else ("eof", "")

    def keyword(self, *words: str) -> bool:
        kind, value = self.peek()
        if kind == "word" and value.upper() in words:
            self.pos += 1
            return True
        return False

    def expect_keyword(self, word: str) -> None:
        if not self.keyword(word):
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{self.peek()[1]}', expected {word}")

    def expect(self, kind: str, value: str | None = None) -> str:
        got_kind, got = self.peek()
        if got_kind != kind or (value is not None and got != value):
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{got}'")
        self.pos += 1
        return got

    def name(self) -> str:
        kind, value = self.peek()
        if kind != "word" or value.upper() in KEYWORDS:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{value}'")
        self.pos += 1
        return value

    def parse(self) -> Query:
        self.expect_keyword("SELECT")
        fields = [self.name()]
        while self.peek() == ("punct", ","):
            self.pos += 1
            fields.append(self.name())
        self.expect_keyword("FROM")
        query = Query(fields, self.name())
        if self.keyword("WHERE"):
            query.where = self.or_expr()
        if self.keyword("ORDER"):
            self.expect_keyword("BY")
            while True:
                name = self.name()
                desc = self.keyword("DESC")
                if not desc:
                    self.keyword("ASC")
                nulls: bool | None = None
                if self.keyword("NULLS"):
                    nulls = self.keyword("FIRST")
                    if not nulls:
                        self.expect_keyword("LAST")
                query.order.append((name, desc, nulls))
                if self.peek() != ("punct", ","):
                    break
                self.pos += 1
        if self.keyword("LIMIT"):
            query.limit = int(self.expect("number"))
        if self.peek()[0] != "eof":
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{self.peek()[1]}'")
        return query

    def or_expr(self) -> Any:
        items = [self.and_expr()]
        while self.keyword("OR"):
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else BoolOp("or", items)

    def and_expr(self) -> Any:
        items = [self.unary()]
        while self.keyword("AND"):
            items.append(self.unary())
        return items[0] if len(items) == 1 else BoolOp("and", items)

    def unary(self) -> Any:
        if self.keyword("NOT"):
            return BoolOp("not", [self.unary()])
        if self.peek() == ("punct", "("):
            self.pos += 1
            inner = self.or_expr()
            self.expect("punct", ")")
            return inner
        return self.comparison()

    def comparison(self) -> Compare:
        name = self.name()
        if self.keyword("NOT"):
            self.expect_keyword("IN")
            return Compare(name, "notin", self.value_list())
        if self.keyword("IN"):
            return Compare(name, "in", self.value_list())
        if self.keyword("LIKE"):
            value = self.literal()
            if value.kind != "string":
                raise SoqlError("MALFORMED_QUERY", "LIKE needs a string")
            return Compare(name, "like", [value])
        op = self.expect("op")
        return Compare(name, "!=" if op == "<>" else op, [self.literal()])

    def value_list(self) -> list[Literal]:
        self.expect("punct", "(")
        values = [self.literal()]
        while self.peek() == ("punct", ","):
            self.pos += 1
            values.append(self.literal())
        self.expect("punct", ")")
        return values

    def literal(self) -> Literal:
        kind, value = self.peek()
        self.pos += 1
        if kind == "string":
            text, like = _unescape(value[1:-1])
            return Literal(text, "string", like)
        if kind == "number":
            return Literal(float(value), "number")
        if kind == "datetime":
            return Literal(parse_datetime(value), "datetime")
        if kind == "date":
            return Literal(date.fromisoformat(value), "date")
        if kind == "word" and value.upper() in ("TRUE", "FALSE"):
            return Literal(value.upper() == "TRUE", "bool")
        if kind == "word" and value.upper() == "NULL":
            return Literal(None, "null")
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{value}'")


def parse(text: str) -> Query:
    """Parse one SOQL statement of the supported subset (field names are checked by the caller)."""
    return _Parser(text).parse()


def parse_datetime(text: str) -> datetime:
    """A Salesforce datetime (``...000+0000``) or SOQL literal (``Z``/``+00:00``) as aware UTC."""
    text = text.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    return datetime.fromisoformat(text).astimezone(UTC)


def condition_fields(node: Any) -> list[str]:
    """Every field a WHERE tree names, for INVALID_FIELD checks."""
    if node is None:
        return []
    if isinstance(node, Compare):
        return [node.field]
    return [name for item in node.items for name in condition_fields(item)]


def _coerce(value: Any, kind: str) -> Any:
    """A stored value as a comparable Python value for a field of type ``kind``."""
    if value is None or value == "":
        return None
    if kind == "datetime":
        return value if isinstance(value, datetime) else parse_datetime(str(value))
    if kind == "date":
        return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
    if kind in ("double", "currency", "percent", "int"):
        return float(value)
    if kind == "boolean":
        return bool(value)
    return str(value).casefold()


def _literal(lit: Literal, kind: str) -> Any:
    if lit.kind == "null":
        return None
    if kind == "datetime" and lit.kind == "date":
        return datetime(lit.value.year, lit.value.month, lit.value.day, tzinfo=UTC)
    if kind == "date" and lit.kind == "datetime":
        return lit.value.date()
    return _coerce(lit.value, kind)


def _like(pattern: Literal, value: Any) -> bool:
    if value is None:
        return False
    parts = []
    for i, ch in enumerate(str(pattern.value)):
        if ch == "%" and i not in pattern.like_escaped:
            parts.append(".*")
        elif ch == "_" and i not in pattern.like_escaped:
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.fullmatch("".join(parts), str(value), re.IGNORECASE | re.DOTALL) is not None


def matches(node: Any, record: dict[str, Any], type_of: Callable[[str], str]) -> bool:
    """Whether ``record`` satisfies the WHERE tree; ``type_of`` gives a field's describe type."""
    if node is None:
        return True
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(matches(item, record, type_of) for item in node.items)
        if node.op == "or":
            return any(matches(item, record, type_of) for item in node.items)
        return not matches(node.items[0], record, type_of)
    kind = type_of(node.field)
    raw = record.get(node.field)
    if node.op == "like":
        return _like(node.values[0], raw)
    value = _coerce(raw, kind)
    if node.op == "in":
        return value in node.wanted_set(kind)
    if node.op == "notin":
        return value not in node.wanted_set(kind)
    wanted = node.wanted(kind)
    other = wanted[0]
    if node.op == "=":
        return value == other
    if node.op == "!=":
        return value != other
    if value is None or other is None:
        return False
    try:
        return bool({"<": value < other, ">": value > other, "<=": value <= other, ">=": value >= other}[node.op])
    except TypeError as exc:
        raise SoqlError("INVALID_FIELD", f"value of incorrect type for field {node.field}") from exc


def sort_key(value: Any, kind: str) -> tuple[int, Any]:
    coerced = _coerce(value, kind)
    return (0, 0) if coerced is None else (1, coerced)
