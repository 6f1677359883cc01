"""Throughput side by side, in one run, on the same inputs: ceiling, naive peer, service.

    bash scripts/bench.sh            # = .venv/bin/python -m benchmarks.run  (writes docs/benchmarks.json)

"tokens" always means the tokens of the full templated sequences of the workload (prompt + response for every
response) — what a scorer without prompt sharing must process — so work saved by sharing shows up as speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import torch
import typer
from loadtests.http_load import run_load

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.encoding import Encoded, Truncation, encode
from armo.model_store.forward import item_features, run_padded
from armo.model_store.reward_model import Prepared, RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

Pair = tuple[list[dict[str, str]], str, str]


# -- workloads ----------------------------------------------------------------------------------------------------
def rewardbench_pairs(backbone: Backbone, n: int, max_length: int) -> list[Pair]:
    """A stratified, deterministic sample of RewardBench pairs (every subset, evenly spaced), none truncated."""
    with gzip.open(DATA / "eval" / "rewardbench_filtered.jsonl.gz", "rt") as f:
        rows = [json.loads(x) for x in f]
    by_subset: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_subset.setdefault(r["subset"], []).append(r)
    fits: list[Pair] = []
    per = max(1, -(-n // len(by_subset)))
    for subset in sorted(by_subset):
        taken = 0
        candidates = by_subset[subset]
        for r in candidates[:: max(1, len(candidates) // (per * 3))]:
            msgs = [{"role": "user", "content": r["prompt"]}]
            lengths = [
                encode(backbone.tokenizer, msgs, y, Truncation(10**6)).length for y in (r["chosen"], r["rejected"])
            ]
            if max(lengths) <= max_length:
                fits.append((msgs, r["chosen"], r["rejected"]))
                taken += 1
            if taken == per:
                break
    return fits[:n]


def best_of_n(backbone: Backbone, n: int, prompt_tokens: int = 1000, response_tokens: int = 100) -> list[ScoreItem]:
    """One ~1,000-token prompt (real documents to summarise) and n real ~100-token responses."""
    tok = backbone.tokenizer
    with gzip.open(DATA / "train" / "pairwise" / "ultrafeedback.jsonl.gz", "rt") as f:
        rows = [json.loads(x) for x in f]
    docs, used = [], 0
    for r in rows:
        text = r["messages"][-1]["content"]
        docs.append(text)
        used += len(tok(text, add_special_tokens=False)["input_ids"])
        if used >= prompt_tokens:
            break
    prompt = "Summarise the following requests in one paragraph each:\n\n" + "\n\n---\n\n".join(docs)
    ids = tok(prompt, add_special_tokens=False)["input_ids"][:prompt_tokens]
    messages = [{"role": "user", "content": str(tok.decode(ids))}]
    responses = []
    for r in rows[len(docs) : len(docs) + n]:
        rid = tok(r["chosen"], add_special_tokens=False)["input_ids"][:response_tokens]
        responses.append(str(tok.decode(rid)).strip() or "OK.")
    return [ScoreItem(messages, y) for y in responses]


# -- measurements -------------------------------------------------------------------------------------------------
def _mm_seconds(a: torch.Tensor, b: torch.Tensor, seconds: float) -> float:
    """Mean wall time of torch.mm(a, b), repeated for about `seconds` after one warm-up call."""
    torch.mm(a, b)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        n += 1
    return (time.perf_counter() - started) / n


def matmul_gflops(size: int = 2048, seconds: float = 3.0) -> float:
    return 2 * size**3 / _mm_seconds(torch.randn(size, size), torch.randn(size, size), seconds) / 1e9


def model_matmul_gflops(backbone: Backbone, rows: int = 1024, seconds: float = 0.5) -> float:
    """The matmul rate at the backbone's own Linear shapes ([rows, in] @ [in, out], weighted by how often each shape
    occurs): what its projections can reach here, as opposed to a large square matmul."""
    shapes: dict[tuple[int, int], int] = {}
    for m in backbone.model.modules():
        if isinstance(m, torch.nn.Linear):
            shapes[(m.in_features, m.out_features)] = shapes.get((m.in_features, m.out_features), 0) + 1
    flops = secs = 0.0
    for (d_in, d_out), count in shapes.items():
        flops += count * 2 * rows * d_in * d_out
        secs += count * _mm_seconds(torch.randn(rows, d_in), torch.randn(d_in, d_out), seconds)
    return flops / secs / 1e9


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def flops_per_token(backbone: Backbone, context: float) -> float:
    """2 × non-embedding parameters (no LM head is run) + attention at the mean causal context: per layer,
    2·d·context for the scores (q·k) and 2·d·context for the weighted sum of values (as Chinchilla counts them;
    sessions 1–4 counted only one of the two, a ceiling ~2 % higher)."""
    cfg = backbone.model.config
    params = sum(p.numel() for n, p in backbone.model.named_parameters() if "embed_tokens" not in n)
    return 2 * params + 4 * cfg.num_hidden_layers * cfg.hidden_size * context


def timed(fn: Callable[[], Any], repeat: int = 1, warm: bool = True) -> tuple[float, Any]:
    if warm:
        fn()  # warm-up (allocator, kernels)
    started = time.perf_counter()
    out = None
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - started) / repeat, out


def palindrome_seconds(
    paths: dict[str, Callable[[Sequence[Any]], Any]], slices: Sequence[Sequence[Any]], rounds: int
) -> dict[str, list[float]]:
    """Seconds each path spends on the whole workload, per round. Within a round every slice is run by every path
    in the order A B C … C B A: this machine's speed drifts by up to 20 % within minutes (docs/BENCHMARKS.md), and
    a palindrome over a few seconds charges a drift that is about linear over that span equally to every path."""
    order = [*paths, *reversed(paths)]
    per_round: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        spent = dict.fromkeys(paths, 0.0)
        for work in slices:
            for name in order:
                started = time.perf_counter()
                paths[name](work)
                spent[name] += (time.perf_counter() - started) / 2  # each path runs every slice twice
        for name, seconds in spent.items():
            per_round[name].append(seconds)
    return per_round


def ratio_summary(slow: list[float], fast: list[float]) -> dict[str, Any]:
    """How many times faster `fast` is, per round and over all rounds (total time over total time)."""
    runs = [s / f for s, f in zip(slow, fast, strict=True)]
    return {
        "runs": runs,
        "median": statistics.median(runs),
        "min": min(runs),
        "max": max(runs),
        "overall": sum(slow) / sum(fast),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int | None = None) -> float:
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.time() + 300
            while time.time() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                        break
                    if "naive" in " ".join(cmd) and httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2).is_success:
                        break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"server not ready in time: see {log}")
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def http_load(url: str, payloads: Sequence[Any], concurrency: int) -> Any:
    asyncio.run(run_load(url, payloads[:2], concurrency=1))  # warm-up
    return asyncio.run(run_load(url, payloads, concurrency=concurrency))


def _store_for_benchmark(backbone: Backbone, tmp: Path) -> tuple[Path, str]:
    """The bundled default artifact; if there is none yet, a random artifact on the embedded backbone (speed
    does not depend on head values)."""
    if ModelStore(BUNDLED_ROOT).versions(DEFAULT_MODEL):
        return BUNDLED_ROOT, DEFAULT_MODEL
    from armo.model_store.backbone import backbone_ref
    from armo.model_store.heads import ArmoHead, GatingConfig
    from armo.model_store.manifest import Manifest, Objective

    torch.manual_seed(0)
    head = ArmoHead(backbone.hidden_size, 4, GatingConfig(hidden_dim=256, n_hidden=2))
    names = ("helpfulness", "correctness", "safety", "verbosity")
    manifest = Manifest(
        model="bench",
        version="random",
        backbone=backbone_ref(backbone, 2048),
        objectives=tuple(Objective(name=n, kind="regression", source="random") for n in names),
        gating=head.gating.config.to_dict(),
    )
    ModelStore(tmp).publish(manifest, head)
    return tmp, "bench"


def main(
    pairs: int = typer.Option(24, help="RewardBench pairs in the workload."),
    max_length: int = typer.Option(1024, help="Longest sequence admitted to the workload (tokens)."),
    concurrency: int = typer.Option(8, help="Concurrent HTTP clients."),
    http: bool = typer.Option(True, help="Also measure over HTTP (starts the service and the naive server)."),
    rounds: int = typer.Option(3, help="Rounds of palindrome-ordered timings of the four pair-scoring paths."),
    slice_pairs: int = typer.Option(6, help="Pairs per timed slice (each path runs each slice twice per round)."),
    out: Path = typer.Option(ROOT / "docs" / "benchmarks.json", help="Where to write the figures."),
) -> None:
    threads = torch.get_num_threads()
    backbone = load_backbone("embedded")
    # The same weights with plain SDPA attention and padded batches: the naive peer runs on it (exactly what the
    # model card's HF forward does), and so does session 4's padded, key/value-cache-sharing scoring path.
    padded = load_backbone("embedded", packed=False)
    tmp = Path(tempfile.mkdtemp(prefix="armo-bench-"))
    store_root, model = _store_for_benchmark(backbone, tmp)
    manifest, head = ModelStore(store_root).load(model)
    rm = RewardModel(backbone, head, manifest, Settings.model_construct().scoring_config(max(max_length, 2048)))
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": threads,
            "torch": torch.__version__,
        },
        "model": f"{manifest.model}/{manifest.version}",
        "backbone": backbone.id,
    }
    print(f"threads={threads}  model={results['model']}")

    # Ceiling: measured matmul rate ÷ FLOPs per token at this workload's mean context.
    work = rewardbench_pairs(backbone, pairs, max_length)
    items = [ScoreItem(m, y) for m, c, r in work for y in (c, r)]
    encoded: list[Encoded] = [rm.prepare(it).encoded for it in items]
    tokens = sum(e.length for e in encoded)
    mean_len = tokens / len(encoded)
    gflops = matmul_gflops()
    ceiling = gflops * 1e9 / flops_per_token(backbone, mean_len / 2)
    results["matmul_gflops"] = gflops
    shape_gflops = model_matmul_gflops(backbone)
    shape_ceiling = shape_gflops * 1e9 / flops_per_token(backbone, mean_len / 2)
    results["model_shape_matmul_gflops"] = shape_gflops
    results["model_shape_ceiling_tokens_per_s"] = shape_ceiling
    print(f"matmul at the backbone's Linear shapes {shape_gflops:.1f} GFLOP/s → {shape_ceiling:.0f} tokens/s")
    results["workload"] = {"pairs": len(work), "sequences": len(encoded), "tokens": tokens, "mean_length": mean_len}
    print(f"matmul {gflops:.1f} GFLOP/s → ceiling {ceiling:.0f} tokens/s; workload {len(work)} pairs, {tokens} tokens")

    # Raw batched forward: the backbone alone, packed (no padding), no sharing, no heads.
    budget = rm.config.forward  # the same (best-on-CPU) forward budget for every batched path

    def raw_forward(enc: Sequence[Encoded] = encoded) -> Any:
        return item_features(backbone, enc, budget, share_prompts=False)

    # Timed paths on the pair workload, interleaved (below). The raw forward. The naive peer: one full sequence per
    # forward pass (the model card's way), then the heads. This service's path in-process: prompt sharing, packed
    # passes, heads; on the fp32 backbone, on session 4's padded path, and on the opt-in int8 ones
    # (armo.model_store.quant; loading calibrates and compiles, untimed).
    prepared = [Prepared(it, e) for it, e in zip(items, encoded, strict=True)]
    by_item = {id(it): p for it, p in zip(items, prepared, strict=True)}
    rm_padded = RewardModel(padded, head, manifest, rm.config)
    models = {"fp32": rm, "fp32-padded": rm_padded}
    for mode in ("int8", "int8-mixed"):
        models[mode] = RewardModel(load_backbone("embedded", quantize=mode), head, manifest, rm.config)

    def naive(batch: Sequence[ScoreItem]) -> list[float]:
        return [
            float(rm_padded.forward_features([p], run_padded(padded, [p.encoded])).score[0])
            for p in (by_item[id(it)] for it in batch)
        ]

    def service_path(m: RewardModel) -> Callable[[Sequence[ScoreItem]], list[float]]:
        return lambda batch: [r.score for r in m.score(batch)]

    def raw(batch: Sequence[ScoreItem]) -> Any:
        return raw_forward([by_item[id(it)].encoded for it in batch])

    paths = {"naive": naive, "raw": raw} | {name: service_path(m) for name, m in models.items()}
    scores = {name: path(items) for name, path in paths.items()}  # also the warm-up
    # Slices of whole pairs, a few seconds per path each; every path sees the same slices.
    slices = [items[k : k + 2 * slice_pairs] for k in range(0, len(items), 2 * slice_pairs)]
    seconds = palindrome_seconds(paths, slices, rounds)
    total = {name: sum(v) / rounds for name, v in seconds.items()}  # mean seconds for the whole workload
    results["timing"] = {"rounds": rounds, "slice_pairs": slice_pairs, "seconds_per_round": seconds}
    results["ceiling_tokens_per_s"] = ceiling
    results["raw_forward_tokens_per_s"] = tokens / total["raw"]
    results["fp32_forward_vs_ceiling"] = tokens / total["raw"] / ceiling
    results["fp32_forward_vs_model_shape_ceiling"] = tokens / total["raw"] / shape_ceiling
    results["raw_vs_naive"] = ratio_summary(seconds["naive"], seconds["raw"])
    results["naive_tokens_per_s"] = tokens / total["naive"]
    results["naive_pairs_per_s"] = len(work) / total["naive"]
    results["inprocess_tokens_per_s"] = tokens / total["fp32"]
    results["inprocess_pairs_per_s"] = len(work) / total["fp32"]
    results["inprocess_max_abs_diff_vs_naive"] = max(
        abs(a - b) for a, b in zip(scores["fp32"], scores["naive"], strict=True)
    )
    pair = ratio_summary(seconds["naive"], seconds["fp32"])
    results["inprocess_vs_naive"] = pair
    results["inprocess_vs_naive_runs"] = pair["runs"]
    results["inprocess_vs_naive_mean"] = statistics.fmean(pair["runs"])
    results["inprocess_vs_naive_sd"] = statistics.stdev(pair["runs"]) if rounds > 1 else 0.0
    print("in-process / naive (pairs), per round: " + ", ".join(f"{r:.3f}" for r in pair["runs"]))
    results["padded_inprocess_tokens_per_s"] = tokens / total["fp32-padded"]
    results["padded_vs_naive"] = ratio_summary(seconds["naive"], seconds["fp32-padded"])
    results["packed_vs_padded"] = ratio_summary(seconds["fp32-padded"], seconds["fp32"])
    results["padded_max_abs_diff_vs_naive"] = max(
        abs(a - b) for a, b in zip(scores["fp32-padded"], scores["naive"], strict=True)
    )
    print(
        "packed / padded (session 4's path), per round: "
        + ", ".join(f"{r:.3f}" for r in results["packed_vs_padded"]["runs"])
    )
    for mode in ("int8", "int8-mixed"):
        key = mode.replace("-", "_")
        vs_fp32 = ratio_summary(seconds["fp32"], seconds[mode])
        vs_naive = ratio_summary(seconds["naive"], seconds[mode])  # the pair workload's "≥ 1.6 × accelerated"
        results[f"{key}_inprocess_tokens_per_s"] = tokens / total[mode]
        results[f"{key}_vs_fp32"] = vs_fp32
        results[f"{key}_vs_fp32_inprocess"] = vs_fp32["overall"]
        results[f"{key}_vs_naive_rounds"] = vs_naive
        results[f"{key}_vs_naive"] = vs_naive["overall"]
        results[f"{key}_max_abs_score_diff"] = max(
            abs(a - b) for a, b in zip(scores[mode], scores["fp32"], strict=True)
        )
        print(
            f"{mode}: {tokens / total[mode]:.0f} tok/s; × fp32 per round "
            + ", ".join(f"{r:.2f}" for r in vs_fp32["runs"])
            + "; × naive per round "
            + ", ".join(f"{r:.2f}" for r in vs_naive["runs"])
        )
    del models, paths

    # Best-of-N: one 1,000-token prompt, N ~100-token responses; shared prompt vs scoring N sequences independently.
    for n in (4, 16):
        bon = best_of_n(backbone, n)
        bon_enc = [rm.prepare(it).encoded for it in bon]
        indep_s, _ = timed(lambda enc=bon_enc: item_features(backbone, enc, budget, share_prompts=False))
        shared_s, _ = timed(lambda b=bon: rm.score(b))
        results[f"best_of_{n}"] = {
            "tokens": sum(e.length for e in bon_enc),
            "independent_s": indep_s,
            "shared_s": shared_s,
            "speedup": indep_s / shared_s,
        }
        print(f"best-of-{n}: independent {indep_s:.2f}s, shared {shared_s:.2f}s → {indep_s / shared_s:.2f}×")
    results["best_of_16_speedup"] = results["best_of_16"]["speedup"]
    results["inprocess_peak_rss_mb"] = peak_rss_mb()

    if http:
        env = {"ARMO_STORE_ROOT": str(store_root), "ARMO_MODEL": model, "ARMO_WATCH_INTERVAL_S": "0"}
        env |= {"ARMO_LOG_LEVEL": "WARNING", "ARMO_REQUEST_TIMEOUT_S": "600", "ARMO_MAX_QUEUE": "4096"}
        port = free_port()
        cmd = [sys.executable, "-m", "armo.cli", "serve", "--port", str(port)]
        with server(cmd, env, port, tmp / "service.log") as proc:
            payloads = [{"items": [{"messages": m, "response": c}, {"messages": m, "response": r}]} for m, c, r in work]
            # The raw forward is timed again right before and after the load (the server idles meanwhile), so the
            # overhead ratio compares the two at the same machine speed.
            raw_around = [timed(raw_forward, warm=False)[0]]
            load = http_load(f"http://127.0.0.1:{port}/v1/score", payloads, concurrency)
            raw_around.append(timed(raw_forward, warm=False)[0])
            service_scores = [s["score"] for body in load.bodies for s in body["results"]]
            results["service_rss_mb"] = peak_rss_mb(proc.pid)
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.naive_server:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        with server(cmd, env, port, tmp / "naive.log") as proc:
            singles = [{"query": [{"messages": it.messages, "response": it.response}]} for it in items]
            naive_load = http_load(f"http://127.0.0.1:{port}/get_reward", singles, concurrency)
            naive_http_scores = [b["rewards"][0] for b in naive_load.bodies]
            results["naive_server_rss_mb"] = peak_rss_mb(proc.pid)
        results["service_http"] = load.summary() | {"statuses": load.statuses}
        results["naive_http"] = naive_load.summary() | {"statuses": naive_load.statuses}
        results["service_tokens_per_s"] = tokens / load.wall_s
        results["service_pairs_per_s"] = len(work) / load.wall_s
        results["naive_server_pairs_per_s"] = len(work) / naive_load.wall_s
        results["p99_latency_s"] = load.percentile(99)
        results["raw_forward_around_http_tokens_per_s"] = [tokens / t for t in raw_around]
        results["service_vs_raw_forward"] = results["service_tokens_per_s"] / (tokens / statistics.fmean(raw_around))
        results["service_vs_ceiling"] = results["service_tokens_per_s"] / ceiling
        results["service_vs_naive"] = results["service_pairs_per_s"] / results["naive_pairs_per_s"]
        results["service_vs_naive_server"] = results["service_pairs_per_s"] / results["naive_server_pairs_per_s"]
        results["service_max_abs_diff_vs_naive"] = max(
            abs(a - b) for a, b in zip(service_scores, naive_http_scores, strict=True)
        )
    else:
        results["service_tokens_per_s"] = results["inprocess_tokens_per_s"]
        results["service_vs_ceiling"] = results["inprocess_tokens_per_s"] / ceiling
        results["service_vs_naive"] = results["inprocess_pairs_per_s"] / results["naive_pairs_per_s"]
        results["p99_latency_s"] = None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    keys = [k for k, v in results.items() if isinstance(v, float)]
    width = max(len(k) for k in keys)
    for k in keys:
        print(f"{k:<{width}}  {results[k]:.4g}")
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
