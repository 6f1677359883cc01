"""Templated texts (OpenRLHF /get_reward) split back into turns, for the real templates of five policy families and
the backbone's own, learned from its tokenizer: terminated, cut off, empty, with BOS / EOS / padding around."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from armo.model_store.backbone import Backbone
from armo.model_store.encoding import render as render_backbone
from armo.model_store.errors import InputError
from armo.service.chat_template import FAMILIES, learn_family, parse
from tests.service.policy_templates import POLICIES, Policy, render

SYSTEM = {"role": "system", "content": "Be terse."}
TURNS = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another,\nplease."},
]
RESPONSES = ["Green.\n\nOr red.", "Paris", ""]


def _messages(policy: Policy) -> list[dict[str, str]]:
    return [SYSTEM, *TURNS] if policy.system else list(TURNS)


def _expected(policy: Policy, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if policy.name == "qwen2.5" and messages[0]["role"] != "system":  # the template writes its default system turn
        default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        return [{"role": "system", "content": default}, *messages]
    return messages


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
@pytest.mark.parametrize("response", RESPONSES)
def test_full_text_of_every_family(policy: Policy, response: str) -> None:
    messages = _messages(policy)
    text = render(policy, [*messages, {"role": "assistant", "content": response}])
    parsed = parse(text, FAMILIES, field="q")
    assert parsed.messages == _expected(policy, messages)
    assert parsed.response == response
    assert not parsed.unterminated


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
@pytest.mark.parametrize("ending", ["eos", "none", "eos+pad"])
def test_prompt_given_response_after_it(policy: Policy, ending: str) -> None:
    """OpenRLHF ≥ 0.6 sends the templated prompt: the response is exactly what follows it."""
    messages = _messages(policy)
    prompt = render(policy, messages, add_generation_prompt=True)
    if policy.name == "mistral-7b-instruct-v0.2":  # no generation header: the prompt ends with [/INST]
        assert prompt.endswith("[/INST]")
    tail = {"eos": policy.eos, "none": "", "eos+pad": policy.eos + "<pad><pad>"}[ending]
    families = (
        FAMILIES
        if ending != "eos+pad"
        else tuple(
            f if f.name not in ("chatml", "llama3", "phi3", "mistral") else type(f)(**{**f.__dict__, "pad": ("<pad>",)})
            for f in FAMILIES
        )
    )
    parsed = parse(prompt + "Green, like grass" + tail, families, field="q", prompt=prompt)
    assert parsed.messages == _expected(policy, messages)
    assert parsed.response == "Green, like grass"
    assert parsed.unterminated == (ending == "none")
    empty = parse(prompt, families, field="q", prompt=prompt)  # the policy wrote nothing
    assert (empty.response, empty.unterminated) == ("", True)


def test_the_backbones_own_template_is_learned(tiny_backbone: Backbone, llama3_tokenizer_dir: Path) -> None:
    for tok in (tiny_backbone.tokenizer, AutoTokenizer.from_pretrained(llama3_tokenizer_dir)):
        family = learn_family(tok)
        for response in RESPONSES[:2]:
            text = render_backbone(tok, [*TURNS, {"role": "assistant", "content": response}])
            parsed = parse(text, (family,), field="q")
            assert parsed.response == response and parsed.messages[-3:] == TURNS
            assert render_backbone(tok, [*parsed.messages, {"role": "assistant", "content": response}]) == text


@pytest.mark.parametrize(
    "text",
    [
        "User: hi\nAssistant: hello",  # no template at all
        "<|im_start|>user\nHi<|im_end|>\n",  # no response turn
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n",  # no user turn before it
    ],
)
def test_texts_without_a_scorable_conversation_are_refused(text: str) -> None:
    with pytest.raises(InputError) as e:
        parse(text, FAMILIES, field="query[3]")
    assert e.value.field == "query[3]"
