"""A stateful class run over shards on a Ray Data actor pool: what `armo batch score --ray` and `armo train extract
--ray` share. Each actor builds the class once (one model per actor) and gets one shard per call; rows come back in
shard order. Without an address a local Ray is started on loopback, without the dashboard, and shut down after.
Ray is an optional dependency, imported here only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pool:
    actors: int = 2
    threads_per_actor: int = 1
    gpus_per_actor: float = 0.0
    address: str | None = None  # a running cluster; None: a local Ray for this run


def map_shards(cls: type, items: list[dict[str, Any]], pool: Pool, **constructor: Any) -> Iterator[dict[str, Any]]:
    """`cls(**constructor)` on every actor; yields `cls.__call__`'s rows for `items` (one block each), in order."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RuntimeError("--ray needs Ray Data: pip install 'ray[data]'") from e
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if pool.address is None:
            kwargs |= {"num_cpus": max(1, pool.actors * pool.threads_per_actor), "_node_ip_address": "127.0.0.1"}
        ray.init(address=pool.address, **kwargs)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        # One block per shard, so that every actor gets work.
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        done = ds.map_batches(
            cls,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(pool.actors, len(items))),
            num_cpus=pool.threads_per_actor,
            num_gpus=pool.gpus_per_actor,
            batch_format="numpy",
            fn_constructor_kwargs={**constructor, "threads": pool.threads_per_actor},
        )
        yield from done.iter_rows()
    finally:
        if started_here:
            with contextlib.suppress(Exception):
                ray.shutdown()
