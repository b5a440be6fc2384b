"""How the daemon's HTTP server reads a request off a connection: uvicorn's h11 protocol with the
limits a hostile client needs (:class:`HttpProtocol`).

- Request headers must be complete within :data:`HEADER_TIMEOUT` seconds of the connection or of
  the previous answer. uvicorn times out only an idle keep-alive connection and any byte resets
  that, so a client dripping its headers (slowloris) would hold its connection forever.
- The request line and headers may take at most :data:`MAX_HEADER_BYTES`, whether they arrive in
  pieces (h11's ``max_incomplete_event_size``) or whole: h11 bounds only an *incomplete* event, so
  100 KB of headers landing in one read (loopback does that) would be parsed and served. Beyond the
  limit the answer is ``431`` (h11's own hint), any other malformed request gets ``400``, both as
  JSON, and the connection closes.
- Closing after such an answer lingers (nginx's ``lingering_close``): our side is shut (FIN after
  the answer) and what the client still sends is read and dropped for at most :data:`LINGER`
  seconds. Closing at once with the client's bytes unread makes the kernel send a reset, which can
  destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from refsync.connector.logs import get_logger

log = get_logger("refsync.http")

HEADER_TIMEOUT = 10.0  # seconds a client may take to send a request's headers
MAX_HEADER_BYTES = 64 * 1024  # request line and headers (431 beyond)
LINGER = 2.0  # seconds a refused client's remaining bytes are read and dropped before the close
LINGER_BYTES = 1024 * 1024  # ... or until this many were dropped


def header_bytes(request: h11.Request) -> int:
    """The size of a request's line and headers as sent (``NAME: VALUE\\r\\n`` each)."""
    line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers) + 2


class StrictParser(h11.Connection):
    """h11 that also refuses a *complete* request whose line and headers exceed
    :data:`MAX_HEADER_BYTES`, and remembers why it refused a request (for the answer's status)."""

    refusal: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = exc
            raise
        if isinstance(event, h11.Request) and header_bytes(event) > MAX_HEADER_BYTES:
            self.refusal = h11.RemoteProtocolError("request headers too large", error_status_hint=431)
            raise self.refusal
        return event


class HttpProtocol(H11Protocol):
    """uvicorn's h11 protocol with the header deadline, the header limit and a lingering close
    after a refused request (see the module's description)."""

    _header_deadline: asyncio.TimerHandle | None = None
    _dropped: int | None = None  # bytes read and dropped since a refusal; None while serving

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = StrictParser(h11.SERVER, MAX_HEADER_BYTES)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self._dropped is None:
            super().data_received(data)
            return
        self._dropped += len(data)
        if self._dropped > LINGER_BYTES:
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this for every request h11 refuses: 431 or 400, as JSON, then a lingering close."""
        refusal = getattr(self.conn, "refusal", None)
        if refusal is not None and refusal.error_status_hint == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
            status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            error = f"the request line and headers exceed {MAX_HEADER_BYTES // 1024} KB; send smaller headers"
        else:
            status = HTTPStatus.BAD_REQUEST
            error = f"malformed HTTP request ({refusal or msg}); send a well-formed HTTP/1.1 request"
        body = (json.dumps({"error": error}) + "\n").encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close"), (b"cache-control", b"no-store")]
        try:
            for event in (h11.Response(status_code=int(status), headers=headers, reason=status.phrase.encode()),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:  # an answer was already under way: nothing more can be said
            self.transport.close()
            return
        self._linger()

    def _linger(self) -> None:
        self._dropped = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()  # FIN after the answer, once it is flushed
        self.loop.call_later(LINGER, self.transport.close)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        if not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(HEADER_TIMEOUT, self._header_deadline_passed, self.cycle)

    def _header_deadline_passed(self, cycle_when_armed: object) -> None:
        # A new request since the deadline was armed made a new cycle: its headers arrived in time.
        if self.cycle is cycle_when_armed and not self.transport.is_closing() and self._dropped is None:
            log.info("http client too slow to send its request; connection closed",
                     client=self.client[0] if self.client else None, seconds=HEADER_TIMEOUT)
            self.transport.close()
