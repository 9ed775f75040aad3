"""How big `make demo` can be on this machine: a short calibration, then sizes that fit a
time budget.

The demo's first run is two kinds of work. Embedding every product once goes at the CPU's
int8 speed (AVX-512 VNNI embeds several times faster than an AVX2-only CPU, README), so it
is measured directly: ``indexing.encoders.measure_docs_per_s`` (the owner the "auto" backend's
calibration uses) on a few dozen real catalog texts with the configured encoder. Everything
else (replaying the judged queries, two trainings, the served searches of the simulated
users, the rollout and drift steps) is measured as the seconds of one replayed query
(candidates + all features, query embedding included) on a small calibration index, and
predicted as a number of such queries per phase (``COSTS``, fitted from timed demo runs,
see README "What the demo's time depends on").

``choose_sizes`` then takes the largest demo between ``FLOOR`` (the smallest one whose
story still holds: the rollout runs, the drift phases read no drift / covariate drift /
concept drift) and ``DEFAULT`` (today's demo) whose predicted time fits the budget.

``LTRSEARCH_DEMO_RATE_SCALE`` (test knob, default 1): multiplies both measured rates before
sizing, so 0.1 sizes the demo as if the CPU were 10x slower. Only the sizing reads it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexing.config import IndexConfig
    from indexing.encoders import Encoder

RATE_SCALE_ENV = "LTRSEARCH_DEMO_RATE_SCALE"
PLAN_FRACTION = 0.85  # plan to this share of the budget: predictions are +-15% (README)
CAL_PRODUCTS, CAL_QUERIES, CAL_TEXTS, CAL_WARMUP = 300, 40, 48, 4


@dataclass(frozen=True)
class Sizes:
    products: int
    queries: int
    sessions: int  # simulated searches of step 5


FLOOR = Sizes(products=500, queries=150, sessions=300)
DEFAULT = Sizes(products=2_000, queries=400, sessions=1_500)


@dataclass(frozen=True)
class Rates:
    """What the calibration measured (already multiplied by ``scale``)."""

    cpu: str
    docs_per_s: float  # product texts embedded per second
    query_s: float  # seconds of one replayed query on the calibration index
    scale: float = 1.0
    query_cpu_s: float = 0.0  # its CPU seconds (unscaled), to fit ``COSTS`` from runs

    def line(self) -> str:
        knob = f" (x{self.scale:g} by {RATE_SCALE_ENV})" if self.scale != 1.0 else ""
        return (
            f"{self.docs_per_s:.1f} products/s embedded, "
            f"{self.query_s * 1000:.1f} ms per replayed query "
            f"({self.query_cpu_s * 1000:.1f} ms CPU){knob}"
        )


# Per phase: (constant, per product, per query, per session) in replayed-query units, plus
# the products' embedding (products / docs_per_s) in "reindex". Fitted from the CPU seconds
# of each phase over the calibration's CPU seconds per query, in two demo runs on an Intel
# Xeon (AVX-512 VNNI, 2 cores, shared: load 11-15) at 2,000/400/1,500 and 500/100/300, and
# rounded up (README "What the demo's time depends on"). The rollout's experiments wait on
# the clock (gate looks every 0.5 s, limits of 3 + 30 + 20 s): 21-67 s in eight runs whatever
# the CPU, so its predicted time is clamped to ROLLOUT_S before the judged queries' NDCG is
# measured again.
COSTS: Mapping[str, tuple[float, float, float, float]] = {
    "catalog": (0.0, 0.04, 0.0, 0.0),
    "reindex": (100.0, 1.3, 0.0, 0.0),
    "candidates": (30.0, 0.0, 0.0, 0.0),
    "train": (0.0, 0.0, 14.0, 0.0),
    "serve": (1_400.0, 0.0, 0.0, 0.0),
    "clicks": (0.0, 0.0, 3.4, 3.2),
    "rollout": (2_000.0, 0.0, 3.0, 0.0),
    "drift": (4_900.0, 0.0, 0.0, 0.0),  # 500 searches per phase (was 150: 2,700)
}
ROLLOUT_S = (35.0, 65.0)  # the three experiments: typical, slowest


def rate_scale() -> float:
    """The test knob: ``LTRSEARCH_DEMO_RATE_SCALE`` (a positive number), default 1."""
    raw = os.environ.get(RATE_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"{RATE_SCALE_ENV} must be a positive number, got {raw!r}") from None
    if not scale > 0 or scale == float("inf"):
        raise ValueError(f"{RATE_SCALE_ENV} must be a positive number, got {raw!r}")
    return scale


def predict(sizes: Sizes, rates: Rates) -> dict[str, float]:
    """Predicted seconds per demo phase for ``sizes`` at ``rates``."""
    out: dict[str, float] = {}
    for phase, (c, per_p, per_q, per_s) in COSTS.items():
        units = c + per_p * sizes.products + per_q * sizes.queries + per_s * sizes.sessions
        out[phase] = units * rates.query_s
    out["reindex"] += sizes.products / rates.docs_per_s
    c, _, per_q, _ = COSTS["rollout"]
    lo, hi = ROLLOUT_S
    out["rollout"] = min(hi, max(lo, c * rates.query_s)) + per_q * sizes.queries * rates.query_s
    return out


def _between(f: float, lo: Sizes, hi: Sizes) -> Sizes:
    """The sizes a fraction ``f`` of the way from ``lo`` to ``hi``."""
    return Sizes(*(round(a + f * (b - a)) for a, b in zip(astuple(lo), astuple(hi), strict=True)))


def choose_sizes(
    rates: Rates,
    budget_s: float,
    spent_s: float = 0.0,
    floor: Sizes = FLOOR,
    ceiling: Sizes = DEFAULT,
) -> tuple[Sizes, float]:
    """The largest sizes between ``floor`` and ``ceiling`` (one common fraction of the way)
    whose predicted run plus ``spent_s`` fits ``PLAN_FRACTION`` of ``budget_s``; the floor
    when nothing fits. Returns (sizes, predicted total seconds including ``spent_s``)."""

    def total(s: Sizes) -> float:
        return spent_s + sum(predict(s, rates).values())

    target = PLAN_FRACTION * budget_s
    lo, hi = 0.0, 1.0
    if total(ceiling) <= target:
        lo = 1.0
    else:
        for _ in range(30):  # bisection on the common fraction: total() grows with it
            mid = (lo + hi) / 2
            if total(_between(mid, floor, ceiling)) <= target:
                lo = mid
            else:
                hi = mid
    best = _between(lo, floor, ceiling)
    return best, total(best)


def calibrate(
    encoder: Encoder, index_cfg: IndexConfig, features: Sequence[str], scale: float = 1.0
) -> Rates:
    """Measure the two rates on a small seeded catalog (``CAL_PRODUCTS`` products): embedding
    ``CAL_TEXTS`` of its texts, and replaying its judged queries on an index of it built
    with seeded random vectors (so the index costs no embedding)."""
    import numpy as np

    from indexing.build import build_local_index
    from indexing.demo_catalog import build_demo_catalog, write_beir
    from indexing.documents import embedding_text
    from indexing.embedding_cache import EmbeddingCache
    from indexing.encoders import cpu_description, measure_docs_per_s
    from indexing.loaders import load_beir
    from search.replay import replay_index, run_sync

    with tempfile.TemporaryDirectory(prefix="ltrsearch-demo-cal-") as tmp:
        root = Path(tmp)
        write_beir(build_demo_catalog(CAL_PRODUCTS, CAL_QUERIES, seed=7), root / "catalog")
        ds = load_beir(root / "catalog")
        docs = list(ds.corpus)
        texts = [embedding_text(d) for d in docs]
        docs_per_s = measure_docs_per_s(encoder, texts[:CAL_TEXTS])
        rng = np.random.default_rng(7)
        vectors = rng.standard_normal((len(docs), encoder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        cache = EmbeddingCache(root / "vectors.sqlite")
        try:
            cache.put_many(encoder.model_id, texts, vectors)
            build_local_index(docs, root / "index", encoder, index_cfg, cache, parallel=False)
        finally:
            cache.close()
        queries = list(ds.judged_queries())
        warm, timed = queries[:CAL_WARMUP], queries[CAL_WARMUP:]
        run_sync(replay_index(root / "index", encoder, warm, ds.qrels, features))
        t0, c0 = time.perf_counter(), time.process_time()
        run_sync(replay_index(root / "index", encoder, timed, ds.qrels, features))
        query_s = (time.perf_counter() - t0) / max(1, len(timed))
        query_cpu_s = (time.process_time() - c0) / max(1, len(timed))
    return Rates(cpu_description(), docs_per_s * scale, query_s / scale, scale, query_cpu_s)


def _process_cpu_s(pid: int) -> float:
    """utime + stime of another process in seconds (Linux /proc; 0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class PhaseClock:
    """Wall and CPU seconds per named phase of the demo (CPU: this process plus the
    ``watch``ed server), printed beside the prediction at the end. On a shared machine the
    wall time carries the wait for a core; the CPU time is what the work itself cost."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._pids: list[int] = []

    def watch(self, pid: int) -> None:
        """Count this process's CPU too (the API server the demo started)."""
        self._pids.append(pid)

    def _cpu(self) -> float:
        return time.process_time() + sum(_process_cpu_s(p) for p in self._pids)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), self._cpu()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.cpu[name] = self.cpu.get(name, 0.0) + max(0.0, self._cpu() - c0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def table(self, predicted: Mapping[str, float]) -> str:
        """Phase | predicted s | actual s | CPU s, with the totals."""

        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f}"

        names = list(dict.fromkeys([*predicted, *self.seconds]))
        rows = [f"  {'phase':<12} {'predicted s':>11} {'actual s':>9} {'CPU s':>7}"]
        for n in names:
            p, a, c = predicted.get(n), self.seconds.get(n), self.cpu.get(n)
            rows.append(f"  {n:<12} {num(p):>11} {num(a):>9} {num(c):>7}")
        total_cpu = sum(self.cpu.values())
        rows.append(
            f"  {'total':<12} {sum(predicted.values()):>11.1f} {self.elapsed():>9.1f} "
            f"{total_cpu:>7.1f}"
        )
        return "\n".join(rows)
