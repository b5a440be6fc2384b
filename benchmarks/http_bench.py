"""How the daemon's HTTP server holds under N concurrent clients: answered, p50/p99 latency.

Run: .venv/bin/python benchmarks/http_bench.py [--clients 1000] [--timeout 20] [--path /healthz]
The server (connector.http.HttpServer on a fresh SQLite ledger) runs in its own subprocess so its
threads and descriptors are its own; they are sampled from /proc while the clients wait. Every client
opens its own connection at the same moment, sends one GET and reads the answer (or gives up after
--timeout seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVER = """
import sys
from refsync.connector import logs
from refsync.connector.attribution import Policy
from refsync.connector.http import HttpServer, HttpSettings
from refsync.state import db
from refsync.state.ledger import Ledger
logs.configure("json", "warning")
url = sys.argv[1]
engine = db.make_engine(url); db.upgrade(engine); engine.dispose()
server = HttpServer(Ledger.open(url), HttpSettings("127.0.0.1:0", None, Policy("first_touch", "flag", 365, "bench")),
                    lambda: True)
server.start()
print(server.address[1], flush=True)
sys.stdin.read()
server.stop()
"""


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


def sample(pid: int) -> dict[str, int]:
    return {"threads": len(os.listdir(f"/proc/{pid}/task")), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def run(port: int, pid: int, clients: int, path: str, timeout: float) -> dict[str, object]:
    peak = sample(pid)

    async def watch() -> None:
        nonlocal peak
        while True:
            now = sample(pid)
            peak = {k: max(peak[k], now[k]) for k in peak}
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    results = await asyncio.gather(*(one(port, path, timeout) for _ in range(clients)))
    wall = time.perf_counter() - started
    watcher.cancel()
    answered = sorted(latency for status, latency in results if status == 200)
    codes: dict[str, int] = {}
    for status, _ in results:
        codes[str(status)] = codes.get(str(status), 0) + 1

    def pct(p: float) -> float | None:
        return round(answered[min(len(answered) - 1, int(p * len(answered)))] * 1000, 1) if answered else None

    return {"clients": clients, "path": path, "answered_200": len(answered), "by_status": codes,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "wall_s": round(wall, 2),
            "server_peak_threads": peak["threads"], "server_peak_fds": peak["fds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--path", default="/healthz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([sys.executable, "-c", SERVER, f"sqlite:///{tmp}/ledger.db"], cwd=ROOT,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdin is not None
            port = int(server.stdout.readline())
            print(json.dumps(asyncio.run(run(port, server.pid, args.clients, args.path, args.timeout))))
            server.stdin.close()
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()


if __name__ == "__main__":
    main()
