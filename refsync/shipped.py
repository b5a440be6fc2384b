"""Files shipped inside the package (default mappings, sample referrals, the example config), found
with :mod:`importlib.resources` wherever refsync is installed (a venv, ``--user``, a container)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_path(*parts: str) -> Path:
    """The filesystem path of a shipped file, e.g. ``shipped_path("mappings", "salesforce.toml")``.

    refsync is installed as plain files (never zipped), so the resource is a real path."""
    return Path(str(files("refsync").joinpath(*parts)))
