"""Ranking metrics: NDCG@k (exponential gain), MRR@k, MAP@k, recall@k, per query and mean.

Conventions (checked in the tests against trec_eval through ir-measures, gains mapped):
- a ranking is a list of doc ids, best first; ``qrels`` maps doc id -> graded relevance;
- relevant means grade > 0; unjudged documents have grade 0;
- NDCG gain is 2**grade - 1 (Burges et al.), discount 1/log2(rank + 1), the ideal DCG is
  computed from ALL judged documents of the query, retrieved or not;
- MAP@k divides by the number of relevant documents (capped at k is NOT applied, as trec_eval);
- a query without any relevant document has no defined value: NaN (means skip it).
Scores are turned into rankings by ``rank_ids`` with a deterministic tie-break (the input
order), so evaluations are reproducible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from ltr.errors import LTRError, unknown_name

Qrels = Mapping[str, float]


class MetricError(LTRError, ValueError):
    """A bad metric name or cutoff."""


def rank_ids(ids: Sequence[str], scores: np.ndarray | Sequence[float]) -> list[str]:
    """Ids sorted by descending score; ties keep input order; NaN scores sort last."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(ids),):
        raise MetricError(f"scores have shape {s.shape}, expected ({len(ids)},)")
    key = np.where(np.isnan(s), -np.inf, s)
    order = np.lexsort((np.arange(len(ids)), -key))
    return [ids[i] for i in order]


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or k < 1:
        raise MetricError(f"cutoff k must be an integer >= 1, got {k!r}")
    return int(k)


def _gains(ranking: Sequence[str], qrels: Qrels, k: int) -> np.ndarray:
    return np.array([float(qrels.get(d, 0.0)) for d in ranking[:k]], dtype=np.float64)


def _n_relevant(qrels: Qrels) -> int:
    return sum(1 for g in qrels.values() if g > 0)


def dcg(grades: np.ndarray) -> float:
    """DCG with exponential gain of grades in rank order."""
    g = np.asarray(grades, dtype=np.float64)
    if g.size == 0:
        return 0.0
    disc = 1.0 / np.log2(np.arange(2, g.size + 2))
    return float(np.sum((np.exp2(g) - 1.0) * disc))


def ndcg_at_k(ranking: Sequence[str], qrels: Qrels, k: int) -> float:
    """NDCG@k with gain 2**grade - 1; NaN when the query has no relevant document."""
    k = _check_k(k)
    ideal = np.sort(np.array([g for g in qrels.values() if g > 0], dtype=np.float64))[::-1]
    idcg = dcg(ideal[:k])
    if idcg <= 0:
        return math.nan
    return dcg(np.maximum(_gains(ranking, qrels, k), 0.0)) / idcg


def mrr_at_k(ranking: Sequence[str], qrels: Qrels, k: int) -> float:
    """1 / rank of the first relevant document in the top k (0 if none)."""
    k = _check_k(k)
    if _n_relevant(qrels) == 0:
        return math.nan
    for i, d in enumerate(ranking[:k]):
        if qrels.get(d, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def map_at_k(ranking: Sequence[str], qrels: Qrels, k: int) -> float:
    """Average precision over the top k, divided by the number of relevant documents."""
    k = _check_k(k)
    n_rel = _n_relevant(qrels)
    if n_rel == 0:
        return math.nan
    rel = _gains(ranking, qrels, k) > 0
    if not rel.any():
        return 0.0
    prec = np.cumsum(rel) / np.arange(1, rel.size + 1)
    return float(np.sum(prec[rel]) / n_rel)


def recall_at_k(ranking: Sequence[str], qrels: Qrels, k: int) -> float:
    """Share of the relevant documents found in the top k."""
    k = _check_k(k)
    n_rel = _n_relevant(qrels)
    if n_rel == 0:
        return math.nan
    return float(np.sum(_gains(ranking, qrels, k) > 0) / n_rel)


MetricFn = Callable[[Sequence[str], Qrels, int], float]
METRICS: dict[str, MetricFn] = {
    "ndcg": ndcg_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
    "recall": recall_at_k,
}
_SPEC = re.compile(r"^([a-z]+)@(\d+)$")


def parse_metric(spec: str) -> tuple[MetricFn, int]:
    """'ndcg@10' -> (ndcg_at_k, 10); unknown names raise UnknownNameError."""
    m = _SPEC.match(spec.strip().lower())
    if m is None:
        raise MetricError(f"metric {spec!r} is not of the form name@k, e.g. 'ndcg@10'")
    name, k = m.group(1), int(m.group(2))
    if name not in METRICS:
        raise unknown_name("metric", name, list(METRICS))
    return METRICS[name], _check_k(k)


def evaluate(
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Qrels],
    metrics: Iterable[str] = ("ndcg@10",),
    exclude: Mapping[str, set[str] | frozenset[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """metric -> query id -> value for every query of ``qrels`` (a missing run = empty list).

    ``exclude`` drops documents from a query's ranking before scoring (e.g. Cranfield's
    source papers) -- the ranking closes up, as if they had never been retrieved.
    """
    parsed = [(spec, *parse_metric(spec)) for spec in metrics]
    out: dict[str, dict[str, float]] = {spec: {} for spec, _, _ in parsed}
    for qid, rels in qrels.items():
        ranking = list(run.get(qid, ()))
        if exclude and qid in exclude:
            drop = exclude[qid]
            ranking = [d for d in ranking if d not in drop]
        for spec, fn, k in parsed:
            out[spec][qid] = fn(ranking, rels, k)
    return out


def mean(per_query: Mapping[str, float]) -> float:
    """Mean over the queries where the metric is defined (NaN if none)."""
    vals = np.array([v for v in per_query.values() if not math.isnan(v)], dtype=np.float64)
    return float(vals.mean()) if vals.size else math.nan


def summarize(per_metric: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """metric -> mean over queries."""
    return {m: mean(v) for m, v in per_metric.items()}
