"""Finding where a key path sits in a TOML text, so errors can name the line."""

from __future__ import annotations

import re
from typing import Any


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a key path in a TOML text (tables and dotted keys)."""
    keys = [str(part) for part in loc if not isinstance(part, int)]
    if not keys:
        return None
    lines = text.splitlines()
    for depth in range(len(keys), 0, -1):
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, keys[:depth])) + r"\s*\]")
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
