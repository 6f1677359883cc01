"""The vLLM backend against the transformers backend on the embedded model: the same token ids, so the features
agree to kernel rounding (≤ 2e-4, values up to ~60) and the scores to ≤ 1e-4 — on mixed batches, Best-of-N groups
and multi-turn conversations — and a score does not depend on what else is in the batch."""

from __future__ import annotations

import random

import pytest
import torch

from armo.model_store.backbone import Backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.encoding import Encoded, Truncation, encode
from armo.model_store.errors import ArtifactError
from armo.model_store.forward import PassBudget, item_features
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.settings import Settings
from tests.backend_vllm.conftest import need_vllm
from tests.conftest import default_scoring, make_artifact

need_vllm()

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "curious",
    "people",
    "watch",
    "it",
    "very",
    "carefully",
]
BUDGET = PassBudget(tokens=1024, rows=64)


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def mixed_items(seed: int = 0) -> list[ScoreItem]:
    """Singles, a pair, a Best-of-6 group, a multi-turn conversation with a system prompt, an empty response."""
    rng = random.Random(seed)
    items = [ScoreItem([{"role": "user", "content": text(rng, 20 + 15 * i)}], text(rng, 10 + 30 * i)) for i in range(4)]
    pair_prompt = [{"role": "user", "content": text(rng, 60)}]
    items += [ScoreItem(pair_prompt, text(rng, 40)), ScoreItem(pair_prompt, text(rng, 70))]
    group_prompt = [{"role": "user", "content": text(rng, 150)}]
    items += [ScoreItem(group_prompt, text(rng, rng.randint(5, 90))) for _ in range(6)]
    multi = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": text(rng, 30)},
        {"role": "assistant", "content": text(rng, 25)},
        {"role": "user", "content": text(rng, 35)},
    ]
    items += [ScoreItem(multi, text(rng, 50)), ScoreItem(multi, "")]
    rng.shuffle(items)
    return items


def encoded(backbone: Backbone, items: list[ScoreItem]) -> list[Encoded]:
    policy = Truncation(max_length=2048, long_response="cut")
    return [encode(backbone.tokenizer, it.messages, it.response, policy) for it in items]


def test_features_match_transformers(embedded_backbone: Backbone, vllm_last: Backbone, vllm_mean: Backbone) -> None:
    enc = encoded(embedded_backbone, mixed_items())
    ref = item_features(embedded_backbone, enc, BUDGET)
    last, mean = vllm_last.engine, vllm_mean.engine
    assert last is not None and mean is not None and vllm_last.hf is None  # no transformers model was loaded
    got = item_features(vllm_last, enc, BUDGET)
    assert ref.response.abs().max() > 10  # real hidden states, so the tolerance is a relative one
    torch.testing.assert_close(got.response, ref.response, atol=2e-4, rtol=0)
    torch.testing.assert_close(got.prompt, ref.prompt, atol=2e-4, rtol=0)
    assert got.response_mean.isnan().all()  # not computed for a `last` engine: misuse would show, not pass
    every = mean.features(enc)
    for name in ("response", "prompt", "response_mean"):
        torch.testing.assert_close(getattr(every, name), getattr(ref, name), atol=2e-4, rtol=0)


@pytest.fixture(scope="module")
def bundled() -> ModelStore:
    return ModelStore(BUNDLED_ROOT)


def test_scores_of_the_default_match_transformers(
    embedded_backbone: Backbone, vllm_last: Backbone, bundled: ModelStore
) -> None:
    manifest, head = bundled.load(DEFAULT_MODEL)
    config = Settings.model_construct().scoring_config(manifest.backbone.max_length)
    ours, theirs = (
        RewardModel(vllm_last, head, manifest, config),
        RewardModel(embedded_backbone, head, manifest, config),
    )
    items = mixed_items(1)
    a = ours.score(items, detail=True)
    b = theirs.score(items, detail=True)
    scores_a, scores_b = torch.tensor([r.score for r in a]), torch.tensor([r.score for r in b])
    assert scores_b.std() > 0.05
    torch.testing.assert_close(scores_a, scores_b, atol=1e-4, rtol=0)
    for x, y in zip(a, b, strict=True):
        assert x.tokens == y.tokens and x.truncated == y.truncated
        torch.testing.assert_close(torch.tensor(list(x.weights.values())), torch.tensor(list(y.weights.values())))


def test_scores_are_batch_invariant_on_vllm(vllm_last: Backbone, bundled: ModelStore) -> None:
    manifest, head = bundled.load(DEFAULT_MODEL)
    rm = RewardModel(vllm_last, head, manifest, Settings.model_construct().scoring_config(manifest.backbone.max_length))
    items = mixed_items(2)
    together = [r.score for r in rm.score(items)]
    vllm_last.engine.llm.reset_prefix_cache()  # type: ignore[union-attr]  # alone, from a cold cache
    alone = [rm.score([it])[0].score for it in items]
    torch.testing.assert_close(torch.tensor(alone), torch.tensor(together), atol=1e-4, rtol=0)


def test_mean_artifact_matches_transformers(embedded_backbone: Backbone, vllm_mean: Backbone) -> None:
    manifest, head = make_artifact(embedded_backbone, max_length=1024)
    manifest = manifest.model_copy(update={"pooling": "mean"})
    config = Settings.model_construct().scoring_config(1024)
    items = mixed_items(3)
    a = [r.score for r in RewardModel(vllm_mean, head, manifest, config).score(items)]
    b = [r.score for r in RewardModel(embedded_backbone, head, manifest, config).score(items)]
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)


def test_an_engine_refuses_an_artifact_it_was_not_started_for(embedded_backbone: Backbone, vllm_last: Backbone) -> None:
    manifest, head = make_artifact(embedded_backbone, max_length=1024)
    mean = manifest.model_copy(update={"pooling": "mean"})
    with pytest.raises(ArtifactError, match="mean-pooled") as e:
        RewardModel(vllm_last, head, mean, default_scoring(mean))
    assert e.value.field == "pooling"
    longer, _ = make_artifact(embedded_backbone, max_length=4096)
    with pytest.raises(ArtifactError, match="4096 tokens"):
        RewardModel(vllm_last, head, longer, default_scoring(longer))


def test_settings_keep_int8_to_transformers() -> None:
    from pydantic import ValidationError

    assert Settings(backend="vllm").backend == "vllm"  # vLLM is installed here, so the backend is accepted
    with pytest.raises(ValidationError, match="transformers only"):
        Settings(backend="vllm", quantize="int8")
