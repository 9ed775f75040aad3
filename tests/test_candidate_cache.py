"""search.candidates.CandidateCache over the real local index, MiniLM and a real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing.backend import Filters
from indexing.build import build_local_index, rollback
from indexing.config import IndexConfig
from indexing.local import LocalBackend
from ltr.registry import ModelRegistry
from ltr.types import DENSE
from search.aggregates import BehaviorAggregates
from search.candidates import CandidateCache, CandidateGenerator
from search.config import RetrievalConfig
from search.events import SqliteEventStore
from search.pipeline import Pipeline, SearchRequest, default_generator_factory
from tests.api_support import DEFAULT_FEATURES, serve_and_click
from tests.contract import CONTRACT_DOCS

Q = "flow over a flat plate"


def _pipeline(encoder: Any, index: Path, size: int = 8, **kw: Any) -> Pipeline:
    backend = LocalBackend.open(index, encoder)
    factory = default_generator_factory(RetrievalConfig(candidate_cache_size=size))
    return Pipeline(
        backend, encoder, DEFAULT_FEATURES, backend.version, generator_factory=factory, **kw
    )


def _cache(p: Pipeline) -> CandidateCache:
    gen = p._index.generator
    assert isinstance(gen, CandidateCache)
    return gen


async def test_a_repeated_query_skips_retrieval_and_serves_the_same_page(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    model = ModelRegistry(model_dir).load()
    p = _pipeline(encoder, small_index, model=model)
    try:
        first = await p.search(SearchRequest(q=Q, k=10))
        again = await p.search(SearchRequest(q=Q, k=10))
        cache = _cache(p)
        assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
        assert "bm25" in first.timings_ms and "knn" in first.timings_ms
        assert "bm25" not in again.timings_ms and "knn" not in again.timings_ms  # no retrieval
        assert again.hits == first.hits
        assert first.impression is not None and again.impression is not None
        np.testing.assert_array_equal(again.impression.features, first.impression.features)
        # the next page reuses the same candidates
        page2 = await p.search(SearchRequest(q=Q, k=10, offset=10))
        assert cache.hits == 2
        plain = _pipeline(encoder, small_index, size=0, model=model)
        try:
            assert not isinstance(plain._index.generator, CandidateCache)  # 0 = off
            ref = await plain.search(SearchRequest(q=Q, k=10, offset=10))
            assert [h["id"] for h in page2.hits] == [h["id"] for h in ref.hits]
            assert [h["score"] for h in page2.hits] == [h["score"] for h in ref.hits]
        finally:
            await plain.close()
    finally:
        await p.close()


async def test_keys_are_text_and_filters_and_the_query_id_is_the_callers(
    encoder: Any, small_index: Path
) -> None:
    p = _pipeline(encoder, small_index, size=2)
    try:
        cache = _cache(p)
        odd = Filters(category="odd")
        a, _ = await cache.generate(Q, query_id="q1")
        b, _ = await cache.generate(Q, filters=odd, query_id="q2")
        assert cache.misses == 2 and b.ids != a.ids  # the filter gives other candidates
        c, _ = await cache.generate(Q, filters=Filters(category="odd"), query_id="q3")
        assert cache.hits == 1 and c.ids == b.ids and c.query_id == "q3" and b.query_id == "q2"
        await cache.generate(Q.upper())  # another text: another entry; evicts the oldest (a)
        assert len(cache) == 2
        await cache.generate(Q, query_id="q1")
        assert cache.misses == 4  # a was evicted
        # a cached set is shared: its arrays are read-only, so no request can alter it
        with pytest.raises(ValueError, match="read-only"):
            c.scores["bm25"][0] = 0.0
    finally:
        await p.close()


async def test_degraded_results_are_not_kept(encoder: Any, small_index: Path) -> None:
    backend = LocalBackend.open(small_index, encoder)
    try:
        # no query vector can be computed in a microsecond: the dense side times out
        gen = CandidateGenerator(backend, encoder, timeouts={"embed": 0.001})
        cache = CandidateCache(gen, 4, backend)
        cs, degraded = await cache.generate("supersonic inlet, not cached yet")
        bm25 = await backend.bm25("supersonic inlet, not cached yet", gen.bm25_k)
        assert degraded == [DENSE] and len(bm25) > 0 and list(cs.ids) == list(bm25.ids)
        assert len(cache) == 0
        _, degraded = await cache.generate("supersonic inlet, not cached yet")
        assert degraded == [DENSE] and cache.hits == 0  # retried, not served from the cache
    finally:
        await backend.close()


async def test_click_history_is_fresh_on_a_cache_hit(
    encoder: Any, small_index: Path, tmp_path: Path
) -> None:
    store = SqliteEventStore(tmp_path / "e.db")
    agg = BehaviorAggregates.attach(store)
    p = _pipeline(encoder, small_index, aggregates=agg)
    try:
        _, doc = await serve_and_click(p, store, "wing flutter")
        fz = await p.featurize("wing flutter")
        assert _cache(p).hits == 1  # candidates from the cache ...
        names = list(fz.feature_names)
        i = fz.cs.ids.index(doc)  # ... behavior features from the store, as of now
        assert fz.X[i, names.index("qd_log_clicks")] == pytest.approx(np.log1p(1.0))
    finally:
        await p.close()
        store.close()


async def test_an_index_swap_starts_an_empty_cache(encoder: Any, small_index: Path) -> None:
    p = _pipeline(encoder, small_index)
    try:
        await p.search(SearchRequest(q=Q))
        assert len(_cache(p)) == 1
        await p.swap_backend(LocalBackend.open(small_index, encoder), "v-new")
        assert len(_cache(p)) == 0
        await p.search(SearchRequest(q=Q))
        assert (_cache(p).hits, _cache(p).misses) == (0, 1)
    finally:
        await p.close()


async def test_the_backend_version_is_part_of_the_key(
    encoder: Any, embedding_cache: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # LocalBackend.reload() moves one backend object to a newer version: no entry of the
    # old version may answer for it
    root = tmp_path_factory.mktemp("two-versions")
    half = CONTRACT_DOCS[: len(CONTRACT_DOCS) // 2]
    v1 = build_local_index(CONTRACT_DOCS, root, encoder, IndexConfig(), cache=embedding_cache)
    v2 = build_local_index(half, root, encoder, IndexConfig(), cache=embedding_cache)
    rollback(root, v1)
    backend = LocalBackend.open(root, encoder)
    try:
        cache = CandidateCache(CandidateGenerator(backend, encoder), 8, backend)
        old, _ = await cache.generate("espresso machine")
        rollback(root, v2)
        assert await backend.reload() is True and backend.version == v2
        new, _ = await cache.generate("espresso machine")
        assert cache.misses == 2 and cache.hits == 0
        assert set(new.ids) <= {d.id for d in half} and new.ids != old.ids
    finally:
        await backend.close()


def test_settings_validation() -> None:
    RetrievalConfig(candidate_cache_size=0).validate()
    with pytest.raises(ValueError, match="candidate_cache_size"):
        RetrievalConfig(candidate_cache_size=-1).validate()
