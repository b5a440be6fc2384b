"""How the daemon's HTTP server holds under load and under a slow-client attack.

Run: .venv/bin/python benchmarks/http_bench.py [--clients 1000] [--slow 1100] [--probes 40]
     [--timeout 20] [--path /healthz] [--header-timeout 10]

Two scenarios, one JSON line each (``--clients 0`` or ``--slow 0`` skips one):
- ``concurrent``: every client opens its own connection at the same moment, sends one GET and reads
  the answer (or gives up after --timeout seconds): answered, p50/p99 latency.
- ``slow``: --slow connections each send half a request's headers and then nothing (slowloris),
  and are held; once the server holds them all, --probes sequential ``GET /healthz`` measure
  whether the server still answers (p50/p99/max latency). Then the bench waits for the server to
  close the slow connections itself (its header deadline, --header-timeout seconds).

The server (connector.web.app.HttpServer on a fresh SQLite ledger) runs in its own subprocess so its
threads and descriptors are its own (``--attach PORT:PID`` uses a running one: the load test does);
they are sampled from /proc/PID/task and /proc/PID/fd every 50 ms (baseline before the clients,
peak during). The bench raises its own soft descriptor limit
to fit the connections it opens (up to the hard limit) and says so in ``client_fd_limit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVER = """
import sys
from refsync.connector import logs
from refsync.connector.web import protocol as http_protocol
from refsync.connector.attribution import Policy
from refsync.connector.web.app import HttpServer, HttpSettings
from refsync.state import db
from refsync.state.ledger import Ledger
logs.configure("json", "warning")
url = sys.argv[1]
http_protocol.HEADER_TIMEOUT = float(sys.argv[2])
engine = db.make_engine(url); db.upgrade(engine); engine.dispose()
server = HttpServer(Ledger.open(url), HttpSettings("127.0.0.1:0", None, Policy("first_touch", "flag", 365, "bench")),
                    lambda: True)
server.start()
print(server.address[1], flush=True)
sys.stdin.read()
server.stop()
"""
SLOW_START = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Slow: "  # and never the end of the headers


def sample(pid: int) -> dict[str, int]:
    """The server's threads and open descriptors now."""
    return {"threads": len(os.listdir(f"/proc/{pid}/task")), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Peaks:
    """Samples the server every 50 ms on a thread until stopped; the highest counts seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = sample(pid)
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            now = sample(self.pid)
            self.peak = {k: max(self.peak[k], now[k]) for k in self.peak}

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def percentile(latencies: list[float], p: float) -> float | None:
    ordered = sorted(latencies)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 1) if ordered else None


def raise_fd_limit(wanted: int) -> dict[str, int]:
    """Raise this process's soft descriptor limit to ``wanted`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return {"soft_before": soft, "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "hard": hard}


@contextlib.contextmanager
def server_process(header_timeout: float) -> Iterator[tuple[int, int]]:
    """A server in a subprocess; (port, pid)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([sys.executable, "-c", SERVER, f"sqlite:///{tmp}/ledger.db", str(header_timeout)],
                                  cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdin is not None
            port = int(server.stdout.readline())
            yield port, server.pid
            server.stdin.close()
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


# -- concurrent --------------------------------------------------------------------------------------


async def one(port: int, path: str, timeout: float) -> tuple[int | None, float]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            await reader.read()
            writer.close()
        return int(status_line.split()[1]), time.perf_counter() - started
    except (TimeoutError, OSError, IndexError, ValueError):
        return None, time.perf_counter() - started


def concurrent(port: int, pid: int, clients: int, path: str, timeout: float) -> dict[str, Any]:
    """``clients`` GETs of ``path`` at once."""
    peaks = Peaks(pid)

    async def all_at_once() -> list[tuple[int | None, float]]:
        return await asyncio.gather(*(one(port, path, timeout) for _ in range(clients)))

    started = time.perf_counter()
    results = asyncio.run(all_at_once())
    wall = time.perf_counter() - started
    peak = peaks.stop()
    answered = [latency for status, latency in results if status == 200]
    codes: dict[str, int] = {}
    for status, _ in results:
        codes[str(status)] = codes.get(str(status), 0) + 1
    return {"scenario": "concurrent", "clients": clients, "path": path, "answered_200": len(answered),
            "by_status": codes, "p50_ms": percentile(answered, 0.50), "p99_ms": percentile(answered, 0.99),
            "wall_s": round(wall, 2),
            "server_threads": {"baseline": peaks.baseline["threads"], "peak": peak["threads"]},
            "server_fds": {"baseline": peaks.baseline["fds"], "peak": peak["fds"]}}


# -- slow clients ------------------------------------------------------------------------------------


def probe(port: int, timeout: float) -> tuple[int | None, float]:
    """One ``GET /healthz`` on a fresh connection: (status or None, seconds)."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
        return int(answer.split()[1]), time.perf_counter() - started
    except (OSError, IndexError, ValueError):
        return None, time.perf_counter() - started


def wait_closed_by_server(conns: list[socket.socket], within: float) -> int:
    """How many of ``conns`` the server closes (EOF or reset) within ``within`` seconds."""
    closed = 0
    with selectors.DefaultSelector() as selector:
        for conn in conns:
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ)
        ends = time.monotonic() + within
        while closed < len(conns) and time.monotonic() < ends:
            for key, _ in selector.select(timeout=max(ends - time.monotonic(), 0)):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(conn)
                    closed += 1
    return closed


def slow_attack(port: int, pid: int, slow: int, probes: int, header_timeout: float) -> dict[str, Any]:
    """Hold ``slow`` half-sent requests, probe ``/healthz`` while they are held, then see the server
    close them at its header deadline."""
    peaks = Peaks(pid)
    baseline = peaks.baseline
    conns: list[socket.socket] = []
    opened_at = time.monotonic()
    try:
        for _ in range(slow):
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(SLOW_START)
            conns.append(conn)
        opened_s = time.monotonic() - opened_at
        # Held means accepted by the server: its descriptors show them (not only the kernel's queue).
        ends = time.monotonic() + 10
        while sample(pid)["fds"] < baseline["fds"] + slow and time.monotonic() < ends:
            time.sleep(0.02)
        held = sample(pid)["fds"] - baseline["fds"]
        results = []
        for _ in range(probes):
            results.append(probe(port, timeout=5))
            time.sleep(0.02)
        under_attack = sample(pid)
        probing_done = time.monotonic() - opened_at
        closed = wait_closed_by_server(conns, within=max(header_timeout - probing_done, 0) + 3)
        closed_after = time.monotonic() - opened_at
    finally:
        for conn in conns:
            conn.close()
    peak = peaks.stop()
    time.sleep(0.2)
    answered = [latency for status, latency in results if status == 200]
    return {"scenario": "slow", "slow_connections": slow, "opened_in_s": round(opened_s, 2),
            "held_by_server": held, "probes": probes, "answered_200": len(answered),
            "p50_ms": percentile(answered, 0.50), "p99_ms": percentile(answered, 0.99),
            "max_ms": round(max(answered) * 1000, 1) if answered else None,
            "server_threads": {"baseline": baseline["threads"], "under_attack": under_attack["threads"],
                               "peak": peak["threads"]},
            "server_fds": {"baseline": baseline["fds"], "under_attack": under_attack["fds"], "peak": peak["fds"],
                           "after": sample(pid)["fds"]},
            "probes_done_in_s": round(probing_done, 2), "header_timeout_s": header_timeout, "closed_by_server": closed,
            "closed_by_server_within_s": round(closed_after, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=1100)
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--attach", metavar="PORT:PID", help="use a server already running on 127.0.0.1:PORT in "
                        "process PID (its --header-timeout must be the server's) instead of starting one")
    args = parser.parse_args()
    limit = raise_fd_limit(max(args.clients, args.slow) + 256)
    if args.attach:
        port_text, _, pid_text = args.attach.partition(":")
        attached = contextlib.nullcontext((int(port_text), int(pid_text)))
    with attached if args.attach else server_process(args.header_timeout) as (port, pid):
        if args.clients:
            print(json.dumps({**concurrent(port, pid, args.clients, args.path, args.timeout),
                              "client_fd_limit": limit}), flush=True)
        if args.slow:
            print(json.dumps({**slow_attack(port, pid, args.slow, args.probes, args.header_timeout),
                              "client_fd_limit": limit}), flush=True)


if __name__ == "__main__":
    main()
