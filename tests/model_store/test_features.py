"""Prompt boundary, truncation and batch invariance of feature extraction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from armo.model_store.backbone import Backbone
from armo.model_store.encoding import Truncation, encode
from armo.model_store.errors import InputError, InputTooLongError
from armo.model_store.forward import Features, PassBudget, item_features, padded_passes, run_padded

USER = {"role": "user", "content": "What is the capital of France?"}
SYSTEM = {"role": "system", "content": "You answer in one sentence."}
THREE_TURNS = [
    SYSTEM,
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "Apple."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Banana."},
    {"role": "user", "content": "And a vegetable?"},
]
CONVERSATIONS = {"no_system": [USER], "system": [SYSTEM, USER], "three_turns": THREE_TURNS}

DEFAULT = PassBudget(1024, 64)  # the service's default pass size


def _generation_prompt_ids(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_prompt_boundary_is_last_user_end_of_turn(embedded_backbone: Backbone, name: str) -> None:
    tok = embedded_backbone.tokenizer
    messages = CONVERSATIONS[name]
    e = encode(tok, messages, "Paris is the capital.", Truncation(512))
    ids = list(e.input_ids)
    # The boundary token is the end-of-turn token closing the last user turn …
    assert tok.convert_ids_to_tokens(ids[e.prompt_index]) == "<|im_end|>"
    # … and everything up to it is exactly the prompt the model would generate from (minus the assistant header).
    gen = _generation_prompt_ids(tok, messages)
    assert ids[: e.prompt_index + 1] == gen[: e.prompt_index + 1]
    assert tok.decode(gen[e.prompt_index + 1 :]).strip() == "<|im_start|>assistant"
    # The last user turn's text ends right before the boundary.
    assert tok.decode(ids[: e.prompt_index]).endswith(messages[-1]["content"])
    # The sequence ends on the end-of-turn token after the response (no trailing newline).
    assert tok.convert_ids_to_tokens(ids[-1]) == "<|im_end|>"
    assert tok.decode(ids[e.prompt_index + 1 :]).count("Paris is the capital.") == 1
    assert not e.truncated


def test_template_that_adds_bos_gives_exactly_one_bos(llama3_tokenizer_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(llama3_tokenizer_dir)
    bos = tok.bos_token_id
    assert tok("x")["input_ids"][0] == bos  # this tokenizer adds BOS itself, like Llama-3's …
    assert tok.apply_chat_template([USER], tokenize=False).startswith("<|begin_of_text|>")  # … and so does its template
    for messages in CONVERSATIONS.values():
        e = encode(tok, messages, "Paris.", Truncation(512))
        assert list(e.input_ids).count(bos) == 1 and e.input_ids[0] == bos
        assert tok.convert_ids_to_tokens(e.input_ids[e.prompt_index]) == "<|eot_id|>"
        header = tok.decode(list(e.input_ids[e.prompt_index + 1 : e.prompt_index + 4]))
        assert header.startswith("<|start_header_id|>assistant")
        assert tok.convert_ids_to_tokens(e.input_ids[-1]) == "<|eot_id|>"


def test_truncation_drops_the_start_never_the_response(embedded_backbone: Backbone) -> None:
    tok = embedded_backbone.tokenizer
    long_prompt = [{"role": "user", "content": "filler " * 300 + "Final question: why?"}]
    full = encode(tok, long_prompt, "Because it is so.", Truncation(4096))
    cut = encode(tok, long_prompt, "Because it is so.", Truncation(64))
    assert cut.truncated and not full.truncated
    assert cut.length == 64
    assert cut.input_ids[-(full.length - full.prompt_index) :] == full.input_ids[full.prompt_index :]
    assert cut.input_ids[cut.prompt_index] == full.input_ids[full.prompt_index]
    assert cut.response_tokens == full.response_tokens


def test_response_alone_too_long_is_an_error_naming_the_response(embedded_backbone: Backbone) -> None:
    with pytest.raises(InputTooLongError) as info:
        encode(embedded_backbone.tokenizer, [USER], "word " * 200, Truncation(64))
    assert info.value.field == "response" and "64" in info.value.message


def test_no_truncation_requested_is_an_error(embedded_backbone: Backbone) -> None:
    with pytest.raises(InputTooLongError) as info:
        encode(
            embedded_backbone.tokenizer, [{"role": "user", "content": "a " * 200}], "ok", Truncation(64, enabled=False)
        )
    assert info.value.field == "messages"


@pytest.mark.parametrize(
    ("messages", "response", "field"),
    [
        ([], "x", "messages"),
        ([{"role": "robot", "content": "hi"}], "x", "messages[0].role"),
        ([{"role": "user", "content": "  "}], "x", "messages[0].content"),
        ([USER, {"role": "assistant", "content": "Paris"}], "x", "messages[1].role"),
        ([USER, SYSTEM], "x", "messages[1].role"),
        ([USER], None, "response"),
    ],
)
def test_invalid_conversations_name_the_field(
    tiny_backbone: Backbone, messages: list[dict[str, str]], response: str, field: str
) -> None:
    with pytest.raises(InputError) as info:
        encode(tiny_backbone.tokenizer, messages, response, Truncation(128))
    assert info.value.field == field


def test_an_empty_response_is_scored_at_its_end_of_turn_token(tiny_backbone: Backbone) -> None:
    """In RL a policy that wrote nothing still gets a reward: the sequence ends on the (empty) turn's end token."""
    tok = tiny_backbone.tokenizer
    e = encode(tok, [USER], "", Truncation(128))
    prompt_only = encode(tok, [USER], "x", Truncation(128))
    assert e.input_ids[: e.prefix_length] == prompt_only.input_ids[: prompt_only.prefix_length]
    assert e.input_ids[-1] == prompt_only.input_ids[-1]  # the end-of-turn token
    assert 0 < e.response_tokens < prompt_only.response_tokens


def _mixed_batch(tok: PreTrainedTokenizerBase) -> list:  # type: ignore[type-arg]
    responses = ["Paris.", "The capital of France is Paris, a city on the Seine. " * 4, "Paris, of course!"]
    return [encode(tok, m, r, Truncation(512)) for m, r in zip(CONVERSATIONS.values(), responses, strict=True)]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    # fp32 kernels over different padded shapes reorder sums: equal to ≤1e-5 relative to the feature scale.
    return bool((a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max())))


def _same_row(a: Features, i: int, b: Features, j: int) -> bool:
    """Row i of a and row j of b carry the same three features."""
    return all(_close(getattr(a, f)[i], getattr(b, f)[j]) for f in ("response", "prompt", "response_mean"))


@pytest.mark.parametrize("backbone_name", ["embedded_backbone", "tiny_padded_backbone"])
def test_mean_feature_is_the_mean_over_the_response_span(request: pytest.FixtureRequest, backbone_name: str) -> None:
    backbone: Backbone = request.getfixturevalue(backbone_name)
    e = encode(backbone.tokenizer, THREE_TURNS, "Carrot, and a leek if you want two.", Truncation(512))
    with torch.inference_mode():
        hidden = backbone.model(input_ids=torch.tensor([e.input_ids])).last_hidden_state[0]  # plain HF forward
    span = hidden[e.prompt_index + 1 :]  # after the boundary, through the end-of-turn token
    assert span.shape[0] == e.response_tokens
    feats = run_padded(backbone, [e])
    assert _close(feats.response_mean[0], span.mean(dim=0))
    assert _close(feats.response[0], hidden[-1]) and not _close(feats.response_mean[0], hidden[-1])
    assert _close(feats.pooled("mean")[0], span.mean(dim=0)) and _close(feats.pooled("last")[0], hidden[-1])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batch_invariance_embedded(embedded_backbone: Backbone, padding_side: str) -> None:
    batch = _mixed_batch(embedded_backbone.tokenizer)
    assert len({e.length for e in batch}) == 3
    together = run_padded(embedded_backbone, batch, padding_side)  # type: ignore[arg-type]
    for i, e in enumerate(batch):
        assert _same_row(run_padded(embedded_backbone, [e]), 0, together, i)
    # and the features differ between rows (the test would pass vacuously otherwise)
    assert not _close(together.response[0], together.response[1])


@pytest.mark.parametrize("backbone_name", ["tiny_backbone", "tiny_padded_backbone"])
def test_item_features_restores_order_and_matches(request: pytest.FixtureRequest, backbone_name: str) -> None:
    backbone: Backbone = request.getfixturevalue(backbone_name)
    batch = _mixed_batch(backbone.tokenizer) * 3
    many = item_features(backbone, batch, PassBudget(300, 4), share_prompts=False)
    for i, e in enumerate(batch):
        assert _same_row(run_padded(backbone, [e]), 0, many, i)


def test_prompt_feature_depends_on_prompt_only(tiny_backbone: Backbone) -> None:
    tok = tiny_backbone.tokenizer
    a = run_padded(tiny_backbone, [encode(tok, [USER], "Paris.", Truncation(128))])
    b = run_padded(tiny_backbone, [encode(tok, [USER], "Lyon, obviously, is the answer.", Truncation(128))])
    assert _close(a.prompt[0], b.prompt[0])
    assert not _close(a.response[0], b.response[0])


@pytest.mark.parametrize(
    ("backbone_name", "passes"),
    # packed: everything in one unpadded pass; padded: one pass for the three prompts, one for the nine responses
    [("tiny_backbone", 1), ("embedded_backbone", 1), ("tiny_padded_backbone", 2)],
)
def test_shared_prompt_path_equals_full_passes(request: pytest.FixtureRequest, backbone_name: str, passes: int) -> None:
    backbone: Backbone = request.getfixturevalue(backbone_name)
    assert backbone.packed == (backbone_name != "tiny_padded_backbone")
    tok = backbone.tokenizer
    responses = ["Paris.", "It is Paris, the largest city of France. " * 3, "Lyon? No: Paris.", "Paris!"]
    other = encode(tok, [SYSTEM, USER], "Paris.", Truncation(512))
    batch = [encode(tok, THREE_TURNS, r, Truncation(512)) for r in responses] + [other]
    # two more prompts of other lengths, two responses each: several prompts go through one padded prompt pass
    batch += [encode(tok, [SYSTEM, USER], r, Truncation(512)) for r in ("Marseille.", "Paris, of course.")]
    batch += [encode(tok, [USER], r, Truncation(512)) for r in ("Paris", "The capital is Paris.")]
    assert len({e.input_ids[: e.prefix_length] for e in batch[:4]}) == 1 and batch[0].prefix_length > 0
    assert len({e.prefix_length for e in batch}) == 3
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    hook = backbone.model.register_forward_pre_hook(count)
    try:
        packed = item_features(backbone, batch, PassBudget(4096, 64, max_padding=float("inf")))
    finally:
        hook.remove()
    assert calls == passes
    small = item_features(backbone, batch, PassBudget(120, 2))  # several chunks per prompt
    capped = item_features(backbone, batch, DEFAULT)  # the default padding cap splits the passes further
    plain = item_features(backbone, batch, DEFAULT, share_prompts=False)
    for i, e in enumerate(batch):
        alone = run_padded(backbone, [e])
        for feats in (packed, small, capped, plain):
            assert _same_row(alone, 0, feats, i)


def test_truncated_sequences_are_not_shared(tiny_backbone: Backbone) -> None:
    tok = tiny_backbone.tokenizer
    long = [{"role": "user", "content": "filler " * 100}]
    a, b = (encode(tok, long, r, Truncation(64)) for r in ("short", "a longer answer than the first one"))
    assert a.truncated and b.truncated and a.prefix_length == b.prefix_length == 0
    feats = item_features(tiny_backbone, [a, b], DEFAULT)
    assert _same_row(feats, 1, run_padded(tiny_backbone, [b]), 0)


def test_padded_passes_respect_the_budget_and_the_padding_cap() -> None:
    lengths = [100, 10, 10, 11, 20, 21]
    # sorted: 10, 10, 11 (pads 2 of 31 tokens: within 10 %) | 20, 21 (pads 1 of 41) | 100
    assert padded_passes(lengths, PassBudget(500, 64, 0.1)) == [[1, 2, 3], [4, 5], [0]]
    assert padded_passes(lengths, PassBudget(500, 64, float("inf"))) == [
        [1, 2, 3, 4, 5],
        [0],
    ]  # 5 x 21 fits 500, 6 x 100 does not
    assert padded_passes(lengths, PassBudget(500, 64, 0.0)) == [[1, 2], [3], [4], [5], [0]]
    assert padded_passes(lengths, PassBudget(40, 64, float("inf"))) == [
        [1, 2, 3],
        [4],
        [5],
        [0],
    ]  # 3 x 11 fits 40, 4 x 20 does not
    assert padded_passes(lengths, PassBudget(1000, 2, float("inf"))) == [[1, 2], [3, 4], [5, 0]]  # at most two rows
