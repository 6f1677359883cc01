"""Which parts of the backbone can run in bf16 on this CPU: speed and score drift of each precision policy.

    .venv/bin/python -m research.precision_study [--pairs 24] [--bon 16]

Policies, each on the same weights and the same inputs (RewardBench pairs + one Best-of-N group), the bundled
artifact's heads in fp32 reading fp32 features:
- fp32: today's path;
- autocast: fp32 weights under torch.autocast("cpu", bfloat16) (weights cast on every call);
- linears: Linear weights stored in bf16, their inputs cast to bf16 and outputs back to fp32; residual stream,
  norms, rotary and attention in fp32;
- bf16: the whole model cast to bf16 (residual stream included), features cast to fp32 for the heads.
Prints tokens/s (best of `repeat`), the ratio to fp32, mean/max |Δ score| and the Spearman correlation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import typer
from benchmarks.run import best_of_n, rewardbench_pairs
from scipy.stats import spearmanr
from torch import Tensor, nn

from armo.model_store.backbone import load_backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.settings import Settings


class Bf16Linear(nn.Module):
    """A Linear with bf16 weights: input cast to bf16, the matmul in bf16, output cast back to the input's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        b = linear.bias
        self.bias = None if b is None else nn.Parameter(b.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def apply_policy(model: nn.Module, policy: str) -> None:
    if policy == "bf16":
        model.to(torch.bfloat16)
        return
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, Bf16Linear(m))


def main(pairs: int = 24, bon: int = 16, repeat: int = 3) -> None:
    store = ModelStore(BUNDLED_ROOT)
    manifest, head = store.load(DEFAULT_MODEL)
    scoring = Settings.model_construct().scoring_config(manifest.backbone.max_length)
    base = load_backbone("embedded")
    items = [ScoreItem(m, y) for m, c, r in rewardbench_pairs(base, pairs, 1024) for y in (c, r)]
    items += best_of_n(base, bon, prompt_tokens=600, response_tokens=100)
    rm = RewardModel(base, head, manifest, scoring)
    prepared = [rm.prepare(it) for it in items]
    tokens = sum(p.tokens for p in prepared)
    print(f"{len(items)} sequences, {tokens} tokens; torch threads {torch.get_num_threads()}")

    def timed(model: RewardModel, wrap: Callable[[], object] | None = None) -> tuple[float, torch.Tensor]:
        best, score = float("inf"), torch.empty(0)
        for _ in range(repeat + 1):  # the first call warms up
            started = time.perf_counter()
            with wrap() if wrap else torch.inference_mode():  # type: ignore[attr-defined]
                score = model.forward(prepared).score
            best = min(best, time.perf_counter() - started)
        return best, score

    results: dict[str, tuple[float, torch.Tensor]] = {"fp32": timed(rm)}
    results["autocast"] = timed(rm, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    for policy in ("linears", "bf16"):
        bb = load_backbone("embedded")
        apply_policy(bb.model, policy)
        results[policy] = timed(RewardModel(bb, head, manifest, scoring))
        del bb
    ref_t, ref = results["fp32"]
    print(f"{'policy':14s} {'tok/s':>8s} {'× fp32':>7s} {'mean|Δ|':>8s} {'max|Δ|':>7s} {'spearman':>8s}")
    for name, (t, s) in results.items():
        d = (s - ref).abs()
        rho = spearmanr(s.numpy(), ref.numpy()).statistic
        print(f"{name:14s} {tokens / t:8.0f} {ref_t / t:7.2f} {d.mean():8.4f} {d.max():7.3f} {rho:8.4f}")
    print(f"score std (fp32) {ref.std():.3f}")


if __name__ == "__main__":
    typer.run(main)
