"""Fusion of the retrievers' results: the baselines the reranker must beat and its base margin.

- ``rrf``: reciprocal rank fusion, sum over retrievers of 1 / (k + rank) (k = 60, Cormack et
  al. 2009); a retriever that did not return the candidate contributes 0.
- ``linear``: weighted sum of per-query min-max normalized retriever scores. A candidate a
  retriever did not return gets 0 (it scored at most the minimum of that retriever's list).
  For the dense retriever the exact cosine of every candidate is used when the candidate
  set carries it, so the normalization sees all candidates. Weights are fitted on training
  queries by grid search (``fit_linear``).

Every fusion is ``fn(cs, **params) -> float64 [n]`` registered in ``FUSIONS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ltr.errors import LTRError, TrainingDataError, unknown_name
from ltr.types import DENSE, RETRIEVERS, CandidateSet

FusionFn = Callable[..., np.ndarray]

RRF_K = 60.0
# the scale an RRF base margin is boosted from when it stands in for the linear fusion (a
# served log without the linear fusion's inputs): rrf x 20, the scale evaluated with RRF
RRF_MARGIN_SCALE = 20.0

# The RRF (k = RRF_K) of the set asked for last: one request asks for its set's RRF up to
# four times (the rrf features and the feedback vocabulary, the base margin, the ranking
# without a model, the rerank-depth order) and computes it once. Identity-keyed with a
# strong reference, so an id() cannot be reused while it is kept; one tuple read is atomic.
_LAST_RRF: tuple[CandidateSet, np.ndarray] | None = None


def rrf_scores(cs: CandidateSet, k: float = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion over the retrievers' 1-based ranks (a missing rank adds 0).

    Read-only; with k = RRF_K computed once per set (the last set's is kept).
    """
    global _LAST_RRF
    last = _LAST_RRF
    if k == RRF_K and last is not None and last[0] is cs:
        return last[1]
    out = _rrf(cs, k)
    out.flags.writeable = False
    if k == RRF_K:
        _LAST_RRF = (cs, out)
    return out


def _rrf(cs: CandidateSet, k: float) -> np.ndarray:
    out = np.zeros(len(cs.ids), dtype=np.float64)
    for name in RETRIEVERS:  # the two base retrievers: extra ones only add candidates
        r = cs.ranks.get(name)
        if r is None:
            continue
        rr = np.asarray(r, dtype=np.float64)
        # NaN ranks give NaN here (quietly) and are replaced by 0
        out += np.where(np.isfinite(rr), 1.0 / (k + rr), 0.0)
    return out


def _check_scale(scale: float) -> float:
    if not np.isfinite(scale) or scale <= 0:
        raise LTRError(f"fusion scale must be a finite number > 0, got {scale!r}")
    return float(scale)


def rrf(cs: CandidateSet, k: float = RRF_K, scale: float = 1.0) -> np.ndarray:
    """Reciprocal rank fusion over every retriever's 1-based ranks, times ``scale``.

    ``scale`` only matters as a base margin: raw RRF differences (~0.001 between ranks) are
    tiny next to boosted trees' outputs; ltr.evaluation starts the booster from 20 x RRF
    (a model's manifest carries it as base_margin params {"scale": 20}).
    """
    if not np.isfinite(k) or k < 0:
        raise LTRError(f"rrf k must be a finite number >= 0, got {k!r}")
    return _check_scale(scale) * rrf_scores(cs, k)


def minmax(a: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] over finite values; NaN -> 0; constant -> 1 where finite."""
    a = np.asarray(a, dtype=np.float64)
    fin = np.isfinite(a)
    out = np.zeros(a.shape[0], dtype=np.float64)
    if not fin.any():
        return out
    lo, hi = float(a[fin].min()), float(a[fin].max())
    out[fin] = (a[fin] - lo) / (hi - lo) if hi > lo else 1.0
    return out


def retriever_scores(cs: CandidateSet, retriever: str) -> np.ndarray:
    """A retriever's score per candidate (dense: the exact cosine for every candidate)."""
    if retriever == DENSE and len(cs.dense_cosine) == len(cs.ids):
        cos = np.asarray(cs.dense_cosine, dtype=np.float64)
        if np.isfinite(cos).any():
            return cos
    s = cs.scores.get(retriever)
    return np.full(len(cs.ids), np.nan) if s is None else np.asarray(s, dtype=np.float64)


def linear(
    cs: CandidateSet, weights: Mapping[str, float] | None = None, scale: float = 1.0
) -> np.ndarray:
    """scale * sum_r w_r * minmax(score_r); equal weights when none are given."""
    w = dict(weights) if weights else {r: 1.0 / len(RETRIEVERS) for r in RETRIEVERS}
    for r, wr in w.items():
        if not np.isfinite(wr):
            raise LTRError(f"linear fusion weight for {r!r} must be finite, got {wr!r}")
    if not w:
        return np.zeros(len(cs.ids), dtype=np.float64) * _check_scale(scale)
    return linear_normed({r: minmax(retriever_scores(cs, r)) for r in w}, w, scale)


FUSIONS: dict[str, FusionFn] = {"rrf": rrf, "linear": linear}


def fusion_score(
    cs: CandidateSet, name: str, params: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Score every candidate of ``cs`` with the fusion ``name`` (UnknownNameError if absent)."""
    fn = FUSIONS.get(name)
    if fn is None:
        raise unknown_name("fusion", name, list(FUSIONS))
    return np.asarray(fn(cs, **dict(params or {})), dtype=np.float64)


def fit_linear(
    groups: Sequence[tuple[CandidateSet, Mapping[str, float]]],
    metric: str = "ndcg@10",
    steps: int = 20,
) -> dict[str, Any]:
    """Grid-search the BM25/dense weight (w, 1 - w) maximizing the mean ``metric``.

    ``groups``: (candidate set, qrels doc -> grade) of each training query. Returns the
    params for ``fusion_score(cs, "linear", params)``; ties prefer the more balanced weight.
    """
    if not groups:
        raise TrainingDataError("fit_linear needs at least one training query")
    if len(RETRIEVERS) != 2:
        raise LTRError("fit_linear searches one weight between exactly two retrievers")
    a, b = RETRIEVERS
    normed = [
        (cs.ids, minmax(retriever_scores(cs, a)), minmax(retriever_scores(cs, b)), q)
        for cs, q in groups
    ]
    return fit_linear_normed(normed, metric, steps)


def fit_linear_normed(
    groups: Sequence[tuple[Sequence[str], np.ndarray, np.ndarray, Mapping[str, float]]],
    metric: str = "ndcg@10",
    steps: int = 20,
) -> dict[str, Any]:
    """``fit_linear`` on the min-max normalized scores already computed: per training query
    (doc ids, minmax BM25, minmax dense, qrels). Used where the candidate sets are gone
    but their normalized scores were kept (a training run's rows)."""
    from ltr.metrics import evaluate, rank_ids, summarize

    if not groups:
        raise TrainingDataError("fit_linear needs at least one training query")
    if steps < 1:
        raise LTRError(f"steps must be >= 1, got {steps}")
    a, b = RETRIEVERS
    qrels = {str(i): dict(g[3]) for i, g in enumerate(groups)}
    best_w, best_v = 0.5, -np.inf
    for w in np.linspace(0.0, 1.0, steps + 1):
        run = {
            str(i): rank_ids(list(ids), w * sa + (1 - w) * sb)
            for i, (ids, sa, sb, _) in enumerate(groups)
        }
        v = summarize(evaluate(run, qrels, [metric]))[metric]
        if v > best_v + 1e-12 or (abs(v - best_v) <= 1e-12 and abs(w - 0.5) < abs(best_w - 0.5)):
            best_w, best_v = float(w), float(v)
    return {"weights": {a: best_w, b: 1.0 - best_w}}


def linear_normed(
    normed: Mapping[str, np.ndarray], weights: Mapping[str, float], scale: float = 1.0
) -> np.ndarray:
    """``linear`` from the per-retriever min-max scores (same operations in the same order,
    so the same float64 values as ``fusion_score(cs, "linear", params)``)."""
    scale = _check_scale(scale)
    n = len(next(iter(normed.values()))) if normed else 0
    out = np.zeros(n, dtype=np.float64)
    for r, wr in weights.items():
        out += float(wr) * np.asarray(normed[r], dtype=np.float64)
    return scale * out
