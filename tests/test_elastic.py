"""Elasticsearch backend tests.

Three layers, from most to least available:
1. Every request body and the mapping, checked without a server against the pinned
   client's typed API: method signatures of AsyncElasticsearch (unknown keyword -> error),
   elasticsearch.dsl query / field classes (unknown query type or parameter -> error).
2. Index management (versioned build, alias swap in one call, rollback, retention,
   validation failures, bulk retries / failed ids, error mapping) and the backend's
   response parsing, through the REAL AsyncElasticsearch client against tests/es_standin.py
   (an aiohttp server on 127.0.0.1; NOT Elasticsearch: its own analyzer and exact BM25).
   The shared BackendContract also runs against the stand-in, which checks our parsing
   and bookkeeping, not Elasticsearch's scoring.
3. The BackendContract against a live server: marker ``elasticsearch``, skipped unless
   ELASTICSEARCH_URL is set (docker compose -f docker-compose.elasticsearch.yml up -d).
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from indexing import elastic_requests as rq
from indexing.backend import Filters
from indexing.config import ElasticsearchConfig, IndexConfig
from indexing.documents import Document
from indexing.elastic import (
    ElasticBackend,
    build_elastic_index,
    current_elastic_index,
    list_elastic_versions,
    make_client,
    rollback_elastic,
    terms_in_order,
)
from indexing.embedding_cache import EmbeddingCache
from indexing.errors import (
    BackendError,
    BackendTimeoutError,
    IndexingError,
    IndexNotFoundError,
    ValidationError,
)
from tests.contract import CONTRACT_DOCS, DF, FILTERS, BackendContract, N, lucene_idf
from tests.es_standin import Standin

DIM = 384
aio = pytest.mark.asyncio(loop_scope="session")


# --- layer 1: request bodies against the client's typed API ------------------------------
def _params(fn: Any) -> set[str]:
    return {
        n
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in ("self", "args")
    }


def check_query(q: dict[str, Any]) -> None:
    """Every query type and parameter must be known to elasticsearch.dsl's typed classes."""
    from elasticsearch.dsl import Q, types, wrappers
    from elasticsearch.dsl.query import Query

    assert len(q) == 1, q
    ((kind, spec),) = q.items()
    cls = Query.get_dsl_class(kind)  # raises for an unknown query type
    field_level: dict[str, Any] = {"match": types.MatchQuery, "term": types.TermQuery}
    if kind in field_level:
        ((_path, params),) = spec.items()
        if isinstance(params, dict):
            assert set(params) <= _params(field_level[kind].__init__), params
    elif kind == "range":
        ((_path, params),) = spec.items()
        assert params and set(params) <= set(wrappers.Range.OPS), params
    else:
        assert set(spec) <= _params(cls.__init__), (kind, spec)
    for key in ("must", "should", "filter", "must_not"):
        for sub in spec.get(key, []) if kind == "bool" else []:
            check_query(sub)
    if kind == "script_score":
        check_query(spec["query"])
        assert set(spec["script"]) <= _params(types.Script.__init__)
    assert Q(q).to_dict() == q  # dsl parses and re-serializes it unchanged


def check_call(method: Any, kwargs: dict[str, Any]) -> None:
    """The kwargs bind to the typed client method (an unknown body key is a TypeError)."""
    inspect.signature(method).bind(**kwargs)


@pytest.fixture(scope="module")
def typed_client() -> Any:
    from elasticsearch import AsyncElasticsearch

    return AsyncElasticsearch("http://127.0.0.1:9")  # never contacted


ES = ElasticsearchConfig()
VEC = np.full(DIM, 1 / np.sqrt(DIM), dtype=np.float32)


@pytest.mark.parametrize("filters", [None, *FILTERS, Filters(ranges={"price": (None, None)})])
@pytest.mark.parametrize("path", ["all_text", "title", "extra.brand"])
def test_bm25_request_is_typed(typed_client: Any, path: str, filters: Filters | None) -> None:
    req = rq.bm25_request("a", "laptop battery", 10, path, filters)
    check_call(typed_client.search, req)
    check_query(req["query"])
    must = req["query"]["bool"]["must"]
    assert must == [{"match": {path: {"query": "laptop battery"}}}]  # never query_string


@pytest.mark.parametrize("filters", [None, *FILTERS])
@pytest.mark.parametrize("vtype", ["int8_hnsw", "hnsw", "bbq_hnsw"])
def test_knn_request_is_typed(typed_client: Any, filters: Filters | None, vtype: str) -> None:
    from elasticsearch.dsl.query import Knn

    cfg = ElasticsearchConfig(vector_index_type=vtype)  # type: ignore[arg-type]
    req = rq.knn_request("a", VEC, 25, cfg, filters)
    check_call(typed_client.search, req)
    knn = req["knn"]
    assert set(knn) <= _params(Knn.__init__)
    for f in knn.get("filter", []):
        check_query(f)
    assert knn["num_candidates"] == cfg.num_candidates and knn["k"] == 25
    assert ("rescore_vector" in knn) == (vtype != "hnsw")
    big = rq.knn_request("a", VEC, 9000, ElasticsearchConfig(num_candidates=10_000), None)
    assert big["knn"]["num_candidates"] == 10_000  # never above the server's ceiling


def test_field_scores_request_names_every_field(typed_client: Any) -> None:
    req = rq.field_scores_request("a", "fast phone", ["d1", "d2"], ["title", "body", "brand"])
    check_call(typed_client.search, req)
    check_query(req["query"])
    assert req["include_named_queries_score"] is True
    names = [next(iter(c["match"].values()))["_name"] for c in req["query"]["bool"]["should"]]
    paths = [next(iter(c["match"])) for c in req["query"]["bool"]["should"]]
    assert names == ["title", "body", "brand"]
    assert paths == ["title", "body", "extra.brand"]
    assert req["query"]["bool"]["filter"] == [{"ids": {"values": ["d1", "d2"]}}]


def test_cosine_and_lookup_requests_are_typed(typed_client: Any) -> None:
    req = rq.cosine_request("a", VEC, ["d1"])
    check_call(typed_client.search, req)
    check_query(req["query"])
    check_call(typed_client.mget, rq.mget_request("a", ["d1"]))
    check_call(typed_client.mget, rq.mget_request("a", ["d1"], attrs_only=True))
    check_call(typed_client.mtermvectors, rq.mtermvectors_request("a", ["d1"], ["title", "x"]))
    check_call(typed_client.termvectors, rq.idf_request("a", ["laptop", "hike"]))
    check_call(typed_client.indices.analyze, rq.analyze_request("a", "Running dogs"))
    check_call(typed_client.count, {"index": "a"})


def _check_property(name: str, prop: dict[str, Any]) -> None:
    from elasticsearch.dsl import types
    from elasticsearch.dsl.field import Field

    cls = Field.get_dsl_class(prop.get("type", "object"))
    allowed = _params(cls.__init__) | {"type"}
    assert set(prop) <= allowed, (name, set(prop) - allowed)
    for sub, sp in (prop.get("properties") or {}).items():
        _check_property(f"{name}.{sub}", sp)
    for sub, sp in (prop.get("fields") or {}).items():
        _check_property(f"{name}.{sub}", sp)
    if prop.get("type") == "dense_vector":
        opts = prop["index_options"]
        assert set(opts) <= _params(types.DenseVectorIndexOptions.__init__)


@pytest.mark.parametrize("vtype", ["int8_hnsw", "hnsw", "bbq_hnsw", "flat", "int8_flat"])
@pytest.mark.parametrize("analyzer", ["english", "local"])
def test_index_definition_is_typed(typed_client: Any, vtype: str, analyzer: str) -> None:
    es = ElasticsearchConfig(vector_index_type=vtype, analyzer=analyzer)  # type: ignore[arg-type]
    m = rq.mappings(es, ("title", "body", "brand"), ("price",), DIM, {"dim": DIM})
    # the mapping's top-level keys are put_mapping's typed body fields (_meta is "meta")
    top = {"meta" if k == "_meta" else k for k in m}
    assert top <= _params(typed_client.indices.put_mapping)
    for name, prop in m["properties"].items():
        _check_property(name, prop)
    props = m["properties"]
    for f in ("title", "body"):
        assert props[f]["copy_to"] == rq.COMBINED_FIELD
        assert props[f]["fields"]["raw"]["type"] == "keyword"
        assert props[f]["analyzer"] == props[rq.COMBINED_FIELD]["analyzer"]
    assert props["extra"]["properties"]["brand"]["copy_to"] == rq.COMBINED_FIELD
    vec = props[rq.VECTOR_FIELD]
    assert vec["dims"] == DIM and vec["similarity"] == "cosine"
    assert vec["index_options"]["type"] == vtype
    assert ("m" in vec["index_options"]) == vtype.endswith("hnsw")
    settings = rq.index_settings(es, IndexConfig(k1=1.5, b=0.6))
    check_call(typed_client.indices.create, {"index": "a", "mappings": m, "settings": settings})
    assert settings["similarity"]["default"] == {"type": "BM25", "k1": 1.5, "b": 0.6}
    assert settings["refresh_interval"] == "-1" and settings["number_of_replicas"] == 0
    check_call(
        typed_client.indices.put_settings, {"index": "a", "settings": rq.serving_settings(es)}
    )


def test_local_analyzer_matches_dsl_definition() -> None:
    """The "local" analysis settings equal what elasticsearch.dsl builds for that analyzer."""
    from bm25s.stopwords import STOPWORDS_EN
    from elasticsearch.dsl import analyzer, token_filter, tokenizer

    es = ElasticsearchConfig(analyzer="local")
    got = rq.analysis_settings(es, IndexConfig())
    want = analyzer(
        rq.ANALYZER_LOCAL,
        tokenizer=tokenizer(
            "ltrsearch_words",
            "pattern",
            pattern=r"\w\w+",
            group=0,
            flags="UNICODE_CHARACTER_CLASS",
        ),
        filter=[
            "lowercase",
            token_filter("ltrsearch_stop", "stop", stopwords=sorted(STOPWORDS_EN)),
            token_filter("ltrsearch_stem", "stemmer", language="porter2"),
        ],
    ).get_analysis_definition()
    assert got == want
    assert rq.analysis_settings(ElasticsearchConfig(), IndexConfig()) == {}  # built-in english
    plain = rq.analysis_settings(es, IndexConfig(stopwords="", stemmer=""))
    assert plain["analyzer"][rq.ANALYZER_LOCAL]["filter"] == ["lowercase"]


def test_swap_actions_are_one_atomic_call(typed_client: Any) -> None:
    acts = rq.swap_actions("shop", "shop-v0002-20260101000000", ["shop-v0001-20260101000000"])
    assert acts == [
        {"remove": {"index": "shop-v0001-20260101000000", "alias": "shop", "must_exist": True}},
        {"add": {"index": "shop-v0002-20260101000000", "alias": "shop"}},
    ]
    check_call(typed_client.indices.update_aliases, {"actions": acts})
    assert rq.swap_actions("shop", "new", []) == [{"add": {"index": "new", "alias": "shop"}}]


def test_index_names_and_filters() -> None:
    name = rq.index_name("shop", 12)
    assert rq.parse_index_name("shop", name) == 12
    assert rq.parse_index_name("shop", "shop") is None
    assert rq.parse_index_name("shop", "shopping-v0001-20260101000000") is None
    assert rq.parse_index_name("sh.p", "shop-v0001-20260101000000") is None  # alias escaped
    assert rq.filter_clauses(None) == [] and rq.filter_clauses(Filters()) == []
    f = Filters(category="c", ranges={"price": (1.0, None), "rating": (None, None)})
    assert rq.filter_clauses(f) == [
        {"term": {"category": "c"}},
        {"range": {"attrs.price": {"gte": 1.0}}},
        {"exists": {"field": "attrs.rating"}},
    ]


def test_terms_in_order_from_positions() -> None:
    tv = {
        "laptop": {"term_freq": 2, "tokens": [{"position": 1}, {"position": 5}]},
        "thin": {"term_freq": 1, "tokens": [{"position": 0}]},
        "screen": {"term_freq": 1, "tokens": [{"position": 3}]},
    }
    assert terms_in_order(tv) == ("thin", "laptop", "screen", "laptop")
    assert terms_in_order({}) == ()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shards": 0},
        {"num_candidates": 20_000},
        {"keep_indices": 0},
        {"knn_oversample": 0.5},
        {"alias": "Upper"},
        {"alias": "a*b"},
        {"bulk_initial_backoff_s": 100.0},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ElasticsearchConfig(**kwargs).validate()


# --- layer 2: management and parsing against the in-process stand-in ---------------------
@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def standin() -> AsyncIterator[Standin]:
    s = Standin()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def fresh(standin: Standin) -> Standin:
    standin.reset()
    return standin


def cfg_for(standin: Standin, **kw: Any) -> ElasticsearchConfig:
    base: dict[str, Any] = {
        "url": standin.url,
        "alias": "shop",
        "bulk_chunk": 7,
        "bulk_initial_backoff_s": 0.01,
        "bulk_max_backoff_s": 0.02,
        "max_retries": 0,
    }
    return ElasticsearchConfig(**(base | kw))


async def build(
    standin: Standin, encoder: Any, cache: EmbeddingCache, docs: Any = None, **kw: Any
) -> str:
    return await build_elastic_index(
        docs or CONTRACT_DOCS, encoder, cfg_for(standin, **kw), cache=cache
    )


async def alias_target(standin: Standin) -> str | None:
    client = make_client(cfg_for(standin))
    try:
        return await current_elastic_index(client, "shop")
    finally:
        await client.close()


@aio
async def test_build_publishes_behind_alias(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    name = await build(fresh, encoder, embedding_cache)
    assert rq.parse_index_name("shop", name) == 1
    assert fresh.aliases == {"shop": {name}}
    idx = fresh.indices[name]
    assert len(idx.docs) == len(CONTRACT_DOCS)
    assert idx.settings["refresh_interval"] == "1s"  # restored after the load
    assert idx.mappings["_meta"]["text_fields"] == ["title", "body", "brand"]
    # bulk went out in chunks of bulk_chunk documents
    bulks = [r for r in fresh.requests if r[1] == "/_bulk"]
    assert len(bulks) == -(-len(CONTRACT_DOCS) // 7)
    # the stored source rebuilds the Document exactly
    src = dict(idx.docs["d01"])
    assert len(src.pop(rq.VECTOR_FIELD)) == encoder.dim
    assert Document.from_json(src) == CONTRACT_DOCS[0]


@aio
async def test_swap_is_one_aliases_call_and_retention(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    names = [await build(fresh, encoder, embedding_cache, keep_indices=2) for _ in range(3)]
    assert [rq.parse_index_name("shop", n) for n in names] == [1, 2, 3]
    swaps = [r for r in fresh.requests if r[1] == "/_aliases"]
    assert len(swaps) == 3
    assert swaps[0][3]["actions"] == [{"add": {"index": names[0], "alias": "shop"}}]
    assert swaps[2][3]["actions"] == [
        {"remove": {"index": names[1], "alias": "shop", "must_exist": True}},
        {"add": {"index": names[2], "alias": "shop"}},
    ]
    assert set(fresh.indices) == set(names[1:])  # v1 pruned past keep_indices=2
    assert fresh.aliases == {"shop": {names[2]}}


@aio
async def test_rollback(fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache) -> None:
    v1 = await build(fresh, encoder, embedding_cache)
    v2 = await build(fresh, encoder, embedding_cache)
    client = make_client(cfg_for(fresh))
    try:
        assert await list_elastic_versions(client, "shop") == [v1, v2]
        assert await rollback_elastic(client, "shop") == v1
        assert await current_elastic_index(client, "shop") == v1
        with pytest.raises(IndexNotFoundError, match="no version older"):
            await rollback_elastic(client, "shop")
        assert await rollback_elastic(client, "shop", v2) == v2
        with pytest.raises(IndexNotFoundError, match="available"):
            await rollback_elastic(client, "shop", "shop-v0009-20200101000000")
    finally:
        await client.close()
    # a backend opened before the rollback follows the alias on reload()
    b = await ElasticBackend.open(cfg_for(fresh))
    try:
        assert b.version == v2
        client = make_client(cfg_for(fresh))
        await rollback_elastic(client, "shop")
        await client.close()
        assert await b.reload() is True and b.version == v1
        assert (await b.info()).version == v1
    finally:
        await b.close()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"drop_ids": {"d04"}}, "holds 29 documents"),
        ({"knn_reverse": True}, "kNN smoke query failed"),
    ],
)
@aio
async def test_validation_failure_keeps_alias(
    fresh: Standin,
    encoder: Any,
    embedding_cache: EmbeddingCache,
    fault: dict[str, Any],
    message: str,
) -> None:
    v1 = await build(fresh, encoder, embedding_cache)
    fresh.faults.update(fault)
    with pytest.raises(ValidationError, match=message):
        await build(fresh, encoder, embedding_cache)
    assert fresh.aliases == {"shop": {v1}}
    assert set(fresh.indices) == {v1}  # the failed version was deleted


@aio
async def test_bm25_smoke_failure(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    fresh.faults["match_empty"] = True
    with pytest.raises(ValidationError, match="BM25 smoke query failed"):
        await build(fresh, encoder, embedding_cache)
    assert fresh.indices == {} and fresh.aliases == {}
    # titles of only stopwords are skipped by the smoke query, not a failure
    fresh.faults.clear()
    docs = [Document(id="x1", title="the of and", body="alpha"), *CONTRACT_DOCS[:3]]
    name = await build(fresh, encoder, embedding_cache, docs=docs)
    assert len(fresh.indices[name].docs) == 4


@aio
async def test_bulk_retries_429(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    fresh.faults["bulk_429"] = {"d03": 2, "d17": 1}
    name = await build(fresh, encoder, embedding_cache)
    assert len(fresh.indices[name].docs) == len(CONTRACT_DOCS)
    resent = [r for r in fresh.requests if r[1] == "/_bulk" and len(r[3]) <= 4]
    assert resent  # the retries carried only the rejected documents


@aio
async def test_bulk_failures_listed(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    v1 = await build(fresh, encoder, embedding_cache)
    fresh.faults["bulk_400"] = {"d05", "d22"}
    fresh.faults["bulk_429"] = {"d09": 99}  # still rejected after bulk_max_retries
    with pytest.raises(IndexingError, match="3 of 30 documents failed") as exc:
        await build(fresh, encoder, embedding_cache, bulk_max_retries=2)
    for doc_id in ("d05", "d22", "d09"):
        assert doc_id in str(exc.value)
    assert "document_parsing_exception" in str(exc.value) and "429" in str(exc.value)
    assert fresh.aliases == {"shop": {v1}} and set(fresh.indices) == {v1}


@aio
async def test_alias_swap_failure_deletes_new_index(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    v1 = await build(fresh, encoder, embedding_cache)
    fresh.faults["aliases_500"] = True
    with pytest.raises(BackendError, match="HTTP 500"):
        await build(fresh, encoder, embedding_cache)
    assert fresh.aliases == {"shop": {v1}} and set(fresh.indices) == {v1}


@aio
async def test_alias_name_taken_by_an_index(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    from tests.es_standin import Index

    fresh.indices["shop"] = Index("shop", {}, {})
    with pytest.raises(IndexingError, match="concrete index"):
        await build(fresh, encoder, embedding_cache)
    assert set(fresh.indices) == {"shop"}


@aio
async def test_bad_documents_refused_before_any_request(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    with pytest.raises(ValidationError, match="duplicate"):
        await build(fresh, encoder, embedding_cache, docs=[CONTRACT_DOCS[0], CONTRACT_DOCS[0]])
    bad = Document(id="z", title="t", attrs={"price.usd": 1.0})
    with pytest.raises(ValidationError, match=r"price\.usd"):
        await build(fresh, encoder, embedding_cache, docs=[bad])
    assert fresh.requests == []


@aio
async def test_errors_map_to_backend_errors(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        await ElasticBackend.open(cfg_for(fresh))
    with pytest.raises(IndexingError, match="num_candidates"):
        await ElasticBackend.open(cfg_for(fresh, num_candidates=0))
    await build(fresh, encoder, embedding_cache)
    b = await ElasticBackend.open(cfg_for(fresh, request_timeout_s=0.3), encoder)
    try:
        fresh.faults["delay_s"] = 1.0
        with pytest.raises(BackendTimeoutError):
            await b.bm25("laptop", 3)
        fresh.faults.clear()
        fresh.indices.clear()
        fresh.aliases.clear()
        with pytest.raises(IndexNotFoundError):
            await b.bm25("laptop", 3)
    finally:
        await b.close()
    with pytest.raises(BackendError, match="closed"):
        await b.bm25("laptop", 3)
    refused = ElasticsearchConfig(url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(BackendError, match="cannot connect"):
        await ElasticBackend.open(refused)


@aio
async def test_encoder_dim_mismatch(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    await build(fresh, encoder, embedding_cache)

    class Small:
        model_id, dim = "small", 8

    with pytest.raises(IndexingError, match="dim 8"):
        await ElasticBackend.open(cfg_for(fresh), Small())  # type: ignore[arg-type]


@aio
async def test_static_attrs_and_candidates(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    """The search pipeline's CandidateGenerator runs unchanged over ElasticBackend."""
    from search.candidates import CandidateGenerator

    await build(fresh, encoder, embedding_cache)
    b = await ElasticBackend.open(cfg_for(fresh), encoder)
    try:
        got = await b.static_attrs(["d28", "d30", "unknown", "d01"])
        np.testing.assert_array_equal(np.isnan(got["price"]), [True, True, True, False])
        assert got["rating"][0] == 4.4
        ms = {s: 60_000.0 for s in ("embed", "bm25", "knn", "lookup")}
        gen = CandidateGenerator(b, encoder, bm25_k=5, knn_k=5, timeouts=ms)
        cs, degraded = await gen.generate("waterproof hiking boots")
        assert degraded == [] and "d24" in cs.ids
        assert set(cs.field_bm25) == {"title", "body", "brand"}
        assert np.all(np.isfinite(cs.dense_cosine))
        # Lucene IDF of the query's terms; "boot" is in d24 alone
        df = {"waterproof": DF["waterproof"], "hike": DF["hike"], "boot": 1}
        assert cs.idf == pytest.approx({t: lucene_idf(n, N) for t, n in df.items()}, rel=1e-6)
        # no candidate cache over an alias, which a reindex moves under the same backend
        from search.config import RetrievalConfig
        from search.pipeline import default_generator_factory

        made = default_generator_factory(RetrievalConfig(candidate_cache_size=8))(b, encoder)
        assert isinstance(made, CandidateGenerator)
    finally:
        await b.close()


class TestStandinBackendContract(BackendContract):
    """The shared contract through the real client against the stand-in: checks our
    requests, response parsing and id bookkeeping (not Elasticsearch's own scoring)."""

    @pytest_asyncio.fixture(loop_scope="session")
    async def backend(
        self, standin: Standin, encoder: Any, embedding_cache: EmbeddingCache
    ) -> AsyncIterator[ElasticBackend]:
        cfg = cfg_for(standin, alias="contract")
        if not await _has_alias(cfg):
            await build_elastic_index(CONTRACT_DOCS, encoder, cfg, cache=embedding_cache)
        b = await ElasticBackend.open(cfg, encoder)
        yield b
        await b.close()


async def _has_alias(cfg: ElasticsearchConfig) -> bool:
    client = make_client(cfg)
    try:
        return await current_elastic_index(client, cfg.alias) is not None
    finally:
        await client.close()


# --- layer 3: a live Elasticsearch (ELASTICSEARCH_URL) -------------------------------------
LIVE_URL = os.environ.get("ELASTICSEARCH_URL")


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def live_cfg(encoder: Any, embedding_cache: EmbeddingCache) -> AsyncIterator[Any]:
    """CONTRACT_DOCS indexed once into a throwaway alias on the live server; deleted after."""
    if not LIVE_URL:
        pytest.skip("ELASTICSEARCH_URL is not set")
    cfg = ElasticsearchConfig(
        url=LIVE_URL,
        alias=f"ltrsearch-test-{uuid.uuid4().hex[:8]}",
        api_key_env="ELASTICSEARCH_API_KEY" if os.environ.get("ELASTICSEARCH_API_KEY") else "",
        vector_index_type=os.environ.get("ELASTICSEARCH_VECTOR_TYPE", "int8_hnsw"),  # type: ignore[arg-type]
    )
    await build_elastic_index(CONTRACT_DOCS, encoder, cfg, cache=embedding_cache)
    yield cfg
    client = make_client(cfg)
    try:
        for name in await list_elastic_versions(client, cfg.alias):
            await client.indices.delete(index=name)
    finally:
        await client.close()


@pytest.mark.elasticsearch
class TestElasticBackendContract(BackendContract):
    @pytest_asyncio.fixture(loop_scope="session")
    async def backend(self, live_cfg: ElasticsearchConfig, encoder: Any) -> AsyncIterator[Any]:
        b = await ElasticBackend.open(live_cfg, encoder)
        yield b
        await b.close()


@aio
async def test_reindex_cli_elasticsearch(fresh: Standin, tmp_path: Any) -> None:
    """ltrsearch-reindex --backend elasticsearch --es-url URL --alias A (real client)."""
    import asyncio
    import json

    from scripts.reindex import main

    src = tmp_path / "catalog.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": d.id, "title": d.title, "body": d.body, "category": d.category})
            + "\n"
            for d in CONTRACT_DOCS
        ),
        encoding="utf-8",
    )
    argv = ["--source", str(src), "--backend", "elasticsearch", "--es-url", fresh.url]
    argv += ["--alias", "cli", "--quiet", "--no-cache"]
    # main() runs its own event loop: give it a thread so the stand-in keeps serving here
    assert await asyncio.to_thread(main, argv) == 0
    (name,) = fresh.aliases["cli"]
    assert rq.parse_index_name("cli", name) == 1 and len(fresh.indices[name].docs) == 30
    bad = ["--source", str(src), "--backend", "elasticsearch", "--alias", "Bad*Alias"]
    assert await asyncio.to_thread(main, bad) == 2  # settings error: exit code 2
    fresh.faults["aliases_500"] = True
    assert await asyncio.to_thread(main, argv) == 1  # failed build: exit 1, alias unchanged
    assert fresh.aliases["cli"] == {name}


@aio
async def test_credentials_from_environment(
    fresh: Standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API key / basic auth come from the named environment variables, never settings."""
    import base64

    monkeypatch.setenv("LTR_TEST_ES_KEY", "a2V5aWQ6c2VjcmV0")
    client = make_client(cfg_for(fresh, api_key_env="LTR_TEST_ES_KEY"))
    await current_elastic_index(client, "shop")
    await client.close()
    monkeypatch.setenv("LTR_TEST_ES_PW", "pw")
    client = make_client(cfg_for(fresh, username="ltr", password_env="LTR_TEST_ES_PW"))
    await current_elastic_index(client, "shop")
    await client.close()
    basic = "Basic " + base64.b64encode(b"ltr:pw").decode()
    assert fresh.auth == ["ApiKey a2V5aWQ6c2VjcmV0", basic]
    with pytest.raises(IndexingError, match="LTR_TEST_UNSET"):
        make_client(cfg_for(fresh, api_key_env="LTR_TEST_UNSET"))
    with pytest.raises(ValueError, match="password_env"):
        ElasticsearchConfig(username="ltr").validate()


@aio
async def test_unreachable_server_fails_before_embedding(encoder: Any) -> None:
    class Counting:
        model_id, dim, calls = encoder.model_id, encoder.dim, 0

        def encode(self, texts: Any, *, progress: bool = False) -> np.ndarray:
            Counting.calls += 1
            return np.asarray(encoder.encode(texts))

    refused = ElasticsearchConfig(url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(BackendError, match="cannot connect"):
        await build_elastic_index(CONTRACT_DOCS[:3], Counting(), refused)  # type: ignore[arg-type]
    assert Counting.calls == 0


@aio
async def test_wire_bodies_are_typed(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    """What the real client actually sent (recorded by the stand-in) passes the same checks."""
    from elasticsearch.dsl.query import Knn

    await build(fresh, encoder, embedding_cache)
    b = await ElasticBackend.open(cfg_for(fresh), encoder)
    try:
        v = encoder.encode(["waterproof boots"])[0]
        f = Filters(category="outdoor", ranges={"price": (10.0, None)})
        await b.bm25("waterproof boots", 5, None, f)
        await b.bm25("acme", 5, "brand")
        await b.knn(v, 5, f)
        await b.field_scores("waterproof boots", ["d24", "d22"])
        await b.cosine(v, ["d24"])
    finally:
        await b.close()
    searches = [r[3] for r in fresh.requests if r[1].endswith("/_search")]
    assert len(searches) >= 5
    for sent in searches:
        assert set(sent) <= {"query", "knn", "size", "_source", "track_total_hits"}
        if "query" in sent:
            check_query(sent["query"])
        if "knn" in sent:
            assert set(sent["knn"]) <= _params(Knn.__init__)
            for clause in sent["knn"].get("filter", []):
                check_query(clause)
    named = [r[2] for r in fresh.requests if r[2].get("include_named_queries_score")]
    assert named == [{"include_named_queries_score": "true"}]  # a URL parameter, as specified
    creates = [r for r in fresh.requests if r[0] == "PUT" and r[1].count("/") == 1]
    (create,) = [r[3] for r in creates if r[1].startswith("/shop-v")]
    for name, prop in create["mappings"]["properties"].items():
        _check_property(name, prop)


@aio
async def test_swap_applied_but_answer_lost(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    """An _aliases error after the server applied the swap must not delete the serving index."""
    v1 = await build(fresh, encoder, embedding_cache)
    fresh.faults["aliases_applied_then_500"] = True
    v2 = await build(fresh, encoder, embedding_cache)
    assert fresh.aliases == {"shop": {v2}}
    assert set(fresh.indices) == {v1, v2}


@aio
async def test_serve_over_elasticsearch(
    fresh: Standin, encoder: Any, embedding_cache: EmbeddingCache
) -> None:
    """ltrsearch-serve --backend elasticsearch: the API answers /search from the ES backend."""
    import argparse
    import dataclasses

    from aiohttp.test_utils import TestClient, TestServer

    from scripts.serve import build_app
    from scripts.settings import load_settings

    await build(fresh, encoder, embedding_cache)
    settings = load_settings(env={})
    api = dataclasses.replace(settings.api, require_model=False)
    args = argparse.Namespace(
        backend="elasticsearch", es_url=fresh.url, alias="shop", index_dir=None,
        model_dir=None, events=None,
    )  # fmt: skip
    app = await build_app(args, settings, api, encoder)
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/search", params={"q": CONTRACT_DOCS[0].title, "k": "5"})
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["hits"] and body["degraded"] == []
        assert CONTRACT_DOCS[0].id in [h["id"] for h in body["hits"]]
    local = argparse.Namespace(backend="local", index_dir=None, es_url=None, alias=None)
    with pytest.raises(ValueError, match="--index-dir is required"):
        await build_app(local, settings, api, encoder)
