"""The lifecycle both emulators share: serve an HTTP server in a daemon thread, stop it, use as a context."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


class Served:
    """Mixin: ``_serve(server, name)`` starts serving; ``stop()`` and ``with`` end it."""

    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _serve(self, server: ThreadingHTTPServer, name: str) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
