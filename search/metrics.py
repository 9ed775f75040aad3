"""Prometheus text exposition (format 0.0.4), written here to avoid a dependency.

Small on purpose: counters, gauges and histograms with labels, rendered by ``/metrics``.
All updates happen on the event loop thread except the ones guarded by the lock, so the
lock is cheap and uncontended.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

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

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {labels}")
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def snapshot(self) -> list[Any]:
        raise NotImplementedError

    def render_series(self, series: Sequence[Any], extra: str = "") -> list[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def snapshot(self) -> list[Any]:
        """[[label values], value] per series: JSON for another process to render."""
        with self._lock:
            return [[list(k), v] for k, v in sorted(self._values.items())]

    def render_series(self, series: Sequence[Any], extra: str = "") -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k, extra)} {_fmt(v)}" for k, v in series]

    def render(self) -> list[str]:
        return self.render_series(self.snapshot())


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        # per label set: bucket counts (non-cumulative, + one overflow), sum, count
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        i = 0
        while i < len(self.buckets) and value > self.buckets[i]:
            i += 1
        with self._lock:
            counts, total = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[i] += 1
            total[0] += value

    def count(self, *labels: str) -> int:
        got = self._data.get(self._key(labels))
        return sum(got[0]) if got else 0

    def snapshot(self) -> list[Any]:
        """[[label values], [bucket counts], sum] per series (see Counter.snapshot)."""
        with self._lock:
            return [[list(k), list(c), s[0]] for k, (c, s) in sorted(self._data.items())]

    def render_series(self, series: Sequence[Any], extra: str = "") -> list[str]:
        out = []
        sep = f"{extra}," if extra else ""
        for key, counts, total in series:
            cum = 0
            for b, c in zip((*self.buckets, math.inf), counts, strict=True):
                cum += c
                le = f'{sep}le="{_fmt(b)}"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {cum}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key, extra)} {_fmt(total)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key, extra)} {cum}")
        return out

    def render(self) -> list[str]:
        return self.render_series(self.snapshot())


class Registry:
    """A named set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, m: _Metric) -> _Metric:
        if m.name in self._metrics:
            raise ValueError(f"metric {m.name} registered twice")
        self._metrics[m.name] = m
        return m

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        m = Counter(name, help, labels)
        self._add(m)
        return m

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        m = Gauge(name, help, labels)
        self._add(m)
        return m

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        m = Histogram(name, help, labels, buckets)
        self._add(m)
        return m

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics.values():
            lines.extend(m.header())
            lines.extend(m.render())
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, list[Any]]:
        """Every metric's series as JSON-able lists (a worker's part of render_workers)."""
        return {name: m.snapshot() for name, m in self._metrics.items()}

    def render_workers(self, snapshots: Mapping[int, Mapping[str, Sequence[Any]]]) -> str:
        """One exposition of several processes' snapshots, each series labelled ``worker``
        (sum them in PromQL: ``sum without (worker) (...)``)."""
        lines: list[str] = []
        for name, m in self._metrics.items():
            lines.extend(m.header())
            for wid in sorted(snapshots):
                lines.extend(m.render_series(snapshots[wid].get(name, []), f'worker="{wid}"'))
        return "\n".join(lines) + "\n"


STAGES: tuple[str, ...] = ("embed", "bm25", "knn", "candidates", "features", "model", "total")


class ApiMetrics:
    """The metrics the search API exposes."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.counter(
            "ltrsearch_http_requests_total",
            "HTTP requests by route and status.",
            ("route", "status"),
        )
        self.latency = r.histogram(
            "ltrsearch_http_request_duration_seconds", "End-to-end HTTP latency.", ("route",)
        )
        self.stage = r.histogram(
            "ltrsearch_search_stage_duration_seconds",
            "Search pipeline latency per stage (embed, bm25, knn, candidates, features, "
            "model, total).",
            ("stage",),
        )
        self.errors = r.counter(
            "ltrsearch_errors_total", "Error responses by error code.", ("code",)
        )
        self.degraded = r.counter(
            "ltrsearch_degraded_total", "Searches served without a retriever.", ("retriever",)
        )
        self.events = r.counter("ltrsearch_events_total", "Stored user events.", ("type",))
        self.impressions_pending = r.gauge(
            "ltrsearch_impressions_pending", "Served pages waiting to be logged."
        )
        self.impressions_written = r.gauge(
            "ltrsearch_impressions_written", "Served pages logged since start."
        )
        self.impressions_dropped = r.gauge(
            "ltrsearch_impressions_dropped", "Served pages dropped (log backlog full)."
        )
        self.impressions_dead_lettered = r.gauge(
            "ltrsearch_impressions_dead_lettered",
            "Served pages the event store could not keep (logged and skipped).",
        )
        self.model_info = r.gauge(
            "ltrsearch_model_info", "The serving model (1).", ("version", "featureset_id")
        )
        self.index_info = r.gauge("ltrsearch_index_info", "The serving index (1).", ("version",))
        self.candidate_cache = r.gauge(
            "ltrsearch_candidate_cache",
            "Candidate cache of the serving index version: hits, misses, entries (they "
            "start over when a new index version is swapped in).",
            ("stat",),
        )
        self.reloads = r.counter(
            "ltrsearch_reloads_total", "Model/index reload attempts by outcome.", ("outcome",)
        )
        # online experiments (search.experiments, search.rollout)
        self.experiment_info = r.gauge(
            "ltrsearch_experiment_info",
            "The live experiment (1): candidate version, mode, status.",
            ("experiment_id", "mode", "candidate", "status"),
        )
        self.experiment_requests = r.counter(
            "ltrsearch_experiment_requests_total",
            "Searches that took part in an experiment, by arm (production, candidate, "
            "interleave, shadow, watch).",
            ("experiment_id", "arm"),
        )
        self.experiment_outcomes = r.gauge(
            "ltrsearch_experiment_interleave_outcomes",
            "Interleaved queries the candidate won, lost or tied (at the gate's last look).",
            ("experiment_id", "outcome"),
        )
        self.experiment_llr = r.gauge(
            "ltrsearch_experiment_sign_test_llr",
            "The gate's sequential sign test statistic at its last look.",
            ("experiment_id",),
        )
        self.experiment_decisions = r.counter(
            "ltrsearch_experiment_decisions_total",
            "Gate decisions by outcome (continue, promote, reject, rollback, watch_passed).",
            ("outcome",),
        )
        self.rollbacks = r.counter(
            "ltrsearch_model_rollbacks_total",
            "Automatic rollbacks after a guardrail breach of a promoted model.",
        )

    def render(self) -> str:
        return self.registry.render()
