"""Where a packed fp32 pass spends its time, and would fusing the Llama layer's kernels close the gap to the
matmul ceiling? (issue 5: "the fp32 forward reaches >= 85 % of the matmul-derived ceiling"). A study, not a product
path: it changes nothing in the service.

On the same packed passes of real RewardBench pairs (whole sequences, as `benchmarks.run`'s raw forward; with
`--share`, the service's plan: each prompt once, its two responses after it) it times, interleaved in palindrome
rounds:

- `hf`: the service's packed forward (transformers' Llama modules, attention through `packing.segment_attention`);
- `fused`: a hand-fused forward over the same weights and the same attention: q/k/v in one GEMM, gate/up in one
  GEMM, both residual adds folded into their GEMM (`addmm`), `F.rms_norm`, SiLU·up in place;
- `fused, no attention`: `fused` with attention replaced by a copy of the values — the time attention costs;
- `GEMMs only`: the pass's matrix products alone, at the same shapes.

The shares of a pass follow by subtraction (no profiler: it inflates small kernels here). Also printed: the ceiling
of `benchmarks.run` (2,048² matmul rate ÷ FLOPs per token) and each path's fraction of it.

    .venv/bin/python -m research.kernel_study --pairs 24 --rounds 3
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
import typer
from torch import Tensor

from armo.model_store import packing
from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.encoding import encode
from benchmarks.run import flops_per_token, matmul_gflops, palindrome_seconds, rewardbench_pairs


class FusedLlama:
    """The Llama decoder stack over the model's own weights, with fewer, larger kernels (see the module doc)."""

    def __init__(self, model: torch.nn.Module, skip_attention: bool = False) -> None:
        cfg = model.config
        self.model, self.skip_attention = model, skip_attention
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.eps, self.inter = cfg.rms_norm_eps, cfg.intermediate_size
        self.layers = []
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
            self.layers.append((norms[0], qkv, attn.o_proj.weight, norms[1], gate_up, mlp.down_proj.weight))

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # x [N, h, D]; cos, sin [N, 1, D]
        half = self.head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return torch.addcmul(x * cos, rotated, sin)

    def __call__(self, ids: Tensor, positions: Tensor, placed: Sequence[packing.Placed]) -> Tensor:
        h = self.model.embed_tokens(ids)[0]  # [N, d]
        cos, sin = (t[0][:, None] for t in self.model.rotary_emb(h[None], positions))  # [N, 1, D]
        n, d, hd = h.shape[0], h.shape[1], self.heads * self.head_dim
        kd = self.kv_heads * self.head_dim
        for ln1, wqkv, wo, ln2, wgu, wd in self.layers:
            qkv = F.rms_norm(h, (d,), ln1, self.eps) @ wqkv.T  # [N, hd + 2·kd]
            v = qkv[:, hd + kd :].view(n, self.kv_heads, self.head_dim)
            if self.skip_attention:
                o = v.repeat_interleave(self.heads // self.kv_heads, dim=1).reshape(n, hd)
            else:
                q = self._rope(qkv[:, :hd].view(n, self.heads, self.head_dim), cos, sin)
                k = self._rope(qkv[:, hd : hd + kd].view(n, self.kv_heads, self.head_dim), cos, sin)
                o, _ = packing.segment_attention(
                    self.model,
                    *(t.transpose(0, 1)[None] for t in (q, k, v)),
                    None,
                    scaling=self.head_dim**-0.5,
                    **{packing.PLAN_KWARG: placed},
                )
                o = o[0].reshape(n, hd)
            h = torch.addmm(h, o, wo.T)
            gu = F.rms_norm(h, (d,), ln2, self.eps) @ wgu.T  # [N, 2·inter]
            h = torch.addmm(h, F.silu(gu[:, : self.inter]).mul_(gu[:, self.inter :]), wd.T)
        return F.rms_norm(h, (d,), self.model.norm.weight, self.eps)


Pass = tuple[Tensor, Tensor, list[packing.Placed]]


def packed_passes(backbone: Backbone, pairs: int, budget: int, share: bool) -> tuple[list[Pass], float]:
    """Packed passes of `budget` real tokens over RewardBench pairs: every sequence whole (`benchmarks.run`'s raw
    forward) or, with `share`, the service's plan (one unit per pair: the prompt, then both responses).
    -> (passes, mean length of the whole sequences, for the ceiling's FLOPs per token)"""
    units, lengths = [], []
    for msgs, chosen, rejected in rewardbench_pairs(backbone, pairs, 2048):
        a, b = (encode(backbone.tokenizer, msgs, y, max_length=2048) for y in (chosen, rejected))
        lengths += [a.length, b.length]
        cut = a.prefix_length  # the shared prompt, as `features.extract_many` cuts it
        if share:
            units.append(packing.Unit(a.input_ids[:cut], (a.input_ids[cut:], b.input_ids[cut:])))
        else:
            units += [packing.Unit(a.input_ids), packing.Unit(b.input_ids)]
    out = []
    for idx in packing.passes(units, budget, 64):
        ids, positions, placed = packing.plan([units[i] for i in idx])
        out.append((torch.tensor([ids]), torch.tensor([positions]), placed))
    return out, sum(lengths) / len(lengths)


def bmm_attention(q: Tensor, k: Tensor, v: Tensor, placed: Sequence[packing.Placed]) -> Tensor:
    """Causal attention of whole-sequence segments by explicit products (scores for the full square, then a causal
    mask and softmax): the math path, which does twice the causal FLOPs but through batched GEMMs.
    q [1, H, N, D], k and v [1, H_kv, N, D] -> [1, N, H, D]."""
    heads, kv_heads, n, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    g = heads // kv_heads
    out = torch.empty(1, n, heads, d)
    for u in placed:
        r, length = slice(u.start, u.start + u.root), u.root
        scores = torch.bmm(q[0, :, r].reshape(kv_heads, g * length, d), k[0, :, r].transpose(1, 2))  # [H_kv, gL, L]
        causal = torch.full((length, length), float("-inf")).triu_(1)
        scores.view(kv_heads, g, length, length).mul_(d**-0.5).add_(causal)
        out[0, r] = torch.bmm(scores.softmax(-1), v[0, :, r]).view(heads, length, d).transpose(0, 1)
    return out


model_stub = torch.nn.Module()  # segment_attention ignores its module argument


def _document_causal(seg: Tensor) -> Callable[[Any, Any, Tensor, Tensor], Tensor]:
    """FlexAttention mask: a query sees keys of its own segment (`seg` [N]: segment of each position), causally."""
    return lambda b, h, qi, ki: (seg[qi] == seg[ki]) & (ki <= qi)


def attention_kernels(work: Sequence[Pass], cfg: Any, repeat: int) -> tuple[dict[str, float], float]:
    """Seconds per layer for one pass's attention (random q/k/v of the pass's shape, summed over the passes): the
    service's flash kernel per segment, the math path by GEMMs, and FlexAttention (compiled; one call per pass
    with a document-causal block mask). Whole-sequence passes only (no children).
    -> (seconds per kernel, largest difference of either alternative from the service's kernel)"""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    spent = {"flash per segment (the service)": 0.0, "math by GEMMs": 0.0, "FlexAttention, compiled": 0.0}
    worst = 0.0
    for ids, _, placed in work:
        n = int(ids.shape[1])
        q, k, v = torch.randn(1, heads, n, d), torch.randn(1, kv_heads, n, d), torch.randn(1, kv_heads, n, d)
        seg = torch.zeros(n, dtype=torch.long)
        for i, u in enumerate(placed):
            seg[u.start : u.start + u.root] = i
        mask = create_block_mask(_document_causal(seg), 1, 1, n, n, device="cpu")
        paths: dict[str, Callable[[], Any]] = {
            "flash per segment (the service)": partial(
                packing.segment_attention, model_stub, q, k, v, None, scaling=d**-0.5, **{packing.PLAN_KWARG: placed}
            ),
            "math by GEMMs": partial(bmm_attention, q, k, v, placed),
            "FlexAttention, compiled": partial(flex, q, k, v, block_mask=mask, enable_gqa=True, scale=d**-0.5),
        }
        ref = paths["flash per segment (the service)"]()[0]  # [1, N, H, D]
        worst = max(
            worst,
            float((paths["math by GEMMs"]() - ref).abs().max()),
            float((paths["FlexAttention, compiled"]().transpose(1, 2) - ref).abs().max()),
        )
        for name, f in [*paths.items(), *reversed(paths.items())]:
            f()  # warm-up (and, for FlexAttention, a compile per new length: untimed)
            started = time.perf_counter()
            for _ in range(repeat):
                f()
            spent[name] += (time.perf_counter() - started) / repeat / 2
    return spent, worst


def gemm_only(model: torch.nn.Module) -> Callable[[Tensor], None]:
    """The pass's matrix products alone: every Linear of every layer on an [N, in] input."""
    linears = [m for m in model.layers.modules() if isinstance(m, torch.nn.Linear)]

    def run(x: Tensor) -> None:  # x [N, max in_features]
        for m in linears:
            torch.mm(x[:, : m.in_features], m.weight.T)

    return run


def main(
    pairs: Annotated[int, typer.Option(help="RewardBench pairs (stratified, as benchmarks.run)")] = 24,
    budget: Annotated[int, typer.Option(help="real tokens per packed pass (the service's default)")] = 1024,
    rounds: Annotated[int, typer.Option(help="palindrome rounds")] = 3,
    threads: Annotated[int, typer.Option(help="torch threads")] = 2,
    share: Annotated[bool, typer.Option(help="share each pair's prompt (the service's plan)")] = False,
    attention_passes: Annotated[
        int, typer.Option(help="passes for the attention-kernel comparison (FlexAttention compiles per length)")
    ] = 6,
    out: Annotated[Path | None, typer.Option(help="also write the figures as JSON here")] = None,
) -> None:
    torch.set_num_threads(threads)
    backbone = load_backbone("embedded")
    model = backbone.model
    work, mean_len = packed_passes(backbone, pairs, budget, share)
    tokens = sum(int(ids.shape[1]) for ids, _, _ in work)
    fused, no_attention = FusedLlama(model), FusedLlama(model, skip_attention=True)
    widest = max(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    gemms = gemm_only(model)
    inputs = [torch.randn(int(ids.shape[1]), widest) for ids, _, _ in work]

    def hf(s: Sequence[Any]) -> None:
        for (ids, positions, placed), _ in s:
            model(input_ids=ids, position_ids=positions, use_cache=False, **{packing.PLAN_KWARG: placed})

    # each path takes a slice of (pass, random GEMM input of the pass's length) pairs
    paths: dict[str, Callable[[Sequence[Any]], Any]] = {
        "hf": hf,
        "fused": lambda s: [fused(*p) for p, _ in s],
        "fused, no attention": lambda s: [no_attention(*p) for p, _ in s],
        "GEMMs only": lambda s: [gemms(x) for _, x in s],
    }
    with torch.inference_mode():
        ids, positions, placed = work[0]
        reference = model(input_ids=ids, position_ids=positions, use_cache=False, **{packing.PLAN_KWARG: placed})
        diff = float((reference.last_hidden_state[0] - fused(ids, positions, placed)).abs().max())
        scale = float(reference.last_hidden_state.abs().max())
        pairs_of = list(zip(work, inputs, strict=True))
        seconds = palindrome_seconds(paths, [pairs_of[i : i + 2] for i in range(0, len(work), 2)], rounds)
    ceiling = matmul_gflops() * 1e9 / flops_per_token(backbone, mean_len / 2)
    total = {name: sum(v) / rounds for name, v in seconds.items()}
    hf_s = total["hf"]
    print(f"{len(work)} packed passes, {tokens} tokens; fused vs hf: max |Δ hidden| {diff:.1e} (scale {scale:.0f})")
    print(f"ceiling (2,048² matmul rate ÷ FLOPs per token) {ceiling:.0f} tokens/s")
    for name, s in total.items():
        runs = " ".join(f"{hf_s_r / r:.3f}" for hf_s_r, r in zip(seconds["hf"], seconds[name], strict=True))
        print(
            f"{name:22s} {tokens / s:7.0f} tok/s  {tokens / s / ceiling:.2f} of ceiling  "
            f"{s / hf_s:.2f} of an hf pass  (hf ÷ this per round: {runs})"
        )
    shares = {
        "GEMMs": total["GEMMs only"] / hf_s,
        "attention": (total["fused"] - total["fused, no attention"]) / hf_s,
    }
    shares["rest"] = 1 - shares["GEMMs"] - shares["attention"]
    print("share of an hf pass: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    kernels: dict[str, float] = {}
    kernel_diff = 0.0
    if not share and attention_passes:
        with torch.inference_mode():
            kernels, kernel_diff = attention_kernels(work[:attention_passes], model.config, repeat=5)
        flash = kernels["flash per segment (the service)"]
        print(f"attention of {attention_passes} passes, per layer (max |Δ| from flash {kernel_diff:.1e}):")
        for name, s in kernels.items():
            print(f"  {name:32s} {1e3 * s:6.1f} ms  {s / flash:.2f} × the service's")
    if out is not None:
        out.write_text(
            json.dumps(
                {
                    "tokens": tokens,
                    "ceiling_tokens_per_s": ceiling,
                    "seconds_per_round": seconds,
                    "tokens_per_s": {k: tokens / v for k, v in total.items()},
                    "shares_of_hf_pass": shares,
                    "max_abs_diff": diff,
                    "attention_seconds_per_layer": kernels,
                    "attention_max_abs_diff": kernel_diff,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    typer.run(main)
