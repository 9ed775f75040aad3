"""The ``elasticsearch`` backend: versioned indices behind an alias, and ElasticBackend.

Index management (zero-downtime reindex):
    build_elastic_index(docs, encoder, es_cfg, index_cfg) creates ``<alias>-vN-<timestamp>``,
    bulk-loads it (async_streaming_bulk, 429 retries with backoff, every failed id
    reported), restores refresh/replicas, refreshes, validates (count, one BM25 and one kNN
    smoke query) and only then moves the alias in ONE ``_aliases`` call (remove old + add
    new). A failure deletes the new index and leaves the alias untouched. Old indices past
    ``keep_indices`` are deleted (never the alias target). rollback_elastic() moves the
    alias back; list_elastic_versions() lists the versions.

ElasticBackend implements indexing.backend.RetrievalBackend with the same semantics and
outputs as indexing.local.LocalBackend (see docs/elasticsearch.md for the differences that
remain: analyzer choice, Lucene's lossy length norm, per-shard statistics). Every request
body is built in indexing.elastic_requests. Client errors map to BackendError /
BackendTimeoutError / IndexNotFoundError.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from indexing import elastic_requests as rq
from indexing.backend import Filters, Hits, IndexInfo, Lookups, check_query_vector
from indexing.config import ElasticsearchConfig, IndexConfig
from indexing.documents import Document, check_unique_ids, embedding_text
from indexing.embedding_cache import EmbeddingCache, embed_texts
from indexing.encoders import Encoder
from indexing.errors import (
    BackendError,
    BackendTimeoutError,
    IndexingError,
    IndexNotFoundError,
    InvalidRequestError,
    ValidationError,
)
from indexing.prf import DEFAULT_RM3, Rm3Params
from ltr.errors import unknown_name

log = logging.getLogger(__name__)

T = TypeVar("T")
BACKEND_NAME = "elasticsearch"
FORMAT_VERSION = 1
MAX_FAILED_IDS_SHOWN = 20
ID_CHUNK = 1000  # ids per lookup request (well under max_result_window / max_terms_count)


# --- client and errors -----------------------------------------------------------------
def make_client(cfg: ElasticsearchConfig) -> Any:
    """An AsyncElasticsearch with bounded retries and timeouts from settings.

    Credentials are read from the environment variables the settings name (never from the
    settings file); a named but unset variable is an error, not a silent anonymous client.
    """
    from elasticsearch import AsyncElasticsearch

    kwargs: dict[str, Any] = {}
    if cfg.api_key_env:
        kwargs["api_key"] = _secret(cfg.api_key_env)
    if cfg.username:
        kwargs["basic_auth"] = (cfg.username, _secret(cfg.password_env))
    if cfg.url.startswith("https"):
        kwargs["verify_certs"] = cfg.verify_certs
        if cfg.ca_certs:
            kwargs["ca_certs"] = cfg.ca_certs
    return AsyncElasticsearch(
        cfg.url,
        request_timeout=cfg.request_timeout_s,
        max_retries=cfg.max_retries,
        retry_on_timeout=cfg.retry_on_timeout,
        retry_on_status=(502, 503, 504),
        **kwargs,
    )


def _secret(env_name: str) -> str:
    value = os.environ.get(env_name, "")
    if not value:
        raise IndexingError(f"elasticsearch credentials: environment variable {env_name} is unset")
    return value


def map_error(e: Exception, what: str) -> Exception:
    """The indexing error for a client exception (connection, timeout, HTTP status)."""
    from elasticsearch import ApiError, ConnectionError, ConnectionTimeout, TransportError

    if isinstance(e, ConnectionTimeout | asyncio.TimeoutError):
        return BackendTimeoutError(f"elasticsearch {what}: timed out ({e})")
    if isinstance(e, ConnectionError):
        return BackendError(f"elasticsearch {what}: cannot connect ({e})")
    if isinstance(e, ApiError):
        status = e.meta.status if e.meta is not None else None
        err_type = ""
        if isinstance(e.body, dict) and isinstance(e.body.get("error"), dict):
            err_type = str(e.body["error"].get("type", ""))
        if status == 404 and err_type == "index_not_found_exception":
            return IndexNotFoundError(f"elasticsearch {what}: {e.message}")
        if status == 408 or err_type == "timeout_exception":
            return BackendTimeoutError(f"elasticsearch {what}: timed out ({e.message})")
        return BackendError(f"elasticsearch {what}: HTTP {status} {err_type}: {e.message}")
    if isinstance(e, TransportError):
        return BackendError(f"elasticsearch {what}: {e}")
    return e


async def call(what: str, aw: Awaitable[T]) -> T:
    """Await one client call, mapping its exceptions to indexing errors."""
    try:
        return await aw
    except Exception as e:  # mapped or re-raised unchanged
        mapped = map_error(e, what)
        if mapped is e:
            raise
        raise mapped from e


def body(resp: Any) -> Any:
    """The JSON body of a client response (ObjectApiResponse) or a plain dict."""
    return getattr(resp, "body", resp)


# --- versions --------------------------------------------------------------------------
async def current_elastic_index(client: Any, alias: str) -> str | None:
    """The index the alias points at (None before the first build)."""
    from elasticsearch import NotFoundError

    try:
        resp = body(await client.indices.get_alias(name=alias))
    except NotFoundError:
        return None
    except Exception as e:
        raise map_error(e, "get alias") from e
    names = sorted(resp)
    if len(names) > 1:
        raise IndexingError(f"alias {alias!r} points at several indices: {', '.join(names)}")
    return names[0] if names else None


async def list_elastic_versions(client: Any, alias: str) -> list[str]:
    """This alias's versioned indices, oldest first (by version number)."""
    resp = body(
        await call(
            "list versions",
            client.indices.get_alias(
                index=f"{alias}-v*", allow_no_indices=True, ignore_unavailable=True
            ),
        )
    )
    versions = [(rq.parse_index_name(alias, n), n) for n in resp]
    return [n for v, n in sorted((v, n) for v, n in versions if v is not None)]


async def swap_alias(client: Any, alias: str, new: str) -> str | None:
    """Point the alias at ``new`` atomically (one _aliases call); returns the previous index."""
    old = await current_elastic_index(client, alias)
    if old == new:
        return old
    if old is None:
        exists = body(await call("check alias name", client.indices.exists(index=alias)))
        if exists:
            raise IndexingError(
                f"{alias!r} is a concrete index, not an alias; rename or delete it first"
            )
    actions = rq.swap_actions(alias, new, [old] if old else [])
    await call("swap alias", client.indices.update_aliases(actions=actions))
    return old


async def rollback_elastic(client: Any, alias: str, version: str | None = None) -> str:
    """Point the alias at the version before the current one (or the named one)."""
    versions = await list_elastic_versions(client, alias)
    cur = await current_elastic_index(client, alias)
    if version is None:
        cur_v = rq.parse_index_name(alias, cur) if cur else None
        older = [
            v for v in versions if cur_v is None or (rq.parse_index_name(alias, v) or 0) < cur_v
        ]
        if not older:
            raise IndexNotFoundError(f"alias {alias!r}: no version older than {cur!r}")
        version = older[-1]
    elif version not in versions:
        raise IndexNotFoundError(
            f"alias {alias!r}: unknown version {version!r}; available: "
            f"{', '.join(versions) or 'none'}"
        )
    await swap_alias(client, alias, version)
    return version


async def prune_elastic(client: Any, alias: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the alias target."""
    versions = await list_elastic_versions(client, alias)
    cur = await current_elastic_index(client, alias)
    keep_set = set(versions[-keep:]) | ({cur} if cur else set())
    removed = []
    for v in versions:
        if v in keep_set:
            continue
        try:
            await call("delete old index", client.indices.delete(index=v))
            removed.append(v)
        except IndexingError as e:  # retention must not fail a published build
            log.warning("could not delete old index %s: %s", v, e)
    return removed


# --- build -----------------------------------------------------------------------------
def _check_docs(docs: list[Document], attr_names: Sequence[str]) -> tuple[str, ...]:
    check_unique_ids(docs)
    for d in docs:
        for name in [*d.extra, *d.attrs]:
            if not rq.safe_name(name):
                raise ValidationError(
                    f"document {d.id!r}: field name {name!r} is not usable in Elasticsearch "
                    "(letters, digits, _ and -, not starting with _ or -)"
                )
    for name in attr_names:
        if not rq.safe_name(name):
            raise ValidationError(f"attr name {name!r} is not usable in Elasticsearch")
    extra = sorted({f for d in docs for f in d.extra})
    clash = set(extra) & set(rq.TEXT_FIELDS_FIXED)
    if clash:
        raise ValidationError(f"extra text fields may not be named {sorted(clash)}")
    return (*rq.TEXT_FIELDS_FIXED, *extra)


def _check_vectors(vectors: np.ndarray, n: int, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape != (n, dim):
        raise ValidationError(f"embeddings have shape {vectors.shape}, expected ({n}, {dim})")
    if not np.all(np.isfinite(vectors)):
        raise ValidationError("embeddings contain NaN/inf values")
    norms = np.linalg.norm(vectors, axis=1)
    if float(np.abs(norms - 1.0).max()) > 1e-3:
        raise ValidationError("embeddings are not L2-normalized")
    return vectors


async def bulk_load(
    client: Any,
    index: str,
    docs: Sequence[Document],
    vectors: np.ndarray,
    cfg: ElasticsearchConfig,
    progress: bool = False,
) -> int:
    """Index every document through async_streaming_bulk; raise listing each failed id.

    429 rejections are retried per document with exponential backoff (bulk_max_retries,
    bulk_initial_backoff_s doubling up to bulk_max_backoff_s); any other per-document
    failure, or a document still rejected after the retries, is collected, not raised
    at the first one, so the error names every failed id.
    """
    from elasticsearch.helpers import async_streaming_bulk

    actions = (rq.bulk_action(index, d, v) for d, v in zip(docs, vectors, strict=True))
    failed: list[tuple[str, str]] = []
    ok = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(docs), desc=f"bulk {index}", unit="doc")
    try:
        async for success, item in async_streaming_bulk(
            client,
            actions,
            chunk_size=cfg.bulk_chunk,
            max_retries=cfg.bulk_max_retries,
            initial_backoff=cfg.bulk_initial_backoff_s,
            max_backoff=cfg.bulk_max_backoff_s,
            raise_on_error=False,
            raise_on_exception=False,
            retry_on_status=(429,),
        ):
            result = next(iter(item.values())) if item else {}
            if success:
                ok += 1
            else:
                reason = result.get("error") or result.get("exception") or result
                if isinstance(reason, dict):
                    reason = f"{reason.get('type', '')}: {reason.get('reason', '')}"
                failed.append((str(result.get("_id")), f"{result.get('status')} {reason}"))
            if bar is not None:
                bar.update(1)
    except Exception as e:
        mapped = map_error(e, "bulk load")
        if mapped is e:
            raise
        raise mapped from e
    finally:
        if bar is not None:
            bar.close()
    if failed:
        shown = "; ".join(f"{i} ({r})" for i, r in failed[:MAX_FAILED_IDS_SHOWN])
        more = len(failed) - MAX_FAILED_IDS_SHOWN
        raise IndexingError(
            f"{len(failed)} of {len(docs)} documents failed to index into {index}: {shown}"
            + (f"; and {more} more" if more > 0 else ""),
        )
    return ok


async def validate_elastic_index(
    client: Any,
    index: str,
    docs: Sequence[Document],
    vectors: np.ndarray,
    cfg: ElasticsearchConfig | None = None,
    seed: int = 0,
) -> None:
    """Refuse an index that cannot serve: wrong count, or a BM25 / kNN smoke query fails."""
    count = int(body(await call("count", client.count(index=index)))["count"])
    if count != len(docs):
        raise ValidationError(f"index {index} holds {count} documents, input had {len(docs)}")
    rng = np.random.default_rng(seed)
    sample = [int(r) for r in rng.choice(len(docs), size=min(20, len(docs)), replace=False)]
    # BM25: the longest sampled title that analyzes to some terms must find its document
    # in the top 10 (ties with the 10th allowed)
    by_length = sorted(
        (r for r in sample if docs[r].title.strip()),
        key=lambda r: (-len(set(docs[r].title.lower().split())), r),
    )
    for row in by_length:
        text = docs[row].title
        analyzed = body(
            await call("smoke analyze", client.indices.analyze(**rq.analyze_request(index, text)))
        )
        if not analyzed.get("tokens"):
            continue  # only stopwords: try the next title
        req = rq.bm25_request(index, text, 10, rq.COMBINED_FIELD)
        hits = body(await call("smoke bm25", client.search(**req)))["hits"]["hits"]
        if docs[row].id not in [h["_id"] for h in hits]:
            own_req = rq.bm25_request(index, text, 1, rq.COMBINED_FIELD)
            own_req["query"]["bool"]["filter"] = [{"ids": {"values": [docs[row].id]}}]
            own = body(await call("smoke bm25", client.search(**own_req)))["hits"]["hits"]
            tenth = float(hits[-1]["_score"]) if len(hits) == 10 else math.inf
            if not own or float(own[0]["_score"]) < tenth - 1e-6:
                raise ValidationError(
                    f"BM25 smoke query failed: the title of {docs[row].id!r} does not "
                    f"retrieve it in the top 10 of {index}"
                )
        break
    row = sample[0]  # kNN: a document's own vector must retrieve it first (duplicates tie)
    req = rq.knn_request(index, vectors[row], 10, cfg or ElasticsearchConfig())
    hits = body(await call("smoke knn", client.search(**req)))["hits"]["hits"]
    if not hits or (
        hits[0]["_id"] != docs[row].id and abs(2 * float(hits[0]["_score"]) - 2.0) > 1e-4
    ):
        raise ValidationError(
            f"kNN smoke query failed: {docs[row].id!r} is not its own nearest neighbour in {index}"
        )


async def build_elastic_index(
    docs: Iterable[Document],
    encoder: Encoder,
    cfg: ElasticsearchConfig | None = None,
    index_cfg: IndexConfig | None = None,
    *,
    client: Any = None,
    cache: EmbeddingCache | None = None,
    progress: bool = False,
) -> str:
    """Build, validate and publish a new versioned index behind ``cfg.alias``; its name.

    On any failure (bad input, embedding, bulk errors, validation, the swap) the new index
    is deleted and the alias keeps pointing where it did.
    """
    cfg = cfg or ElasticsearchConfig()
    index_cfg = index_cfg or IndexConfig()
    try:
        cfg.validate()
        index_cfg.validate()
    except ValueError as e:
        raise IndexingError(f"elasticsearch settings: {e}") from None
    docs = list(docs)
    attr_names = tuple(index_cfg.attrs) or tuple(sorted({a for d in docs for a in d.attrs}))
    text_fields = _check_docs(docs, attr_names)
    own_client = client is None
    client = client or make_client(cfg)
    try:
        # reach the server (and refuse an alias name taken by an index) before the slow part
        if await current_elastic_index(client, cfg.alias) is None:
            taken = await call("check alias name", client.indices.exists(index=cfg.alias))
            if body(taken):
                raise IndexingError(
                    f"{cfg.alias!r} is a concrete index, not an alias; rename or delete it first"
                )
        texts = [embedding_text(d) for d in docs]
        vectors = await asyncio.to_thread(embed_texts, encoder, texts, cache, progress)
        vectors = _check_vectors(vectors, len(docs), encoder.dim)
        versions = await list_elastic_versions(client, cfg.alias)
        last = max((rq.parse_index_name(cfg.alias, v) or 0 for v in versions), default=0)
        name = rq.index_name(cfg.alias, last + 1)
        meta = {
            "ltrsearch_format": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "text_fields": list(text_fields),
            "attr_names": list(attr_names),
            "model_id": encoder.model_id,
            "dim": int(encoder.dim),
            "analyzer": cfg.analyzer,
            "stopwords": index_cfg.stopwords,
            "stemmer": index_cfg.stemmer,
            "bm25": {"k1": index_cfg.k1, "b": index_cfg.b},
            "vector_index_type": cfg.vector_index_type,
        }
        await call(
            "create index",
            client.indices.create(
                index=name,
                settings=rq.index_settings(cfg, index_cfg, loading=True),
                mappings=rq.mappings(cfg, text_fields, attr_names, encoder.dim, meta),
            ),
        )
        previous: str | None = None
        try:
            await bulk_load(client, name, docs, vectors, cfg, progress)
            await call(
                "restore settings",
                client.indices.put_settings(index=name, settings=rq.serving_settings(cfg)),
            )
            await call("refresh", client.indices.refresh(index=name))
            await validate_elastic_index(client, name, docs, vectors, cfg)
            previous = await swap_alias(client, cfg.alias, name)
        except BaseException as exc:
            if not await _cleanup_failed_build(client, cfg.alias, name) or not isinstance(
                exc, Exception
            ):
                raise
            # the swap took effect although its answer was an error (e.g. lost to a
            # timeout): the new index is serving, so the build is done
            log.warning("alias %s points at %s despite %r: published", cfg.alias, name, exc)
        log.info("alias %s: %s -> %s", cfg.alias, previous, name)
        await prune_elastic(client, cfg.alias, cfg.keep_indices)
        return name
    finally:
        if own_client:
            await client.close()


async def _cleanup_failed_build(client: Any, alias: str, name: str) -> bool:
    """After a failed build: True if the alias already points at ``name`` (the swap took
    effect), else delete ``name`` and return False. Never deletes what may be serving:
    if the alias cannot be read, the index is left in place (logged, for an operator).
    """
    try:
        target = await current_elastic_index(client, alias)
    except Exception as e:
        log.warning("cannot read alias %s (%s); leaving index %s in place", alias, e, name)
        return False
    if target == name:
        return True
    try:
        await call("delete failed index", client.indices.delete(index=name))
    except Exception as e:  # report the original failure, not the cleanup
        log.warning("could not delete failed index %s: %s", name, e)
    return False


# --- backend ---------------------------------------------------------------------------
class ElasticBackend:
    """indexing.backend.RetrievalBackend over the index an alias points at.

    Queries go to the alias, so a reindex's swap is picked up by the next request; the
    index description (text fields, attrs, dim) is read by open() / info() / reload().
    Choices (docs/elasticsearch.md): BM25 and field scores are Elasticsearch's own (named
    match queries); cosine is a script_score over the stored float vectors (exact even
    with a quantized HNSW graph); kNN scores (1 + cos) / 2 are mapped back to cosine.
    """

    name = BACKEND_NAME

    def __init__(self, client: Any, cfg: ElasticsearchConfig, *, owns_client: bool = True) -> None:
        self.client = client
        self.cfg = cfg
        self.alias = cfg.alias
        self._owns_client = owns_client
        self._index: str | None = None
        self._meta: dict[str, Any] = {}
        self._closed = False

    @classmethod
    async def open(
        cls, cfg: ElasticsearchConfig, encoder: Encoder | None = None, *, client: Any = None
    ) -> ElasticBackend:
        """Connect and read the alias target's description; refuses an encoder of another dim."""
        try:
            cfg.validate()
        except ValueError as e:
            raise IndexingError(f"elasticsearch settings: {e}") from None
        backend = cls(client or make_client(cfg), cfg, owns_client=client is None)
        try:
            await backend.reload()
            if encoder is not None and encoder.dim != backend.dim:
                raise IndexingError(
                    f"encoder {encoder.model_id!r} has dim {encoder.dim}, "
                    f"index {backend._index} has {backend.dim}"
                )
        except BaseException:
            await backend.close()
            raise
        return backend

    async def reload(self) -> bool:
        """Re-read the alias target's mapping; True when the alias moved."""
        self._check_open()
        index = await current_elastic_index(self.client, self.alias)
        if index is None:
            raise IndexNotFoundError(
                f"alias {self.alias!r} does not exist (run ltrsearch-reindex first)"
            )
        if index == self._index:
            return False
        resp = body(await call("get mapping", self.client.indices.get_mapping(index=index)))
        meta = resp[index]["mappings"].get("_meta") or {}
        if meta.get("ltrsearch_format") != FORMAT_VERSION:
            raise IndexingError(f"index {index} was not built by ltrsearch (no _meta format)")
        changed = self._index is not None
        self._index, self._meta = index, dict(meta)
        return changed

    # --- state -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("elasticsearch backend is closed")

    @property
    def version(self) -> str:
        return str(self._index)

    @property
    def text_fields(self) -> tuple[str, ...]:
        return tuple(self._meta.get("text_fields", rq.TEXT_FIELDS_FIXED))

    @property
    def attr_names(self) -> tuple[str, ...]:
        return tuple(self._meta.get("attr_names", ()))

    @property
    def dim(self) -> int:
        return int(self._meta.get("dim", 0))

    def _path(self, field: str | None) -> str:
        if field is None:
            return rq.COMBINED_FIELD
        if field not in self.text_fields:
            raise unknown_name("text field", field, self.text_fields)
        return rq.field_path(field)

    def _vector(self, vector: np.ndarray) -> np.ndarray:
        return check_query_vector(vector, self.dim)

    @staticmethod
    def _check_k(k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidRequestError(f"k must be a positive integer, got {k!r}")
        if k > rq.MAX_WINDOW:
            raise InvalidRequestError(f"k must be <= {rq.MAX_WINDOW} for Elasticsearch, got {k}")
        return int(k)

    async def _search(self, what: str, req: dict[str, Any]) -> list[dict[str, Any]]:
        self._check_open()
        return list(body(await call(what, self.client.search(**req)))["hits"]["hits"])

    @staticmethod
    def _hits(hits: list[dict[str, Any]], transform: Any = None) -> Hits:
        ids = tuple(str(h["_id"]) for h in hits)
        scores = np.asarray([float(h["_score"]) for h in hits], dtype=np.float64)
        if transform is not None:
            scores = transform(scores)
        return Hits(ids, scores)

    # --- RetrievalBackend ----------------------------------------------------------------
    async def info(self) -> IndexInfo:
        self._check_open()
        await self.reload()
        index = str(self._index)
        count = int(body(await call("count", self.client.count(index=index)))["count"])
        return IndexInfo(
            backend=self.name,
            version=index,
            doc_count=count,
            text_fields=self.text_fields,
            attr_names=self.attr_names,
            model_id=str(self._meta.get("model_id", "")),
            dim=self.dim,
        )

    async def bm25(
        self, query: str, k: int, field: str | None = None, filters: Filters | None = None
    ) -> Hits:
        k = self._check_k(k)
        path = self._path(field)
        if not query.strip():
            return Hits((), np.zeros(0, dtype=np.float64))
        hits = await self._search("bm25", rq.bm25_request(self.alias, query, k, path, filters))
        return self._hits([h for h in hits if float(h["_score"]) > 0])

    async def rm3(
        self,
        query: str,
        feedback: Hits,
        k: int,
        filters: Filters | None = None,
        params: Rm3Params = DEFAULT_RM3,
    ) -> Hits:
        """Not built for this backend yet (the local backend has it; docs/evaluation.md)."""
        raise BackendError("the rm3 retriever is not available on the elasticsearch backend")

    async def knn(self, vector: np.ndarray, k: int, filters: Filters | None = None) -> Hits:
        k = self._check_k(k)
        v = self._vector(vector)
        req = rq.knn_request(self.alias, v, k, self.cfg, filters)
        hits = await self._search("knn", req)
        # cosine similarity scores come back as (1 + cos) / 2
        return self._hits(hits, lambda s: 2.0 * s - 1.0)

    async def fetch(self, ids: Sequence[str]) -> list[Document | None]:
        if not ids:
            return []
        found = await self._mget(ids, attrs_only=False)
        return [None if i not in found else Document.from_json(found[i]) for i in ids]

    async def static_attrs(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Numeric attributes per id (NaN = missing); an mget of ``attrs`` only."""
        found = await self._mget(ids, attrs_only=True) if ids else {}
        out: dict[str, np.ndarray] = {}
        for name in self.attr_names:
            col = np.full(len(ids), np.nan, dtype=np.float64)
            for j, i in enumerate(ids):
                v = (found.get(i) or {}).get("attrs", {}).get(name)
                if v is not None:
                    col[j] = float(v)
            out[name] = col
        return out

    async def _mget(self, ids: Sequence[str], attrs_only: bool) -> dict[str, dict[str, Any]]:
        self._check_open()
        unique = list(dict.fromkeys(ids))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(unique), ID_CHUNK):
            req = rq.mget_request(self.alias, unique[start : start + ID_CHUNK], attrs_only)
            for d in body(await call("mget", self.client.mget(**req)))["docs"]:
                if d.get("found"):
                    found[str(d["_id"])] = d.get("_source") or {}
        return found

    async def field_scores(self, query: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        self._check_open()
        fields = self.text_fields
        out = {f: np.full(len(ids), np.nan, dtype=np.float64) for f in fields}
        if not ids:
            return out
        unique = list(dict.fromkeys(ids))
        per_id: dict[str, dict[str, float]] = {}
        for start in range(0, len(unique), ID_CHUNK):
            chunk = unique[start : start + ID_CHUNK]
            req = rq.field_scores_request(self.alias, query, chunk, fields)
            for h in await self._search("field scores", req):
                named = h.get("matched_queries") or {}
                if isinstance(named, list):  # a server that ignored include_named_queries_score
                    raise BackendError("elasticsearch returned matched_queries without scores")
                per_id[str(h["_id"])] = {str(k): float(v) for k, v in named.items()}
        for j, i in enumerate(ids):
            scores = per_id.get(i)
            if scores is None:
                continue
            for f in fields:
                out[f][j] = scores.get(f, 0.0)
        return out

    async def cosine(self, vector: np.ndarray, ids: Sequence[str]) -> np.ndarray:
        v = self._vector(vector)
        out = np.full(len(ids), np.nan, dtype=np.float64)
        if not ids:
            return out
        unique = list(dict.fromkeys(ids))
        got: dict[str, float] = {}
        for start in range(0, len(unique), ID_CHUNK):
            req = rq.cosine_request(self.alias, v, unique[start : start + ID_CHUNK])
            for h in await self._search("cosine", req):
                got[str(h["_id"])] = float(h["_score"]) - 1.0
        for j, i in enumerate(ids):
            if i in got:
                out[j] = got[i]
        return out

    async def analyze(self, text: str) -> tuple[str, ...]:
        self._check_open()
        if not text.strip():
            return ()
        req = rq.analyze_request(self.alias, text)
        tokens = body(await call("analyze", self.client.indices.analyze(**req))).get("tokens", [])
        tokens = sorted(tokens, key=lambda t: (int(t.get("position", 0)), t.get("start_offset", 0)))
        return tuple(str(t["token"]) for t in tokens)

    async def doc_terms(self, ids: Sequence[str]) -> dict[str, tuple[tuple[str, ...], ...]]:
        self._check_open()
        fields = self.text_fields
        per_id: dict[str, dict[str, tuple[str, ...]]] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), ID_CHUNK):
            req = rq.mtermvectors_request(self.alias, unique[start : start + ID_CHUNK], fields)
            for d in body(await call("mtermvectors", self.client.mtermvectors(**req)))["docs"]:
                if not d.get("found"):
                    continue
                tv = d.get("term_vectors") or {}
                per_id[str(d["_id"])] = {
                    f: terms_in_order(tv.get(rq.field_path(f), {}).get("terms", {})) for f in fields
                }
        return {f: tuple(per_id.get(i, {}).get(f, ()) for i in ids) for f in fields}

    async def idf(self, terms: Sequence[str]) -> dict[str, float]:
        self._check_open()
        wanted = [t for t in dict.fromkeys(terms) if t and not any(c.isspace() for c in t)]
        if not wanted:
            return {}
        resp = body(
            await call("termvectors", self.client.termvectors(**rq.idf_request(self.alias, wanted)))
        )
        tv = (resp.get("term_vectors") or {}).get(rq.COMBINED_FIELD) or {}
        n = int((tv.get("field_statistics") or {}).get("doc_count", 0))
        stats = tv.get("terms") or {}
        out: dict[str, float] = {}
        for t in wanted:
            df = int((stats.get(t) or {}).get("doc_freq", 0))
            if df > 0 and n > 0:
                out[t] = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        return out

    async def lookups(self, query: str, ids: Sequence[str], vector: np.ndarray | None) -> Lookups:
        """The separate lookups, concurrently: analyze first (idf needs the terms), then
        field scores, cosine, doc terms, idf and static attributes in one gather."""
        query_terms = await self.analyze(query)
        n = len(ids)

        async def cosine() -> np.ndarray:
            if vector is None:  # dense degraded: cosine unknown, not 0
                return np.full(n, np.nan, dtype=np.float64)
            return np.asarray(await self.cosine(vector, ids), dtype=np.float64)

        field_bm25, cos, doc_terms, idf, static = await asyncio.gather(
            self.field_scores(query, ids),
            cosine(),
            self.doc_terms(ids),
            self.idf(list(dict.fromkeys(query_terms))),
            self.static_attrs(ids),
        )
        return Lookups(query_terms, field_bm25, cos, doc_terms, idf, static)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self.client.close()


def terms_in_order(terms: dict[str, Any]) -> tuple[str, ...]:
    """A field's analyzed terms in text order, rebuilt from a term vector's positions."""
    at: list[tuple[int, str]] = []
    for term, info in terms.items():
        for tok in info.get("tokens") or []:
            at.append((int(tok["position"]), term))
    at.sort()
    return tuple(t for _, t in at)
