"""The torch devices a backbone may run on, checked the same way for the service (`ARMO_DEVICE`) and the training
jobs (`device` in a training config). No torch import: settings must stay importable without it."""

from __future__ import annotations

import functools
import re
from pathlib import Path

DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device(value: str) -> str:
    """`value` if it names a device (cpu, cuda, cuda:N or mps); otherwise a ValueError saying what is accepted."""
    if not DEVICE_PATTERN.match(value):
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {value!r}")
    return value


# CPU flags that make a bf16 matmul fast (oneDNN runs it on AMX tiles, or on AVX512-BF16 dot products); without
# either it is emulated, hundreds of times slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache  # read once per process: every load and reload asks
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo is not there: then no bf16 is assumed)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    lines = (line for line in text.splitlines() if line.startswith("flags"))
    return frozenset(flag for line in lines for flag in line.partition(":")[2].split())


def cpu_bf16_units() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AMX or AVX512-BF16)."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


# The flags do not say how fast: bf16 matmuls run 7-8x fp32's on AMX and 2.2x on an AMD EPYC's AVX512-BF16, but at
# about half fp32's rate on a Xeon that reports AVX512-BF16 without AMX (there the bf16 default scored at 0.64x the
# fp32 one). Scoring gains less than the matmuls (1.7-1.9x from the EPYC's 2.2x), and bf16 moves scores within the
# artifact's stated bound, so `auto` takes bf16 on a CPU only from this measured speedup up.
BF16_MIN_SPEEDUP = 1.5


@functools.cache  # measured once per process, on the threads torch has then
def cpu_bf16_speedup() -> float:
    """This CPU's bf16 matmul rate over its fp32 one, timed at a backbone-sized Linear (1,024 tokens, 576 -> 1,536;
    best of 5, ~0.1 s); 0.0 without bf16 units (emulated bf16 is not timed: it would take seconds)."""
    if not cpu_bf16_units():
        return 0.0
    import time

    import torch

    x, w = torch.randn(1024, 576), torch.randn(1536, 576)

    def seconds(dtype: torch.dtype) -> float:
        a, b = x.to(dtype), w.to(dtype)
        torch.nn.functional.linear(a, b)  # the first call picks and primes oneDNN's kernel
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            torch.nn.functional.linear(a, b)
            best = min(best, time.perf_counter() - started)
        return best

    return seconds(torch.float32) / seconds(torch.bfloat16)


def check_dtype(dtype: str, device: str, allowed: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")) -> str:
    """`dtype` if `device` computes it fast (float32 anywhere; bf16 and fp16 on a GPU; bf16 on a CPU with the units;
    `auto` resolves per artifact); otherwise a ValueError saying why and what to use instead."""
    if dtype not in allowed:
        raise ValueError(f"dtype must be one of {', '.join(allowed)}, got {dtype!r}")
    if device == "cpu" and dtype == "float16":
        raise ValueError("float16 has no fast CPU path; use auto, bfloat16 or float32 on a CPU")
    if device == "cpu" and dtype == "bfloat16" and not cpu_bf16_units():
        raise ValueError(
            "bfloat16: this CPU has neither AMX nor AVX512-BF16, so bf16 matmuls would be emulated (hundreds of "
            "times slower); use auto or float32"
        )
    return dtype
