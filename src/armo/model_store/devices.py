"""The torch devices a backbone may run on, checked the same way for the service (`ARMO_DEVICE`) and the training
jobs (`device` in a training config). No torch import: settings must stay importable without it."""

from __future__ import annotations

import re

DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device(value: str) -> str:
    """`value` if it names a device (cpu, cuda, cuda:N or mps); otherwise a ValueError saying what is accepted."""
    if not DEVICE_PATTERN.match(value):
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {value!r}")
    return value
