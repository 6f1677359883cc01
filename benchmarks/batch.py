"""`armo batch score` throughput: local (one process, 2 torch threads) against Ray Data with 2 actors × 1 thread and
1 actor × 2 threads (over the file's shards, and reading and writing through Ray's datasources: a directory in, a
Parquet directory out), and against the service over HTTP (`armo serve`, 8 concurrent clients of `armo.client`, one
pair per request), on the same pairs, the embedded default model. Prints tokens/s and the ratios.

    .venv/bin/python -m benchmarks.batch --pairs 100

The pairs are training pairs (`train/pairwise/ultrafeedback`): a throughput measurement reads no evaluation data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import torch

from armo.batch.on_ray import score_file_ray
from armo.batch.runner import Options, load_model, score_file
from armo.batch.streaming import score_dataset_ray
from armo.ray_pool import Pool
from armo.settings import Settings
from armo.training.config import default_data_root


def _over_http(rows: list[dict[str, object]], tokens: int) -> float:
    """The same pairs through a real `armo serve` process: one pair (two items) per request, 8 clients."""
    import asyncio
    import os
    import socket
    import subprocess
    import sys

    import httpx

    from armo.client import AsyncRewardClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ARMO_WATCH_INTERVAL_S": "0", "ARMO_LOG_LEVEL": "WARNING", "ARMO_TORCH_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "armo.cli", "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        async def run() -> float:
            queue = list(rows)
            started = time.perf_counter()
            async with AsyncRewardClient(url, timeout=600) as rm:

                async def client() -> None:
                    while queue:
                        r = queue.pop()
                        items = [{"messages": r["messages"], "response": r[k]} for k in ("chosen", "rejected")]
                        await rm.score(items)

                await asyncio.gather(*(client() for _ in range(8)))
            return time.perf_counter() - started

        return tokens / asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--shard-rows", type=int, default=10)
    ap.add_argument("--no-datasources", action="store_true", help="skip the Ray-datasources row")
    args = ap.parse_args()
    rows = []
    with gzip.open(Path(default_data_root()) / "train/pairwise/ultrafeedback.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            rows.append({"id": r["id"], "messages": r["messages"], "chosen": r["chosen"], "rejected": r["rejected"]})
            if len(rows) == args.pairs:
                break
    work = Path(tempfile.mkdtemp(prefix="armo-batch-bench-"))
    src = work / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = Settings()
    options = Options(shard_rows=args.shard_rows)
    results: dict[str, float] = {}
    torch.set_num_threads(2)
    started = time.perf_counter()
    local = score_file(load_model(settings), src, work / "local.jsonl", options, progress=False)
    results["local, 1 process × 2 threads"] = local.tokens / (time.perf_counter() - started)
    print(f"{args.pairs} pairs, {local.tokens} tokens (each response with its prompt), wall time incl. model loads")
    print(f"local: {results['local, 1 process × 2 threads']:.0f} tokens/s", flush=True)
    for actors, threads in ((2, 1), (1, 2)):
        started = time.perf_counter()
        out = score_file_ray(settings, src, work / f"ray-{actors}x{threads}.jsonl", options, Pool(actors, threads))
        results[f"Ray, {actors} actor(s) × {threads} thread(s)"] = out.tokens / (time.perf_counter() - started)
        print(f"Ray {actors}×{threads}: {results[f'Ray, {actors} actor(s) × {threads} thread(s)']:.0f}", flush=True)
    if not args.no_datasources:
        (work / "in").mkdir()
        src.rename(work / "in" / src.name)
        count, seconds = score_dataset_ray(settings, str(work / "in"), str(work / "out"), options, Pool(2, 1))
        assert count == len(rows)
        results["Ray datasources, 2 actors × 1 thread"] = local.tokens / seconds
        print(f"Ray datasources 2×1: {local.tokens / seconds:.0f}", flush=True)
    results["service over HTTP, 8 clients"] = _over_http(rows, local.tokens)
    base = results["local, 1 process × 2 threads"]
    for name, rate in results.items():
        print(f"{name:38s} {rate:8.0f} tokens/s   × local {rate / base:.2f}")


if __name__ == "__main__":
    main()
