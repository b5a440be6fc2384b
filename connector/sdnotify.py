"""systemd's readiness protocol without a dependency: `refsync run` says READY=1 once it serves and
its jobs are scheduled, and STOPPING=1 when it begins to stop, so a ``Type=notify`` unit
(deploy/refsync.service) starts the units ordered after it only when refsync is really up.

The protocol (https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html): one datagram
of newline-separated ``KEY=VALUE`` assignments to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a
name starting with ``@`` is in the abstract namespace. Without the variable (not under systemd, or
``Type=simple``) nothing is sent.
"""

from __future__ import annotations

import os
import socket

from refsync.connector import logs

log = logs.get_logger("refsync.sdnotify")


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; whether it was sent. A failure is
    a warning, never a reason to stop: the service runs the same, systemd only learns less."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify the service manager", socket=address, state=state, error=str(exc))
        return False
    return True
