"""A partner's webhook receiver for the tests: checks the signature, the replay window and the
idempotency key exactly as the README tells partners to, and records what it accepted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from refsync.connector.notify import verify


@dataclass
class Receiver:
    secret: str
    url: str = ""
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    seen_keys: set[str] = field(default_factory=set)
    duplicates: int = 0
    fail_next: int = 0  # answer 503 to this many requests first
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)  # time.monotonic() of each request
    drip: float | None = None  # answer one byte every this many seconds, never finishing
    huge: int = 0  # answer 500 with a body of this many bytes
    sent: int = 0  # bytes of a huge answer the client took before hanging up


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k: v for k, v in self.headers.items()}
            receiver.raw.append((headers, body))
            receiver.received_at.append(time.monotonic())
            if receiver.drip is not None or receiver.huge:
                self._hostile()
                return
            if receiver.fail_next > 0:
                receiver.fail_next -= 1
                self._answer(503)
                return
            problem = verify(receiver.secret, self.headers.get("X-Refsync-Timestamp"),
                             self.headers.get("X-Refsync-Signature"), body, time.time())
            if problem:
                receiver.rejected.append(problem)
                self._answer(401)
                return
            key = self.headers.get("Idempotency-Key") or ""
            if key in receiver.seen_keys:
                receiver.duplicates += 1  # already processed: acknowledge, do nothing
            else:
                receiver.seen_keys.add(key)
                receiver.accepted.append(json.loads(body))
            self._answer(200)

        def _hostile(self) -> None:
            """A dripping or enormous answer, until the client hangs up."""
            try:
                if receiver.drip is not None:
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(receiver.drip)
                    return
                self.wfile.write(f"HTTP/1.1 500 Oops\r\nContent-Length: {receiver.huge}\r\n\r\n".encode())
                chunk = b"x" * 65536
                while receiver.sent < receiver.huge:
                    self.wfile.write(chunk)
                    receiver.sent += len(chunk)
            except OSError:
                return  # the client hung up: what the test expects

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@contextmanager
def receiving(secret: str) -> Iterator[Receiver]:
    receiver = Receiver(secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/refsync"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
