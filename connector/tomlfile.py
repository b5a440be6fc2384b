"""Finding where a key path sits in a TOML text, so errors can name the line."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any, get_args, get_origin

from pydantic import BaseModel


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a key path in a TOML text (tables and dotted keys)."""
    keys = [str(part) for part in loc if not isinstance(part, int)]
    if not keys:
        return None
    lines = text.splitlines()
    for depth in range(len(keys), 0, -1):
        # table names may be quoted: [stages."Sales Pipeline"]
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(f'"?{re.escape(k)}"?' for k in keys[:depth])
                            + r"\s*\]")
        for number, line in enumerate(lines):
            if not header.match(line):
                continue
            if depth == len(keys):
                return number + 1
            key = re.compile(r"^\s*\"?" + re.escape(keys[depth]) + r"\"?\s*[=.]")
            for offset in range(number + 1, len(lines)):
                if lines[offset].lstrip().startswith("["):
                    break
                if key.match(lines[offset]):
                    return offset + 1
            return number + 1
    top = re.compile(r"^\s*\"?" + re.escape(keys[0]) + r"\"?\s*[=.]")
    for number, line in enumerate(lines):
        if top.match(line):
            return number + 1
    return None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` naming the known names closest to a misspelt one, or ``""``."""
    names = list(dict.fromkeys(known))
    close = difflib.get_close_matches(word, names, n=3, cutoff=0.6)
    if not close:
        folded = {name.lower(): name for name in names}
        close = [folded[m] for m in difflib.get_close_matches(word.lower(), list(folded), n=3, cutoff=0.6)]
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"


def keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a pydantic model accepts at the table ``loc`` (its aliases where it has them), for
    suggesting a close one to a misspelt key; ``[]`` when ``loc`` leads nowhere known."""
    current: Any = model
    parts = [p for p in loc if not isinstance(p, int)]
    index = 0
    while index < len(parts):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(parts[index]))
        if field is None:
            field = next((f for f in current.model_fields.values() if f.alias == parts[index]), None)
        if field is None:
            return []
        current = _table_type(field.annotation)
        index += 1
        if get_origin(current) is dict:  # a table of named entries: skip the entry's own name
            current = _table_type(get_args(current)[1])
            index += 1
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items() if not f.exclude]
    return []


def _table_type(annotation: Any) -> Any:
    """The model (or dict) inside ``X | None`` and ``Annotated[X, ...]``."""
    if get_origin(annotation) is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return annotation
    for arg in get_args(annotation) or ():
        if (isinstance(arg, type) and issubclass(arg, BaseModel)) or get_origin(arg) is dict:
            return arg
    return annotation


def _header_keys(line: str) -> tuple[list[str], bool] | None:
    """The dotted keys of a ``[table]`` or ``[[array.of.tables]]`` header line, and whether it is an array."""
    match = re.match(r"^\s*(\[\[?)\s*(.*?)\s*(\]\]?)\s*(#.*)?$", line)
    if match is None:
        return None
    keys = [part.strip().strip("\"'") for part in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", match.group(2))]
    return keys, match.group(1) == "[["


def line_in_table(text: str, table: tuple[str, ...], occurrence: int = 0, key: str | None = None) -> int | None:
    """Line of ``key`` inside the ``occurrence``-th ``[table]`` / ``[[table]]`` (quoted names too), or of
    the header itself; falls back to the first header of ``table``, then to :func:`line_of`."""
    lines = text.splitlines()
    seen = -1
    for number, line in enumerate(lines):
        found = _header_keys(line)
        if found is None or found[0] != list(table):
            continue
        seen += 1
        if seen != occurrence:
            continue
        if key is not None:
            pattern = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*[=.]")
            for offset in range(number + 1, len(lines)):
                if _header_keys(lines[offset]) is not None and lines[offset].lstrip().startswith("["):
                    break
                if pattern.match(lines[offset]):
                    return offset + 1
        return number + 1
    if occurrence:
        return line_in_table(text, table, 0, key)
    return line_of(text, (*table, key) if key else table)
