"""Every Prometheus metric of the service, in one place (prefix `armo_`).

Labels are bounded: `route` is the matched route template (or "other"), `status` an HTTP status code, `type` an
error type from errors.TABLE, `result` one of three reload results, `objective` one of the loaded model's
objective names (at most MAX_OBJECTIVE_LABELS; the rest share "other").

Each app owns a registry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MAX_OBJECTIVE_LABELS = 32
SPEARMAN_WINDOW = 1024
SPEARMAN_MIN_SAMPLES = 16

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
SCORE_BUCKETS = (-16.0, -8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
WEIGHT_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 100.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# `*_created` series double the exposition size and no dashboard here reads them.
disable_created_metrics()


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties; NaN when undefined (too few or constant)."""
    if len(x) < 2:
        return math.nan

    def ranks(v: Sequence[float]) -> np.ndarray:
        a = np.asarray(v, dtype=np.float64)
        order = np.argsort(a, kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=np.float64)
        # average the ranks of tied values
        _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=r)
        return np.asarray(sums[inverse] / counts[inverse])

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


class RollingSpearman:
    """Spearman(score, response length) over the last `window` learned (unsteered) scores.

    A reward model that quietly rewards length shows up here as a correlation drifting towards +1 (DESIGN.md §1);
    computed at scrape time, not per request.
    """

    def __init__(self, window: int = SPEARMAN_WINDOW) -> None:
        self._pairs: deque[tuple[float, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, score: float, length: float) -> None:
        with self._lock:
            self._pairs.append((score, length))

    def __len__(self) -> int:
        return len(self._pairs)

    def value(self) -> float:
        with self._lock:
            pairs = list(self._pairs)
        if len(pairs) < SPEARMAN_MIN_SAMPLES:
            return math.nan
        return spearman([p[0] for p in pairs], [p[1] for p in pairs])

    def clear(self) -> None:
        with self._lock:
            self._pairs.clear()


class ServiceMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("armo_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.errors = Counter("armo_errors", "Error responses by route and error type.", ["route", "type"], registry=r)
        self.latency = Histogram(
            "armo_request_duration_seconds", "Request latency by route.", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.items = Counter("armo_items", "Items (responses) scored, by endpoint.", ["endpoint"], registry=r)
        self.queue_depth = Gauge("armo_queue_depth", "Requests waiting for the batch worker.", registry=r)
        self.queue_rejections = Counter("armo_queue_rejections", "Requests refused with 429 (queue full).", registry=r)
        self.deadline_exceeded = Counter(
            "armo_deadline_exceeded", "Requests that hit their deadline (504).", registry=r
        )
        self.disconnected = Counter("armo_disconnected", "Requests skipped because the client left.", registry=r)
        self.batch_size = Histogram("armo_batch_size", "Items per forward batch.", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "armo_batch_tokens",
            "Tokens per forward batch (sum of sequence lengths).",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "armo_forward_seconds", "Wall time of one batch forward pass.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_failures = Counter("armo_batch_failures", "Forward batches that raised.", registry=r)
        self.tokens = Counter("armo_tokens", "Tokens run through the backbone.", registry=r)
        self.tokens_per_second = Gauge("armo_tokens_per_second", "Throughput of the last forward batch.", registry=r)
        self.truncations = Counter("armo_truncations", "Items truncated to the token limit.", registry=r)
        self.model_info = Info("armo_model", "The loaded model (version, backbone).", registry=r)
        self.model_loaded = Gauge("armo_model_loaded", "1 when a model is loaded and serving.", registry=r)
        self.reloads = Counter("armo_reloads", "Reload attempts by result.", ["result"], registry=r)
        self.reload_failed = Gauge("armo_reload_last_failed", "1 when the last reload attempt failed.", registry=r)
        self.reload_seconds = Histogram(
            "armo_reload_seconds",
            "Time to load, verify and smoke-score a version.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.scores = Histogram("armo_score", "Learned (unsteered) scores.", buckets=SCORE_BUCKETS, registry=r)
        self.objective_values = Histogram(
            "armo_objective_value", "Raw objective values r.", ["objective"], buckets=SCORE_BUCKETS, registry=r
        )
        self.gating_weights = Histogram(
            "armo_gating_weight", "Learned gating weights g.", ["objective"], buckets=WEIGHT_BUCKETS, registry=r
        )
        self.length_spearman = RollingSpearman()
        spearman_gauge = Gauge(
            "armo_score_length_spearman",
            f"Rolling Spearman(score, response tokens) over the last {SPEARMAN_WINDOW} learned scores "
            "(reward-hacking alarm; NaN until enough samples).",
            registry=r,
        )
        spearman_gauge.set_function(self.length_spearman.value)
        window_gauge = Gauge("armo_score_length_window", "Samples in the Spearman window.", registry=r)
        window_gauge.set_function(lambda: float(len(self.length_spearman)))
        self._objective_labels: dict[str, str] = {}

    # -- recording helpers ---------------------------------------------------------------------------------
    def set_objectives(self, names: Sequence[str]) -> None:
        self._objective_labels = {n: (n if i < MAX_OBJECTIVE_LABELS else "other") for i, n in enumerate(names)}

    def objective_label(self, name: str) -> str:
        return self._objective_labels.get(name, "other")

    def observe_item(
        self, score: float, response_tokens: int, rewards: dict[str, float], weights: dict[str, float]
    ) -> None:
        """Distributions of one learned score (steered scores are the caller's choice, not the model's)."""
        if not math.isfinite(score):
            return
        self.scores.observe(score)
        self.length_spearman.add(score, float(response_tokens))
        for name, value in rewards.items():
            self.objective_values.labels(self.objective_label(name)).observe(value)
        for name, value in weights.items():
            self.gating_weights.labels(self.objective_label(name)).observe(value)

    def observe_batch(self, items: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(items)
        self.batch_tokens.observe(tokens)
        self.forward_seconds.observe(seconds)
        self.tokens.inc(tokens)
        if seconds > 0:
            self.tokens_per_second.set(tokens / seconds)

    def set_model(self, model: str, version: str, backbone_id: str, backbone_revision: str) -> None:
        self.model_info.info(
            {"model": model, "version": version, "backbone": backbone_id, "backbone_revision": backbone_revision[:16]}
        )
        self.model_loaded.set(1)
        # A new version is a new distribution: do not let the old one mask (or fake) a length correlation.
        self.length_spearman.clear()

    def render(self) -> bytes:
        return generate_latest(self.registry)
