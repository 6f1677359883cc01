"""The naive peer over HTTP: an OpenRLHF `serve_rm`-style server whose client sends one sample per request.

Each request is scored as it arrives — one sequence per forward pass, no cross-request batching, no prompt
sharing — on the same backbone and heads as the service, so the scores must agree.
Run: `uvicorn benchmarks.naive_server:app` with ARMO_STORE_ROOT / ARMO_MODEL set like the service.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

from armo.model_store.backbone import load_backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.encoding import encode
from armo.model_store.forward import run_padded
from armo.model_store.reward_model import Prepared, RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.settings import Settings

store = ModelStore(os.environ.get("ARMO_STORE_ROOT", str(BUNDLED_ROOT)))
manifest, head = store.load(os.environ.get("ARMO_MODEL", DEFAULT_MODEL))
scoring = Settings.model_construct().scoring_config(manifest.backbone.max_length)
rm = RewardModel(load_backbone(manifest.backbone.id, packed=False), head, manifest, scoring)  # plain HF SDPA
app = FastAPI()


def score_one(messages: list[dict[str, str]], response: str) -> float:
    e = encode(rm.backbone.tokenizer, messages, response, rm.config.truncation)
    prepared = Prepared(ScoreItem(messages, response), e)
    return float(rm.forward_features([prepared], run_padded(rm.backbone, [e])).score[0])


@app.post("/get_reward")
async def get_reward(body: dict[str, Any]) -> dict[str, list[float]]:
    # Like OpenRLHF's serve_rm: the model runs inline in the handler, so requests are scored one after another.
    return {"rewards": [score_one(q["messages"], q["response"]) for q in body["query"]]}
