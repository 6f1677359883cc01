"""Splitting templated texts (OpenRLHF /get_reward) back into turns, for ChatML and Llama-3-style templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from armo.model_store.backbone import Backbone
from armo.model_store.errors import InputError
from armo.service.chat_template import learn_markers, split

CONVERSATIONS = [
    ([{"role": "user", "content": "Hi"}], "Hello!"),
    ([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}], "4"),
    (
        [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another,\nplease."},
        ],
        "Green.\n\nOr red.",
    ),
]


def render(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], response: str) -> str:
    text = tok.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    assert isinstance(text, str)
    return text


@pytest.fixture(scope="module")
def llama3_tok(llama3_tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(llama3_tokenizer_dir)


def test_chatml_round_trip(tiny_backbone: Backbone) -> None:
    tok = tiny_backbone.tokenizer
    markers = learn_markers(tok)
    assert markers.starts["user"] == "<|im_start|>user\n" and markers.ends["assistant"] == "<|im_end|>\n"
    for messages, response in CONVERSATIONS:
        got_messages, got_response = split(tok, markers, render(tok, messages, response), field="q")
        assert got_response == response
        # The template adds its default system prompt when there is none: it is part of the conversation.
        assert render(tok, got_messages, got_response) == render(tok, messages, response)
        assert got_messages[-len(messages) :] == messages


def test_llama3_round_trip(llama3_tok: PreTrainedTokenizerBase) -> None:
    markers = learn_markers(llama3_tok)
    assert markers.starts["assistant"] == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    for messages, response in CONVERSATIONS:
        text = render(llama3_tok, messages, response)
        assert split(llama3_tok, markers, text, field="q") == (messages, response)


@pytest.mark.parametrize(
    "text",
    [
        "User: hi\nAssistant: hello",
        "<|im_start|>user\nHi<|im_end|>\n",  # no response
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n",  # no default system prompt
    ],
)
def test_foreign_texts_are_refused(tiny_backbone: Backbone, text: str) -> None:
    tok = tiny_backbone.tokenizer
    with pytest.raises(InputError) as e:
        split(tok, learn_markers(tok), text, field="query[3]")
    assert e.value.field == "query[3]"
