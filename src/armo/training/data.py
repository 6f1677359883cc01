"""Loaders for the two normalised training schemas and the RewardBench evaluation files (DESIGN.md §3).

    ratings:  {id, source, messages, response, ratings: {objective: value}}
    pairwise: {id, source, objective, messages, chosen, rejected}
    eval:     {id, subset, section, prompt, chosen, rejected}   (RewardBench; turned into pairs here)

Files are JSONL (optionally gzipped): the shared data, or a user's own file in the same schema. A thin path
accepts `hf:<dataset>[:<split>]` for users with network (needs the `datasets` package, not installed here).
Splits are deterministic by id (a hash, not a random generator), so every stage and ablation sees the same rows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

Messages = tuple[dict[str, str], ...]


@dataclass(frozen=True)
class RatingRow:
    id: str
    source: str
    messages: Messages
    response: str
    ratings: dict[str, float]


@dataclass(frozen=True)
class PairRow:
    id: str
    source: str
    objective: str  # which preference the pair expresses (helpfulness, harmlessness, overall, or an eval subset)
    messages: Messages
    chosen: str
    rejected: str
    subset: str = ""  # RewardBench subset (eval rows only)
    section: str = ""
    category: str = ""  # the source's own topic label, e.g. RMB's "Helpfulness/Code/Data Management"


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """JSON objects from a .jsonl or .jsonl.gz file, or `hf:<name>[:<split>]` (needs network + `datasets`)."""
    spec = str(path)
    if spec.startswith("hf:"):
        import importlib

        datasets = importlib.import_module("datasets")  # optional dependency, only for users with network
        name, _, split = spec[3:].partition(":")
        yield from datasets.load_dataset(name, split=split or "train")
        return
    p = Path(path)
    opener: Callable[..., Any] = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _messages(raw: Any) -> Messages:
    if isinstance(raw, str):  # a bare prompt string (RewardBench) is one user turn
        return ({"role": "user", "content": raw},)
    return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in raw)


def load_ratings(path: str | Path) -> list[RatingRow]:
    rows = []
    for r in read_jsonl(path):
        ratings = {k: float(v) for k, v in (r.get("ratings") or {}).items() if v is not None}
        rows.append(RatingRow(str(r["id"]), str(r.get("source", "")), _messages(r["messages"]), r["response"], ratings))
    return rows


def load_pairs(path: str | Path) -> list[PairRow]:
    rows = []
    for r in read_jsonl(path):
        msgs = _messages(r["messages"] if "messages" in r else r["prompt"])
        subset = str(r.get("subset", ""))
        objective = str(r.get("objective") or subset or "preference")
        rows.append(
            PairRow(
                str(r["id"]) if not subset else f"{subset}-{r['id']}",
                str(r.get("source", "")),
                objective,
                msgs,
                r["chosen"],
                r["rejected"],
                subset,
                str(r.get("section", "")),
                str(r.get("category") or ""),
            )
        )
    return rows


def id_fraction(row_id: str, salt: str = "armo-split") -> float:
    """A stable pseudo-uniform number in [0, 1) from an id."""
    digest = hashlib.sha256(f"{salt}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


T = TypeVar("T", RatingRow, PairRow)


def split(rows: Sequence[T], val_fraction: float, salt: str = "armo-split") -> tuple[list[T], list[T]]:
    """Deterministic train/validation split by id hash."""
    train = [r for r in rows if id_fraction(r.id, salt) >= val_fraction]
    val = [r for r in rows if id_fraction(r.id, salt) < val_fraction]
    return train, val


def stratified_sample(
    rows: Sequence[T], key: Callable[[T], str], per_group: dict[str, int] | float, seed: int, min_per_group: int = 0
) -> list[T]:
    """Up to `per_group[g]` rows (or a fraction of each group, at least `min_per_group`) per group, by a seeded
    shuffle."""
    groups: dict[str, list[T]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    out: list[T] = []
    for g in sorted(groups):
        items = sorted(groups[g], key=lambda r: r.id)
        random.Random(f"{seed}:{g}").shuffle(items)
        n = max(min_per_group, round(len(items) * per_group)) if isinstance(per_group, float) else per_group.get(g, 0)
        out.extend(items[: max(0, min(n, len(items)))])
    return out


def check_groups(sample: Mapping[str, int], found: Iterable[str], field: str) -> None:
    """Refuse a sample that asks for rows of a group no row belongs to, naming it and the groups the data has.

    stratified_sample gives such a group 0 rows, which a misspelt or missing group would otherwise mean in silence:
    a model trained on less data than its config says. A group asked for 0 rows may be absent.
    """
    have = set(found)
    missing = sorted(g for g, n in sample.items() if n > 0 and g not in have)
    if missing:
        raise ValueError(
            f"{field}: no data in group(s) {', '.join(missing)} (groups are '<source>/<objective>'); the data has "
            f"{', '.join(sorted(have)) or 'no rows'}"
        )


def file_sha256(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        return hashlib.sha256(str(path).encode()).hexdigest()
    h = hashlib.sha256()
    with p.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def objectives_of(rows: Iterable[RatingRow]) -> list[str]:
    return sorted({k for r in rows for k in r.ratings})
