"""The search API's Prometheus metrics, kept by ``prometheus_client``.

One server process: every app has a ``CollectorRegistry`` of its own (a test builds many
apps in one process), rendered by ``/metrics``.

``ltrsearch-serve --workers N``: prometheus_client's multiprocess mode. The supervisor
(search.workers) starts every worker with the same ``PROMETHEUS_MULTIPROC_DIR``; each
worker's values live in memory-mapped files there, and ``/metrics`` on any worker merges
them (``MultiProcessCollector``), so the answer does not depend on which worker took the
connection. Every series carries a ``worker`` label (0..N-1; sum them in PromQL with
``sum without (worker) (...)``). A restarted worker's counters and histograms add up with
its dead predecessor's, so they never go down; its gauges are its own (``livesum``: the
supervisor removes a dead worker's gauge files).

A replaced label set of an info gauge (``ltrsearch_model_info``, ``ltrsearch_index_info``)
is removed from the registry; in multiprocess mode its value in the shared files is set to
0 and left out of the exposition, so both modes show only what serves now.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client import Counter as _PCounter
from prometheus_client import Gauge as _PGauge
from prometheus_client import Histogram as _PHistogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

# "<name>_created" series (a start timestamp per label set) are noise for a server that
# restarts with its counters; Prometheus detects resets itself.
prometheus_client.disable_created_metrics()

# Seconds; covers sub-millisecond stages up to a slow 5 s request.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch


def multiprocess_dir() -> str | None:
    """The shared directory when this process records into it (set before it started:
    prometheus_client picks its value class when it is imported)."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    # set after prometheus_client was imported, the variable would name an empty directory
    return path if values.ValueClass is not values.MutexValue else None


class _Series:
    """One metric, with ``worker`` appended to the label values when set."""

    def __init__(self, metric: Any, worker: str | None) -> None:
        self._m = metric
        self._worker = worker
        self._seen: set[tuple[str, ...]] = set()

    def _child(self, labels: Sequence[str]) -> Any:
        key = tuple(str(v) for v in labels)
        if self._worker is not None:
            key = (*key, self._worker)
        if not key:
            return self._m
        self._seen.add(key)
        return self._m.labels(*key)


class Counter(_Series):
    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self._child(labels).inc(amount)


class Gauge(_Series):
    def set(self, value: float, *labels: str) -> None:
        self._child(labels).set(value)

    def clear(self) -> None:
        """Drop every label set (multiprocess mode: set to 0 and left out when rendered,
        prometheus_client cannot remove a series from the shared files)."""
        if multiprocess_dir() is None:
            self._m.clear()
        else:
            for seen in self._seen:
                self._m.labels(*seen).set(0)
        self._seen.clear()


class Histogram(_Series):
    def observe(self, value: float, *labels: str) -> None:
        self._child(labels).observe(value)


class _Merged:
    """Every worker's series from the shared directory, without zeroed info series."""

    def __init__(self, path: str, info: set[str]) -> None:
        self._collector = MultiProcessCollector(None, path)
        self._info = info

    def collect(self) -> Iterable[Metric]:
        for m in self._collector.collect():
            if m.name in self._info:
                m.samples = [s for s in m.samples if s.value != 0]
            yield m


STAGES: tuple[str, ...] = ("embed", "bm25", "knn", "candidates", "features", "model", "total")


class ApiMetrics:
    """The metrics the search API exposes (names are the public contract: CHANGELOG.md
    lists any rename). ``worker``: this process's index in a ``--workers N`` group."""

    def __init__(self, worker: int | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._worker = None if worker is None else str(worker)
        self._multiproc = multiprocess_dir()
        self._info: set[str] = set()
        self.requests = self._counter(
            "ltrsearch_http_requests_total",
            "HTTP requests by route and status.",
            ("route", "status"),
        )
        self.latency = self._histogram(
            "ltrsearch_http_request_duration_seconds", "End-to-end HTTP latency.", ("route",)
        )
        self.stage = self._histogram(
            "ltrsearch_search_stage_duration_seconds",
            "Search pipeline latency per stage (embed, bm25, knn, candidates, features, "
            "model, total).",
            ("stage",),
        )
        self.errors = self._counter(
            "ltrsearch_errors_total", "Error responses by error code.", ("code",)
        )
        self.degraded = self._counter(
            "ltrsearch_degraded_total", "Searches served without a retriever.", ("retriever",)
        )
        self.events = self._counter("ltrsearch_events_total", "Stored user events.", ("type",))
        self.impressions_pending = self._gauge(
            "ltrsearch_impressions_pending", "Served pages waiting to be logged."
        )
        self.impressions_written = self._gauge(
            "ltrsearch_impressions_written", "Served pages logged since start."
        )
        self.impressions_dropped = self._gauge(
            "ltrsearch_impressions_dropped", "Served pages dropped (log backlog full)."
        )
        self.impressions_dead_lettered = self._gauge(
            "ltrsearch_impressions_dead_lettered",
            "Served pages the event store could not keep (logged and skipped).",
        )
        self.model_info = self._gauge(
            "ltrsearch_model_info",
            "The serving model (1).",
            ("version", "featureset_id"),
            info=True,
        )
        self.index_info = self._gauge(
            "ltrsearch_index_info", "The serving index (1).", ("version",), info=True
        )
        self.candidate_cache = self._gauge(
            "ltrsearch_candidate_cache",
            "Candidate cache of the serving index version: hits, misses, entries (they "
            "start over when a new index version is swapped in).",
            ("stat",),
        )
        self.reloads = self._counter(
            "ltrsearch_reloads_total", "Model/index reload attempts by outcome.", ("outcome",)
        )
        # online experiments (search.experiments, search.rollout)
        self.experiment_info = self._gauge(
            "ltrsearch_experiment_info",
            "The live experiment (1): candidate version, mode, status.",
            ("experiment_id", "mode", "candidate", "status"),
            info=True,
        )
        self.experiment_requests = self._counter(
            "ltrsearch_experiment_requests_total",
            "Searches that took part in an experiment, by arm (production, candidate, "
            "interleave, shadow, watch).",
            ("experiment_id", "arm"),
        )
        self.experiment_outcomes = self._gauge(
            "ltrsearch_experiment_interleave_outcomes",
            "Interleaved queries the candidate won, lost or tied (at the gate's last look).",
            ("experiment_id", "outcome"),
        )
        self.experiment_llr = self._gauge(
            "ltrsearch_experiment_sign_test_llr",
            "The gate's sequential sign test statistic at its last look.",
            ("experiment_id",),
        )
        self.experiment_decisions = self._counter(
            "ltrsearch_experiment_decisions_total",
            "Gate decisions by outcome (continue, promote, reject, rollback, watch_passed).",
            ("outcome",),
        )
        self.rollbacks = self._counter(
            "ltrsearch_model_rollbacks_total",
            "Automatic rollbacks after a guardrail breach of a promoted model.",
        )

    def _labels(self, labels: Sequence[str]) -> tuple[str, ...]:
        return (*labels, "worker") if self._worker is not None else tuple(labels)

    def _counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        m = _PCounter(name, help, self._labels(labels), registry=self.registry)
        return Counter(m, self._worker)

    def _gauge(self, name: str, help: str, labels: Sequence[str] = (), info: bool = False) -> Gauge:
        m = _PGauge(
            name, help, self._labels(labels), registry=self.registry, multiprocess_mode="livesum"
        )
        if info:
            self._info.add(name)
        return Gauge(m, self._worker)

    def _histogram(self, name: str, help: str, labels: Sequence[str] = ()) -> Histogram:
        m = _PHistogram(
            name, help, self._labels(labels), registry=self.registry, buckets=DEFAULT_BUCKETS
        )
        return Histogram(m, self._worker)

    def render(self) -> bytes:
        """The exposition: this process's registry, or every worker's in multiprocess mode."""
        if self._multiproc is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_Merged(self._multiproc, self._info))  # type: ignore[arg-type]
        return generate_latest(merged)
