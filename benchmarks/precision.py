"""bf16 against fp32 (and the opt-in int8) on this CPU, side by side in one run on the same inputs.

    .venv/bin/python -m benchmarks.precision [--http]       # writes docs/benchmarks_precision.json

Ceilings: the matmul rate at the backbone's own Linear shapes ([rows, in] @ [in, out], weighted by how often each
occurs) in fp32, bf16 (oneDNN on AMX / AVX512-BF16) and int8 (`torch._int_mm`, AMX-INT8), turned into tokens/s
with `benchmarks.run.flops_per_token` (2 × non-embedding parameters + 4·layers·d·context for attention).

Paths, each timed on the same slices in palindrome order (benchmarks.run.palindrome_seconds):
- `fp32`: the scoring path (RewardModel.score: prompt sharing, packed passes, heads) on the fp32 backbone — the
  default before bf16;
- `bf16`: the same on the bf16 backbone, eager (ARMO_COMPILE=off);
- `compiled`: the bf16 backbone compiled (armo.model_store.compiled) — what `armo serve` runs by default on a CPU
  whose bf16 matmuls measure fast enough (ARMO_DTYPE=auto and ARMO_COMPILE=auto, for an artifact that states its
  bf16 agreement);
- `fp32_compiled`: the fp32 backbone compiled — what `armo serve` runs by default on a CPU whose bf16 is not
  faster than fp32 (there `auto` serves fp32, and `ARMO_COMPILE=auto` compiles it);
- `int8`: the opt-in int8 backbone (ARMO_QUANTIZE=int8), on fp32.
Plus the raw packed forward in bf16 (no sharing, no heads), eager and compiled, as a fraction of the bf16 ceiling.
Workloads: RewardBench-like pairs, Best-of-16 (one ~1,000-token prompt, 16 ~100-token responses), GRPO-like groups
(8 prompts × 8 responses). `--http` times two `armo serve` processes (the fp32 eager default before bf16:
ARMO_DTYPE=float32 ARMO_COMPILE=off; and today's defaults) on the same requests, a pair / a group per request.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import typer

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.forward import item_features
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.settings import Settings
from benchmarks.run import (
    ROOT,
    best_of_n,
    cpu_model,
    flops_per_token,
    palindrome_seconds,
    ratio_summary,
    rewardbench_pairs,
)
from benchmarks.vllm import grpo_groups, http_leg


def shape_ceilings(backbone: Backbone, rows: int = 1024, seconds: float = 0.5) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) at the backbone's Linear shapes, per precision."""
    shapes: dict[tuple[int, int], int] = {}
    for m in backbone.model.modules():
        if isinstance(m, torch.nn.Linear):
            shapes[(m.in_features, m.out_features)] = shapes.get((m.in_features, m.out_features), 0) + 1
    out = {}
    for name, make in {
        "float32": lambda r, c: torch.randn(r, c),
        "bfloat16": lambda r, c: torch.randn(r, c).to(torch.bfloat16),
        "int8": lambda r, c: torch.randint(-100, 100, (r, c), dtype=torch.int8),
    }.items():
        mm = torch._int_mm if name == "int8" else torch.mm
        flops = secs = 0.0
        for (d_in, d_out), count in shapes.items():
            a, b = make(rows, d_in), make(d_in, d_out)
            flops += count * 2 * rows * d_in * d_out
            secs += count * _seconds(lambda mm=mm, a=a, b=b: mm(a, b), seconds)
        out[name] = flops / secs / 1e9
    return out


def _seconds(call: Callable[[], Any], seconds: float) -> float:
    """Mean wall time of `call()`, repeated for about `seconds` after one warm-up call."""
    call()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        n += 1
    return (time.perf_counter() - started) / n


def main(
    pairs: int = typer.Option(24, help="RewardBench pairs in the pair workload."),
    max_length: int = typer.Option(1024, help="Longest sequence admitted to the pair workload (tokens)."),
    rounds: int = typer.Option(3, help="Rounds of palindrome-ordered timings."),
    http: bool = typer.Option(False, help="Also compare the fp32 eager service with the default one over HTTP."),
    concurrency: int = typer.Option(8, help="Concurrent HTTP clients."),
    out: Path = typer.Option(ROOT / "docs" / "benchmarks_precision.json", help="Where to write the figures."),
) -> None:
    manifest, head = ModelStore(BUNDLED_ROOT).load(DEFAULT_MODEL)
    config = Settings.model_construct().scoring_config(manifest.backbone.max_length)
    fp32 = load_backbone("embedded")
    bf16 = load_backbone("embedded", dtype="bfloat16")
    compiled = load_backbone("embedded", dtype="bfloat16", compile="on")
    fp32_compiled = load_backbone("embedded", compile="on")
    models = {
        "fp32": RewardModel(fp32, head, manifest, config),
        "bf16": RewardModel(bf16, head, manifest, config),
        "compiled": RewardModel(compiled, head, manifest, config),
        "fp32_compiled": RewardModel(fp32_compiled, head, manifest, config),
        "int8": RewardModel(load_backbone("embedded", quantize="int8"), head, manifest, config),
    }
    paths: dict[str, Callable[[Sequence[ScoreItem]], Any]] = {
        name: (lambda batch, m=m: [r.score for r in m.score(batch)]) for name, m in models.items()
    }
    workloads: dict[str, list[ScoreItem]] = {
        "pairs": [ScoreItem(m, y) for m, c, r in rewardbench_pairs(fp32, pairs, max_length) for y in (c, r)],
        "best_of_16": best_of_n(fp32, 16),
        "grpo_8x8": grpo_groups(fp32, 8, 8, max_length),
    }
    ceilings = shape_ceilings(fp32)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__},
        "model": f"{manifest.model}/{manifest.version}",
        "shape_matmul_gflops": ceilings,
    }
    print("matmul at the backbone's shapes: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.items()))
    for name, items in workloads.items():
        prepared = [models["fp32"].prepare(it) for it in items]
        tokens = sum(p.tokens for p in prepared)
        scores = {p: run(items) for p, run in paths.items()}  # also the warm-up
        slices = [items[k : k + 16] for k in range(0, len(items), 16)]
        seconds = palindrome_seconds(paths, slices, rounds)
        rate = {p: tokens * rounds / sum(s) for p, s in seconds.items()}
        # The raw packed forward in bf16 (no prompt sharing, no heads) against the bf16 ceiling at this context.
        encoded = [p.encoded for p in prepared]
        raw = palindrome_seconds(
            {
                n: lambda b, bb=bb: item_features(bb, b, config.forward, share_prompts=False)
                for n, bb in (("eager", bf16), ("compiled", compiled))
            },
            [encoded[k : k + 16] for k in range(0, len(encoded), 16)],
            rounds,
        )
        raw_rate = {n: tokens * rounds / sum(v) for n, v in raw.items()}
        ceiling = ceilings["bfloat16"] * 1e9 / flops_per_token(fp32, tokens / len(items) / 2)
        row = {
            "items": len(items),
            "tokens": tokens,
            "tokens_per_s": rate,
            "bf16_vs_fp32": ratio_summary(seconds["fp32"], seconds["bf16"]),
            "compiled_vs_fp32": ratio_summary(seconds["fp32"], seconds["compiled"]),
            "compiled_vs_bf16": ratio_summary(seconds["bf16"], seconds["compiled"]),
            "fp32_compiled_vs_fp32": ratio_summary(seconds["fp32"], seconds["fp32_compiled"]),
            "int8_vs_bf16": ratio_summary(seconds["bf16"], seconds["int8"]),
            "raw_bf16_forward_tokens_per_s": raw_rate,
            "bf16_ceiling_tokens_per_s": ceiling,
            "raw_bf16_forward_vs_ceiling": {n: r / ceiling for n, r in raw_rate.items()},
            "max_abs_score_diff_vs_fp32": {
                p: max(abs(a - b) for a, b in zip(s, scores["fp32"], strict=True)) for p, s in scores.items()
            },
        }
        results[name] = row
        ratios = ("compiled_vs_fp32", "bf16_vs_fp32", "compiled_vs_bf16", "fp32_compiled_vs_fp32", "int8_vs_bf16")
        print(
            f"{name}: {len(items)} items, {tokens} tokens; tokens/s "
            + ", ".join(f"{p} {r:.0f}" for p, r in rate.items())
            + "; "
            + ", ".join(f"{k.replace('_vs_', '/')} {v['overall']:.2f}×" for k, v in row.items() if k in ratios)
            + "; raw bf16 forward of the bf16 ceiling: "
            + ", ".join(f"{n} {v:.2f}" for n, v in row["raw_bf16_forward_vs_ceiling"].items())
        )
    if http:
        del models, paths, fp32, bf16, compiled, fp32_compiled  # the servers load their own
        work = {n: (items, results[n]["tokens"]) for n, items in workloads.items()}
        servers = {
            "float32": {"ARMO_DTYPE": "float32", "ARMO_COMPILE": "off"},
            "default": {"ARMO_DTYPE": "auto", "ARMO_COMPILE": "auto"},
        }
        results["http"] = http_leg(work, rounds, concurrency, servers)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
