"""The micro-batcher: merges requests from many clients into forward batches.

  reserve() (on arrival, estimated; held while the request is tokenised, counted as waiting)
    submit() ──► bounded priority queue ──► worker task ──► one worker thread: RewardModel.forward(batch)
      │ full → QueueFullError (429 + Retry-After)      │ batch = whole jobs, same model, ≤ max items,
      │ deadline → DeadlineExceededError (504)         │ ≤ token budget, collected for ≤ max_wait after the first
      ▼                                                ▼ expired / cancelled (client gone) jobs are skipped
   per-request futures ◄─────── results split back per job (a failing batch fails only its requests)

A request becomes one job, or several batch-sized jobs when it is larger than one batch (an RL rollout batch of
a thousand items). Jobs are served in order of (their rank within their caller's queued jobs, arrival): a caller
(an API key; without keys every request is its own caller) whose first job arrives while another caller has a
hundred queued runs right after the job being scored, so neither a large request nor a busy caller starves the
others. A batch only holds jobs prepared by the same RewardModel object, so a request started before
a hot reload finishes on the version it started with. The forward pass runs
in a single dedicated thread (torch parallelises inside it); the event loop only moves futures. Scores do not
depend on batch composition because RewardModel masks padding and gathers features by the attention mask.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from armo.model_store.batching import Budget, Load, Piece, cut, fits
from armo.model_store.reward_model import ItemResult, Prepared, RewardModel, Steer
from armo.service.errors import BatchFailedError, DeadlineExceededError, QueueFullError, ShuttingDownError
from armo.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)
# Admit a request only if the work ahead of it, at the measured rate, takes at most this share of its deadline.
ADMISSION_MARGIN = 0.5


@dataclass(frozen=True)
class BatcherConfig:
    """Built by `armo.service.app.batcher_config` from the settings (the only source of defaults)."""

    max_items: int  # items merged into one worker batch
    max_tokens: int  # real tokens merged into one worker batch
    max_wait_s: float
    max_queue: int  # batch-sized jobs waiting
    max_queue_tokens: int  # real tokens waiting
    retry_after_s: int


@dataclass
class _Job:
    model: RewardModel
    items: Sequence[Prepared]
    steer: Steer | None  # the request's steering, applied to each of its items
    future: asyncio.Future[list[ItemResult]]
    deadline: float  # event-loop time
    caller: str
    piece: Piece = field(init=False)

    def __post_init__(self) -> None:
        self.piece = Piece(sum(p.tokens for p in self.items), rows=len(self.items))

    @property
    def done(self) -> bool:
        return self.future.done()


class MicroBatcher:
    def __init__(
        self, config: BatcherConfig, metrics: ServiceMetrics, *, executor: ThreadPoolExecutor | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics
        # (rank of the job among its caller's queued jobs, arrival number, job): round-robin between callers.
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Job]] = asyncio.PriorityQueue()
        self._arrivals = itertools.count()
        # The micro-batcher counts real tokens: the forward path then cuts the batch into passes of its own size.
        self._budget = Budget(config.max_tokens, config.max_items)
        self._carry: _Job | None = None  # a job that did not fit the previous batch; it starts the next one
        # One thread for forward passes (shared with the reloader's loads when the app passes it in).
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="armo-forward")
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[_Job] = []  # the batch being collected or run (failed on stop, never lost)
        self._closed = False
        self._queued_tokens = 0  # real tokens of the jobs in the queue (cancelled ones until they are dropped)
        self._running_tokens = 0  # real tokens of the batch on the worker
        self._queued_by_caller: collections.Counter[str] = collections.Counter()
        # Admitted requests still being tokenised (estimated): they count as waiting, see reserve().
        self._reserved_jobs = 0
        self._reserved_tokens = 0
        self._rate: float | None = None  # tokens/s of recent forward passes (moving average), for admission
        self._loop: asyncio.AbstractEventLoop | None = None
        self.draining = False  # the process is stopping: no new work; what cannot finish gets a 503

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name="armo-batcher")

    def begin_drain(self, seconds: float) -> None:
        """The process got SIGTERM (any thread): refuse new work, keep scoring what is queued for `seconds`, then
        answer whatever is left with 503 `shutting_down` — while the server can still send it, before its own
        graceful timeout cancels the handlers."""
        if self._loop is None or self.draining:
            return
        self._loop.call_soon_threadsafe(self._drain, seconds)

    def _drain(self, seconds: float) -> None:
        self.draining = True
        assert self._loop is not None
        self._loop.call_later(seconds, self._fail_pending, "the service stopped before this request was scored; retry")

    def _fail_pending(self, message: str) -> None:
        pending = [*self._inflight, *([self._carry] if self._carry else [])]
        self._inflight, self._carry = [], None
        while not self._queue.empty():
            pending.append(self._take(self._queue.get_nowait()))
        for job in pending:
            if not job.done:
                job.future.set_exception(ShuttingDownError(message))

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_pending("the service is shutting down; retry")
        # Never wait for a forward pass still running in the thread: shutdown must not hang on it.
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (1 if self._carry else 0)

    # -- request side -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def reserve(self, tokens: int, jobs: int, timeout: float) -> Iterator[None]:
        """Admission before tokenising, on the event loop, from an estimate (`tokens`, `jobs`): raises QueueFullError
        at once when the queue cannot take it, else holds the room while the body of the `with` prepares the
        request; submit() then checks the exact count.

        Measured (loadtests/reliability.py --mode burst: 160 requests at once, ARMO_MAX_QUEUE=16, 2-core VM): while
        the queue only counted prepared jobs, every request of a burst passed this check (nothing was queued yet),
        then waited its turn in the one tokenising thread only to be refused after it, so the refusals took the
        whole tokenising backlog (429 p50 110-140 ms; ~430 ms with long responses). Counting the requests being
        prepared refuses all but the queue's worth on arrival (429 p50 ~50 ms, the event loop's own work)."""
        if self._closed or self.draining:
            raise ShuttingDownError("the service is shutting down; retry")
        self.admit(tokens, jobs, timeout)
        self._reserved_jobs += jobs
        self._reserved_tokens += tokens
        try:
            yield
        finally:
            self._reserved_jobs -= jobs
            self._reserved_tokens -= tokens

    async def submit(
        self,
        model: RewardModel,
        items: Sequence[Prepared],
        *,
        timeout: float,
        steer: Steer | None = None,
        caller: str | None = None,
    ) -> list[ItemResult]:
        """Score `items` with `model`; results in order. Raises QueueFullError at once when the queue cannot take
        the whole request. Cancelling the caller (its client left) cancels its jobs: queued ones are then skipped."""
        if self._closed or self.draining:
            raise ShuttingDownError("the service is shutting down; retry")
        chunks = cut([Piece(p.tokens) for p in items], self._budget, padded=False)
        self.admit(sum(p.tokens for p in items), len(chunks), timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        arrival = next(self._arrivals)
        who = caller if caller is not None else f"request-{arrival}"
        jobs = [_Job(model, [items[i] for i in c], steer, loop.create_future(), deadline, who) for c in chunks]
        first = self._queued_by_caller[who]
        for index, job in enumerate(jobs):
            self._queue.put_nowait((first + index, arrival, job))
            self._queued_tokens += job.piece.tokens
            self._queued_by_caller[who] += 1
        self.metrics.queue_depth.set(self.depth)
        try:
            # wait_for cancels the futures on timeout; the worker then skips (or discards) the jobs.
            parts = await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), timeout)
        except TimeoutError:
            self.metrics.deadline_exceeded.inc()
            raise DeadlineExceededError(f"the request was not scored within its deadline of {timeout:.3g} s") from None
        return [r for part in parts for r in part]

    def admit(self, tokens: int, jobs: int, timeout: float) -> None:
        """Raise QueueFullError (429 + Retry-After) at once when the queue cannot take this work: too many jobs or
        tokens waiting, or more queued work than the worker gets through before this request's deadline — then the
        request would only wait and time out, and its forward pass would be wasted. A request is never refused
        while nothing waits or runs."""
        waiting = self._queue.qsize() + self._reserved_jobs  # requests being tokenised wait too
        queued = self._queued_tokens + self._reserved_tokens
        ahead = queued + self._running_tokens  # the batch on the worker must finish first too
        if not waiting and not self._running_tokens:
            return
        reason = None
        if waiting + jobs > self.config.max_queue:
            reason = f"{waiting} of {self.config.max_queue} batch-sized jobs waiting, this request needs {jobs}"
        elif queued + tokens > self.config.max_queue_tokens:
            reason = f"{queued} of {self.config.max_queue_tokens} tokens waiting, this request has {tokens}"
        retry_after = self.config.retry_after_s
        if reason is None and self._rate:
            wait = (ahead + tokens) / self._rate  # until this request's own items are scored
            # A margin for what the estimate leaves out (tokenising, merging, the event loop under load): a request
            # admitted on a bare estimate that then misses its deadline costs a forward pass and a 504.
            if wait > ADMISSION_MARGIN * timeout:
                reason = (
                    f"the work queued ahead takes about {wait:.0f} s, over this request's deadline of {timeout:g} s"
                )
                retry_after = max(retry_after, math.ceil(wait - timeout))
        if reason is not None:
            self.metrics.queue_rejections.inc()
            raise QueueFullError(f"the scoring queue is full ({reason}); retry later", retry_after=retry_after)

    # -- worker side --------------------------------------------------------------------------------------
    def _take(self, entry: tuple[int, int, _Job]) -> _Job:
        job = entry[2]
        self._queued_tokens -= job.piece.tokens
        self._queued_by_caller[job.caller] -= 1
        if self._queued_by_caller[job.caller] <= 0:
            del self._queued_by_caller[job.caller]
        return job

    async def _next_job(self) -> _Job:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return self._take(await self._queue.get())

    def _fits(self, batch: list[_Job], load: Load, job: _Job) -> bool:
        return job.model is batch[0].model and fits(load, job.piece, self._budget, padded=False)

    async def _collect(self) -> list[_Job]:
        """The first waiting job, plus whatever fits that arrives within max_wait."""
        loop = asyncio.get_running_loop()
        batch = self._inflight = [await self._next_job()]
        load = Load().plus(batch[0].piece)
        until = loop.time() + self.config.max_wait_s
        while load.rows < self.config.max_items:
            remaining = until - loop.time()
            try:
                job = self._take(
                    self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if not self._fits(batch, load, job):
                self._carry = job
                break
            batch.append(job)
            load = load.plus(job.piece)
        return batch

    @staticmethod
    def _alive(batch: list[_Job], now: float) -> list[_Job]:
        """Drop jobs nobody waits for any more: cancelled (deadline passed, or the client left) or expiring."""
        # An expired job's waiter is about to raise DeadlineExceeded: do not spend a forward pass on it.
        return [job for job in batch if not job.done and job.deadline > now]

    @staticmethod
    def _forward(model: RewardModel, prepared: list[Prepared], steers: list[Steer | None]) -> list[ItemResult]:
        return model.results(prepared, model.forward(prepared, steers), detail=True)

    async def _run_batch(self, batch: list[_Job]) -> None:
        prepared = [p for job in batch for p in job.items]
        steers = [job.steer for job in batch for _ in job.items] if any(j.steer for j in batch) else []
        tokens = sum(job.piece.tokens for job in batch)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self._running_tokens = tokens
        try:
            results = await loop.run_in_executor(self._executor, self._forward, batch[0].model, prepared, steers)
        except Exception:
            self._running_tokens = 0
            self.metrics.batch_failures.inc()
            log.exception("forward pass failed for a batch of %d items (%d jobs)", len(prepared), len(batch))
            if len(batch) > 1:
                # Another caller's input may have caused it: each job again on its own, so only its jobs fail.
                for job in batch:
                    if not job.done:
                        await self._run_batch([job])
                return
            for job in batch:
                if not job.done:
                    job.future.set_exception(BatchFailedError("scoring failed for this batch; retry the request"))
            return
        self._running_tokens = 0
        seconds = time.perf_counter() - started
        self.metrics.observe_batch(len(prepared), tokens, seconds)
        if seconds > 0:
            rate = tokens / seconds
            self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate
        offset = 0
        for job in batch:
            part, offset = results[offset : offset + len(job.items)], offset + len(job.items)
            if not job.done:
                job.future.set_result(part)

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            self.metrics.queue_depth.set(self.depth)
            try:
                batch = self._inflight = self._alive(batch, asyncio.get_running_loop().time())
                if batch:
                    await self._run_batch(batch)
                self._inflight = []
            except Exception:  # the worker must survive anything; its batch fails, the next one runs
                log.exception("batch worker error")
                for job in batch:
                    if not job.done:
                        job.future.set_exception(BatchFailedError("scoring failed for this batch; retry the request"))
