"""A real RL loop calling the real server over HTTP: TRL's GRPOTrainer with a tiny randomly initialised policy runs
two steps with `armo.integrations.trl.ArmoReward` as its reward function; the rewards TRL logged are the service's
scores for exactly the completions it generated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from armo.client import RewardClient
from armo.integrations.trl import ArmoReward
from armo.model_store.backbone import Backbone
from tests.live import API_KEY, Server


def _policy(tiny_backbone: Backbone) -> LlamaForCausalLM:
    tok = tiny_backbone.tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.mark.slow
def test_grpo_trainer_two_steps_against_the_server(live: Server, tiny_backbone: Backbone, tmp_path: Path) -> None:
    import datasets  # installed by the test command (requirements.lock)
    import trl

    exchanges: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def record(response: httpx.Response) -> None:
        if response.request.url.path == "/v1/score":
            response.read()
            exchanges.append((json.loads(response.request.content), response.json()))

    http = httpx.Client(base_url=live.url, timeout=120, event_hooks={"response": [record]})
    reward = ArmoReward(reward_client=RewardClient(api_key=API_KEY, http=http), log_objectives=True)
    prompts = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Name a fruit."}]]
    dataset = datasets.Dataset.from_dict({"prompt": prompts})
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
    )
    trainer = trl.GRPOTrainer(
        model=_policy(tiny_backbone),
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=tiny_backbone.tokenizer,
    )
    trainer.train()

    assert len(exchanges) >= 2, "TRL never called the service"
    logged = [h["rewards/armo/mean"] for h in trainer.state.log_history if "rewards/armo/mean" in h]
    assert len(logged) == 2
    served = [[r["score"] for r in body["results"]] for _, body in exchanges]
    assert logged == pytest.approx([sum(s) / len(s) for s in served[:2]], abs=1e-4)
    with RewardClient(live.url, api_key=API_KEY) as check:  # the same completions scored again, independently
        for request, body in exchanges:
            assert check.score(request["items"]) == pytest.approx([r["score"] for r in body["results"]], abs=1e-5)
    assert all(item["messages"][-1]["role"] == "user" for request, _ in exchanges for item in request["items"])
    # Per-objective means went through TRL's log_metric hook, averaged per logging step.
    objectives = [h["armo/helpfulness"] for h in trainer.state.log_history if "armo/helpfulness" in h]
    served_objectives = [[r["objectives"]["helpfulness"] for r in body["results"]] for _, body in exchanges[:2]]
    assert objectives == pytest.approx([sum(o) / len(o) for o in served_objectives], abs=1e-4)
