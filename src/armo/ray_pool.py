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


@contextlib.contextmanager
def ray_session(pool: Pool) -> Iterator[Any]:
    """`ray` connected to `pool.address`, or a local Ray for this run (loopback, no dashboard) shut down after;
    order-preserving Ray Data execution."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RuntimeError("--ray needs Ray Data: pip install 'armo-rm[ray]'") from e
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if pool.address is None:
            # The actors' CPUs, and one more for the read and write tasks of Ray's datasources: without it they
            # wait for a CPU the actors never give back.
            kwargs |= {"num_cpus": pool.actors * pool.threads_per_actor + 1, "_node_ip_address": "127.0.0.1"}
        ray.init(address=pool.address, **kwargs)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        yield ray
    finally:
        if started_here:
            with contextlib.suppress(Exception):
                ray.shutdown()


def actor_map(ds: Any, cls: type, pool: Pool, batch_size: int, batch_format: str, **constructor: Any) -> Any:
    """`ds.map_batches` through `cls(**constructor, threads=…)` on an actor pool of `pool`'s size and resources."""
    import ray.data

    return ds.map_batches(
        cls,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.threads_per_actor,
        num_gpus=pool.gpus_per_actor,
        batch_format=batch_format,
        fn_constructor_kwargs={**constructor, "threads": pool.threads_per_actor},
    )


def map_shards(cls: type, items: list[dict[str, Any]], pool: Pool, **constructor: Any) -> Iterator[dict[str, Any]]:
    """`cls(**constructor)` on every actor; yields `cls.__call__`'s rows for `items` (one block each), in order."""
    with ray_session(pool) as ray:
        # One block per shard, so that every actor gets work.
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        sized = Pool(min(pool.actors, len(items)), pool.threads_per_actor, pool.gpus_per_actor, pool.address)
        yield from actor_map(ds, cls, sized, 1, "numpy", **constructor).iter_rows()
