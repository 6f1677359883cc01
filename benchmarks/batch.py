"""`armo batch score` throughput: local (one process, 2 torch threads) against Ray Data with 2 actors × 1 thread and
1 actor × 2 threads, on the same pairs, the embedded default model. Prints tokens/s and the ratios.

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
from armo.settings import Settings
from armo.training.config import default_data_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--shard-rows", type=int, default=10)
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
    for actors, threads in ((2, 1), (1, 2)):
        started = time.perf_counter()
        out = score_file_ray(
            settings, src, work / f"ray-{actors}x{threads}.jsonl", options, actors=actors, threads_per_actor=threads
        )
        results[f"Ray, {actors} actor(s) × {threads} thread(s)"] = out.tokens / (time.perf_counter() - started)
    base = results["local, 1 process × 2 threads"]
    print(f"{args.pairs} pairs, {local.tokens} tokens (each response with its prompt), wall time incl. model loads")
    for name, rate in results.items():
        print(f"{name:36s} {rate:8.0f} tokens/s   × local {rate / base:.2f}")


if __name__ == "__main__":
    main()
