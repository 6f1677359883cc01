"""Feature extraction job: cached on disk, sharded, resumable, with a progress bar and tokens/s.

Cache key = (backbone id + revision, chat-template hash, max length, data file hashes, content of the items), so a
changed tokenizer, cap, data file or subsample never reuses stale features. Each shard is written atomically
(tmp file + rename); a killed job resumes at the first missing shard.

Responses that share a prompt (the chosen and rejected side of a pair, or the rated responses of one prompt) share
the prompt computation (`armo.model_store.forward.group_features`, the serving path's forward code). Because the
backbone is causal this gives the same hidden states as one pass over prompt ⊕ response.

Encoding and the length cap are the serving path's too (`armo.model_store.encoding`), with the policy `truncation`
returns: a group's prompt is left-truncated to fit its longest response (leading BOS kept, never below
`min_prompt_tokens` or past the prompt boundary); a response that still does not fit keeps its first tokens and its
end-of-turn token (the one the score is read from). Both are flagged `truncated`. The verbosity rule always sees the
untruncated response length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from armo.model_store import atomic
from armo.model_store.backbone import Backbone
from armo.model_store.batching import UNLIMITED, Budget, Piece, cut
from armo.model_store.encoding import EncodedGroup, Message, Truncation, encode_group
from armo.model_store.forward import Features, PassBudget, group_features
from armo.model_store.manifest import Pooling
from armo.model_store.reward_model import ScoreItem, ScoringConfig
from armo.training.config import ExtractConfig

log = logging.getLogger(__name__)


# One (conversation, response) to featurise: the same type the scoring path takes.
Item = ScoreItem


COLUMNS = ("response", "response_mean", "prompt", "response_tokens", "length", "truncated")  # in field order


@dataclass
class FeatureTable:
    """Features of a job's items, in item order."""

    response: Tensor  # [N, d] hidden state at the end-of-turn token after the response
    response_mean: Tensor  # [N, d] mean hidden state over the response span
    prompt: Tensor  # [N, d] hidden state at the end-of-turn token of the last user turn
    response_tokens: Tensor  # [N] untruncated response length in backbone tokens (incl. end-of-turn)
    length: Tensor  # [N] tokens actually fed (after the cap)
    truncated: Tensor  # [N] bool

    def __len__(self) -> int:
        return int(self.response.shape[0])

    def select(self, index: Sequence[int] | Tensor) -> FeatureTable:
        idx = torch.as_tensor(index, dtype=torch.long)
        return FeatureTable(*(t[idx] for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)

    def to_dict(self) -> dict[str, Tensor]:
        return dict(zip(COLUMNS, self._tensors(), strict=True))

    def pooled(self, pooling: Pooling) -> Tensor:
        """The response feature heads with this pooling read. [N, d]"""
        return self.response if pooling == "last" else self.response_mean

    def features(self, index: Sequence[int] | Tensor) -> Features:
        """The rows `index` as the scoring path's features."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return Features(response=self.response[idx], prompt=self.prompt[idx], response_mean=self.response_mean[idx])

    @classmethod
    def concat(cls, parts: Sequence[FeatureTable]) -> FeatureTable:
        return cls(*(torch.cat(ts) for ts in zip(*(p._tensors() for p in parts), strict=True)))


def truncation(cfg: ExtractConfig) -> Truncation:
    """Training's length policy: a long rated response still carries its label, so it is cut, not refused."""
    return Truncation(max_length=cfg.max_length, min_prompt_tokens=cfg.min_prompt_tokens, long_response="cut")


def scoring_config(cfg: ExtractConfig) -> ScoringConfig:
    """How training's RewardModels fit sequences: the extraction's own truncation (the features were made with it)."""
    return ScoringConfig(truncation(cfg), PassBudget(cfg.max_pass_tokens, UNLIMITED), "right")


def forward_groups(backbone: Backbone, groups: Sequence[EncodedGroup]) -> Features:
    """Prompt once per group, then every response after it, in one pass (the caller's batches are already sized).
    Rows: the groups' responses in order."""
    return group_features(backbone, groups, PassBudget(UNLIMITED, UNLIMITED))


GroupRows = tuple[list[int], Sequence[Message], list[str]]  # item indices, the conversation, their responses


def _group_items(items: Sequence[Item]) -> list[GroupRows]:
    """Items with identical conversations become one group (first-appearance order)."""
    groups: dict[str, GroupRows] = {}
    for i, it in enumerate(items):
        key = json.dumps(list(it.messages), sort_keys=True)
        if key not in groups:
            groups[key] = ([], it.messages, [])
        groups[key][0].append(i)
        groups[key][2].append(it.response)
    return list(groups.values())


def shard_layout(items: Sequence[Item], cfg: ExtractConfig) -> tuple[list[GroupRows], list[list[int]]]:
    """(groups of items with one conversation, the group indices of every shard of about `shard_size` items)."""
    groups = _group_items(items)
    shards: list[list[int]] = [[]]
    count = 0
    for gi, (idx, _, _) in enumerate(groups):
        if count >= cfg.shard_size:
            shards.append([])
            count = 0
        shards[-1].append(gi)
        count += len(idx)
    return groups, shards


def job_key(backbone: Backbone, items: Sequence[Item], cfg: ExtractConfig, data_hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    meta = {
        "backbone": backbone.id,
        "revision": backbone.revision,
        "template": backbone.template_hash,
        "max_length": cfg.max_length,
        "min_prompt_tokens": cfg.min_prompt_tokens,
        "shard_size": cfg.shard_size,
        "columns": COLUMNS,  # shards written before the mean feature existed lack it
        "data": data_hashes,
    }
    if backbone.delta is not None:  # a reward-tuned backbone (stage 0) has other features than its base
        meta["delta"] = backbone.delta.sha256
    if backbone.precision != "float32":  # bf16 features are their own cache: precisions are never mixed
        meta["precision"] = backbone.precision
    if backbone.compiled is not None:  # compiled kernels round differently: their features are their own cache too
        meta["compiled"] = True
    h.update(json.dumps(meta, sort_keys=True).encode())
    for it in items:
        h.update(json.dumps([list(it.messages), it.response]).encode())
    return h.hexdigest()


Group = tuple[Sequence[Message], list[str]]  # a conversation and every response to it
# Computes shards elsewhere: {shard index: its groups}, the config → (shard index, its tensors, tokens), in order.
ShardPool = Callable[[dict[int, list[Group]], ExtractConfig], Iterator[tuple[int, dict[str, Tensor], int]]]


# One pass of a shard: (its index in the shard, its encoded groups) -> their features, rows in group order.
PassForward = Callable[[int, list[EncodedGroup]], Features]


def encode_shard(backbone: Backbone, groups: Sequence[Group], cfg: ExtractConfig) -> list[EncodedGroup]:
    policy = truncation(cfg)
    return [encode_group(backbone.tokenizer, messages, responses, policy) for messages, responses in groups]


def shard_passes(backbone: Backbone, encoded: list[EncodedGroup], cfg: ExtractConfig) -> list[list[int]]:
    """A shard's forward passes (group indices): the same cut wherever the shard is computed, so a cache of one
    layer's hidden states (`armo.training.stage0.layer_cache`) lines up with the passes that read it."""
    return _batches(encoded, cfg.max_pass_tokens, backbone.packed)


def compute_shard(
    backbone: Backbone,
    groups: Sequence[Group],
    cfg: ExtractConfig,
    on_pass: Callable[[int, int], None] | None = None,
    forward: PassForward | None = None,
) -> tuple[dict[str, Tensor], int]:
    """The cache columns of one shard (responses in group order) and the tokens it fed the backbone. `forward`
    replaces the backbone's forward pass (stage 0's cached top layers); default: `forward_groups`."""
    encoded = encode_shard(backbone, groups, cfg)
    n = sum(len(e.suffixes) for e in encoded)
    columns = {c: torch.empty((n, backbone.hidden_size)) for c in ("response", "response_mean", "prompt")}
    starts = [0]
    for e in encoded:
        starts.append(starts[-1] + len(e.suffixes))
    tokens = 0
    for j, batch in enumerate(shard_passes(backbone, encoded, cfg)):
        chosen = [encoded[b] for b in batch]
        feats = forward_groups(backbone, chosen) if forward is None else forward(j, chosen)
        rows = [j for b in batch for j in range(starts[b], starts[b + 1])]
        for c, values in columns.items():
            values[rows] = getattr(feats, c).cpu()  # the cache lives on the CPU whatever the backbone's device
        tokens += sum(encoded[b].tokens for b in batch)
        if on_pass is not None:
            on_pass(len(rows), tokens)
    tensors = {
        **columns,
        "response_tokens": torch.tensor([t for e in encoded for t in e.response_tokens]),
        "length": torch.tensor([len(e.prompt_ids) + len(x) for e in encoded for x in e.suffixes]),
        "truncated": torch.tensor([t for e in encoded for t in e.truncated]),
    }
    return tensors, tokens


def save_atomic(path: Path, tensors: dict[str, Tensor]) -> None:
    atomic.write_file(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def _batches(encoded: list[EncodedGroup], max_pass_tokens: int, packed: bool) -> list[list[int]]:
    """Groups sorted by length, cut so each forward pass costs at most `max_pass_tokens`: real tokens on a packed
    backbone, rows × longest row otherwise."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt_ids) + max(map(len, encoded[i].suffixes)))
    pieces = [
        Piece(
            encoded[i].tokens,
            rows=len(encoded[i].suffixes),
            width=len(encoded[i].prompt_ids) + max(map(len, encoded[i].suffixes)),
        )
        for i in order
    ]
    return [[order[k] for k in b] for b in cut(pieces, Budget(max_pass_tokens), padded=not packed)]


def run_extraction(
    backbone: Backbone,
    items: Sequence[Item],
    *,
    name: str,
    cache_root: Path,
    cfg: ExtractConfig,
    data_hashes: dict[str, str] | None = None,
    max_new_shards: int | None = None,
    progress: bool = True,
    pool: ShardPool | None = None,
) -> FeatureTable:
    """Featurise `items` (in order), reusing every finished shard under cache_root/<name>-<key>/.

    `max_new_shards` stops after computing that many new shards (used by tests to simulate a kill); the
    returned table is then incomplete and a RuntimeError is raised instead. `pool` computes the missing shards
    elsewhere (`armo.training.on_ray`: Ray actors), into the same cache.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    key = job_key(backbone, items, cfg, data_hashes or {})
    directory = cache_root / f"{name}-{key[:16]}"
    directory.mkdir(parents=True, exist_ok=True)
    job_file = directory / "job.json"
    history = json.loads(job_file.read_text()).get("runs", []) if job_file.is_file() else []
    meta = {"name": name, "key": key, "n_items": len(items), "config": asdict(cfg), "data": data_hashes or {}}
    job_file.write_text(json.dumps({**meta, "runs": history}, indent=2))

    groups, shards = shard_layout(items, cfg)

    parts: list[FeatureTable] = []
    order: list[int] = []
    todo = [s for s in range(len(shards)) if not (directory / f"shard-{s:05d}.safetensors").is_file()]
    done_items = sum(len(groups[g][0]) for s in range(len(shards)) if s not in set(todo) for g in shards[s])
    bar = tqdm(total=len(items), initial=done_items, desc=f"extract {name}", unit="resp", disable=not progress)
    tokens, started, new = 0, time.perf_counter(), 0

    def on_pass(rows: int, pass_tokens: int) -> None:
        bar.update(rows)
        bar.set_postfix(tok_s=f"{(tokens + pass_tokens) / max(time.perf_counter() - started, 1e-9):.0f}")

    if pool is not None and todo:  # the missing shards computed elsewhere (Ray actors), saved here as they arrive
        chosen = todo if max_new_shards is None else todo[:max_new_shards]
        inputs = {s: [(groups[g][1], groups[g][2]) for g in shards[s]] for s in chosen}
        for s, tensors, used in pool(inputs, cfg):
            save_atomic(directory / f"shard-{s:05d}.safetensors", tensors)
            tokens, new = tokens + used, new + 1
            bar.update(int(tensors["response"].shape[0]))
    for s, shard in enumerate(shards):
        path = directory / f"shard-{s:05d}.safetensors"
        if not path.is_file():
            if max_new_shards is not None and new >= max_new_shards:
                bar.close()
                raise RuntimeError(f"extraction of {name} stopped after {new} new shard(s) (max_new_shards)")
            tensors, used = compute_shard(backbone, [(groups[g][1], groups[g][2]) for g in shard], cfg, on_pass)
            save_atomic(path, tensors)
            tokens += used
            new += 1
        t = load_file(str(path))
        parts.append(FeatureTable(*(t[c] for c in COLUMNS)))
        order.extend(i for g in shard for i in groups[g][0])
    bar.close()
    elapsed = time.perf_counter() - started
    if new:
        log.info("%s: %d new shard(s), %d tokens in %.1f s (%.0f tok/s)", name, new, tokens, elapsed, tokens / elapsed)
        # every (resumed) run's cost, so the budget can be read from the cache itself
        run_stats = {
            "new_shards": new,
            "tokens": tokens,
            "seconds": round(elapsed, 1),
            "threads": torch.get_num_threads(),
        }
        job_file.write_text(json.dumps({**meta, "runs": [*history, run_stats]}, indent=2))
    table = FeatureTable.concat(parts)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return table.select(inverse)
