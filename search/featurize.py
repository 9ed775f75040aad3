"""THE one path from a query to a feature matrix.

The API's pipeline and offline replay (training data, evaluation) both call ``featurize``,
so served features and training features come from the same candidate generation and the
same ltr.features definitions and cannot skew. Candidate generation is timed as the
"candidates" stage of search.timings.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from indexing.backend import Filters
from ltr.features import compute, resolved
from ltr.types import CandidateSet, Query
from search.timings import measure

BehaviorArrays = Mapping[str, np.ndarray]
# Given the candidates, return per-candidate raw behavior aggregates (ltr.behavior keys),
# sync or async (an event store lookup is I/O).
BehaviorSource = Callable[[CandidateSet], BehaviorArrays | Awaitable[BehaviorArrays]]


class Generator(Protocol):
    """What featurize needs from search.candidates.CandidateGenerator."""

    async def generate(
        self, query: str, filters: Filters | None = None, query_id: str | None = None
    ) -> tuple[CandidateSet, list[str]]: ...


@dataclass(frozen=True)
class Featurized:
    """One query's candidates and their feature matrix (float32 [n, F], NaN = missing)."""

    cs: CandidateSet
    X: np.ndarray
    feature_names: tuple[str, ...]
    degraded: list[str]  # retrievers that failed or timed out (results are partial)


async def featurize(
    generator: Generator,
    query: str | Query,
    feature_names: Sequence[str],
    filters: Filters | None = None,
    query_id: str | None = None,
    behavior: BehaviorSource | BehaviorArrays | None = None,
) -> Featurized:
    """Generate candidates for ``query`` and compute ``feature_names`` over them.

    ``behavior`` attaches click-history aggregates before features are computed: a callable
    receiving the CandidateSet (sync or async), or arrays already aligned with the
    candidates. Unknown feature names fail before any retrieval is done.
    """
    names = tuple(feature_names)
    resolved(names)  # fail fast on a typo, before paying for retrieval
    if isinstance(query, Query):
        query_id = query.id if query_id is None else query_id
        text = query.text
    else:
        text = query
    with measure("candidates"):
        cs, degraded = await generator.generate(text, filters=filters, query_id=query_id)
    if behavior is not None:
        if callable(behavior):
            got = behavior(cs)
            arrays = await got if inspect.isawaitable(got) else got
        else:
            arrays = behavior
        cs = cs.with_behavior(arrays)
    X = compute(cs, names)
    return Featurized(cs=cs, X=X, feature_names=names, degraded=list(degraded))
