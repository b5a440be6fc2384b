"""A private CA and a loopback server certificate for the sandbox emulators.

simple-salesforce always speaks ``https://``, so the Salesforce emulator must serve TLS; the CA file
written here is what a config's ``ca_bundle`` points at. Files already present in the directory are
reused, so a long-lived sandbox (and every client that trusted its CA) keeps working across restarts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import trustme

CA_FILE = "sandbox-ca.pem"
CERT_FILE = "sandbox-server.pem"
KEY_FILE = "sandbox-server.key"


def make_tls(directory: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Return ``(ca_path, certfile, keyfile)`` in ``directory``, creating them when any is missing.

    The server certificate is valid for ``127.0.0.1``, ``::1`` and ``localhost``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    ca_path, certfile, keyfile = folder / CA_FILE, folder / CERT_FILE, folder / KEY_FILE
    if ca_path.is_file() and certfile.is_file() and keyfile.is_file():
        return ca_path, certfile, keyfile
    ca = trustme.CA(organization_name="refsync sandbox")
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    _write(keyfile, server.private_key_pem.bytes(), 0o600)
    _write(certfile, b"".join(blob.bytes() for blob in server.cert_chain_pems), 0o644)
    _write(ca_path, ca.cert_pem.bytes(), 0o644)
    return ca_path, certfile, keyfile


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` through a temporary file beside it, so a concurrent reader never sees half a
    set. The temporary file is created with ``mode`` (the key: owner only) rather than narrowed
    after writing, so the private key is never readable by others, not even for a moment."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if mode != 0o600:
            os.chmod(tmp, mode)  # public certificates
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
