"""The root of refsync's exceptions, grouped by how the caller must react.

- ``ConfigError``: fix the file (config, mapping); the message names the place and the fix.
- ``InputError``: the invocation or an input file is unusable as a whole.
- ``LedgerError``: the ledger cannot be reached or is not migrated.
CRM errors live in :mod:`adapters.errors` and derive from :class:`RefsyncError` too.
"""

from __future__ import annotations

from collections.abc import Iterable


class RefsyncError(Exception):
    """Base of every error refsync raises on purpose."""


class ConfigError(RefsyncError):
    """A configuration or mapping file is wrong; ``problems`` lists every problem found."""

    def __init__(self, problems: Iterable[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class InputError(RefsyncError):
    """An input (file, argument) cannot be used at all."""


class LedgerError(RefsyncError):
    """The ledger database is unreachable, unmigrated or refused an operation."""
