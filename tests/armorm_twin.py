"""A tiny twin of the published ArmoRM checkpoint, and its published forward pass, for the import tests.

The published checkpoint cannot be downloaded here, so the tests build a tiny, randomly initialised one with the
same config keys, weight names, classes (LlamaModel under `model.`), right padding with an out-of-vocabulary pad
id, and a Llama-3-style tokenizer; `published_scores` is the model card's forward pass on it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaModel, LlamaPreTrainedModel

from armo.model_store.armorm_import import ARMORM_OBJECTIVES


class RefGating(nn.Module):
    """The published GatingNetwork, rewritten from the paper/model card (softmax over objectives, × logit_scale)."""

    def __init__(self, d: int, k: int, hidden: int, n_hidden: int, temperature: float) -> None:
        super().__init__()
        dims = [d] + [hidden] * n_hidden + [k]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.logit_scale = nn.Parameter(torch.ones(1))
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return F.softmax(x / self.temperature, dim=1) * self.logit_scale


class LlamaForRewardModelWithGating(LlamaPreTrainedModel):
    """Same class name, attribute names and forward pass as the published modeling code."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        k = config.num_objectives
        self.regression_layer = nn.Linear(config.hidden_size, k, bias=False)
        self.gating = RefGating(
            config.hidden_size, k, config.gating_hidden_dim, config.gating_n_hidden, config.gating_temperature
        )
        self.register_buffer("reward_transform_matrix", torch.randn(k, k))
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pattern: list[int]) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        rows = torch.arange(input_ids.shape[0])
        # the published last-token rule: first pad position − 1 (modulo length for unpadded rows)
        last = (torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1) % input_ids.shape[-1]
        rewards = self.regression_layer(hidden[rows, last])
        # the published gating position: the last occurrence of <|eot_id|><|start_header_id|>assistant…
        positions = [_find_last(ids.tolist(), pattern) for ids in input_ids]
        gating = self.gating(hidden[rows, positions])
        return torch.sum(gating * (rewards @ self.reward_transform_matrix), dim=1)


def _find_last(ids: list[int], pattern: list[int]) -> int:
    for j in range(len(ids) - len(pattern), -1, -1):
        if ids[j : j + len(pattern)] == pattern:
            return j
    raise ValueError("Token pattern not found in the list.")


def build_armorm_twin(
    d: Path, llama3_tokenizer_dir: Path, *, hidden_size: int = 32, heads: int = 4, kv_heads: int = 2
) -> Path:
    """Save the twin into `d`: sharded with an index like the 8B checkpoint, with the tokenizer."""
    tok = AutoTokenizer.from_pretrained(llama3_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok) + 1,  # like 128256 + the pad row
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        pad_token_id=len(tok),  # out of the tokenizer's vocabulary, like 128256
        num_objectives=len(ARMORM_OBJECTIVES),
        gating_temperature=10,
        gating_hidden_dim=16,
        gating_n_hidden=3,
        architectures=["LlamaForRewardModelWithGating"],
    )
    torch.manual_seed(0)
    model = LlamaForRewardModelWithGating(config)
    with torch.no_grad():
        model.gating.logit_scale.fill_(1.7)
        for layer in model.gating.layers:
            layer.weight.normal_(0, 0.5)
    model.save_pretrained(d, max_shard_size="100KB")
    tok.save_pretrained(d)
    return d


def published_scores(directory: Path, conversations: list[tuple[list[dict[str, str]], str]]) -> torch.Tensor:
    """The reference: the published class and forward, right padding with the checkpoint's pad id."""
    ref = LlamaForRewardModelWithGating.from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    # Published pattern is eot, start_header, "assistant", end_header, "\n\n"; this tokenizer splits "\n\n" differently
    # in context than alone (the reference's "pattern not found" trap), so the reference searches without it.
    pattern = tok("<|eot_id|><|start_header_id|>assistant<|end_header_id|>", add_special_tokens=False)["input_ids"]
    seqs = [tok.apply_chat_template([*m, {"role": "assistant", "content": r}], tokenize=True) for m, r in conversations]
    seqs = [list(s["input_ids"]) if hasattr(s, "keys") else list(s) for s in seqs]
    width = max(len(s) for s in seqs) + 1
    ids = torch.full((len(seqs), width), ref.config.pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        scores: torch.Tensor = ref(ids, mask, pattern)
    return scores


CONVERSATIONS = [
    ([{"role": "user", "content": "What is 2+2?"}], "4"),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Italy?"}], "Rome is."),
    (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke about cats, please."},
        ],
        "Why did the cat sit on the computer? To keep an eye on the mouse.",
    ),
]
