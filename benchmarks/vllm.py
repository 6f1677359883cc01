"""The two backends side by side, with plain vLLM pooling as a peer, in one run on the same inputs.

    bash scripts/setup-vllm.sh && .venv-vllm/bin/python -m benchmarks.vllm     # writes docs/benchmarks_vllm.json

Paths, each timed on the same slices in palindrome order (benchmarks.run.palindrome_seconds):
- `transformers`: this service's scoring path (RewardModel.score: prompt sharing, packed passes, heads) on the
  transformers backend, compiled as `--compile` says (auto: as `armo serve` runs it);
- `vllm`: the same path with the backbone on vLLM (`ARMO_BACKEND=vllm`: two LAST-pooled stages on the prefix cache);
- `peer`: plain vLLM pooling as a user would run it for a reward model: one LAST-pooled state per full sequence,
  no prompt features, no heads (a linear head on it costs nothing measurable).
vLLM's prefix cache would keep the full sequences of one timed run for the next, so it is emptied before every call:
each call pays for its own work.

Workloads: RewardBench-like pairs (every subset), Best-of-16 (one ~1,000-token prompt, 16 ~100-token responses),
GRPO-like groups (8 prompts × 8 responses). "tokens" are the full templated sequences' tokens.

`--http` adds the same comparison through the service: two `armo serve` processes (one per backend) up at once,
sent the same requests in palindrome order by concurrent clients (a pair per request, a group per request). A
server's prefix cache cannot be emptied from outside, so every timed pass tags its prompts with the pass number:
no pass finds another's prompts in the cache, and each still shares a prompt between the responses of one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import torch
import typer
from loadtests.http_load import run_load

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.model_store.vllm_engine import VllmEngine, VllmOptions
from armo.settings import Settings
from benchmarks.run import (
    ROOT,
    best_of_n,
    cpu_model,
    free_port,
    http_load,
    palindrome_seconds,
    ratio_summary,
    rewardbench_pairs,
    server,
)


def grpo_groups(backbone: Backbone, prompts: int, responses: int, max_length: int) -> list[ScoreItem]:
    """`prompts` real prompts with `responses` real answers each (the answers of neighbouring pairs)."""
    pairs = rewardbench_pairs(backbone, prompts * responses // 2 + prompts, max_length // 2)
    answers = [y for _, c, r in pairs for y in (c, r)]
    return [
        ScoreItem(pairs[p][0], answers[(p * responses + k) % len(answers)])
        for p in range(prompts)
        for k in range(responses)
    ]


def main(
    pairs: int = typer.Option(24, help="RewardBench pairs in the pair workload."),
    max_length: int = typer.Option(1024, help="Longest sequence admitted to the pair workload (tokens)."),
    rounds: int = typer.Option(3, help="Rounds of palindrome-ordered timings."),
    device: str = typer.Option("cpu", help="cpu, or cuda (scripts/gpu_check.sh)."),
    dtype: str = typer.Option("float32", help="float32 or bfloat16 (a CPU with AMX / AVX512-BF16, a GPU)."),
    compile: str = typer.Option("auto", help="ARMO_COMPILE for the transformers backend: auto, on or off."),
    http: bool = typer.Option(False, help="Also compare the backends through the service over HTTP."),
    concurrency: int = typer.Option(8, help="Concurrent HTTP clients."),
    out: Path = typer.Option(ROOT / "docs" / "benchmarks_vllm.json", help="Where to write the figures."),
) -> None:
    manifest, head = ModelStore(BUNDLED_ROOT).load(DEFAULT_MODEL)
    settings = Settings.model_construct()
    config = settings.scoring_config(manifest.backbone.max_length)
    hf = load_backbone("embedded", device=device, dtype=dtype, compile=compile)  # type: ignore[arg-type]
    options = VllmOptions(
        pooling=manifest.pooling,
        max_length=manifest.backbone.max_length,
        dtype=dtype,
        kv_cache_gib=settings.vllm_kv_cache_gib,
        gpu_memory_utilization=0.5,  # both backends share the device here
    )
    on_vllm = load_backbone("embedded", vllm=options)
    engine = on_vllm.engine
    assert isinstance(engine, VllmEngine)
    models = {name: RewardModel(b, head, manifest, config) for name, b in (("transformers", hf), ("vllm", on_vllm))}

    def scored(name: str) -> Callable[[Sequence[ScoreItem]], list[float]]:
        def run(batch: Sequence[ScoreItem]) -> list[float]:
            engine.llm.reset_prefix_cache()
            return [r.score for r in models[name].score(batch)]

        return run

    def peer(batch: Sequence[ScoreItem]) -> Any:
        engine.llm.reset_prefix_cache()
        return engine._run([models["vllm"].prepare(it).encoded.input_ids for it in batch])

    paths = {"transformers": scored("transformers"), "vllm": scored("vllm"), "peer": peer}
    workloads: dict[str, tuple[list[ScoreItem], int]] = {  # items, items per timed slice
        "pairs": ([ScoreItem(m, y) for m, c, r in rewardbench_pairs(hf, pairs, max_length) for y in (c, r)], 16),
        "best_of_16": (best_of_n(hf, 16), 16),
        "grpo_8x8": (grpo_groups(hf, 8, 8, max_length), 16),
    }
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "device": device},
        "model": f"{manifest.model}/{manifest.version}",
        "vllm_block_size": engine.llm.llm_engine.vllm_config.cache_config.block_size,
        "transformers_compiled": hf.compiled is not None,
    }
    for name, (items, per_slice) in workloads.items():
        tokens = sum(models["transformers"].prepare(it).tokens for it in items)
        a, b = paths["transformers"](items), paths["vllm"](items)  # also the warm-up
        diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
        slices = [items[k : k + per_slice] for k in range(0, len(items), per_slice)]
        seconds = palindrome_seconds(paths, slices, rounds)
        rate = {p: tokens * rounds / sum(s) for p, s in seconds.items()}
        row = {
            "items": len(items),
            "tokens": tokens,
            "tokens_per_s": rate,
            "vllm_vs_transformers": ratio_summary(seconds["transformers"], seconds["vllm"]),
            "vllm_vs_peer": ratio_summary(seconds["peer"], seconds["vllm"]),
            "max_abs_score_diff": diff,
        }
        results[name] = row
        print(
            f"{name}: {len(items)} items, {tokens} tokens; tokens/s "
            + ", ".join(f"{p} {r:.0f}" for p, r in rate.items())
            + f"; vllm/transformers {row['vllm_vs_transformers']['overall']:.2f}×"
            + f", vllm/peer {row['vllm_vs_peer']['overall']:.2f}×; max |Δscore| {diff:.2e}"
        )
    if http:
        del models, on_vllm, engine, hf  # the servers load their own
        work = {name: (items, results[name]["tokens"]) for name, (items, _) in workloads.items()}
        results["http"] = http_leg(work, rounds, concurrency, {"transformers": {}, "vllm": {"ARMO_BACKEND": "vllm"}})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


def requests_of(items: Sequence[ScoreItem], per_request: int, tag: int) -> list[dict[str, Any]]:
    """`/v1/score` bodies of `per_request` items; every prompt tagged with the pass number `tag`."""
    rows = [
        {
            "messages": [
                {**m, "content": f"[{tag}] {m['content']}"} if i == 0 else m for i, m in enumerate(it.messages)
            ],
            "response": it.response,
        }
        for it in items
    ]
    return [{"items": rows[k : k + per_request]} for k in range(0, len(rows), per_request)]


def http_leg(
    workloads: dict[str, tuple[list[ScoreItem], int]], rounds: int, concurrency: int, servers: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """Two `armo serve` processes (`servers`: name -> extra environment), timed in palindrome order on the same
    requests (tagged per pass); the ratio is the second's rate over the first's. `workloads`: name -> (items, their
    tokens untagged; a tag adds about 4 tokens per sequence)."""
    tmp = Path(tempfile.mkdtemp(prefix="armo-bench-http-"))
    base = {"ARMO_WATCH_INTERVAL_S": "0", "ARMO_LOG_LEVEL": "WARNING", "ARMO_REQUEST_TIMEOUT_S": "600"}
    base |= {"ARMO_MAX_QUEUE": "4096"}
    ports = {name: free_port() for name in servers}
    first, second = servers
    ratio = f"{second}_vs_{first}"
    cmd = [sys.executable, "-m", "armo.cli", "serve", "--port"]
    tags = itertools.count()
    per_request = {"pairs": 2, "best_of_16": 16, "grpo_8x8": 8}
    out: dict[str, Any] = {"concurrency": concurrency}
    with contextlib.ExitStack() as stack:
        for name, env in servers.items():
            stack.enter_context(server([*cmd, str(ports[name])], base | env, ports[name], tmp / f"{name}.log"))
        for port in ports.values():  # warm-up: the first requests pay for lazy initialisation
            http_load(f"http://127.0.0.1:{port}/v1/score", requests_of(workloads["pairs"][0][:8], 2, -1), 2)
        models = {n: httpx.get(f"http://127.0.0.1:{p}/v1/models", timeout=30).json() for n, p in ports.items()}
        out["backbones"] = {n: m["loaded"]["backbone"] for n, m in models.items()}
        for name, (items, tokens) in workloads.items():

            def send(target: str, batch: Sequence[ScoreItem], name: str = name) -> None:
                payloads = requests_of(batch, per_request[name], next(tags))
                url = f"http://127.0.0.1:{ports[target]}/v1/score"
                result = asyncio.run(run_load(url, payloads, concurrency=concurrency))
                assert result.ok == len(payloads), result.statuses  # a refused request would flatter the rate

            paths = {b: (lambda batch, b=b: send(b, batch)) for b in ports}
            slices = [items[k : k + 16] for k in range(0, len(items), 16)]
            seconds = palindrome_seconds(paths, slices, rounds)
            out[name] = {
                "tokens_per_s": {b: tokens * rounds / sum(v) for b, v in seconds.items()},
                ratio: ratio_summary(seconds[first], seconds[second]),
            }
            print(
                f"http {name}: tokens/s "
                + ", ".join(f"{b} {r:.0f}" for b, r in out[name]["tokens_per_s"].items())
                + f"; {second}/{first} {out[name][ratio]['overall']:.2f}×"
            )
    return out


if __name__ == "__main__":
    typer.run(main)
