"""The opt-in int8 backbone for the CPU: weights int8 per output channel, activations int8 per token, SmoothQuant.

Why not `torch.ao.quantization.quantize_dynamic` (what this project used first): it quantises activations with ONE
scale per call, over the whole batch, so one outlier token flattens every other token in the batch and a score
depends on which requests shared its batch. On the embedded backbone its scores correlated 0.27 with fp32 on
validation pairs (docs/BENCHMARKS.md). Here:
- per-token activation scales keep each row's quantisation a function of that row alone (batch invariant);
- SmoothQuant (Xiao et al., 2023) divides each input channel by s_j = max|X_j|^a / max|W_j|^(1-a) and multiplies
  the weight's column by it (exact in real arithmetic), which moves the few outlier activation channels
  (max/median up to ~140 here) into the weights, where per-channel scales absorb them. max|X_j| is measured once,
  at load, on a small hand-written calibration set shipped with the package (`calibration.json`);
- the int8 x int8 -> int32 product is `torch._int_mm` (oneDNN VNNI on x86), and the quantise / rescale around it
  is compiled by torch.compile into fused loops: eager, those memory-bound steps cost as much as the matmul.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

CALIBRATION = Path(__file__).with_name("calibration.json")
# Names the numerics: a cache of features made by one scheme must not be read by another (armo eval --quantize).
SCHEME = "w8-channel.a8-token.smooth0.5"
SMOOTH_ALPHA = 0.5  # SmoothQuant's default migration strength; 0.3 and 0.7 agreed less with fp32 on validation pairs


def int8_matmul(x: Tensor, inv_smooth: Tensor, weight_t: Tensor, weight_scale: Tensor) -> Tensor:
    """x [N, in] fp32 -> [N, out] fp32: smooth, quantise each row to int8, integer product, rescale."""
    xs = x * inv_smooth
    scale = xs.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0  # [N, 1]
    xq = torch.round(xs / scale).to(torch.int8)
    return torch._int_mm(xq, weight_t).float() * scale * weight_scale


class _Kernel:
    """`int8_matmul` compiled once per process (one dynamic-shape graph serves every Linear shape); if the
    compiler is unavailable (no C++ toolchain), the eager function — identical results, slower — is used."""

    def __init__(self) -> None:
        self._fn: Callable[..., Tensor] | None = None

    def __call__(self, *args: Tensor) -> Tensor:
        if self._fn is None:
            self._fn = torch.compile(int8_matmul, dynamic=True)
        try:
            return self._fn(*args)
        except Exception as exc:  # torch._dynamo / inductor failures have no common narrow base class
            if self._fn is int8_matmul:
                raise
            log.warning("torch.compile of the int8 kernel failed (%s); using the eager kernel", exc)
            self._fn = int8_matmul
            return int8_matmul(*args)


KERNEL = _Kernel()


class Int8Linear(nn.Module):
    """Drop-in for an nn.Linear: y = int8(x / s) @ int8(W * s)^T, rescaled per token and per output channel."""

    inv_smooth: Tensor
    weight_t: Tensor
    weight_scale: Tensor
    bias: Tensor | None

    def __init__(self, linear: nn.Linear, act_absmax: Tensor | None, alpha: float = SMOOTH_ALPHA) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # [out, in]
        smooth = torch.ones(w.shape[1])
        if act_absmax is not None:
            smooth = act_absmax.float().clamp(min=1e-5) ** alpha / w.abs().amax(dim=0).clamp(min=1e-5) ** (1 - alpha)
            smooth = smooth.clamp(min=1e-2)  # a dead calibration channel must not blow its weights up
        w = w * smooth  # [out, in]
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # [out]
        self.register_buffer("inv_smooth", 1.0 / smooth)
        self.register_buffer("weight_t", torch.round(w / scale[:, None]).to(torch.int8).t().contiguous())  # [in, out]
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = KERNEL(x.reshape(-1, shape[-1]).float(), self.inv_smooth, self.weight_t, self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def calibration_batches(tokenizer: Any) -> list[dict[str, Tensor]]:
    """The shipped calibration conversations, each templated with its response, as one-row model inputs."""
    conversations = json.loads(CALIBRATION.read_text())["conversations"]
    batches = []
    for c in conversations:
        ids = tokenizer.apply_chat_template([*c["messages"], {"role": "assistant", "content": c["response"]}])
        if hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        batches.append({"input_ids": torch.tensor([list(ids)])})
    return batches


def activation_absmax(model: nn.Module, batches: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """max |x| per input channel of every nn.Linear over the calibration batches, by module name."""
    stats: dict[str, Tensor] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            a = inputs[0].reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0).float()
            stats[name] = torch.maximum(stats[name], a) if name in stats else a

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**batch, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return stats


def quantize_linears(
    model: nn.Module, stats: dict[str, Tensor] | None, skip: tuple[str, ...] = (), alpha: float = SMOOTH_ALPHA
) -> int:
    """Replace every nn.Linear whose name does not end in `skip` by an Int8Linear, in place; returns the count."""
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, nn.Linear) and not name.endswith(skip):
                setattr(parent, child_name, Int8Linear(child, None if stats is None else stats.get(name), alpha))
                replaced += 1
    return replaced
