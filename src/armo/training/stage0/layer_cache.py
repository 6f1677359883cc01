"""Stage 0's cache: the hidden states entering the backbone's top layers, for every token of a job's packed passes.

Tuning the top K of L layers (`stage0.tuning`) reads the input of layer L−K at every token in every
epoch. Computing it costs (L−K)/L of a forward pass, so it is computed once and kept. It is laid out exactly like
the feature cache (`armo.training.extract`: the same groups, shards and passes, each prompt stored once with its
responses after it), so:
- training reads one pass at a time and runs only the top layers on it;
- after training, the tuned backbone's features for the heads (stages 1-4) come from the cache through the tuned
  top layers (`top_pool`), not from a second full extraction.
Values are kept in the backbone's precision (a bf16 run's cache is bf16 and has its own directory: precisions are
never mixed): features read through the cached top layers equal the tuned backbone's forward up to float reordering
(tests/training/test_stage0.py). The tuner reads them as fp32.
A cache need not be stored (`stage0.store_cache` off): each pass's input is then computed when it is read. That is
what a whole-backbone run does: its "layer input" is the embedding of the pass's tokens, as cheap to compute as to
read, and a stored copy of every training token's embeddings would not fit on disk.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm import tqdm
from transformers import PreTrainedModel

from armo.model_store import packing
from armo.model_store.backbone import Backbone
from armo.model_store.encoding import EncodedGroup
from armo.model_store.forward import Features, packed_outputs
from armo.training.config import ExtractConfig, TrainConfig
from armo.training.extract import (
    Group,
    Item,
    ShardPool,
    compute_shard,
    encode_shard,
    job_key,
    save_atomic,
    shard_layout,
    shard_passes,
)
from armo.training.prepare import Dataset, part_bounds
from armo.training.stage0 import layer_cache_dir

log = logging.getLogger(__name__)


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder layers of a Llama-style base model (`layers`, `norm`, `embed_tokens`, `rotary_emb`)."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "norm"):
        raise ValueError(f"stage 0 needs a Llama-style base model with .layers and .norm, got {type(model).__name__}")
    return layers


def view(model: PreTrainedModel, layers: nn.ModuleList, norm: nn.Module) -> PreTrainedModel:
    """`model` running only `layers` then `norm`: its forward (positions, attention, packing plan) unchanged.
    The view has its own module table, so the model itself keeps all its layers."""
    out = copy.copy(model)
    out._modules = dict(model._modules)
    out._modules["layers"] = layers
    out._modules["norm"] = norm
    return out


def bottom_view(model: PreTrainedModel, start: int) -> PreTrainedModel:
    """Embedding and layers [0, start): its last hidden state is the input of layer `start`."""
    return view(model, nn.ModuleList(decoder_layers(model)[:start]), nn.Identity())


def top_view(model: PreTrainedModel, layers: nn.ModuleList) -> PreTrainedModel:
    """Given layers (the model's [start, L), possibly tuned copies) and the model's final norm, fed hidden states."""
    norm = model.norm
    assert isinstance(norm, nn.Module)
    return view(model, layers, norm)


def run_top(top: PreTrainedModel, hidden_in: Tensor, groups: Sequence[EncodedGroup]) -> Features:
    """One packed pass of the top layers over a cached pass's input hidden states [N, d]."""
    units = [packing.Unit(g.prompt_ids, g.suffixes) for g in groups]
    ids, positions, placed = packing.plan(units)
    if len(ids) != hidden_in.shape[0]:
        raise RuntimeError(f"layer cache holds {hidden_in.shape[0]} positions for a pass of {len(ids)} tokens")
    hidden = top(
        inputs_embeds=hidden_in[None],
        position_ids=torch.tensor([positions], device=hidden_in.device),
        use_cache=False,
        **{packing.PLAN_KWARG: placed},
    ).last_hidden_state[0]
    return packed_outputs(hidden, placed, groups)


class LayerCache:
    """The inputs of layer `start` for a job's items (`build` once, then read shard by shard)."""

    def __init__(
        self,
        backbone: Backbone,
        items: Sequence[Item],
        *,
        name: str,
        cache_root: Path,
        cfg: ExtractConfig,
        start: int,
        data_hashes: dict[str, str] | None = None,
        stored: bool = True,
    ) -> None:
        if not backbone.packed:
            raise ValueError("stage 0 needs a backbone that runs packed (attention through armo's packing)")
        if not 0 <= start < len(decoder_layers(backbone.model)):
            raise ValueError(f"start layer {start} is outside the backbone's {len(decoder_layers(backbone.model))}")
        self.backbone, self.cfg, self.start, self.stored = backbone, cfg, start, stored
        self.items = list(items)
        self.groups, self.shards = shard_layout(self.items, cfg)
        # The inputs of layer `start` are the base backbone's whatever delta the top layers get.
        key = job_key(dataclasses.replace(backbone, delta=None), self.items, cfg, data_hashes or {})
        self.directory = layer_cache_dir(cache_root, name, key, start)
        self._encoded: dict[int, tuple[list[EncodedGroup], list[list[int]]]] = {}

    def path(self, shard: int) -> Path:
        return self.directory / f"shard-{shard:05d}.safetensors"

    def shard_groups(self, shard: int) -> list[Group]:
        return [(self.groups[g][1], self.groups[g][2]) for g in self.shards[shard]]

    def shard_items(self, shard: int) -> list[list[int]]:
        """Per group of the shard, its item indices in the order of its responses."""
        return [self.groups[g][0] for g in self.shards[shard]]

    @torch.inference_mode()
    def build(self, progress: bool = True) -> None:
        """Compute every missing shard (resumable: each shard is written atomically)."""
        if self.backbone.delta is not None and min(self.backbone.delta.layers) < self.start:
            raise ValueError("the layer cache holds the base backbone's hidden states: build it without the delta")
        if not self.stored:  # computed when read (`pass_input`)
            return
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.directory.mkdir(parents=True, exist_ok=True)
        bottom = bottom_view(self.backbone.model, self.start)
        todo = [s for s in range(len(self.shards)) if not self.path(s).is_file()]
        bar = tqdm(
            total=len(self.shards),
            initial=len(self.shards) - len(todo),
            desc="cache layer input",
            unit="shard",
            disable=not progress,
        )
        tokens, started = 0, time.perf_counter()
        for s in todo:
            tokens += self.build_shard(s, bottom)
            bar.update(1)
            bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - started, 1e-9):.0f}")
        bar.close()
        if todo:
            seconds = time.perf_counter() - started
            runs_file = self.directory / "job.json"
            runs = json.loads(runs_file.read_text())["runs"] if runs_file.is_file() else []
            runs.append(
                {
                    "new_shards": len(todo),
                    "tokens": tokens,
                    "seconds": round(seconds, 1),
                    "threads": torch.get_num_threads(),
                    "start_layer": self.start,
                }
            )
            runs_file.write_text(json.dumps({"items": len(self.items), "runs": runs}, indent=2))
            log.info("layer cache: %d shards, %d tokens in %.0f s", len(todo), tokens, seconds)

    @torch.inference_mode()
    def build_shard(self, shard: int, bottom: PreTrainedModel) -> int:
        """Compute and write one shard through `bottom` (`bottom_view(model, start)`); returns its tokens."""
        encoded, passes = self.encoded(shard)
        out: dict[str, Tensor] = {}
        tokens = 0
        for j, batch in enumerate(passes):
            units = [packing.Unit(encoded[b].prompt_ids, encoded[b].suffixes) for b in batch]
            hidden, _ = packing.forward(bottom, units)
            out[f"pass{j}"] = hidden.cpu()  # in the backbone's precision: what its own forward hands layer `start`
            tokens += hidden.shape[0]
        save_atomic(self.path(shard), out)
        return tokens

    def complete(self) -> bool:
        return not self.stored or all(self.path(s).is_file() for s in range(len(self.shards)))

    def encoded(self, shard: int) -> tuple[list[EncodedGroup], list[list[int]]]:
        """A shard's encoded groups and its passes (group indices), kept once computed."""
        if shard not in self._encoded:
            encoded = encode_shard(self.backbone, self.shard_groups(shard), self.cfg)
            self._encoded[shard] = (encoded, shard_passes(self.backbone, encoded, self.cfg))
        return self._encoded[shard]

    def pass_groups(self, shard: int, index: int) -> tuple[list[EncodedGroup], list[list[int]]]:
        """A pass's encoded groups and, per group, its item indices (in the order of its responses)."""
        encoded, passes = self.encoded(shard)
        items = self.shard_items(shard)
        return [encoded[b] for b in passes[index]], [items[b] for b in passes[index]]

    def pass_count(self, shard: int) -> int:
        return len(self.encoded(shard)[1])

    def pass_input(self, shard: int, index: int) -> Tensor:
        """The input hidden states [N, d] of one pass (read alone from the shard file, or computed when the cache is
        not stored), on the backbone's device, fp32, outside any autograd graph."""
        if not self.stored:
            groups, _ = self.pass_groups(shard, index)
            units = [packing.Unit(g.prompt_ids, g.suffixes) for g in groups]
            with torch.no_grad():  # not inference_mode: the tuned layers save their input for backward
                hidden, _ = packing.forward(bottom_view(self.backbone.model, self.start), units)
            return hidden.float()
        with safe_open(str(self.path(shard)), framework="pt", device=str(self.backbone.device)) as f:
            return f.get_tensor(f"pass{index}").float()

    def serves(self, backbone: Backbone) -> bool:
        """Whether `backbone`'s features can come from this cache: the same base, and a delta (if any) that leaves
        the layers below `start` unchanged; and every shard computed."""
        same = (backbone.id, backbone.revision, backbone.template_hash, backbone.precision) == (
            self.backbone.id,
            self.backbone.revision,
            self.backbone.template_hash,
            self.backbone.precision,
        )
        below = backbone.delta is not None and min(backbone.delta.layers) < self.start
        # an unstored cache saves no work for features: the ordinary extraction computes the same
        return self.stored and same and backbone.packed and not below and self.complete()

    def pool_for(self, backbone: Backbone) -> ShardPool:
        """`top_pool` through `backbone`'s own layers from `start` on (tuned or not)."""
        model = backbone.model
        return self.top_pool(top_view(model, nn.ModuleList(decoder_layers(model)[self.start :])))

    def top_pool(self, top: PreTrainedModel) -> ShardPool:
        """A `ShardPool` for `run_extraction`: each missing feature shard computed from this cache through `top`
        (the layers from `start` on, tuned or not) instead of a full forward."""

        device = next(top.parameters()).device  # the cached inputs go where the layers that read them are

        def pool(todo: dict[int, list[Group]], cfg: ExtractConfig) -> Iterator[tuple[int, dict[str, Tensor], int]]:
            for s, groups in todo.items():
                if groups != self.shard_groups(s):
                    raise RuntimeError(f"feature shard {s} is not the layer cache's shard {s}")
                tensors = load_file(str(self.path(s)), device=str(device))

                def forward(j: int, chosen: list[EncodedGroup], tensors: dict[str, Tensor] = tensors) -> Features:
                    with torch.inference_mode():
                        return run_top(top, tensors[f"pass{j}"], chosen)

                columns, tokens = compute_shard(self.backbone, groups, cfg, forward=forward)
                yield s, columns, tokens

        return pool


def layer_caches(cfg: TrainConfig, ds: Dataset, backbone: Backbone) -> list[LayerCache]:
    """One layer cache per extraction job of the training set (the jobs `featurize` runs: same names and items),
    holding the inputs of layer L − stage0.cache_layers."""
    start = len(decoder_layers(backbone.model)) - cfg.stage0.cache_layers
    caches = []
    for i, (a, b) in enumerate(part_bounds(ds)):
        caches.append(
            LayerCache(
                backbone,
                ds.items[a:b],
                name="train" if i == 0 else f"train-extra{i}",
                cache_root=Path(cfg.cache_dir),
                cfg=cfg.extract,
                start=start,
                data_hashes=ds.data_hashes if i == 0 else {},
                stored=cfg.stage0.store_cache,
            )
        )
    return caches


def cached_pools(cfg: TrainConfig, ds: Dataset, backbone: Backbone) -> list[ShardPool | None]:
    """Per extraction job of the training set, a pool reading its features from a complete layer cache through
    `backbone`'s top layers (None where there is no such cache, e.g. stage 0 never ran)."""
    if not backbone.packed or backbone.engine is not None:
        return []
    if not len(decoder_layers(backbone.model)) - cfg.stage0.cache_layers >= 0:
        return []
    return [c.pool_for(backbone) if c.serves(backbone) else None for c in layer_caches(cfg, ds, backbone)]
