"""Pure math of click-history aggregates, shared by online and offline code.

The online event store (search.events) and the offline simulated-click evaluation
(ltr.evaluation) both turn sessions into the same raw aggregates with these functions, so
the behavior features a model was trained on are computed exactly as they are served.

Aggregate keys (docs/contracts.md): ``qd_*`` are per (query, document), ``d_*`` per
document over all queries; for each level ``impressions, clicks, examinations,
decayed_clicks, decayed_impressions``. ``examinations`` sums the examination probability
of the position each impression was shown at, so ``clicks / examinations`` is a
position-debiased CTR (the PBM estimate of attractiveness).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from ltr.errors import LTRError

LEVELS = ("qd", "d")
STATS = ("impressions", "clicks", "examinations", "decayed_clicks", "decayed_impressions")
AGGREGATE_KEYS: tuple[str, ...] = tuple(f"{lvl}_{s}" for lvl in LEVELS for s in STATS)

# Default examination curve P(examine | position p) = 1 / p ** eta with eta = 1, the usual
# power-law propensity of web/e-commerce result lists (Joachims et al., WSDM 2017). A PBM
# fitted on logged sessions (ltr.click_models) should replace it once clicks exist.
DEFAULT_EXAM_ETA = 1.0
DEFAULT_HALF_LIFE_S = 14 * 24 * 3600.0  # clicks lose half their weight in two weeks


class BehaviorError(LTRError):
    """Invalid input to the behavior aggregation (bad half-life, bad session shape...)."""


class SessionLike(Protocol):
    """What aggregation needs from a session: one served result list and its clicks.

    ltr.click_models.Session fits (``docs``); objects exposing ``doc_ids`` instead of
    ``docs`` are accepted too.
    """

    @property
    def query(self) -> str: ...

    @property
    def clicks(self) -> Sequence[bool] | Sequence[int] | np.ndarray: ...


def _session_docs(s: object) -> list[str]:
    docs = getattr(s, "docs", None)
    if docs is None:
        docs = getattr(s, "doc_ids", None)
    if docs is None:
        raise BehaviorError(f"session {s!r} has neither 'docs' nor 'doc_ids'")
    return [str(d) for d in docs]


_WS = re.compile(r"\s+")


def query_key(text: str) -> str:
    """Normalized query text used as the qd key (case and whitespace insensitive)."""
    return _WS.sub(" ", text.strip().lower())


def examination_probs(n: int, eta: float = DEFAULT_EXAM_ETA) -> np.ndarray:
    """P(examined) for positions 1..n under the power-law curve 1 / p**eta."""
    if n < 0:
        raise BehaviorError(f"n must be >= 0, got {n}")
    if not math.isfinite(eta) or eta < 0:
        raise BehaviorError(f"eta must be a finite number >= 0, got {eta!r}")
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** eta


def decay_weights(ages_s: np.ndarray | Sequence[float], half_life_s: float) -> np.ndarray:
    """Exponential recency weights 0.5 ** (age / half_life); future events count as age 0."""
    if not math.isfinite(half_life_s) or half_life_s <= 0:
        raise BehaviorError(f"half_life_s must be > 0, got {half_life_s!r}")
    ages = np.maximum(np.asarray(ages_s, dtype=np.float64), 0.0)
    return np.power(0.5, ages / half_life_s)


def _exam_at(exam_probs: np.ndarray, n: int) -> np.ndarray:
    """Examination probabilities for positions 1..n; past the curve's end, its last value."""
    if exam_probs.size == 0:
        raise BehaviorError("exam_probs must not be empty")
    if n <= exam_probs.size:
        return exam_probs[:n]
    return np.concatenate([exam_probs, np.full(n - exam_probs.size, exam_probs[-1])])


def aggregate_sessions(
    sessions: Iterable[SessionLike],
    now: float,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    exam_probs: np.ndarray | Sequence[float] | None = None,
) -> dict[str, dict[tuple[str, ...], float]]:
    """Raw behavior aggregates of the contract keys from result-list sessions.

    ``sessions`` items need ``query`` (the key, e.g. query_key(text) or a query id),
    ``docs`` (served order, position 1 first), ``clicks`` (aligned 0/1) and optionally
    ``ts`` (epoch seconds; missing = ``now``). Returns key -> {(query, doc) or (doc,): value}.
    """
    probs = examination_probs(100) if exam_probs is None else np.asarray(exam_probs, np.float64)
    if probs.ndim != 1 or not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise BehaviorError("exam_probs must be a 1-D array of finite probabilities >= 0")
    if not math.isfinite(half_life_s) or half_life_s <= 0:
        raise BehaviorError(f"half_life_s must be > 0, got {half_life_s!r}")
    out: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in AGGREGATE_KEYS}
    for s in sessions:
        ids = _session_docs(s)
        clicks = np.asarray(s.clicks, dtype=np.float64)
        if clicks.shape != (len(ids),):
            raise BehaviorError(
                f"session clicks have shape {clicks.shape}, expected ({len(ids)},) for its docs"
            )
        ts = getattr(s, "ts", None)
        w = float(decay_weights([now - (now if ts is None else float(ts))], half_life_s)[0])
        exam = _exam_at(probs, len(ids))
        q = str(s.query)
        for i, d in enumerate(ids):
            c = float(clicks[i])
            for lvl, key in (("qd", (q, d)), ("d", (d,))):
                vals = (1.0, c, float(exam[i]), w * c, w)
                for stat, v in zip(STATS, vals, strict=True):
                    table = out[f"{lvl}_{stat}"]
                    table[key] = table.get(key, 0.0) + v
    return out


def behavior_arrays(
    aggregates: Mapping[str, Mapping[tuple[str, ...], float]],
    query: str,
    ids: Sequence[str],
) -> dict[str, np.ndarray]:
    """Per-candidate arrays of every aggregate key for one query (NaN = no history)."""
    out: dict[str, np.ndarray] = {}
    for key in AGGREGATE_KEYS:
        table = aggregates.get(key, {})
        if key.startswith("qd_"):
            vals = [table.get((query, d), math.nan) for d in ids]
        else:
            vals = [table.get((d,), math.nan) for d in ids]
        out[key] = np.asarray(vals, dtype=np.float64)
    return out


def merge_aggregates(
    *parts: Mapping[str, Mapping[tuple[str, ...], float]],
) -> dict[str, dict[tuple[str, ...], float]]:
    """Sum several aggregate tables (e.g. shards or time windows) key by key."""
    out: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in AGGREGATE_KEYS}
    for p in parts:
        for key, table in p.items():
            dst = out.setdefault(key, {})
            for k, v in table.items():
                dst[k] = dst.get(k, 0.0) + v
    return out
