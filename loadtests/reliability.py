"""Overload and stalled uploads against a running service, HTTP only; prints the figures of docs/RELIABILITY.md.

    ARMO_BODY_TIMEOUT_S=5 .venv/bin/armo serve --port 8011 &          # the embedded default model
    .venv/bin/python -m loadtests.reliability --url http://127.0.0.1:8011 --pid $!

Phases, each bounded in time and request count:
1. unloaded: `--clients` closed-loop clients, one item per request → the honest throughput baseline;
2. overload: requests arriving at `--overload` × the unloaded throughput, whatever the answers (open loop), each
   with a deadline (`--deadline`) → how fast refusals come back, whether admitted requests still time out, and how
   much honest throughput is kept;
3. stalled uploads: `--stalled` connections each announce a body of `--upload-mb` MB, send half, and stall →
   how many get the 408, and the server's RSS before, at the peak and after.

`--mode burst` runs only this (no --pid needed), against a server started with a small queue:

    ARMO_MAX_QUEUE=16 .venv/bin/armo serve --port 8011 &
    .venv/bin/python -m loadtests.reliability --url http://127.0.0.1:8011 --mode burst

burst: `--burst` requests (one item each) sent at the same instant on already-open connections while `/health` is
polled every `--health-every` s → how fast the refusals (429) come back and whether liveness waits on the model;
`--rounds` bursts, an idle second apart, pooled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx

ITEM = {"prompt": "Give me one tip for writing clear commit messages.", "response": "Say why, not what, in one line."}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def closed_loop(url: str, clients: int, seconds: float, headers: dict[str, str], deadline: float | None) -> dict:
    statuses: Counter[int] = Counter()
    latency: dict[int, list[float]] = {}
    body: dict[str, object] = {"items": [ITEM]}
    if deadline is not None:
        body["timeout_s"] = deadline
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                r = await http.post(f"{url}/v1/score", json=body, headers=headers)
                code = r.status_code
            except httpx.HTTPError:
                code = 0
            statuses[code] += 1
            latency.setdefault(code, []).append(time.monotonic() - started)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    p50 = {code: statistics.median(xs) for code, xs in latency.items()}
    return {"statuses": dict(statuses), "ok_per_s": statuses[200] / seconds, "p50_s": p50}


async def open_loop(url: str, rate: float, seconds: float, headers: dict[str, str], deadline: float) -> dict:
    """Requests arriving at `rate` per second whatever the answers (an overloaded fleet of clients), one item each."""
    statuses: Counter[int] = Counter()
    latency: dict[int, list[float]] = {}
    body = {"items": [ITEM], "timeout_s": deadline}

    async def one(http: httpx.AsyncClient) -> None:
        started = time.monotonic()
        try:
            code = (await http.post(f"{url}/v1/score", json=body, headers=headers)).status_code
        except httpx.HTTPError:
            code = 0
        statuses[code] += 1
        latency.setdefault(code, []).append(time.monotonic() - started)

    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(http)))
        await asyncio.gather(*tasks)
    p50 = {code: statistics.median(xs) for code, xs in latency.items()}
    return {"offered_per_s": rate, "statuses": dict(statuses), "ok_per_s": statuses[200] / seconds, "p50_s": p50}


def stalled_uploads(url: str, n: int, megabytes: float, headers: dict[str, str], wait_s: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    size = int(megabytes * 1024 * 1024)
    socks = []
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + f"Content-Length: {size}\r\n\r\n"
    ).encode()
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=wait_s + 30)
        s.sendall(head + b" " * (size // 2))  # half the announced body, then nothing
        socks.append(s)
    answered = Counter[str]()
    for s in socks:
        try:
            reply = s.recv(65536).decode(errors="replace")
            answered[reply.split("\r\n", 1)[0].removeprefix("HTTP/1.1 ")] += 1
        except OSError as e:
            answered[type(e).__name__] += 1
        finally:
            s.close()
    return {"replies": dict(answered)}


def percentile(xs: list[float], q: float) -> float | None:
    """The q-quantile of `xs` (seconds) in milliseconds, nearest rank."""
    if not xs:
        return None
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, round(q * (len(xs) - 1)))], 1)


class Conn:
    """One keep-alive HTTP/1.1 connection with requests encoded up front: the burst is sent in a few milliseconds
    and the client spends almost no CPU (httpx, on the same 2 cores as the model, took ~0.7 s to send 160 requests
    and was then part of what it measured)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Conn:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    @staticmethod
    def encode(url: str, method: str, path: str, headers: dict[str, str], body: object = None) -> bytes:
        data = b"" if body is None else json.dumps(body).encode()
        host = url.removeprefix("http://")
        extra = {"Content-Type": "application/json", "Content-Length": str(len(data))} if body is not None else {}
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **headers, **extra}.items())
        return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + data

    async def request(self, raw: bytes) -> int:
        """Send one encoded request, read its answer; the status (0 when the connection failed)."""
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length:")), 0)
            await self.reader.readexactly(length)
            return int(lines[0].split()[1])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return 0

    def close(self) -> None:
        self.writer.close()


async def burst(
    url: str, n: int, rounds: int, headers: dict[str, str], health_every: float, item: dict[str, str] = ITEM
) -> dict:
    """`n` concurrent /v1/score requests sent at once on open connections, `rounds` times, with /health polled on
    its own connection during each burst (every `health_every` s)."""
    statuses: Counter[int] = Counter()
    latency: dict[int, list[float]] = {}
    health: list[float] = []
    health_codes: Counter[int] = Counter()
    score = Conn.encode(url, "POST", "/v1/score", headers, {"items": [item]})
    live = Conn.encode(url, "GET", "/health", {})
    conns = [await Conn.open(url) for _ in range(n)]
    probe = await Conn.open(url)
    try:
        for c in conns[:3]:  # the model's first passes, and the worker's measured rate, before the first burst
            assert await c.request(score) == 200, "the warm-up request was not scored"

        async def one(c: Conn) -> None:
            started = time.monotonic()
            code = await c.request(score)
            statuses[code] += 1
            latency.setdefault(code, []).append(time.monotonic() - started)

        async def poll(done: asyncio.Event) -> None:
            while not done.is_set():
                started = time.monotonic()
                code = await probe.request(live)
                health_codes[code] += 1
                health.append(time.monotonic() - started)
                await asyncio.sleep(health_every)

        for _ in range(rounds):
            for i, c in enumerate(conns):  # the server closes a connection idle for 5 s (uvicorn's keep-alive)
                if c.reader.at_eof():
                    c.close()
                    conns[i] = await Conn.open(url)
            done = asyncio.Event()
            poller = asyncio.create_task(poll(done))
            await asyncio.gather(*(one(c) for c in conns))
            done.set()
            await poller
            await asyncio.sleep(1.0)  # each round starts from an idle service
    finally:
        for c in [*conns, probe]:
            c.close()
    return {
        "requests": n * rounds,
        "statuses": dict(statuses),
        "server_errors": sum(c for code, c in statuses.items() if code >= 500 or code == 0),
        "p50_ms": {code: percentile(xs, 0.5) for code, xs in latency.items()},
        "p99_ms": {code: percentile(xs, 0.99) for code, xs in latency.items()},
        "health": {
            "statuses": dict(health_codes),
            "p50_ms": percentile(health, 0.5),
            "p99_ms": percentile(health, 0.99),
            "max_ms": percentile(health, 1.0),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--mode", choices=("all", "burst"), default="all")
    ap.add_argument("--pid", type=int, default=None, help="the server's process id (for its RSS; mode all)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--overload", type=float, default=4, help="offered load = this × the unloaded throughput")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--deadline", type=float, default=2.0, help="timeout_s of the overload requests")
    ap.add_argument("--stalled", type=int, default=50)
    ap.add_argument("--upload-mb", type=float, default=4.0)
    ap.add_argument("--body-timeout", type=float, default=5.0, help="the server's ARMO_BODY_TIMEOUT_S")
    ap.add_argument("--burst", type=int, default=160, help="concurrent requests of one burst")
    ap.add_argument("--rounds", type=int, default=3, help="bursts, pooled")
    ap.add_argument("--health-every", type=float, default=0.01, help="seconds between /health polls in a burst")
    args = ap.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.mode == "burst":
        print(json.dumps(asyncio.run(burst(args.url, args.burst, args.rounds, headers, args.health_every)), indent=2))
        return
    if args.pid is None:
        ap.error("--pid is required in mode all")
    out: dict[str, object] = {"rss_start_mb": round(rss_mb(args.pid), 1)}
    unloaded = asyncio.run(closed_loop(args.url, args.clients, args.seconds, headers, None))
    out["unloaded"] = unloaded
    peak = [rss_mb(args.pid)]
    rate = args.overload * unloaded["ok_per_s"]  # requests arrive at N × what the service scores unloaded
    overload = asyncio.run(open_loop(args.url, rate, args.seconds, headers, args.deadline))
    peak.append(rss_mb(args.pid))
    out["overload"] = overload
    out["honest_throughput_kept"] = round(overload["ok_per_s"] / max(unloaded["ok_per_s"], 1e-9), 3)
    before = rss_mb(args.pid)
    out["stalled"] = stalled_uploads(args.url, args.stalled, args.upload_mb, headers, args.body_timeout)
    peak.append(rss_mb(args.pid))
    time.sleep(3)
    out["stalled_rss_mb"] = {"before": round(before, 1), "after": round(rss_mb(args.pid), 1)}
    out["rss_peak_mb"] = round(max(peak), 1)
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
