"""Score a file in shards: resumable after a kill (finished shards are kept and not redone), deterministic output
order, a progress bar with tokens/s, every row out (an `error` column for rows that could not be scored).

The model is loaded as the service loads it (the store, the alias, the backbone, the settings' scoring config) and
scored with the same `RewardModel`: a file scored here gets the scores `/v1/score` gives the same rows. Responses
that share a prompt within a shard (a pair's two sides, Best-of-N candidates) run their prompt once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from armo.batch import files, rows
from armo.model_store.errors import ArmoError
from armo.model_store.loader import load_reward_model
from armo.model_store.reward_model import Prepared, RewardModel
from armo.model_store.store import ModelStore
from armo.settings import Settings


@dataclass(frozen=True)
class Options:
    layout: rows.Layout | None = None  # None: detected per file from its first row
    explain: bool = False
    shard_rows: int = 256  # rows per shard: the unit of resumption
    limit: int | None = None
    shard: tuple[int, int] = (0, 1)  # (i, n): rows whose index is i modulo n


@dataclass(frozen=True)
class Summary:
    rows: int
    errors: int
    tokens: int
    seconds: float
    shards_done_before: int


def load_model(settings: Settings) -> RewardModel:
    """The artifact the service would serve with these settings (store, model, alias, backbone, limits)."""
    store = ModelStore(settings.store_root)
    return load_reward_model(
        store, settings.model, settings.alias, settings.backbone_options(), settings.scoring_config
    )


def _selected(all_rows: list[dict[str, Any]], options: Options) -> list[dict[str, Any]]:
    i, n = options.shard
    picked = [r for k, r in enumerate(all_rows) if k % n == i]
    return picked[: options.limit] if options.limit is not None else picked


@dataclass(frozen=True)
class Plan:
    """A file cut into shards, and where the finished ones are kept until the whole output is written."""

    selected: list[dict[str, Any]]
    layout: rows.Layout
    shards: list[list[dict[str, Any]]]
    parts: Path

    def part(self, s: int) -> Path:
        return self.parts / f"{s:05d}.jsonl"

    def todo(self) -> list[int]:
        return [s for s in range(len(self.shards)) if not self.part(s).is_file()]


def plan(src: Path, dst: Path, options: Options, model_key: Sequence[object]) -> Plan:
    """`model_key` names the scoring (model, version, token limit): a changed model never reuses finished shards."""
    selected = _selected(files.read_rows(src), options)
    layout = options.layout or (rows.detect(selected[0]) if selected else "items")
    h = hashlib.sha256()
    h.update(json.dumps([str(src.resolve()), src.stat().st_size, src.stat().st_mtime_ns]).encode())
    h.update(json.dumps([*map(str, model_key), layout, options.explain, options.shard_rows, len(selected)]).encode())
    h.update(json.dumps([options.limit, list(options.shard)]).encode())
    parts = dst.parent / f".{dst.name}.parts-{h.hexdigest()[:16]}"
    shards = [selected[k : k + options.shard_rows] for k in range(0, len(selected), options.shard_rows)]
    return Plan(selected, layout, shards, parts)


def finish(p: Plan, dst: Path, tokens: int, started: float, done_before: int) -> Summary:
    """Every shard done: the output file in input order, written at once; the shard folder removed."""
    scored = [r for s in range(len(p.shards)) for r in files.read_rows(p.part(s))]
    files.write_rows(dst, scored)
    shutil.rmtree(p.parts, ignore_errors=True)
    errors = sum(r.get("error") is not None for r in scored)
    return Summary(len(scored), errors, tokens, time.perf_counter() - started, done_before)


def score_rows(
    rm: RewardModel, batch: Sequence[dict[str, Any]], layout: rows.Layout, explain: bool
) -> tuple[list[dict[str, Any]], int]:
    """One shard: every row's responses prepared (a row that cannot be is an error row), scored in one call.
    -> (scored rows, tokens fed to the backbone)."""
    prepared: list[Prepared] = []
    spans: list[tuple[int, int] | str] = []  # per row: its slice of `prepared`, or its error
    for row in batch:
        try:
            items = [rm.prepare(item) for item in rows.units(row, layout)]
        except (ArmoError, ValueError, KeyError, TypeError) as e:
            message = e.message if isinstance(e, ArmoError) else f"{type(e).__name__}: {e}"
            field = f" ({e.field})" if isinstance(e, ArmoError) and e.field else ""
            spans.append(message + field)
            continue
        spans.append((len(prepared), len(prepared) + len(items)))
        prepared += items
    results = rm.results(prepared, rm.forward(prepared), detail=explain) if prepared else []
    out = []
    for row, span in zip(batch, spans, strict=True):
        if isinstance(span, str):
            out.append(rows.failed(row, span))
        else:
            out.append(rows.scored(row, layout, results[span[0] : span[1]], explain=explain))
    return out, sum(p.tokens for p in prepared)


def score_file(
    rm: RewardModel,
    src: Path,
    dst: Path,
    options: Options,
    *,
    progress: bool = True,
    max_new_shards: int | None = None,
) -> Summary:
    """Score `src` into `dst`. Shards are kept in a hidden folder beside `dst` until the whole file is written, so a
    killed run resumes where it stopped. `max_new_shards` stops early (RuntimeError), as a kill would."""
    p = plan(src, dst, options, (rm.name, rm.version, rm.config.max_length))
    p.parts.mkdir(parents=True, exist_ok=True)
    todo = p.todo()
    done_before = len(p.shards) - len(todo)
    bar = tqdm(total=len(p.selected), desc=f"armo batch {src.name}", unit="row", disable=not progress)
    bar.update(sum(len(p.shards[s]) for s in range(len(p.shards)) if s not in todo))
    tokens, started = 0, time.perf_counter()
    for new, s in enumerate(todo):
        if max_new_shards is not None and new >= max_new_shards:
            bar.close()
            raise RuntimeError(f"stopped after {new} new shard(s) (max_new_shards)")
        out, used = score_rows(rm, p.shards[s], p.layout, options.explain)
        files.write_rows(p.part(s), out)  # JSON lines keep every column as it is, whatever the output format
        tokens += used
        bar.update(len(p.shards[s]))
        bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - started, 1e-9):.0f}")
    bar.close()
    return finish(p, dst, tokens, started, done_before)
