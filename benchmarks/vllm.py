"""The two backends side by side, with plain vLLM pooling as a peer, in one run on the same inputs.

    bash scripts/setup-vllm.sh && .venv-vllm/bin/python -m benchmarks.vllm     # writes docs/benchmarks_vllm.json

Paths, each timed on the same slices in palindrome order (benchmarks.run.palindrome_seconds):
- `transformers`: this service's scoring path (RewardModel.score: prompt sharing, packed passes, heads) on the
  transformers backend;
- `vllm`: the same path with the backbone on vLLM (`ARMO_BACKEND=vllm`: two LAST-pooled stages on the prefix cache);
- `peer`: plain vLLM pooling as a user would run it for a reward model: one LAST-pooled state per full sequence,
  no prompt features, no heads (a linear head on it costs nothing measurable).
vLLM's prefix cache would keep the full sequences of one timed run for the next, so it is emptied before every call:
each call pays for its own work.

Workloads: RewardBench-like pairs (every subset), Best-of-16 (one ~1,000-token prompt, 16 ~100-token responses),
GRPO-like groups (8 prompts × 8 responses). "tokens" are the full templated sequences' tokens.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import typer

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import BUNDLED_ROOT, DEFAULT_MODEL, ModelStore
from armo.model_store.vllm_engine import VllmEngine, VllmOptions
from armo.settings import Settings
from benchmarks.run import ROOT, best_of_n, cpu_model, palindrome_seconds, ratio_summary, rewardbench_pairs


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
    pairs: int = typer.Option(48, help="RewardBench pairs in the pair workload."),
    max_length: int = typer.Option(1024, help="Longest sequence admitted to the pair workload (tokens)."),
    rounds: int = typer.Option(3, help="Rounds of palindrome-ordered timings."),
    device: str = typer.Option("cpu", help="cpu, or cuda (scripts/gpu_check.sh)."),
    dtype: str = typer.Option("float32", help="float32 on a CPU; bfloat16 on a GPU."),
    out: Path = typer.Option(ROOT / "docs" / "benchmarks_vllm.json", help="Where to write the figures."),
) -> None:
    manifest, head = ModelStore(BUNDLED_ROOT).load(DEFAULT_MODEL)
    settings = Settings.model_construct()
    config = settings.scoring_config(manifest.backbone.max_length)
    hf = load_backbone("embedded", device=device, dtype=dtype)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
