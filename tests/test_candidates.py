"""CandidateGenerator over a real LocalBackend and the real MiniLM encoder."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from indexing.backend import OVERLAP, Filters, Hits
from indexing.errors import BackendError
from indexing.local import LocalBackend
from ltr.types import BM25, DENSE, CandidateSet, Query
from search.candidates import CandidateGenerator, QueryVectorCache, _union
from search.config import RetrievalConfig
from tests.contract import DOCS_BY_ID

ASYNC = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def backend(contract_index: Path, encoder: Any) -> AsyncIterator[LocalBackend]:
    b = LocalBackend.open(contract_index, encoder)
    yield b
    await b.close()


class FailingKnn:
    """Fault injection: the real backend, except that kNN fails like a lost connection."""

    def __init__(self, inner: LocalBackend, fail: Sequence[str]) -> None:
        self._inner, self._fail = inner, set(fail)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in self._fail:

            async def broken(*args: Any, **kwargs: Any) -> Any:
                raise BackendError(f"{name}: connection refused")

            return broken
        return attr


def check_consistent(cs: CandidateSet, bm25: Hits, knn: Hits) -> None:
    assert set(cs.ids) == set(bm25.ids) | set(knn.ids)
    n = len(cs)
    for name, hits in ((BM25, bm25), (DENSE, knn)):
        s, r = cs.scores[name], cs.ranks[name]
        assert s.shape == r.shape == (n,)
        pos = {d: i for i, d in enumerate(cs.ids)}
        for rank, (d, score) in enumerate(zip(hits.ids, hits.scores, strict=True), start=1):
            assert r[pos[d]] == rank
            assert s[pos[d]] == pytest.approx(score)
        missing = [pos[d] for d in cs.ids if d not in hits.ids]
        assert np.isnan(s[missing]).all() and np.isnan(r[missing]).all()
    best = np.fmin(cs.ranks[BM25], cs.ranks[DENSE])
    assert np.all(np.diff(best) >= 0), "union must be ordered by best rank"


@ASYNC
async def test_generate_matches_backend(backend: LocalBackend, encoder: Any) -> None:
    gen = CandidateGenerator(backend, encoder, bm25_k=5, knn_k=7)
    query = "waterproof hiking gear"
    cs, degraded = await gen.generate(query, query_id="q1")
    assert degraded == []
    assert cs.query_id == "q1" and cs.query_text == query
    assert cs.query_terms == await backend.analyze(query)
    v = encoder.encode([query])[0]
    check_consistent(cs, await backend.bm25(query, 5), await backend.knn(v, 7))

    ids = list(cs.ids)
    fs = await backend.field_scores(query, ids)
    assert set(cs.field_bm25) == set(fs)
    for f in fs:
        np.testing.assert_allclose(cs.field_bm25[f], fs[f])
    np.testing.assert_allclose(cs.dense_cosine, await backend.cosine(v, ids), atol=1e-5)
    assert cs.doc_terms == await backend.doc_terms(ids)
    assert cs.idf == await backend.idf(cs.query_terms)
    assert set(cs.idf) <= set(cs.query_terms) and cs.idf
    for name in ("price", "rating"):
        want = [DOCS_BY_ID[d].attrs.get(name, math.nan) for d in ids]
        np.testing.assert_array_equal(cs.static[name], want)


@ASYNC
async def test_query_object_and_filters(backend: LocalBackend, encoder: Any) -> None:
    gen = CandidateGenerator(backend, encoder, bm25_k=10, knn_k=10)
    filters = Filters(category="outdoor", ranges={"price": (None, 200.0)})
    cs, degraded = await gen.generate(Query("q7", "waterproof hiking"), filters=filters)
    assert cs.query_id == "q7" and degraded == []
    bm25 = await backend.bm25("waterproof hiking", 10, filters=filters)
    knn = await backend.knn(encoder.encode(["waterproof hiking"])[0], 10, filters=filters)
    check_consistent(cs, bm25, knn)  # both retrievers were asked with the filters
    # the outdoor products under 200 are d23-d25 (d22 costs 219): kNN's 10 take all three
    assert set(cs.ids) == {"d23", "d24", "d25"}
    assert all(filters.matches(DOCS_BY_ID[d]) for d in cs.ids)


@ASYNC
async def test_stopword_query_is_dense_only_not_degraded(
    backend: LocalBackend, encoder: Any
) -> None:
    gen = CandidateGenerator(backend, encoder, bm25_k=5, knn_k=4)
    cs, degraded = await gen.generate("the and of")
    assert degraded == [] and len(cs) == 4
    assert np.isnan(cs.scores[BM25]).all() and not np.isnan(cs.scores[DENSE]).any()
    assert cs.query_terms == () and cs.idf == {}
    for col in cs.field_bm25.values():
        np.testing.assert_array_equal(col, 0.0)


@ASYNC
async def test_no_candidates(backend: LocalBackend, encoder: Any) -> None:
    gen = CandidateGenerator(backend, encoder)
    cs, _ = await gen.generate("laptop", filters=Filters(category="no-such-category"))
    assert len(cs) == 0 and cs.dense_cosine.shape == (0,)
    assert all(len(v) == 0 for v in cs.scores.values())


@ASYNC
async def test_query_vector_lru(backend: LocalBackend, encoder: Any) -> None:
    gen = CandidateGenerator(backend, encoder, query_cache_size=2)
    await gen.generate("espresso")
    await gen.generate("espresso")
    assert gen.query_cache.hits == 1 and gen.query_cache.misses == 1
    await gen.generate("kettle")
    await gen.generate("yoga")  # evicts "espresso"
    assert len(gen.query_cache) == 2
    assert gen.query_cache.get("espresso") is None
    cached = gen.query_cache.get("yoga")
    assert cached is not None and not cached.flags.writeable
    np.testing.assert_allclose(cached, encoder.encode(["yoga"])[0], atol=1e-5)


def test_cache_size_zero_keeps_nothing() -> None:
    c = QueryVectorCache(0)
    c.put("a", np.ones(3, dtype=np.float32))
    assert len(c) == 0 and c.get("a") is None


@ASYNC
async def test_dense_timeout_degrades(backend: LocalBackend, encoder: Any) -> None:
    # A query vector cannot be computed in a microsecond: the dense stage times out.
    gen = CandidateGenerator(backend, encoder, bm25_k=5, timeouts={"embed": 0.001})
    cs, degraded = await gen.generate("budget laptop for students, not cached yet")
    assert degraded == [DENSE]
    assert len(cs) == 5
    assert np.isnan(cs.scores[DENSE]).all() and np.isnan(cs.ranks[DENSE]).all()
    assert np.isnan(cs.dense_cosine).all()  # unknown, never 0
    assert not np.isnan(cs.scores[BM25]).any()


@ASYNC
async def test_knn_error_degrades(backend: LocalBackend, encoder: Any) -> None:
    gen = CandidateGenerator(FailingKnn(backend, ["knn"]), encoder, bm25_k=5)  # type: ignore[arg-type]
    cs, degraded = await gen.generate("laptop")
    bm25 = await backend.bm25("laptop", 5)
    assert degraded == [DENSE] and list(cs.ids) == list(bm25.ids)  # BM25's top 5 alone
    assert set(cs.ids) == {"d01", "d02", "d03", "d04", "d10"}  # every document with "laptop"


@ASYNC
async def test_bm25_error_degrades(backend: LocalBackend, encoder: Any) -> None:
    gen = CandidateGenerator(FailingKnn(backend, ["bm25"]), encoder, knn_k=6)  # type: ignore[arg-type]
    cs, degraded = await gen.generate("laptop")
    assert degraded == [BM25] and len(cs) == 6
    assert np.isnan(cs.scores[BM25]).all()
    assert not np.isnan(cs.field_bm25["title"]).any()  # lookups still work


@ASYNC
async def test_both_failing_raises(backend: LocalBackend, encoder: Any) -> None:
    gen = CandidateGenerator(FailingKnn(backend, ["bm25", "knn"]), encoder)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="all retrievers failed"):
        await gen.generate("laptop")


@ASYNC
async def test_closed_backend_raises(contract_index: Path, encoder: Any) -> None:
    b = LocalBackend.open(contract_index, encoder)
    await b.close()
    with pytest.raises(BackendError):
        await CandidateGenerator(b, encoder).generate("laptop")


@pytest.mark.parametrize(
    "kwargs",
    [{"bm25_k": 0}, {"knn_k": -1}, {"timeouts": {"bm25": 0}}, {"timeouts": {"nope": 5}}],
)
def test_bad_arguments(backend: LocalBackend, encoder: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CandidateGenerator(backend, encoder, **kwargs)


def test_from_config(backend: LocalBackend, encoder: Any) -> None:
    cfg = RetrievalConfig(bm25_k=11, knn_k=12, bm25_timeout_ms=77.0, query_cache_size=3)
    gen = CandidateGenerator.from_config(backend, encoder, cfg)
    assert (gen.bm25_k, gen.knn_k, gen.query_cache.size) == (11, 12, 3)
    assert gen.timeouts_ms["bm25"] == 77.0


def test_retrieval_config_validate() -> None:
    RetrievalConfig().validate()
    with pytest.raises(ValueError, match="knn_k"):
        RetrievalConfig(knn_k=0).validate()
    with pytest.raises(ValueError, match="lookup_timeout_ms"):
        RetrievalConfig(lookup_timeout_ms=0).validate()


@pytest_asyncio.fixture(loop_scope="session")
async def threaded(contract_index: Path, encoder: Any) -> AsyncIterator[LocalBackend]:
    b = LocalBackend.open(contract_index, encoder, inline=False)
    yield b
    await b.close()


QUERIES_INLINE = ["espresso machine", "budget laptop", "yoga mat", "wireless headphones", "zzz"]


@ASYNC
async def test_inline_and_threaded_backends_give_the_same_candidates(
    backend: LocalBackend, threaded: LocalBackend, encoder: Any
) -> None:
    assert backend.inline and not threaded.inline  # inline is the default
    a = CandidateGenerator(backend, encoder, bm25_k=7, knn_k=7)
    b = CandidateGenerator(threaded, encoder, bm25_k=7, knn_k=7)
    for q in QUERIES_INLINE:
        (ca, da), (cb, db) = await a.generate(q), await b.generate(q)
        assert da == db == []
        assert ca.ids == cb.ids and ca.query_terms == cb.query_terms
        assert ca.doc_terms == cb.doc_terms and ca.idf == cb.idf
        for x, y in [(ca.scores, cb.scores), (ca.ranks, cb.ranks), (ca.field_bm25, cb.field_bm25)]:
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        np.testing.assert_array_equal(ca.dense_cosine, cb.dense_cosine)
        assert await backend.fetch(ca.ids) == await threaded.fetch(ca.ids)


@ASYNC
async def test_stage_timeouts_bound_threaded_local_calls_only(
    backend: LocalBackend, threaded: LocalBackend, encoder: Any
) -> None:
    # The documented trade of inline mode: BM25 and kNN run to completion on the loop, so
    # their stage timeouts cannot fire; in a thread they can (neither answers in a
    # microsecond).
    tiny = {"bm25": 0.001}
    _, degraded = await CandidateGenerator(threaded, encoder, timeouts=tiny).generate("kettle")
    assert degraded == [BM25]
    cs, degraded = await CandidateGenerator(backend, encoder, timeouts=tiny).generate("kettle")
    assert degraded == [] and not np.isnan(cs.scores[BM25]).all()
    for b, want in ((backend, []), (threaded, [DENSE])):
        gen = CandidateGenerator(b, encoder, timeouts={"knn": 0.001})
        gen.query_cache.put("kettle", encoder.encode(["kettle"])[0])  # no embedding wait
        cs, degraded = await gen.generate("kettle")
        assert degraded == want
        assert np.isnan(cs.scores[DENSE]).all() == bool(want)
    # a search alone on its loop (search.pipeline sets OVERLAP) sends kNN to a thread, to
    # overlap BM25: there the kNN timeout applies again
    alone = OVERLAP.set(True)
    try:
        gen = CandidateGenerator(backend, encoder, timeouts={"knn": 0.001})
        gen.query_cache.put("kettle", encoder.encode(["kettle"])[0])
        _, degraded = await gen.generate("kettle")
        assert degraded == [DENSE]
    finally:
        OVERLAP.reset(alone)


def _union_by_best_key(per_retriever: dict[str, Hits | None]) -> tuple[str, ...]:
    """The union's definition, literally: each id's best (rank, retriever order), sorted."""
    best: dict[str, tuple[int, int]] = {}
    for order, hits in enumerate(per_retriever.values()):
        for rank, doc_id in enumerate(hits.ids if hits is not None else ()):
            best[doc_id] = min(best.get(doc_id, (rank, order)), (rank, order))
    return tuple(sorted(best, key=best.__getitem__))


def test_union_orders_by_best_rank_then_retriever() -> None:
    two = {BM25: Hits(("a", "b"), np.ones(2)), DENSE: Hits(("b", "c", "a"), np.ones(3))}
    assert _union(two) == ("a", "b", "c")
    rng = np.random.default_rng(3)
    for _ in range(300):
        lists: dict[str, Hits | None] = {}
        for name in ("bm25", "dense", "title", "rm3")[: int(rng.integers(1, 5))]:
            if rng.random() < 0.15:
                lists[name] = None  # a degraded retriever
                continue
            ids = tuple(f"d{i}" for i in rng.integers(0, 12, int(rng.integers(0, 9))))
            lists[name] = Hits(ids, np.zeros(len(ids)))  # repeats, any length, empty
        assert _union(lists) == _union_by_best_key(lists), lists
