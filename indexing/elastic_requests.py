"""Every request the Elasticsearch backend sends, built by pure functions.

Kept apart from the I/O (indexing.elastic) so each body can be checked without a server
against the pinned client's typed API (tests/test_elastic.py) and read in one place.
Each ``*_request`` function returns the keyword arguments of one typed client method
(``AsyncElasticsearch.search(**kw)``, ``.mtermvectors(**kw)``, ...), never raw JSON paths.

User text only ever goes into ``match`` queries (and the analyze/termvectors APIs), never
``query_string``: no query syntax is interpreted, so no input can widen a query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from indexing.backend import Filters
from indexing.config import ElasticsearchConfig, IndexConfig
from indexing.documents import Document

COMBINED_FIELD = "all_text"  # copy_to target of every text field: the combined BM25
VECTOR_FIELD = "embedding"
ANALYZER_LOCAL = "ltrsearch_local"
TEXT_FIELDS_FIXED = ("title", "body")
MAX_WINDOW = 10_000  # index.max_result_window and the kNN k / num_candidates ceiling
# cosineSimilarity() is in [-1, 1] and script scores must not be negative: shift by 1.
COSINE_SCRIPT = f"cosineSimilarity(params.query_vector, '{VECTOR_FIELD}') + 1.0"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


# --- names ---------------------------------------------------------------------------
def field_path(field: str) -> str:
    """Document path of a text field: title/body at the root, extra fields under ``extra``."""
    return field if field in TEXT_FIELDS_FIXED else f"extra.{field}"


def safe_name(name: str) -> bool:
    """A field / attr name usable as a mapping key (no dots: they would nest objects)."""
    return bool(_NAME_OK.match(name))


def index_name(alias: str, version: int, now: datetime | None = None) -> str:
    """``<alias>-v<N>-<UTC timestamp>``: sortable by N, and says when it was built."""
    ts = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    return f"{alias}-v{version:04d}-{ts}"


def parse_index_name(alias: str, name: str) -> int | None:
    """The version number of one of ``alias``'s indices, None for any other index."""
    m = re.fullmatch(rf"{re.escape(alias)}-v(\d+)-(\d{{14}})", name)
    return int(m.group(1)) if m else None


# --- index definition ----------------------------------------------------------------
def analysis_settings(es: ElasticsearchConfig, index: IndexConfig) -> dict[str, Any]:
    """Custom analysis for ``analyzer = "local"`` (none needed for the built-in english).

    Reproduces indexing.analysis.Analyzer: lowercase, tokens of 2+ word characters (the same
    regex, Unicode classes), bm25s' English stopwords, Snowball English (= Porter2, what
    PyStemmer's "english" is).
    """
    if es.analyzer != "local":
        return {}
    filters: dict[str, Any] = {}
    chain = ["lowercase"]
    if index.stopwords:
        from bm25s.stopwords import STOPWORDS_EN

        filters["ltrsearch_stop"] = {"type": "stop", "stopwords": sorted(STOPWORDS_EN)}
        chain.append("ltrsearch_stop")
    if index.stemmer:
        filters["ltrsearch_stem"] = {"type": "stemmer", "language": "porter2"}
        chain.append("ltrsearch_stem")
    return {
        "tokenizer": {
            "ltrsearch_words": {
                "type": "pattern",
                "pattern": r"\w\w+",
                "group": 0,
                "flags": "UNICODE_CHARACTER_CLASS",
            }
        },
        "filter": filters,
        "analyzer": {
            ANALYZER_LOCAL: {"type": "custom", "tokenizer": "ltrsearch_words", "filter": chain}
        },
    }


def analyzer_name(es: ElasticsearchConfig) -> str:
    return ANALYZER_LOCAL if es.analyzer == "local" else "english"


def index_settings(
    es: ElasticsearchConfig, index: IndexConfig, *, loading: bool = True
) -> dict[str, Any]:
    """Shards, replicas, refresh, the BM25 similarity (Lucene's, with IndexConfig's k1/b).

    While loading, refresh is off and replicas 0 (much faster bulk); ``serving_settings``
    restores the configured values before validation.
    """
    settings: dict[str, Any] = {
        "number_of_shards": es.shards,
        "number_of_replicas": 0 if loading else es.replicas,
        "refresh_interval": "-1" if loading else es.refresh_interval,
        "similarity": {"default": {"type": "BM25", "k1": index.k1, "b": index.b}},
    }
    analysis = analysis_settings(es, index)
    if analysis:
        settings["analysis"] = analysis
    return settings


def serving_settings(es: ElasticsearchConfig) -> dict[str, Any]:
    """The dynamic settings switched back on after the bulk load (indices.put_settings)."""
    return {"index": {"refresh_interval": es.refresh_interval, "number_of_replicas": es.replicas}}


def text_mapping(es: ElasticsearchConfig, *, copy: bool = True) -> dict[str, Any]:
    m: dict[str, Any] = {"type": "text", "analyzer": analyzer_name(es)}
    if copy:
        m["copy_to"] = COMBINED_FIELD
        m["fields"] = {"raw": {"type": "keyword", "ignore_above": 256}}
    if es.store_term_vectors:
        m["term_vector"] = "with_positions"
    return m


def mappings(
    es: ElasticsearchConfig,
    text_fields: Sequence[str],
    attr_names: Sequence[str],
    dim: int,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The index mapping: analyzed text (+ keyword subfield), combined text, vector, numbers.

    ``attrs`` and ``behavior`` map any numeric key to double (dynamic templates), so fetch()
    returns every attribute a document had even when IndexConfig.attrs names fewer.
    ``_meta`` records what info() reports (fields, attrs, model, dim, analyzer).
    """
    extra = [f for f in text_fields if f not in TEXT_FIELDS_FIXED]
    index_options: dict[str, Any] = {"type": es.vector_index_type}
    if es.vector_index_type.endswith("hnsw"):
        index_options["m"] = es.hnsw_m
        index_options["ef_construction"] = es.hnsw_ef_construction
    return {
        "dynamic": "strict",
        "_meta": dict(meta),
        "dynamic_templates": [
            {"numbers": {"path_match": "attrs.*", "mapping": {"type": "double"}}},
            {"behavior": {"path_match": "behavior.*", "mapping": {"type": "double"}}},
        ],
        "properties": {
            "id": {"type": "keyword"},
            "title": text_mapping(es),
            "body": text_mapping(es),
            "extra": {
                "type": "object",
                "dynamic": "strict",
                "properties": {f: text_mapping(es) for f in extra},
            },
            COMBINED_FIELD: text_mapping(es, copy=False),
            "category": {"type": "keyword"},
            "attrs": {
                "type": "object",
                "dynamic": True,
                "properties": {a: {"type": "double"} for a in attr_names},
            },
            "behavior": {"type": "object", "dynamic": True},
            VECTOR_FIELD: {
                "type": "dense_vector",
                "dims": dim,
                "index": True,
                "similarity": "cosine",
                "index_options": index_options,
            },
        },
    }


def doc_source(doc: Document, vector: np.ndarray) -> dict[str, Any]:
    """The stored document: Document.to_json() (so fetch() rebuilds it exactly) + vector."""
    src = doc.to_json()
    src[VECTOR_FIELD] = [float(x) for x in vector]
    return src


def bulk_action(index: str, doc: Document, vector: np.ndarray) -> dict[str, Any]:
    """One async_streaming_bulk action (``_op_type`` index, ``_id`` = the document id)."""
    return {"_op_type": "index", "_index": index, "_id": doc.id, "_source": doc_source(doc, vector)}


def swap_actions(alias: str, new: str, old: Sequence[str]) -> list[dict[str, Any]]:
    """ONE atomic _aliases call: drop the alias from every old index, add it to the new one."""
    actions: list[dict[str, Any]] = [
        {"remove": {"index": o, "alias": alias, "must_exist": True}} for o in old if o != new
    ]
    actions.append({"add": {"index": new, "alias": alias}})
    return actions


# --- queries -------------------------------------------------------------------------
def filter_clauses(filters: Filters | None) -> list[dict[str, Any]]:
    """Filters as non-scoring clauses, the same semantics as Filters.matches.

    A range with both ends open still requires the attribute to exist (``exists``), like the
    local backend, where a missing value never passes a range filter.
    """
    if filters is None or filters.is_empty():
        return []
    out: list[dict[str, Any]] = []
    if filters.category is not None:
        out.append({"term": {"category": filters.category}})
    for name, (lo, hi) in sorted(filters.ranges.items()):
        path = f"attrs.{name}"
        bounds: dict[str, float] = {}
        if lo is not None:
            bounds["gte"] = float(lo)
        if hi is not None:
            bounds["lte"] = float(hi)
        out.append({"range": {path: bounds}} if bounds else {"exists": {"field": path}})
    return out


def match(path: str, text: str, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"query": text}
    if name is not None:
        body["_name"] = name
    return {"match": {path: body}}


def bm25_request(
    index: str, text: str, k: int, path: str, filters: Filters | None = None
) -> dict[str, Any]:
    """BM25 top-k on one field: the match scores, filters in a non-scoring filter clause."""
    query: dict[str, Any] = {"must": [match(path, text)]}
    clauses = filter_clauses(filters)
    if clauses:
        query["filter"] = clauses
    return {
        "index": index,
        "query": {"bool": query},
        "size": k,
        "source": False,
        "track_total_hits": False,
    }


def knn_request(
    index: str,
    vector: np.ndarray,
    k: int,
    es: ElasticsearchConfig,
    filters: Filters | None = None,
) -> dict[str, Any]:
    """Approximate kNN (the knn section), filters applied inside the graph search."""
    knn: dict[str, Any] = {
        "field": VECTOR_FIELD,
        "query_vector": [float(x) for x in vector],
        "k": k,
        "num_candidates": min(MAX_WINDOW, max(k, es.num_candidates)),
    }
    clauses = filter_clauses(filters)
    if clauses:
        knn["filter"] = clauses
    if es.knn_oversample and es.vector_index_type.startswith(("int", "bbq")):
        knn["rescore_vector"] = {"oversample": es.knn_oversample}
    return {"index": index, "knn": knn, "size": k, "source": False, "track_total_hits": False}


def field_scores_request(
    index: str, text: str, ids: Sequence[str], fields: Sequence[str]
) -> dict[str, Any]:
    """One named match per text field, restricted to ``ids``; each hit's matched_queries
    then maps field name -> that field's BM25 (include_named_queries_score).

    The ids are a filter and the should clauses optional, so every existing id comes back
    (score 0 where nothing matched) and an id missing from the answer is unknown.
    """
    return {
        "index": index,
        "query": {
            "bool": {
                "filter": [{"ids": {"values": list(ids)}}],
                "should": [match(field_path(f), text, name=f) for f in fields],
            }
        },
        "size": len(ids),
        "source": False,
        "track_total_hits": False,
        "include_named_queries_score": True,
    }


def cosine_request(index: str, vector: np.ndarray, ids: Sequence[str]) -> dict[str, Any]:
    """Exact cosine against the stored float vectors of ``ids`` (script_score, score - 1).

    A script reads the original float32 vectors even when the HNSW graph is quantized, so
    this is exact whatever vector_index_type is, and no vector crosses the network.
    """
    return {
        "index": index,
        "query": {
            "script_score": {
                "query": {"ids": {"values": list(ids)}},
                "script": {
                    "source": COSINE_SCRIPT,
                    "params": {"query_vector": [float(x) for x in vector]},
                },
            }
        },
        "size": len(ids),
        "source": False,
        "track_total_hits": False,
    }


def mget_request(index: str, ids: Sequence[str], attrs_only: bool = False) -> dict[str, Any]:
    """Stored documents without their vectors (or only their numeric attrs)."""
    req: dict[str, Any] = {"index": index, "ids": list(ids)}
    if attrs_only:
        req["source_includes"] = ["attrs"]
    else:
        req["source_excludes"] = [VECTOR_FIELD]
    return req


def mtermvectors_request(index: str, ids: Sequence[str], fields: Sequence[str]) -> dict[str, Any]:
    """Analyzed terms with positions per text field (computed on the fly unless stored)."""
    return {
        "index": index,
        "ids": list(ids),
        "fields": [field_path(f) for f in fields],
        "positions": True,
        "offsets": False,
        "payloads": False,
        "term_statistics": False,
        "field_statistics": False,
    }


def idf_request(index: str, terms: Sequence[str]) -> dict[str, Any]:
    """Term statistics of already-analyzed terms in the combined field.

    An artificial document holding the terms, analyzed with ``whitespace`` so they are
    looked up verbatim (re-stemming a stem could change it); term_statistics gives each
    term's doc_freq, field_statistics the field's doc_count: Lucene's BM25 IDF inputs.
    """
    return {
        "index": index,
        "doc": {COMBINED_FIELD: " ".join(terms)},
        "fields": [COMBINED_FIELD],
        "per_field_analyzer": {COMBINED_FIELD: "whitespace"},
        "term_statistics": True,
        "field_statistics": True,
        "positions": False,
        "offsets": False,
        "payloads": False,
    }


def analyze_request(index: str, text: str) -> dict[str, Any]:
    """The combined field's analyzer (the one every text field uses) on ``text``."""
    return {"index": index, "field": COMBINED_FIELD, "text": text}
