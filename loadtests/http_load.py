"""A closed-loop HTTP load generator: C concurrent clients POST payloads until all are sent; HTTP only.

Used by the benchmark harness and runnable on its own against any running service:

    python -m loadtests.http_load --url http://127.0.0.1:8000/v1/score --payloads payloads.jsonl --concurrency 16

Bounded by construction: every payload is sent once (optionally `--repeat` times) and each request has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


@dataclass
class LoadResult:
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[Any] = field(default_factory=list)  # response JSON in payload order (None on error)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]

    def summary(self) -> dict[str, float]:
        return {
            "requests": float(len(self.latencies_s)),
            "ok": float(self.ok),
            "wall_s": self.wall_s,
            "p50_s": self.percentile(50),
            "p95_s": self.percentile(95),
            "p99_s": self.percentile(99),
            "mean_s": statistics.fmean(self.latencies_s) if self.latencies_s else float("nan"),
        }


async def run_load(
    url: str,
    payloads: Sequence[Any],
    *,
    concurrency: int = 16,
    headers: dict[str, str] | None = None,
    timeout_s: float = 300.0,
) -> LoadResult:
    """Send every payload once with `concurrency` clients in a closed loop; keep results in payload order."""
    result = LoadResult(wall_s=0.0, bodies=[None] * len(payloads))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(payloads)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=payloads[i])
                    status = response.status_code
                    if status == 200:
                        result.bodies[i] = response.json()
                except httpx.HTTPError:
                    status = 0
                result.latencies_s.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--payloads", type=Path, required=True, help="JSONL, one request body a line")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    payloads = [json.loads(line) for line in args.payloads.read_text().splitlines() if line.strip()] * args.repeat
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    result = asyncio.run(run_load(args.url, payloads, concurrency=args.concurrency, headers=headers))
    print(json.dumps({**result.summary(), "statuses": result.statuses}, indent=2))


if __name__ == "__main__":
    main()
