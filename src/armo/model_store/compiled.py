"""The packed backbone compiled by torch.compile (inductor), for inference on a CPU.

Why: in bf16 on AMX the matmuls are no longer most of a pass. Eager, every RMSNorm (with its fp32 upcast), SiLU,
rotary embedding and residual add is its own trip through memory, and each Linear re-reads its weights in the
layout it was stored in. Compiled with weight freezing, inductor fuses the element-wise work into the kernels around
the matmuls and packs the weights once for oneDNN: scoring runs 1.14–1.18× faster (docs/BENCHMARKS.md). Attention
stays the eager segment loop (`packing._attend`, a custom op the graph calls as one opaque node), so the graph does
not depend on the plan: one compilation, `dynamic=True`, serves every pass length and every plan.

The price is a compilation at load (about a minute on two cores; inductor's on-disk cache makes later loads
faster) and a C++ compiler on the machine. `ARMO_COMPILE=auto` compiles where that is known to pay (an in-process,
packed transformers backbone on a CPU, not int8) and falls back to eager, logging why, when there is no compiler or
the compilation fails: a model that serves slower is better than none.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from armo.model_store import packing

log = logging.getLogger(__name__)

CompileMode = Literal["auto", "on", "off"]
# The warm-up pass: a prompt with a child shorter (masked) and one longer (causal kernel) than it, and an unshared
# sequence. Distinct ordinary token ids: only the shapes are compiled, but the check against eager needs the
# hidden states of a sensible input (a repeated token gives degenerate ones).
_WARMUP = [
    packing.Unit(range(1000, 1012), [range(2000, 2005), range(3000, 3020)]),
    packing.Unit(range(4000, 4009)),
]


class CompileError(RuntimeError):
    """ARMO_COMPILE=on and the model could not be compiled."""


def compiler_found() -> str | None:
    """The C++ compiler inductor would build CPU kernels with, or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def decide(mode: CompileMode, *, device: str, quantize: str, packed: bool, engine: bool) -> tuple[bool, str]:
    """(compile or not, why) for a backbone loaded with these options."""
    if mode == "off":
        return False, "ARMO_COMPILE=off"
    reasons = [
        (engine, "the backbone runs on another engine"),
        (not packed, "the backbone runs padded batches (ARMO_PACKED=false)"),
        (quantize != "none", "the int8 backbone is not compiled"),
        (mode == "auto" and device != "cpu", f"auto compiles on the CPU only, not on {device}"),
        (device == "cpu" and compiler_found() is None, "no C++ compiler (g++, c++ or clang++) for inductor's CPU code"),
    ]
    for applies, why in reasons:
        if applies:
            if mode == "on":
                raise CompileError(f"ARMO_COMPILE=on, but {why}")
            return False, f"not compiled: {why}"
    return True, f"compiled (ARMO_COMPILE={mode})"


def compile_packed(model: PreTrainedModel, mode: CompileMode) -> Callable[..., Any] | None:
    """The model compiled for packed inference passes and compiled now, on a warm-up pass (a first request must not
    wait a minute), its output checked against eager. None (serve eager) when that fails under `auto`."""
    started = time.perf_counter()
    compiled = torch.compile(model, dynamic=True, options={"freezing": True})
    try:
        with torch.inference_mode():
            got, _ = packing.forward(model, _WARMUP, compiled)
            want, _ = packing.forward(model, _WARMUP)
        # Rounding differs (fused kernels keep fp32 where eager rounds to bf16): cosine ~0.9998 on real passes. A
        # miscompiled kernel gives garbage or NaN, which this refuses.
        cosine = float(torch.nn.functional.cosine_similarity(got.float().flatten(), want.float().flatten(), dim=0))
        if not cosine >= 0.99:
            raise CompileError(f"the compiled pass disagrees with eager (cosine similarity {cosine:.4f})")
    except Exception as exc:  # inductor raises many kinds (a missing header, a lowering it lacks): all mean eager
        if mode == "on":
            raise CompileError(f"ARMO_COMPILE=on, but compiling the backbone failed: {exc}") from exc
        log.warning("compiling the backbone failed; it runs eager: %s", exc)
        return None
    log.info("backbone compiled in %.1f s (warm-up pass: cosine %.5f to eager)", time.perf_counter() - started, cosine)
    return compiled
