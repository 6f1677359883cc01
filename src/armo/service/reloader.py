"""Hot reload: load → verify → check the backbone → smoke-score → swap, off the request path.

The served model is one reference (`Reloader.current`) replaced in a single assignment. A request takes the
reference once, prepares its items with that RewardModel and hands them to the batcher, which never mixes
models in a batch: a request that started on version N finishes on version N even if N+1 is swapped in
meanwhile. Any failure keeps the old model serving and is recorded in `last` (shown by /v1/models) and in
metrics. The backbone is reused when the new artifact names the same backbone id + revision, so a heads-only
update costs a few milliseconds and no extra memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass

from armo.model_store.backbone import load_backbone
from armo.model_store.errors import ArmoError, ArtifactError, StoreError
from armo.model_store.loader import BackboneLoader, load_reward_model
from armo.model_store.manifest import Manifest
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.protocol import ReloadStatus
from armo.service.chat_template import FAMILIES, Family, learn_family
from armo.service.errors import ReloadInProgressError
from armo.service.metrics import ServiceMetrics
from armo.settings import Settings

log = logging.getLogger(__name__)

# Scored after every load, before the swap: a version that cannot score this does not go live.
SMOKE_ITEM = ScoreItem(
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2 + 2?"}],
    "2 + 2 = 4.",
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class LoadedModel:
    rm: RewardModel
    loaded_at: str
    # Template families /get_reward parses, the backbone's own first (exact for it), then the common ones.
    families: tuple[Family, ...]

    @property
    def manifest(self) -> Manifest:
        return self.rm.manifest

    @property
    def version(self) -> str:
        return self.rm.version


class Reloader:
    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        *,
        backbone_loader: BackboneLoader = load_backbone,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = ModelStore(settings.store_root)
        self.backbone_loader = backbone_loader
        self.executor = executor  # the thread that runs torch (None: asyncio's default pool)
        self.current: LoadedModel | None = None
        self.last: ReloadStatus | None = None
        self._lock = asyncio.Lock()
        self._failed_version: str | None = None  # the watcher does not retry a refused version by itself
        # An admin's pin to a version other than the alias's: (pinned version, the alias's target when pinned). The
        # watcher leaves it in place until the alias itself moves; an admin reload without a version releases it.
        self._pin: tuple[str, str | None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    # -- loading (worker thread) --------------------------------------------------------------------------
    def _load(self, version: str) -> tuple[LoadedModel, bool]:
        current = self.current.rm.backbone if self.current else None
        rm = load_reward_model(
            self.store,
            self.settings.model,
            version,
            self.settings.backbone_options(),
            self.settings.scoring_config,
            reuse=current,
            loader=self.backbone_loader,
        )
        manifest, backbone, fresh = rm.manifest, rm.backbone, rm.backbone is not current
        [smoke] = rm.score([SMOKE_ITEM], detail=True)
        total = sum(smoke.contributions.values())
        if not math.isfinite(smoke.score) or abs(total - smoke.score) > 1e-3 * max(1.0, abs(smoke.score)):
            raise ArtifactError(
                f"artifact {manifest.model}/{version} failed the smoke test (score {smoke.score!r})", field="heads"
            )
        families = FAMILIES
        try:
            families = (learn_family(backbone.tokenizer), *FAMILIES)
        except (ValueError, KeyError) as e:
            log.warning("the backbone's chat template is not one /get_reward can learn (%s); known families only", e)
        return LoadedModel(rm, _now(), families), fresh

    # -- swapping (event loop) ----------------------------------------------------------------------------
    async def reload(self, ref: str | None = None, *, source: str = "admin", wait: bool = True) -> ReloadStatus:
        """Load `ref` (a version or alias; default the configured alias) and swap it in if it passes every check.

        Raises the domain error on failure (after recording it); the old model keeps serving.
        """
        if self._lock.locked() and not wait:
            raise ReloadInProgressError("a reload is already running")
        async with self._lock:
            started = time.perf_counter()
            target = ref or self.settings.alias
            version: str | None = None
            try:
                version = self.store.resolve(self.settings.model, target)
                if self.current is not None and self.current.version == version:
                    self._note_pin(source, ref, version)
                    status = ReloadStatus(result="unchanged", version=version, at=_now())
                    self.metrics.reloads.labels("unchanged").inc()
                    self.last = status
                    return status
                loop = asyncio.get_running_loop()
                loaded, fresh = await loop.run_in_executor(self.executor, self._load, version)
            except StoreError as e:
                if source != "admin":  # an admin's unknown name leaves last_reload showing the last real attempt
                    self._record_failure(version or target, e, time.perf_counter() - started, source)
                raise
            except ArmoError as e:
                self._record_failure(version or target, e, time.perf_counter() - started, source)
                raise
            except Exception as e:  # anything else (OOM, a torch error): still keep the old model
                self._record_failure(version or target, e, time.perf_counter() - started, source)
                raise ArtifactError(f"loading {self.settings.model}/{version or target} failed: {e}") from e
            previous = self.current
            self.current = loaded  # the swap: one reference assignment, atomic for every reader
            self._failed_version = None
            self._note_pin(source, ref, loaded.version)
            seconds = time.perf_counter() - started
            bb = loaded.rm.backbone
            self.metrics.set_model(loaded.rm.name, loaded.version, bb.id, bb.revision)
            self.metrics.set_objectives(loaded.rm.objectives)
            self.metrics.reloads.labels("success").inc()
            self.metrics.reload_failed.set(0)
            self.metrics.reload_seconds.observe(seconds)
            status = ReloadStatus(
                result="success", version=loaded.version, at=_now(), backbone_reloaded=fresh, seconds=round(seconds, 4)
            )
            self.last = status
            log.info(
                "model swapped",
                extra={
                    "event": "reload",
                    "source": source,
                    "model": loaded.rm.name,
                    "version": loaded.version,
                    "previous": previous.version if previous else None,
                    "backbone_reloaded": fresh,
                    "seconds": round(seconds, 4),
                },
            )
            return status

    def _record_failure(self, version: str, error: BaseException, seconds: float, source: str) -> None:
        message = error.message if isinstance(error, ArmoError) else f"{type(error).__name__}: {error}"
        self._failed_version = version
        self.metrics.reloads.labels("failure").inc()
        self.metrics.reload_failed.set(1)
        self.last = ReloadStatus(result="failure", version=version, error=message, at=_now(), seconds=round(seconds, 4))
        log.error(
            "reload refused; the previous model keeps serving",
            extra={"event": "reload_failed", "source": source, "version": version, "error": message},
        )

    def _alias_target(self) -> str | None:
        try:
            return self.store.resolve(self.settings.model, self.settings.alias)
        except StoreError:
            return None

    def _note_pin(self, source: str, ref: str | None, version: str) -> None:
        if source != "admin":
            return
        alias = self._alias_target()
        self._pin = (version, alias) if ref is not None and version != alias else None

    # -- watcher ------------------------------------------------------------------------------------------
    async def check(self) -> ReloadStatus | None:
        """One watcher tick: reload if the alias points at a version that is neither served nor refused, unless an
        admin pinned a version and the alias has not moved since."""
        version = self._alias_target()
        if version is None:
            return None  # nothing published (yet); the startup attempt already recorded why
        if self._pin is not None:
            if self._pin[1] == version:
                return None
            self._pin = None  # the alias moved: it is followed again
        if (self.current is not None and version == self.current.version) or version == self._failed_version:
            return None
        with contextlib.suppress(ArmoError):
            return await self.reload(version, source="watcher")
        return self.last

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:  # the watcher must never die
                log.exception("watcher tick failed")

    async def start(self) -> None:
        """Initial load in the background (so /health answers at once), then the watcher."""

        async def initial() -> None:
            with contextlib.suppress(Exception):
                await self.reload(source="startup")
            if self.settings.watch_interval_s > 0:
                await self._watch(self.settings.watch_interval_s)

        self._watcher = asyncio.get_running_loop().create_task(initial(), name="armo-reloader")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
