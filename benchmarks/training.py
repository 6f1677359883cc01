"""Training in fp32 against bf16 on this CPU, side by side in one run, through the real `armo train` commands.

    .venv/bin/python -m benchmarks.training          # writes docs/benchmarks_training.json

- Extraction: `armo train extract --config configs/default.json --part 0` (the default config's first extraction job:
  its responses through the backbone into the feature cache) into an empty cache, with `dtype` float32 then bfloat16.
- Stage 0 over the whole backbone (`stage0.layers` = `cache_layers` = every layer, no stored cache, LoRA on every
  Linear): one epoch over a seeded sample of `--pairs` training pairs of the same config, fp32 then bf16 (autocast
  over fp32 master weights); the figure is the epoch's training tokens/s (validation passes excluded).
Each leg runs in its own process with the config's torch threads, one after the other; the machine should be idle.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

ROOT = Path(__file__).resolve().parents[1]
ARMO = [sys.executable, "-m", "armo.cli"]
DTYPES = ("float32", "bfloat16")


def _armo(args: list[str]) -> float:
    """Run `armo ARGS` to completion; its wall seconds."""
    started = time.perf_counter()
    subprocess.run([*ARMO, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def extraction(config: Path, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dtype in DTYPES:
        cache = work / f"features-{dtype}"
        args = ["train", "extract", "--config", str(config), "--part", "0"]
        seconds = _armo([*args, "--set", f"cache_dir={cache}", "--set", f"dtype={dtype}"])
        jobs = [json.loads(p.read_text()) for p in cache.glob("*/job.json")]
        tokens = sum(r["tokens"] for j in jobs for r in j.get("runs", []) if "tokens" in r)
        out[dtype] = {"wall_s": round(seconds, 1), "tokens": tokens or None}
    out["bf16_speedup"] = round(out["float32"]["wall_s"] / out["bfloat16"]["wall_s"], 2)
    return out


def whole_backbone(config: Path, work: Path, pairs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dtype in DTYPES:
        runs = work / f"stage0-{dtype}"
        sets = {
            "cache_dir": str(work / f"features-{dtype}"),
            "dtype": dtype,
            "data.extensions": "[]",
            "stage0.layers": "30",
            "stage0.cache_layers": "30",
            "stage0.store_cache": "false",
            "stage0.max_pairs": str(pairs),
            "stage0.epochs": "1",
            "stage0.head_warmup": "false",
            "stage0.out_dir": str(runs),
        }
        args = ["train", "backbone", "--config", str(config), "--name", "bench"]
        for k, v in sets.items():
            args += ["--set", f"{k}={v}"]
        wall = _armo(args)
        report = json.loads((runs / "bench" / "stage0.json").read_text())
        epoch = report["history"][-1]
        out[dtype] = {
            "wall_s": round(wall, 1),
            "train_s": epoch["train_seconds"],
            "train_tokens_per_s": epoch["train_tokens_per_s"],
            "train_pairs": report["train_pairs"],
        }
    out["bf16_speedup"] = round(out["bfloat16"]["train_tokens_per_s"] / out["float32"]["train_tokens_per_s"], 2)
    return out


def main(
    config: Path = typer.Option(ROOT / "configs/default.json", help="the training config"),
    pairs: int = typer.Option(64, help="stage 0: training pairs in the timed epoch"),
    out: Path = typer.Option(ROOT / "docs/benchmarks_training.json", help="where the figures go"),
    skip_extract: bool = typer.Option(False, help="only the stage-0 legs"),
) -> None:
    with tempfile.TemporaryDirectory(prefix="armo-bench-train-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {
            "date": dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "command": "python -m benchmarks.training " + " ".join(sys.argv[1:]),
            "config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config),
        }
        if not skip_extract:
            result["extract_part0"] = extraction(config, work)
            print(json.dumps(result["extract_part0"]), flush=True)
        result["stage0_whole_backbone"] = whole_backbone(config, work, pairs)
        print(json.dumps(result["stage0_whole_backbone"]), flush=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
