"""The sandbox's TLS files: the server key is private from the moment it exists."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from refsync.adapters.sandbox.tls import make_tls


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_key_file_is_created_owner_only_not_narrowed_afterwards(
        tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every chmod made a no-op, the key can only be 0600 if it was created so: a key
    written 0644 and narrowed later was readable by others in between."""
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)
    monkeypatch.setattr(Path, "chmod", lambda *args, **kwargs: None)
    ca, cert, key = make_tls(tmp_path / "tls")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN") and b"PRIVATE KEY" in key.read_bytes()
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == sorted([ca.name, cert.name, key.name])


def test_certificates_stay_readable_and_an_existing_set_is_reused(tmp_path: Path, umask_022: None) -> None:
    ca, cert, key = make_tls(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.stat().st_mode) == 0o644 and stat.S_IMODE(cert.stat().st_mode) == 0o644
    before = key.read_bytes()
    assert make_tls(tmp_path) == (ca, cert, key) and key.read_bytes() == before
