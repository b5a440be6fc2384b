"""Where a webhook may go, and one bounded attempt to get there.

Policy: a webhook target must be ``https://`` and reach only public addresses, unless
``[notifications] allow_private_targets = true`` (tests, internal receivers). The URL text is
checked when a partner's URL is set and before each attempt; the decisive check is made at
connection time on the resolved addresses: every address the name resolves to is checked and the
socket connects to a checked address, so a name that answers public first and private later (DNS
rebinding) cannot slip through. Integer or octal hosts (``http://2130706433/``, ``0177.0.0.1``) are
read the way the C resolver reads them and checked as the address they mean. IPv6 forms that carry
an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are
checked as the IPv4 address they reach, so ``64:ff9b::7f00:1`` is loopback; any other address
``ipaddress`` does not call global is refused.

Deadline: :class:`Deadline` bounds an attempt as a whole (connect, send, the whole answer). A
socket timeout only bounds each read, so a server dripping one byte a second could hold it
forever; when the deadline passes, a timer shuts the attempt's sockets down, which ends any
blocked read at once. Name resolution is inside the deadline too: ``getaddrinfo`` cannot be
interrupted, so it runs on a resolver thread that the attempt waits for at most until the deadline
(a hung resolver leaves that thread behind, never the delivery; at most :data:`MAX_RESOLVING` such
threads exist at once).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

ALLOW_HINT = "set [notifications] allow_private_targets = true only for internal receivers"
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are IPv4
LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a local translator, never public
MAX_RESOLVING = 16  # resolver threads at once; a resolver that hangs cannot pile up threads past this
_resolving = threading.BoundedSemaphore(MAX_RESOLVING)


class TargetRefused(Exception):
    """A webhook target the policy refuses; retrying does not help until the URL or config changes.
    Not an OSError, so urllib3 and requests let it through unwrapped."""


def embedded_ipv4(addr: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address reaches through a translation form, with the form's name."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped, "IPv4-mapped"
    if addr in NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), "NAT64"
    if addr.sixtofour is not None:
        return addr.sixtofour, "6to4"
    return None


def address_problem(text: str) -> str | None:
    """Why ``text`` (an IP address) is not a public address, or None when it is."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in LOCAL_NAT64:
            return f"{addr} is a local-use NAT64 address (64:ff9b:1::/48), not a public one"
        embedded = embedded_ipv4(addr)
        if embedded is not None:
            # The address reached is the IPv4 one: a NAT64 gateway or 6to4 relay forwards to it.
            problem = address_problem(str(embedded[0]))
            return f"{addr} is the {embedded[1]} form of {embedded[0]}: {problem}" if problem else None
    for name in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(addr, f"is_{name}"):
            return f"{addr} is a {name.replace('_', '-')} address"
    if not addr.is_global:
        return f"{addr} is not a public address"
    return None


def literal_address(host: str) -> str | None:
    """The IP address ``host`` spells, including the legacy integer, octal and hex IPv4 forms
    (``2130706433``, ``0177.0.0.1``, ``0x7f.1``) that resolvers accept; None for a DNS name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def url_problem(url: str, allow_private: bool) -> str | None:
    """Why ``url`` may not be a webhook target judged by its text alone, with the fix; None when
    it may (its resolved addresses are checked again at connection time)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if "://" not in url:
        return f"{url!r} has no scheme; write it as 'https://{url.lstrip('/')}'"
    if parts.scheme not in ("http", "https") or not host:
        return f"{url!r} is not an http(s) URL with a host"
    if allow_private:
        return None
    if parts.scheme != "https":
        return f"{url!r} is not https://; use the receiver's https:// endpoint ({ALLOW_HINT})"
    if host == "localhost" or host.endswith(".localhost"):
        return f"{url!r} points at this machine ({ALLOW_HINT})"
    address = literal_address(host)
    problem = address_problem(address) if address else None
    return f"{url!r}: {problem} ({ALLOW_HINT})" if problem else None


class Deadline:
    """One attempt's overall deadline; sockets given to :meth:`watch` are shut down when it passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends = time.monotonic() + seconds
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(self._ends - time.monotonic(), 0.0)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def expire(self) -> None:
        """End the attempt now (the resolver ran out of time): later sockets are shut at once."""
        self._timer.cancel()
        self._expire()

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv/send in the attempt's thread
    except OSError:
        pass  # already closed or never connected: nothing is blocked on it


def guarded_connect(host: str, port: int, deadline: Deadline, allow_private: bool,
                    socket_options: Any = None) -> socket.socket:
    """Resolve ``host`` once, check every address, connect to a checked one within the deadline."""
    infos = resolve(host, port, deadline)
    if not allow_private:
        for info in infos:
            problem = address_problem(str(info[4][0]))
            if problem:
                raise TargetRefused(f"{host} resolves to {info[4][0]}: {problem} ({ALLOW_HINT})")
    error: OSError = OSError(f"{host} resolved to no address")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            for level, name, value in socket_options or ():
                sock.setsockopt(level, name, value)
            sock.settimeout(max(deadline.remaining(), 0.001))
            deadline.watch(sock)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def resolve(host: str, port: int, deadline: Deadline) -> list[Any]:
    """``socket.getaddrinfo(host, port)`` within the deadline; TimeoutError (and the deadline expired)
    when the resolver does not answer in time. The lookup runs on its own daemon thread because
    ``getaddrinfo`` cannot be interrupted: a hung resolver keeps that thread, not the attempt."""
    if not _resolving.acquire(timeout=deadline.remaining()):
        deadline.expire()
        raise TimeoutError(f"cannot resolve {host}: {MAX_RESOLVING} earlier lookups are still hanging")
    answer: list[Any] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answer.extend(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting attempt, raised there
            failure.append(exc)
        finally:
            _resolving.release()
            done.set()

    threading.Thread(target=lookup, name=f"refsync-resolve-{host}", daemon=True).start()
    if not done.wait(deadline.remaining()):
        deadline.expire()
        raise TimeoutError(f"cannot resolve {host}: no answer from the resolver within {deadline.seconds:g}s")
    if failure:
        raise failure[0]
    return answer


def _connection_class(base: type[HTTPConnection], deadline: Deadline, allow_private: bool) -> type[HTTPConnection]:
    def _new_conn(self: HTTPConnection) -> socket.socket:
        try:
            return guarded_connect(self._dns_host, self.port, deadline, allow_private,  # type: ignore[attr-defined]
                                   self.socket_options)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {self.host}: {exc}") from exc

    return type(f"Guarded{base.__name__}", (base,), {"_new_conn": _new_conn})


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections go through :func:`guarded_connect` under one deadline."""

    def __init__(self, deadline: Deadline, allow_private: bool) -> None:
        self._deadline, self._allow_private = deadline, allow_private
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        http = _connection_class(HTTPConnection, self._deadline, self._allow_private)
        https = _connection_class(HTTPSConnection, self._deadline, self._allow_private)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https})}


def session(deadline: Deadline, allow_private: bool) -> requests.Session:
    """A session for one attempt: every connection checked and bounded by ``deadline``."""
    s = requests.Session()
    s.trust_env = False  # an HTTPS_PROXY from the environment would connect around the address check
    adapter = GuardedAdapter(deadline, allow_private)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
