"""OpenRLHF's local-function mode: the file is loaded the way OpenRLHF loads `--remote_rm_url file.py`
(spec_from_file_location, then `reward_func(queries, prompts, labels)`), against a real server."""

from __future__ import annotations

import importlib.util

import httpx
import pytest
import torch

import armo.integrations.openrlhf as adapter
from tests.live import API_KEY, Server
from tests.service.policy_templates import LLAMA3, QWEN25, render

MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_reward_func_file_mode(live: Server) -> None:
    spec = importlib.util.spec_from_file_location("reward_func", adapter.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompts, queries = [], []
    for policy, generation in ((QWEN25, "Green."), (LLAMA3, "Blue, like"), (QWEN25, "")):
        prompt = render(policy, MESSAGES, add_generation_prompt=True)
        prompts.append(prompt)
        queries.append(prompt + generation)
    out = module.reward_func(queries, prompts, ["", "", ""])
    assert set(out) == {"rewards", "scores", "extra_logs"} and isinstance(out["rewards"], torch.Tensor)
    direct = httpx.post(
        f"{live.url}/get_reward",
        json={"query": queries, "prompts": prompts},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ).json()
    assert out["rewards"].tolist() == pytest.approx(direct["rewards"], abs=1e-5)
    assert out["extra_logs"]["unterminated"].tolist() == [1.0, 1.0, 1.0]  # no EOS text: as vLLM returns it
    assert "helpfulness" in out["extra_logs"]
