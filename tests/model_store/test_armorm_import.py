"""Import of the published ArmoRM checkpoint layout, proved against a from-scratch reimplementation.

The published checkpoint cannot be downloaded here, so the test builds a tiny, randomly initialised one with the
same config keys, weight names, classes (LlamaModel under `model.`), right padding with an out-of-vocabulary pad
id, and a Llama-3-style tokenizer — then checks our scores equal the published forward pass within 1e-5.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaModel, LlamaPreTrainedModel

from armo.model_store.armorm_import import ARMORM_OBJECTIVES, import_armorm
from armo.model_store.backbone import load_backbone
from armo.model_store.errors import ArtifactError
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore


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


@pytest.fixture(scope="module")
def armorm_dir(tmp_path_factory: pytest.TempPathFactory, llama3_tokenizer_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("armorm-tiny")
    tok = AutoTokenizer.from_pretrained(llama3_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok) + 1,  # like 128256 + the pad row
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
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
    model.save_pretrained(d, max_shard_size="100KB")  # sharded, with an index, like the 8B checkpoint
    tok.save_pretrained(d)
    return d


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


def test_import_matches_published_forward_pass(armorm_dir: Path, tmp_path: Path) -> None:
    assert len(list(armorm_dir.glob("model-*.safetensors"))) > 1
    manifest, head = import_armorm(armorm_dir, version="t1")
    assert manifest.objective_names == list(ARMORM_OBJECTIVES)
    store = ModelStore(tmp_path)
    store.publish(manifest, head)
    manifest, head = store.load("armorm-llama3-8b")
    backbone = load_backbone(str(armorm_dir))
    rm = RewardModel(backbone, head, manifest)
    items = [ScoreItem(m, r) for m, r in CONVERSATIONS]
    ours = torch.tensor([r.score for r in rm.score(items)])

    # The reference: the published class and forward, right padding with the checkpoint's pad id.
    ref = LlamaForRewardModelWithGating.from_pretrained(armorm_dir).eval()
    tok = AutoTokenizer.from_pretrained(armorm_dir)
    # Published pattern is eot, start_header, "assistant", end_header, "\n\n"; this tokenizer splits "\n\n" differently
    # in context than alone (the reference's "pattern not found" trap), so the reference searches without it.
    pattern = tok("<|eot_id|><|start_header_id|>assistant<|end_header_id|>", add_special_tokens=False)["input_ids"]
    seqs = [tok.apply_chat_template([*m, {"role": "assistant", "content": r}], tokenize=True) for m, r in CONVERSATIONS]
    seqs = [list(s["input_ids"]) if hasattr(s, "keys") else list(s) for s in seqs]
    width = max(len(s) for s in seqs) + 1
    ids = torch.full((len(seqs), width), ref.config.pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        reference = ref(ids, mask, pattern)
    assert reference.std() > 1e-3  # distinct scores, so equality is not vacuous
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_import_refuses_a_plain_llama_directory(tmp_path: Path, tiny_backbone_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="not an ArmoRM config"):
        import_armorm(tiny_backbone_dir)
    with pytest.raises(ArtifactError, match="missing"):
        import_armorm(tmp_path)
