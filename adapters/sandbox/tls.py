"""A private CA and a loopback server certificate for the sandbox emulators.

simple-salesforce always speaks ``https://``, so the Salesforce emulator must serve TLS; the CA file
written here is what a config's ``ca_bundle`` points at. Files already present in the directory are
reused, so a long-lived sandbox (and every client that trusted its CA) keeps working across restarts.
"""

from __future__ import annotations

import os
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
    # Write to temporary names first so a concurrent reader never sees half a set.
    for path, writer in ((keyfile, server.private_key_pem), (certfile, None), (ca_path, ca.cert_pem)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        if writer is None:
            tmp.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        else:
            writer.write_to_path(str(tmp))
        if path == keyfile:
            tmp.chmod(0o600)
        tmp.replace(path)
    return ca_path, certfile, keyfile
