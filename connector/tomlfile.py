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
