"""search.pipeline.Pipeline over the real local index, MiniLM and a real XGBoost model."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import search.pipeline as pipeline_module
from indexing.local import LocalBackend
from ltr.errors import FeaturesetMismatchError
from ltr.fusion import fusion_score
from ltr.model import RankModel
from ltr.registry import ModelRegistry
from search.aggregates import BehaviorAggregates
from search.errors import InvalidParameterError, InvalidQueryError
from search.events import SqliteEventStore
from search.featurize import featurize
from search.pipeline import Pipeline, PipelineConfig, SearchRequest
from tests.api_support import DEFAULT_FEATURES, serve_and_click


@pytest.fixture
async def pipeline(encoder: Any, small_index: Path, model_dir: Path) -> AsyncIterator[Pipeline]:
    backend = LocalBackend.open(small_index, encoder)
    model = ModelRegistry(model_dir).load()
    p = Pipeline(backend, encoder, DEFAULT_FEATURES, backend.version, model=model)
    yield p
    await p.close()


async def test_search_ranks_by_model_with_rrf_base_margin(pipeline: Pipeline) -> None:
    res = await pipeline.search(SearchRequest(q="flow over a flat plate", k=10))
    model = pipeline.model
    assert model is not None and res.model_version == model.version
    fz = await pipeline.featurize("flow over a flat plate", now=res.impression.ts)  # type: ignore[union-attr]
    scores = model.predict(fz.X, fusion_score(fz.cs, "rrf", {}))
    order = np.lexsort((np.arange(len(scores)), -scores))[:10]
    assert [h["id"] for h in res.hits] == [fz.cs.ids[i] for i in order]
    assert res.impression is not None
    assert res.impression.positions == tuple(range(1, 11))
    np.testing.assert_array_equal(res.impression.features, fz.X[order])


async def test_featurize_is_search_featurize(pipeline: Pipeline) -> None:
    """The pipeline's featurize IS search.featurize over the same generator (no fork)."""
    ours = await pipeline.featurize("heat transfer in laminar flow")
    theirs = await featurize(
        pipeline._index.generator, "heat transfer in laminar flow", pipeline.feature_names
    )
    assert ours.cs.ids == theirs.cs.ids
    beh = [i for i, n in enumerate(ours.feature_names) if n.startswith(("qd_", "d_"))]
    text = [i for i in range(len(ours.feature_names)) if i not in beh]
    np.testing.assert_array_equal(ours.X[:, text], theirs.X[:, text])
    # no aggregates attached here: behavior features are missing (NaN), never 0
    assert np.isnan(ours.X[:, beh]).all()


async def test_without_a_model_ranks_by_rrf(encoder: Any, small_index: Path) -> None:
    backend = LocalBackend.open(small_index, encoder)
    p = Pipeline(backend, encoder, DEFAULT_FEATURES, backend.version)
    try:
        res = await p.search(SearchRequest(q="boundary layer suction", k=8))
        fz = await p.featurize("boundary layer suction")
        rrf = fusion_score(fz.cs, "rrf", {})
        order = np.lexsort((np.arange(len(rrf)), -rrf))[:8]
        assert [h["id"] for h in res.hits] == [fz.cs.ids[i] for i in order]
        assert res.model_version is None and res.degraded == []
    finally:
        await p.close()


async def test_model_timeout_degrades_to_fusion(
    encoder: Any, small_index: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalBackend.open(small_index, encoder)
    model = ModelRegistry(model_dir).load()
    # in a thread (model_inline off) no model answers this fast
    cfg = PipelineConfig(model_timeout_ms=1e-6, model_inline=False)
    p = Pipeline(backend, encoder, DEFAULT_FEATURES, backend.version, model=model, config=cfg)
    try:
        res = await p.search(SearchRequest(q="supersonic inlet", k=5))
        assert res.degraded == ["model"] and res.model_version is None and len(res.hits) == 5
        fz = await p.featurize("supersonic inlet")
        rrf = fusion_score(fz.cs, "rrf", {})
        assert [h["id"] for h in res.hits] == [fz.cs.ids[i] for i in np.argsort(-rrf)[:5]]
        # the default predicts on the loop, where the timeout cannot interrupt it (the
        # documented trade, search.config): the same timeout leaves the model ranking
        inline = Pipeline(
            backend, encoder, DEFAULT_FEATURES, backend.version, model=model,
            config=PipelineConfig(model_timeout_ms=1e-6),
        )  # fmt: skip
        res = await inline.search(SearchRequest(q="supersonic inlet", k=5))
        assert res.degraded == [] and res.model_version == model.version
        # ... up to INLINE_TREE_WALKS rows x trees; a bigger prediction goes to a thread,
        # where the timeout applies again
        monkeypatch.setattr(pipeline_module, "INLINE_TREE_WALKS", model.trees - 1)
        res = await inline.search(SearchRequest(q="supersonic inlet", k=5))
        assert res.degraded == ["model"] and res.model_version is None
    finally:
        await p.close()


async def test_timings_and_query_vector_cache(pipeline: Pipeline) -> None:
    first = await pipeline.search(SearchRequest(q="an unusual query about rotor blades"))
    assert {"embed", "bm25", "knn", "candidates", "features", "model", "total"} <= set(
        first.timings_ms
    )
    again = await pipeline.search(SearchRequest(q="an unusual query about rotor blades"))
    assert "embed" not in again.timings_ms  # served from the query-vector LRU
    assert again.timings_ms["total"] >= again.timings_ms["candidates"]


async def test_refuses_a_model_for_other_features(pipeline: Pipeline) -> None:
    model = pipeline.model
    assert model is not None
    bad_manifest = dataclasses.replace(model.manifest, featureset_id="0" * 64)
    bad = RankModel(model._booster, bad_manifest)
    with pytest.raises(FeaturesetMismatchError, match="feature definition changed"):
        pipeline.set_model(bad)
    assert pipeline.model is model  # the old model keeps serving
    pinned = Pipeline(
        pipeline.backend,
        pipeline.encoder,
        DEFAULT_FEATURES,
        pipeline.index_version,
        expected_featureset_id="f" * 64,
    )
    with pytest.raises(FeaturesetMismatchError, match="configured for"):
        pinned.set_model(model)


async def test_validation(pipeline: Pipeline) -> None:
    for q in ("", "  \n"):
        with pytest.raises(InvalidQueryError):
            pipeline.validate(SearchRequest(q=q), 100)
    with pytest.raises(InvalidQueryError, match="longer than 5"):
        pipeline.validate(SearchRequest(q="abcdefgh"), 5)
    with pytest.raises(InvalidParameterError, match="k: must be between 1 and 100"):
        pipeline.validate(SearchRequest(q="a", k=0), 100)
    with pytest.raises(InvalidParameterError, match="offset"):
        pipeline.validate(SearchRequest(q="a", offset=-2), 100)


async def test_behavior_aggregates_reach_the_features(
    encoder: Any, small_index: Path, tmp_path: Path
) -> None:
    store = SqliteEventStore(tmp_path / "e.db")
    agg = BehaviorAggregates.attach(store)
    backend = LocalBackend.open(small_index, encoder)
    p = Pipeline(backend, encoder, DEFAULT_FEATURES, backend.version, aggregates=agg)
    try:
        res, doc = await serve_and_click(p, store, "Wing Flutter")
        fz = await p.featurize("wing   flutter")  # same normalized query key
        names = list(fz.feature_names)
        i = fz.cs.ids.index(doc)
        assert fz.X[i, names.index("qd_log_clicks")] == pytest.approx(np.log1p(1.0))
        assert fz.X[i, names.index("qd_log_impressions")] == pytest.approx(np.log1p(1.0))
        other = next(j for j, d in enumerate(fz.cs.ids) if d not in {h["id"] for h in res.hits})
        assert np.isnan(fz.X[other, names.index("qd_log_clicks")])  # no history: NaN
    finally:
        await p.close()
        store.close()


async def test_swap_backend_closes_the_old_index_after_its_requests(
    encoder: Any, small_index: Path
) -> None:
    old = LocalBackend.open(small_index, encoder)
    p = Pipeline(old, encoder, DEFAULT_FEATURES, old.version)
    new = LocalBackend.open(small_index, encoder)
    await p.swap_backend(new, "v-new")
    assert p.index_version == "v-new"
    with pytest.raises(Exception, match="closed"):
        await old.info()  # no request was in flight: closed at once
    res = await p.search(SearchRequest(q="wing"))
    assert res.hits
    await p.close()


async def test_rerank_depth_reorders_only_the_fusion_top(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    backend = LocalBackend.open(small_index, encoder)
    model = ModelRegistry(model_dir).load()
    cfg = PipelineConfig(rerank_depth=5)
    p = Pipeline(backend, encoder, DEFAULT_FEATURES, backend.version, model=model, config=cfg)
    try:
        res = await p.search(SearchRequest(q="compressible flow around cones", k=8))
        fz = await p.featurize("compressible flow around cones")
        rrf = fusion_score(fz.cs, "rrf", {})
        by_rrf = [fz.cs.ids[i] for i in np.lexsort((np.arange(len(rrf)), -rrf))]
        ids = [h["id"] for h in res.hits]
        assert set(ids[:5]) == set(by_rrf[:5])  # the model only reorders the RRF top-5
        assert ids[5:] == by_rrf[5:8]  # then fusion order
        top = [h["score"] for h in res.hits[:5]]
        assert top == sorted(top, reverse=True)
    finally:
        await p.close()


async def test_one_rrf_per_request(
    encoder: Any, small_index: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rrf features, the feedback vocabulary, the base margin and the rerank-depth order
    of one request share one RRF computation."""
    from ltr import fusion

    computed: list[int] = []
    real = fusion._rrf

    def counting(cs: Any, k: float) -> np.ndarray:
        computed.append(len(cs))
        return real(cs, k)

    monkeypatch.setattr(fusion, "_rrf", counting)
    backend = LocalBackend.open(small_index, encoder)
    model = ModelRegistry(model_dir).load()
    assert model.manifest.base_margin is not None
    assert model.manifest.base_margin["name"] == "rrf"
    assert {"rrf", "rrf_norm", "prf_title"} <= set(model.feature_names)
    cfg = PipelineConfig(rerank_depth=5)
    p = Pipeline(backend, encoder, DEFAULT_FEATURES, backend.version, model=model, config=cfg)
    try:
        res = await p.search(SearchRequest(q="compressible flow around cones", k=8))
        assert res.hits and res.model_version == model.version and res.candidates > 5
        assert computed == [res.candidates]
    finally:
        await p.close()
