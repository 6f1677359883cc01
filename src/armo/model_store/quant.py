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
  is compiled by torch.compile into fused loops: eager, those memory-bound steps cost as much as the matmul;
- q/k/v, which read one tensor, share one smoothing, quantisation and product (`SharedInputInt8`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

CALIBRATION = Path(__file__).with_name("calibration.json")
# Names the numerics: a cache of features made by one scheme must not be read by another (armo eval --quantize).
SCHEME = "w8-channel.a8-token.smooth0.5.shared-qkv"
# Traced shared-input groups that are actually fused: only attention's q/k/v. There the one quantise pass saved is a
# large share of three small products (1.9 -> 2.5 x fp32); for gate/up it saves almost nothing (2.79 -> 2.84 x),
# and sharing both cost 4.8 RewardBench points on the fast sample (measured in docs/BENCHMARKS.md).
SHARED_INPUT = ("q_proj", "k_proj", "v_proj")
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


@dataclass(frozen=True)
class Calibration:
    """What one pass over the calibration batches measured."""

    absmax: dict[str, Tensor]  # max |x| per input channel of every nn.Linear, by module name
    # Linears that read the very same tensor in every batch (q/k/v; gate/up), in module order: they can share one
    # smoothing, one quantised activation and one integer product.
    shared_input: tuple[tuple[str, ...], ...]


def calibrate(model: nn.Module, batches: list[dict[str, Tensor]]) -> Calibration:
    """Run the calibration batches once, recording every nn.Linear's input maxima and which Linears share inputs."""
    absmax: dict[str, Tensor] = {}
    readers: dict[int, tuple[Tensor, list[str]]] = {}  # id(input) -> (input kept alive so ids stay unique, names)

    def record(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            a = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            absmax[name] = torch.maximum(absmax[name], a) if name in absmax else a
            readers.setdefault(id(x), (x, []))[1].append(name)

        return hook

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    together: dict[str, frozenset[str]] = {}  # per Linear: the Linears that read its input in every batch so far
    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in names]
    try:
        with torch.inference_mode():
            for batch in batches:
                readers.clear()
                model(**batch, use_cache=False)
                for _, group in readers.values():
                    for n in group:
                        together[n] = together.get(n, frozenset(group)) & frozenset(group)
    finally:
        readers.clear()
        for h in hooks:
            h.remove()
    groups = {g for g in together.values() if len(g) > 1 and all(together[m] == g for m in g)}
    shared = tuple(sorted((tuple(n for n in names if n in g) for g in groups), key=lambda g: names.index(g[0])))
    return Calibration(absmax, shared)


class SharedInputInt8(nn.Module):
    """Linears that always read the same tensor (q/k/v of an attention block) as one Int8Linear over their stacked
    weights: the input is smoothed with one vector (from the union of their weight columns) and quantised once, and
    one integer product serves all of them — the quantise step is the int8 path's overhead, and this runs it 5 times
    per Llama layer instead of 7. Each member (`Int8Part`) reads its columns of the product."""

    def __init__(self, linears: list[nn.Linear], act_absmax: Tensor | None, alpha: float = SMOOTH_ALPHA) -> None:
        super().__init__()
        has_bias = any(m.bias is not None for m in linears)
        stacked = nn.Linear(linears[0].in_features, sum(m.out_features for m in linears), bias=has_bias)
        with torch.no_grad():
            stacked.weight.copy_(torch.cat([m.weight.detach().float() for m in linears]))
            if stacked.bias is not None:
                stacked.bias.copy_(
                    torch.cat([torch.zeros(m.out_features) if m.bias is None else m.bias.float() for m in linears])
                )
        self.product = Int8Linear(stacked, act_absmax, alpha)
        bounds = [0]
        for m in linears:
            bounds.append(bounds[-1] + m.out_features)
        self.bounds = tuple(bounds)
        # (input, product, members still to read it): the members are called one after another on one tensor.
        self._memo: tuple[Tensor, Tensor, int] | None = None

    def part(self, index: int, x: Tensor) -> Tensor:
        memo = self._memo  # one read: a concurrent caller can at worst recompute, never get another input's rows
        if memo is not None and memo[0] is x:
            y, waiting = memo[1], memo[2] - 1
        else:
            y, waiting = self.product(x), len(self.bounds) - 2
        self._memo = (x, y, waiting) if waiting > 0 else None
        return y[..., self.bounds[index] : self.bounds[index + 1]]


class Int8Part(nn.Module):
    """One member of a SharedInputInt8: a drop-in for the nn.Linear it replaced."""

    def __init__(self, shared: SharedInputInt8, index: int) -> None:
        super().__init__()
        self.shared = shared
        self.index = index
        self.in_features = shared.product.in_features
        self.out_features = shared.bounds[index + 1] - shared.bounds[index]

    def forward(self, x: Tensor) -> Tensor:
        return self.shared.part(self.index, x)


def quantize_linears(
    model: nn.Module,
    calibration: Calibration | None,
    skip: tuple[str, ...] = (),
    alpha: float = SMOOTH_ALPHA,
    share: tuple[str, ...] = SHARED_INPUT,
) -> int:
    """Replace every nn.Linear whose name does not end in `skip`, in place: Linears that share their input (per the
    calibration) and whose names all end in `share` by Int8Parts of one SharedInputInt8, the others by an
    Int8Linear. Returns the count replaced."""
    absmax = {} if calibration is None else calibration.absmax
    todo = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith(skip)}

    def put(name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module)

    for group in () if calibration is None else calibration.shared_input:
        if all(n in todo and n.endswith(share) for n in group):
            stats = [absmax[n] for n in group if n in absmax]
            shared = SharedInputInt8([todo[n] for n in group], torch.stack(stats).amax(dim=0) if stats else None, alpha)
            for i, n in enumerate(group):
                put(n, Int8Part(shared, i))
    for name, linear in todo.items():
        if not isinstance(model.get_submodule(name), Int8Part):
            put(name, Int8Linear(linear, absmax.get(name), alpha))
    return len(todo)
