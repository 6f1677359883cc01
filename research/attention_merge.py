"""Would a prompt group's attention run faster split in two and merged by log-sum-exp? The packed pass makes one
masked SDPA call per child (its queries against the root's keys and its own); the alternative makes one unmasked call
for every child's queries against the root, one causal call per child on its own tokens, and merges the two halves
with their log-sum-exps (`_scaled_dot_product_flash_attention_for_cpu` returns them). Same FLOPs, fewer and larger
unmasked calls. Timed on SmolLM2's attention shapes (9 heads × 64) in bf16 for the benchmark workloads' groups.

    .venv/bin/python -m research.attention_merge
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention as sdpa

from armo.model_store.packing import child_mask
from research.attention_rate import seconds

HEADS, HEAD_DIM = 9, 64
flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def group(root: int, children: list[int], dtype: torch.dtype = torch.bfloat16) -> None:
    g = torch.Generator().manual_seed(0)
    n = root + sum(children)
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, generator=g).to(dtype) for _ in range(3))
    starts = [root]
    for length in children[:-1]:
        starts.append(starts[-1] + length)
    masks = {c: child_mask(root, c, dtype, q.device) for c in set(children) if root >= c}

    def per_child() -> Tensor:  # what armo.model_store.packing does
        out = torch.empty_like(q)
        out[:, :, :root] = sdpa(q[:, :, :root], k[:, :, :root], v[:, :, :root], is_causal=True)
        for s, c in zip(starts, children, strict=True):
            kk = torch.cat([k[:, :, :root], k[:, :, s : s + c]], 2)
            vv = torch.cat([v[:, :, :root], v[:, :, s : s + c]], 2)
            mask = masks.get(c)
            if mask is None:
                qq = torch.cat([q[:, :, :root], q[:, :, s : s + c]], 2)
                out[:, :, s : s + c] = sdpa(qq, kk, vv, is_causal=True)[:, :, root:]
            else:
                out[:, :, s : s + c] = sdpa(q[:, :, s : s + c], kk, vv, attn_mask=mask)
        return out

    def merged() -> Tensor:
        out = torch.empty_like(q)
        out[:, :, :root] = sdpa(q[:, :, :root], k[:, :, :root], v[:, :, :root], is_causal=True)
        o_root, lse_root = flash(q[:, :, root:], k[:, :, :root], v[:, :, :root])[:2]
        own = [flash(q[:, :, s : s + c], k[:, :, s : s + c], v[:, :, s : s + c], is_causal=True)[:2]
               for s, c in zip(starts, children, strict=True)]  # fmt: skip
        o_own, lse_own = torch.cat([o for o, _ in own], 2), torch.cat([lse for _, lse in own], 2)
        top = torch.maximum(lse_root, lse_own)
        w_root, w_own = (lse_root - top).exp()[..., None], (lse_own - top).exp()[..., None]
        out[:, :, root:] = ((o_root.float() * w_root + o_own.float() * w_own) / (w_root + w_own)).to(dtype)
        return out

    diff = (per_child().float() - merged().float()).abs().max().item()
    a, b = seconds(per_child), seconds(merged)
    print(
        f"root {root:4d}, {len(children):2d} children of ~{sum(children) // len(children):3d}: "
        f"per child {a * 1e3:5.1f} ms, merged {b * 1e3:5.1f} ms ({a / b:.2f}×), max |Δ| {diff:.4f}"
    )


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    group(1000, [100] * 16)  # Best-of-16
    group(180, [90, 110, 70, 130, 100, 95, 85, 120])  # a GRPO group
    group(120, [140, 130])  # a pair
    group(60, [300, 280])  # a pair with long responses


if __name__ == "__main__":
    main()
