"""Replay judged queries through ``featurize`` to build learning-to-rank data.

Training and evaluation rows come from the SAME code path as serving (search.featurize ->
search.candidates -> ltr.features), so there is no train/serve skew. Per query we keep the
candidate set (behavior features are attached later, per evaluation fold), the feature
matrix, the labels (the judged grade; unjudged candidates get 0) and the retrievers'
scores. Candidate recall (how many relevant documents reach the reranker at all) bounds
what any reranker can do, so it is computed here too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ltr.errors import TrainingDataError
from ltr.types import EXTRA_RETRIEVERS, RETRIEVERS, CandidateSet, Judgment, Query
from search.featurize import BehaviorSource, Featurized, Generator, featurize

if TYPE_CHECKING:
    from indexing.encoders import Encoder
    from search.candidates import QueryVectorCache

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` for a coroutine with a big result (a ``Replay``).

    On Python 3.11 and 3.12, asyncio.run restores its SIGINT handler through
    ``signal.getsignal``, which builds an enum error message holding the repr of the finished
    task, result included: for a 200-query replay a 23 MB string, about half the replay's
    CPU (measured on the demo catalog). Handing the result back through a closure leaves
    the task's result None. (Python 3.13 no longer builds that message.)
    """
    box: list[T] = []

    async def main() -> None:
        box.append(await coro)

    asyncio.run(main())
    return box[0]


# Offline replay is not latency bound: generous stage timeouts so a busy machine never
# drops a retriever (which would silently change the training data).
REPLAY_TIMEOUTS_MS: dict[str, float] = {
    "embed": 120_000.0,
    "bm25": 120_000.0,
    "knn": 120_000.0,
    "lookup": 120_000.0,
}


@dataclass(frozen=True, eq=False)
class ReplayedQuery:
    """One judged query after candidate generation and featurization."""

    query: Query
    cs: CandidateSet
    X: np.ndarray  # float32 [n, F]
    labels: np.ndarray  # float64 [n]: judged grade, 0 when unjudged
    qrels: Mapping[str, float]  # every judgment of the query (retrieved or not)
    degraded: tuple[str, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        return self.cs.ids

    def retriever_ranking(self, retriever: str) -> list[str]:
        """That retriever's own result list (candidates it returned, by its rank)."""
        r = np.asarray(self.cs.ranks.get(retriever, np.full(len(self.ids), np.nan)))
        idx = np.flatnonzero(np.isfinite(r))
        idx = idx[np.argsort(r[idx], kind="stable")]
        return [self.ids[i] for i in idx]


@dataclass(frozen=True, eq=False)
class Replay:
    feature_names: tuple[str, ...]
    queries: list[ReplayedQuery]
    recall: dict[str, float] = field(default_factory=dict)

    def by_id(self) -> dict[str, ReplayedQuery]:
        return {rq.query.id: rq for rq in self.queries}


def qrels_by_query(judgments: Sequence[Judgment]) -> dict[str, dict[str, float]]:
    """query id -> {doc id: grade}."""
    out: dict[str, dict[str, float]] = {}
    for j in judgments:
        out.setdefault(j.query_id, {})[j.doc_id] = float(j.grade)
    return out


def labels_for(ids: Sequence[str], qrels: Mapping[str, float]) -> np.ndarray:
    """Grade per candidate; unjudged = 0 (the usual pooled-judgment assumption)."""
    return np.array([float(qrels.get(d, 0.0)) for d in ids], dtype=np.float64)


def candidate_recall(
    queries: Sequence[ReplayedQuery], ks: Sequence[int] = (100, 1000)
) -> dict[str, float]:
    """Mean share of relevant documents reached: by the candidate union, and per retriever
    within its top k (a retriever asked for fewer than k results is reported at its depth)."""
    out: dict[str, list[float]] = {}

    def add(key: str, v: float) -> None:
        out.setdefault(key, []).append(v)

    for rq in queries:
        rel = {d for d, g in rq.qrels.items() if g > 0}
        if not rel:
            continue
        ids = set(rq.ids)
        add("candidates", len(rel & ids) / len(rel))
        for k in ks:
            union: set[str] = set()
            for r in (*RETRIEVERS, *(x for x in EXTRA_RETRIEVERS if x in rq.cs.ranks)):
                top = rq.retriever_ranking(r)[:k]
                union.update(top)
                add(f"{r}@{k}", len(rel & set(top)) / len(rel))
            add(f"union@{k}", len(rel & union) / len(rel))
    return {k: float(np.mean(v)) if v else math.nan for k, v in out.items()}


async def replay(
    generator: Generator,
    queries: Sequence[Query],
    judgments: Sequence[Judgment] | Mapping[str, Mapping[str, float]],
    feature_names: Sequence[str],
    *,
    only_judged: bool = True,
    encoder: Encoder | None = None,
    query_cache: QueryVectorCache | None = None,
    behavior: Callable[[str], BehaviorSource] | None = None,
) -> Replay:
    """Featurize every (judged) query; labels from the judgments.

    ``encoder`` and ``query_cache`` (the generator's query-vector LRU, search.candidates):
    when both are given, the query vectors are encoded in one batch into the cache first --
    the same vectors, far faster than one model call per query. ``behavior``: query text ->
    the click-history source serving would attach (search.pipeline), so replayed rows carry
    the behavior features a page served now would (None: no history, NaN).
    """
    qrels = (
        {q: dict(r) for q, r in judgments.items()}
        if isinstance(judgments, Mapping)
        else qrels_by_query(judgments)
    )
    todo = [q for q in queries if not only_judged or q.id in qrels]
    if not todo:
        raise TrainingDataError("no judged queries to replay")
    if encoder is not None and query_cache is not None:
        texts = list(dict.fromkeys(q.text for q in todo))
        vecs = encoder.encode(texts)
        for t, v in zip(texts, vecs, strict=True):
            query_cache.put(t, v)
    out: list[ReplayedQuery] = []
    names = tuple(feature_names)
    for q in todo:
        source = behavior(q.text) if behavior is not None else None
        f: Featurized = await featurize(generator, q.text, names, query_id=q.id, behavior=source)
        rels = qrels.get(q.id, {})
        out.append(
            ReplayedQuery(
                query=q,
                cs=f.cs,
                X=f.X,
                labels=labels_for(f.cs.ids, rels),
                qrels=rels,
                degraded=tuple(f.degraded),
            )
        )
    return Replay(feature_names=names, queries=out, recall=candidate_recall(out))


async def replay_index(
    index_dir: str | Path,
    encoder: Encoder,
    queries: Sequence[Query],
    judgments: Sequence[Judgment] | Mapping[str, Mapping[str, float]],
    feature_names: Sequence[str],
    bm25_k: int = 100,
    knn_k: int = 100,
    *,
    only_judged: bool = True,
    behavior: Callable[[str], BehaviorSource] | None = None,
    extra_retrievers: tuple[str, ...] = (),
) -> Replay:
    """``replay`` over the local index in ``index_dir`` (opened and closed here), with the
    offline timeouts: what training (search.training) and scripts/evaluate.py replay."""
    from indexing.local import LocalBackend
    from search.candidates import CandidateGenerator

    backend = LocalBackend.open(index_dir, encoder)
    try:
        gen = CandidateGenerator(
            backend, encoder, bm25_k, knn_k, timeouts=REPLAY_TIMEOUTS_MS,
            extra_retrievers=extra_retrievers,
        )  # fmt: skip
        return await replay(
            gen, queries, judgments, feature_names, only_judged=only_judged,
            encoder=encoder, query_cache=gen.query_cache, behavior=behavior,
        )  # fmt: skip
    finally:
        await backend.close()
