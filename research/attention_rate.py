"""How fast PyTorch's CPU scaled-dot-product attention runs on SmolLM2's attention shapes (9 heads × 64), causal
against unmasked, fp32 against bf16: why attention is a large share of a packed bf16 pass on this CPU.

    .venv/bin/python -m research.attention_rate

FLOPs counted: 4 · L² · D · H for unmasked attention, half of it for causal (the work a causal kernel must do).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

HEADS, HEAD_DIM = 9, 64


def seconds(call: Callable[[], object], repeats: int = 5) -> float:
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for dtype in (torch.float32, torch.bfloat16):
        for length in (256, 1024, 4096):
            q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, dtype=dtype) for _ in range(3))
            full = 4 * length * length * HEAD_DIM * HEADS
            causal = seconds(lambda q=q, k=k, v=v: sdpa(q, k, v, is_causal=True))
            unmasked = seconds(lambda q=q, k=k, v=v: sdpa(q, k, v))
            print(
                f"{dtype!s:15} L={length:5}: causal {full / 2 / causal / 1e9:6.0f} GFLOP/s, "
                f"unmasked {full / unmasked / 1e9:6.0f} GFLOP/s"
            )


if __name__ == "__main__":
    main()
