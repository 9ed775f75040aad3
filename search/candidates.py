"""Candidate generation: BM25 and kNN concurrently, their union, and every lookup features need.

The same code runs at serving time and in offline replay, so a CandidateSet (and hence the
features) is identical in both. Each retriever stage has its own timeout; a retriever that
fails (BackendError) or times out is reported as degraded and the other one still serves.
The embed, bm25 and knn stage times go to search.timings. ``CandidateCache`` keeps one
index version's candidate sets by query, in front of a generator.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from itertools import chain, zip_longest
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from indexing.backend import Filters, Hits, Lookups, RetrievalBackend
from indexing.encoders import Encoder
from indexing.errors import BackendError, BackendTimeoutError
from indexing.prf import DEFAULT_RM3, Rm3Params
from ltr.errors import unknown_name
from ltr.types import BM25, DENSE, EXTRA_RETRIEVERS, RETRIEVERS, RM3, TITLE, CandidateSet, Query
from search.config import RetrievalConfig
from search.timings import measure, measure_await

if TYPE_CHECKING:
    from indexing.local import LocalBackend

T = TypeVar("T")

DEFAULT_TIMEOUTS_MS: dict[str, float] = RetrievalConfig().timeouts()


class QueryVectorCache:
    """Thread-safe LRU of query text -> L2-normalized vector (read-only arrays)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> np.ndarray | None:
        with self._lock:
            v = self._data.get(text)
            if v is None:
                self.misses += 1
                return None
            self._data.move_to_end(text)
            self.hits += 1
            return v

    def put(self, text: str, vector: np.ndarray) -> None:
        if self.size <= 0:
            return
        v = vector
        if v.dtype != np.float32 or v.flags.writeable:
            v = np.array(vector, dtype=np.float32)
            v.flags.writeable = False
        with self._lock:
            self._data[text] = v
            self._data.move_to_end(text)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class CandidateGenerator:
    """Turns a query into a CandidateSet (see ltr.types.CandidateSet) over one backend."""

    def __init__(
        self,
        backend: RetrievalBackend,
        encoder: Encoder,
        bm25_k: int = 100,
        knn_k: int = 100,
        timeouts: Mapping[str, float] | None = None,
        query_cache_size: int = 4096,
        extra_retrievers: tuple[str, ...] = (),
        rm3: Rm3Params = DEFAULT_RM3,
    ) -> None:
        """``timeouts``: stage ("embed", "bm25", "knn", "lookup") -> milliseconds.
        ``extra_retrievers``: names from ltr.types.EXTRA_RETRIEVERS, each returning
        ``bm25_k`` more candidates within the bm25 stage's timeout."""
        if bm25_k < 1 or knn_k < 1:
            raise ValueError(f"bm25_k and knn_k must be >= 1, got {bm25_k}, {knn_k}")
        for name in extra_retrievers:
            if name not in EXTRA_RETRIEVERS:
                raise unknown_name("retriever", name, EXTRA_RETRIEVERS)
        rm3.validate()
        merged = dict(DEFAULT_TIMEOUTS_MS)
        for stage, ms in (timeouts or {}).items():
            if stage not in merged:
                raise ValueError(f"unknown timeout stage {stage!r}; valid: {', '.join(merged)}")
            if not ms > 0:
                raise ValueError(f"timeout of stage {stage!r} must be > 0 ms, got {ms}")
            merged[stage] = float(ms)
        self.backend = backend
        self.encoder = encoder
        self.bm25_k = bm25_k
        self.knn_k = knn_k
        self.timeouts_ms = merged
        self.query_cache = QueryVectorCache(query_cache_size)
        self.extra_retrievers = tuple(dict.fromkeys(extra_retrievers))
        self.rm3_params = rm3

    @classmethod
    def from_config(
        cls, backend: RetrievalBackend, encoder: Encoder, cfg: RetrievalConfig
    ) -> CandidateGenerator:
        return cls(
            backend, encoder, cfg.bm25_k, cfg.knn_k, cfg.timeouts(), cfg.query_cache_size,
            cfg.extra_retrievers,
        )  # fmt: skip

    async def _timed(self, stage: str, aw: Awaitable[T]) -> T:
        seconds = self.timeouts_ms[stage] / 1000.0
        try:
            # wait_for, not asyncio.timeout: its own task starts the bm25 call before the
            # kNN one is submitted; with asyncio.timeout the bm25 stage timer read as long
            # as kNN (measured with scripts/profile_search.py at 20K documents)
            return await asyncio.wait_for(aw, seconds)
        except TimeoutError:
            raise BackendTimeoutError(
                f"{stage} stage exceeded {self.timeouts_ms[stage]:g} ms"
            ) from None

    async def _encode(self, text: str) -> np.ndarray:
        """The query's vector, encoded off the event loop and put in the LRU cache."""
        out = await asyncio.to_thread(self._encode_timed, text)
        v = np.array(np.asarray(out)[0], dtype=np.float32)
        v.flags.writeable = False  # shared through the cache: nobody may modify it
        self.query_cache.put(text, v)
        return v

    def _encode_timed(self, text: str) -> np.ndarray:
        with measure("embed"):  # the model call only: cache hits never get here
            return self.encoder.encode([text])

    async def _dense(self, text: str, filters: Filters | None) -> tuple[Hits, np.ndarray]:
        # a cached vector submits kNN at once: before BM25, which holds the GIL while the
        # kNN graph search (hnswlib) runs without it
        vector = self.query_cache.get(text)
        if vector is None:
            vector = await self._timed("embed", self._encode(text))
        knn = self.backend.knn(vector, self.knn_k, filters)
        hits = await self._timed("knn", measure_await("knn", knn))
        return hits, vector

    async def generate(
        self, query: str | Query, filters: Filters | None = None, query_id: str | None = None
    ) -> tuple[CandidateSet, list[str]]:
        """Candidates for ``query`` and the retrievers that were degraded (failed/timed out).

        Raises BackendError when both retrievers fail, or when a lookup fails.
        """
        if isinstance(query, Query):
            query_id = query.id if query_id is None else query_id
            text = query.text
        else:
            text = query
        dense_res, bm25_res, *extra_res = await asyncio.gather(
            self._dense(text, filters),
            self._timed(
                "bm25", measure_await("bm25", self.backend.bm25(text, self.bm25_k, None, filters))
            ),
            *(self._title(text, filters) for name in self.extra_retrievers if name == TITLE),
            return_exceptions=True,
        )
        extra: dict[str, Hits | BaseException] = {}
        if TITLE in self.extra_retrievers:
            extra[TITLE] = extra_res[0]
        if RM3 in self.extra_retrievers:
            if isinstance(bm25_res, Hits):
                extra[RM3] = await self._rm3(text, bm25_res, filters)
            else:  # no first pass to expand from
                extra[RM3] = BackendError("rm3: the BM25 first pass failed")
        degraded: list[str] = []
        errors: list[BaseException] = []
        bm25_hits: Hits | None = None
        dense_hits: Hits | None = None
        vector: np.ndarray | None = None
        for name, res in ((BM25, bm25_res), (DENSE, dense_res)):
            if isinstance(res, BackendError):
                degraded.append(name)
                errors.append(res)
            elif isinstance(res, BaseException):
                raise res
            elif name == BM25:
                bm25_hits = res  # type: ignore[assignment]
            else:
                dense_hits, vector = res  # type: ignore[misc]
        if len(degraded) == len(RETRIEVERS):
            raise BackendError(
                "all retrievers failed: "
                + "; ".join(f"{n}: {e}" for n, e in zip(degraded, errors, strict=True))
            ) from errors[0]

        per_retriever: dict[str, Hits | None] = {BM25: bm25_hits, DENSE: dense_hits}
        for name in self.extra_retrievers:
            res = extra[name]
            if isinstance(res, BackendError):
                degraded.append(name)
                per_retriever[name] = None
            elif isinstance(res, BaseException):
                raise res
            else:
                per_retriever[name] = res
        ids = _union(per_retriever)
        n = len(ids)
        pos = {d: i for i, d in enumerate(ids)}
        scores: dict[str, np.ndarray] = {}
        ranks: dict[str, np.ndarray] = {}
        for name in per_retriever:
            s = np.full(n, np.nan, dtype=np.float64)
            r = np.full(n, np.nan, dtype=np.float64)
            hits = per_retriever[name]
            if hits is None:
                pass
            elif len(set(hits.ids)) == len(hits.ids) == len(hits.scores):
                at = np.fromiter(map(pos.__getitem__, hits.ids), np.intp, len(hits.ids))
                s[at] = np.asarray(hits.scores, dtype=np.float64)
                r[at] = np.arange(1, len(at) + 1, dtype=np.float64)
            else:  # duplicate ids (the last one wins) or a malformed Hits: the plain loop
                for rank, (doc_id, score) in enumerate(zip(hits.ids, hits.scores, strict=True)):
                    s[pos[doc_id]] = float(score)
                    r[pos[doc_id]] = rank + 1
            scores[name] = s
            ranks[name] = r

        lookups = await self._timed("lookup", self._lookups(text, ids, vector))
        cs = CandidateSet(
            query_text=text,
            query_terms=lookups.query_terms,
            ids=ids,
            scores=scores,
            ranks=ranks,
            field_bm25=lookups.field_bm25,
            dense_cosine=lookups.cosine,
            doc_terms=lookups.doc_terms,
            idf=lookups.idf,
            static=lookups.static,
            query_id=query_id,
            term_ids=lookups.term_ids,
        )
        return cs, degraded

    async def _title(self, text: str, filters: Filters | None) -> Hits:
        call = self.backend.bm25(text, self.bm25_k, TITLE, filters)
        return await self._timed("bm25", measure_await(TITLE, call))

    async def _rm3(self, text: str, first: Hits, filters: Filters | None) -> Hits | BaseException:
        """The RM3 run expanded from the BM25 run (an error is returned, as gather does)."""
        try:
            call = self.backend.rm3(text, first, self.bm25_k, filters, self.rm3_params)
            return await self._timed("bm25", measure_await(RM3, call))
        except Exception as e:  # sorted by the caller, like gather's results
            return e

    async def _lookups(self, text: str, ids: tuple[str, ...], vector: np.ndarray | None) -> Lookups:
        """The backend's lookups of the candidates, with every score column float64."""
        got = await self.backend.lookups(text, ids, vector)
        return replace(
            got,
            field_bm25={k: np.asarray(v, dtype=np.float64) for k, v in got.field_bm25.items()},
            cosine=np.asarray(got.cosine, dtype=np.float64),
            static={k: np.asarray(v, dtype=np.float64) for k, v in got.static.items()},
        )


def _union(per_retriever: Mapping[str, Hits | None]) -> tuple[str, ...]:
    """Ids of all retrievers, ordered by best rank; ties by retriever order (bm25 first,
    then dense, then the extra retrievers in their configured order).

    That order is each id's first appearance when the lists are read rank by rank, each
    rank in retriever order, so one dict.fromkeys over the interleaved lists gives it (C
    loops instead of keeping every id's best (rank, retriever), then sorting)."""
    lists = [hits.ids for hits in per_retriever.values() if hits is not None]
    if len(lists) == 1:
        return tuple(dict.fromkeys(lists[0]))
    gap = object()  # pads the shorter lists; never an id
    merged = dict.fromkeys(chain.from_iterable(zip_longest(*lists, fillvalue=gap)))
    merged.pop(gap, None)
    return cast("tuple[str, ...]", tuple(merged))


class CandidateCache:
    """LRU of one index version's candidate sets, by query text and filters.

    Why it is safe: an index version never changes, so a query and its filters always get
    the same candidates (retrieval scores, lookups) from it. Only the local backend, which
    answers from one version at a time, is cached, the backend's version is part of the
    key, and a swapped-in version gets a new generator with an empty cache. Behavior
    aggregates are attached after this, per request, so click history is never served
    stale. Why: head queries and the next page of a result list skip retrieval and lookups
    (most of the candidates stage). A degraded result (a retriever failed or timed out) is
    not kept.
    """

    def __init__(self, inner: CandidateGenerator, size: int, backend: LocalBackend) -> None:
        self.inner = inner
        self.size = size
        self.backend = backend
        self._data: OrderedDict[tuple[Any, ...], CandidateSet] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def query_cache(self) -> QueryVectorCache:
        """The inner generator's query-vector LRU."""
        return self.inner.query_cache

    def __len__(self) -> int:
        return len(self._data)

    async def generate(
        self, query: str, filters: Filters | None = None, query_id: str | None = None
    ) -> tuple[CandidateSet, list[str]]:
        key = (self.backend.version, query, _filters_key(filters))
        cs = self._data.get(key)  # the event loop is the only reader and writer
        if cs is not None:
            self._data.move_to_end(key)
            self.hits += 1
            return (cs if cs.query_id == query_id else replace(cs, query_id=query_id)), []
        self.misses += 1
        cs, degraded = await self.inner.generate(query, filters=filters, query_id=query_id)
        if not degraded:
            _freeze(cs)  # shared by later requests: an in-place write would now raise
            self._data[key] = cs
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return cs, degraded


def _freeze(cs: CandidateSet) -> None:
    """Mark every array of ``cs`` read-only."""
    for value in vars(cs).values():
        arrays = value.values() if isinstance(value, Mapping) else (value,)
        for a in arrays:
            if isinstance(a, np.ndarray):
                a.flags.writeable = False


def _filters_key(filters: Filters | None) -> tuple[Any, ...] | None:
    if filters is None or filters.is_empty():
        return None
    return (filters.category, tuple(sorted(filters.ranges.items())))


__all__ = ["DEFAULT_TIMEOUTS_MS", "CandidateCache", "CandidateGenerator", "QueryVectorCache"]
