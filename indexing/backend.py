"""The retrieval Protocol both backends (local, elasticsearch) implement.

Small on purpose: BM25 (combined or one field), kNN, fetch by id, plus the per-candidate
lookups the feature code needs so that features are identical whichever backend served
the candidates (each one separately, and all of them at once as ``Lookups``, which is
what search.candidates calls). All methods are async and raise
indexing.errors.BackendError subclasses; where CPU-bound work runs (the event loop or a
thread) is each implementation's choice, which ``OVERLAP`` informs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from indexing.documents import Document
from indexing.prf import DEFAULT_RM3, Rm3Params
from ltr.types import TermIds

# Set by the caller (search.pipeline) for each search: true when it is the only search in
# flight on its event loop, so a stage that runs without the GIL (kNN) gains by going to a
# thread beside the loop's own stages (BM25) on a core that would otherwise idle. Under
# load every core is busy and the thread hop only costs CPU (docs/benchmarks.md).
OVERLAP: ContextVar[bool] = ContextVar("overlap", default=False)


@dataclass(frozen=True)
class Filters:
    """Restrict retrieval: exact category and inclusive numeric ranges (None = open end)."""

    category: str | None = None
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return self.category is None and not self.ranges

    def matches(self, doc: Document) -> bool:
        """Reference semantics (the local backend applies the same test vectorized)."""
        if self.category is not None and doc.category != self.category:
            return False
        for name, (lo, hi) in self.ranges.items():
            v = doc.attrs.get(name)
            if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
                return False
        return True


@dataclass(frozen=True)
class Hits:
    """One retriever's ranked answer: ids best first, scores aligned."""

    ids: tuple[str, ...]
    scores: np.ndarray  # float32/float64, descending

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class IndexInfo:
    backend: str
    version: str
    doc_count: int
    text_fields: tuple[str, ...]
    attr_names: tuple[str, ...]
    model_id: str
    dim: int


@dataclass(frozen=True)
class Lookups:
    """Every per-candidate lookup the features need, each aligned with the candidate ids.

    The same values as the separate RetrievalBackend methods: ``cosine`` is NaN for an
    unknown id and for every id when there was no query vector.
    """

    query_terms: tuple[str, ...]  # the query analyzed with the index's analyzer
    field_bm25: Mapping[str, np.ndarray]  # text field -> BM25 per id (field_scores)
    cosine: np.ndarray
    doc_terms: Mapping[str, tuple[tuple[str, ...], ...]]  # text field -> terms per id
    idf: Mapping[str, float]  # of the distinct query terms (absent terms omitted)
    static: Mapping[str, np.ndarray]  # numeric attribute -> value per id (static_attrs)
    term_ids: TermIds | None = None  # doc_terms as vocabulary ids, where the index has them


def check_query_vector(vector: np.ndarray, dim: int) -> np.ndarray:
    """A [dim] float32 view of a query vector ([1, dim] accepted); refuses bad shapes/NaN.

    Shared by every backend so a bad vector fails the same way whichever one serves.
    """
    from indexing.errors import InvalidRequestError

    v = np.asarray(vector, dtype=np.float32)
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.shape != (dim,):
        raise InvalidRequestError(f"query vector has shape {v.shape}, expected ({dim},)")
    if not np.all(np.isfinite(v)):
        raise InvalidRequestError("query vector has NaN or infinite values")
    return v


@runtime_checkable
class RetrievalBackend(Protocol):
    """What the search pipeline needs from an index."""

    async def info(self) -> IndexInfo: ...

    async def bm25(
        self, query: str, k: int, field: str | None = None, filters: Filters | None = None
    ) -> Hits:
        """BM25 top-k on one text field, or on the combined field when ``field`` is None."""
        ...

    async def rm3(
        self,
        query: str,
        feedback: Hits,
        k: int,
        filters: Filters | None = None,
        params: Rm3Params = DEFAULT_RM3,
    ) -> Hits:
        """BM25 top-k of the RM3 expansion of ``query`` estimated from ``feedback`` (the
        first-pass BM25 run, best first; indexing.prf) on the combined field."""
        ...

    async def knn(self, vector: np.ndarray, k: int, filters: Filters | None = None) -> Hits:
        """Top-k documents by cosine similarity to an L2-normalized query vector."""
        ...

    async def fetch(self, ids: Sequence[str]) -> list[Document | None]:
        """Documents by id, aligned with ``ids``; None for unknown ids."""
        ...

    async def field_scores(self, query: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """BM25 of ``query`` against each text field for exactly these ids (0 = no match)."""
        ...

    async def cosine(self, vector: np.ndarray, ids: Sequence[str]) -> np.ndarray:
        """cosine(query vector, doc vector) for exactly these ids (NaN for unknown ids)."""
        ...

    async def analyze(self, text: str) -> tuple[str, ...]:
        """The index analyzer's terms for ``text`` (lowercase, stopwords, stemming)."""
        ...

    async def doc_terms(self, ids: Sequence[str]) -> dict[str, tuple[tuple[str, ...], ...]]:
        """Text field -> analyzed terms per id (used by text-match features)."""
        ...

    async def idf(self, terms: Sequence[str]) -> dict[str, float]:
        """Lucene BM25 IDF of each term in the combined field (absent terms omitted)."""
        ...

    async def static_attrs(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Numeric attribute -> value per id (NaN where missing or the id is unknown)."""
        ...

    async def lookups(self, query: str, ids: Sequence[str], vector: np.ndarray | None) -> Lookups:
        """Every per-candidate lookup at once (``vector`` None: cosine is all NaN)."""
        ...

    async def close(self) -> None: ...
