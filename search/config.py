"""Typed settings sections owned by search (composed into scripts.settings.Settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetrievalConfig:
    """Candidate generation: how many each retriever returns and how long each stage may take.

    A retriever stage (embed + kNN, BM25) that exceeds its timeout is dropped for that
    request and reported as degraded; the lookups stage (per-candidate features) has its
    own budget and fails the request when exceeded.
    """

    bm25_k: int = 100
    knn_k: int = 100
    embed_timeout_ms: float = 1000.0  # query embedding (LRU-cached)
    bm25_timeout_ms: float = 500.0
    knn_timeout_ms: float = 500.0
    lookup_timeout_ms: float = 2000.0  # field scores, cosine, doc terms, idf, attrs
    query_cache_size: int = 4096  # query vectors kept in the LRU cache
    # candidate sets (retrieval + lookups, before behavior) kept per index version, by query
    # text and filters; ~160 KB each at 100K documents; 0 = off
    # (search.candidates.CandidateCache)
    candidate_cache_size: int = 256
    # more candidate sources (ltr.types.EXTRA_RETRIEVERS): "rm3" (RM3 expansion of the BM25
    # run, Anserini's defaults: 10 feedback documents, 10 terms, original weight 0.5) and
    # "title" (BM25 on the title field); each adds up to bm25_k candidates
    extra_retrievers: tuple[str, ...] = ()

    def validate(self) -> None:
        """Called by scripts.settings at load; raises ValueError naming the key."""
        from ltr.types import EXTRA_RETRIEVERS

        for name in self.extra_retrievers:
            if name not in EXTRA_RETRIEVERS:
                valid = ", ".join(EXTRA_RETRIEVERS)
                raise ValueError(f"extra_retrievers: unknown retriever {name!r}; valid: {valid}")
        for name in ("bm25_k", "knn_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("embed_timeout_ms", "bm25_timeout_ms", "knn_timeout_ms", "lookup_timeout_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("query_cache_size", "candidate_cache_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def timeouts(self) -> dict[str, float]:
        """Stage -> timeout in ms, the form search.candidates.CandidateGenerator takes."""
        return {
            "embed": self.embed_timeout_ms,
            "bm25": self.bm25_timeout_ms,
            "knn": self.knn_timeout_ms,
            "lookup": self.lookup_timeout_ms,
        }


@dataclass(frozen=True)
class ApiConfig:
    """The search API (engineer F): limits, admin token, stage timeouts, impression logging."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_query_chars: int = 512
    max_k: int = 100
    max_offset: int = 1000
    max_body_bytes: int = 65536
    max_events_per_batch: int = 1000
    # slow and oversized clients: a connection that has not sent a whole request head this
    # long after it opened or after its last response is closed (aiohttp's keep-alive
    # timeout, so an idle keep-alive connection closes after it too); a body must arrive
    # within body_timeout_s (else 408); longer request lines / header fields get 414 / 431
    header_timeout_s: float = 15.0
    body_timeout_s: float = 15.0
    max_request_line_bytes: int = 8190
    max_header_bytes: int = 8190
    admin_token: str = ""  # "" disables /admin/* (403); set via LTRSEARCH_API__ADMIN_TOKEN
    require_model: bool = True  # /ready is 503 while no model serves (search still ranks by RRF)
    candidates_timeout_ms: float = 2000.0  # candidates + features for one request
    model_timeout_ms: float = 500.0  # then the page is ranked by fusion, "model" degraded
    # predict on the event loop, not in a thread, when candidates x trees is small
    # (search.pipeline.INLINE_TREE_WALKS: ~1 ms), where the thread hop costs more CPU than
    # the prediction; model_timeout_ms then cannot interrupt it. false: always a thread
    model_inline: bool = True
    body_chars: int = 300  # body characters returned per hit
    rerank_depth: int = 0  # the model reorders the RRF top-R only (0 = every candidate)
    explain_max_hits: int = 10  # explain=true: SHAP contributions for the top N hits (0 = off)
    impression_batch_size: int = 256  # pages per impression-log write
    impression_flush_ms: float = 500.0  # ... or this often
    impression_max_pending: int = 100_000  # backlog bound before dropping (counted)
    index_poll_s: float = 5.0  # notice a swapped local index version (0 = only on reload)
    aggregates_poll_s: float = 1.0  # mirror behavior rows other processes wrote (0 = never)
    workers: int = 1  # server processes on the port (scripts/serve.py; SO_REUSEPORT)
    workers_timeout_s: float = 30.0  # how long a reload/flush waits for every worker
    model_threads: int = 1  # XGBoost threads per prediction (requests run concurrently)
    # local backend: BM25, kNN, lookups and fetch on the event loop, not in a thread
    # (faster; their stage timeouts then cannot interrupt them; indexing.local.LocalBackend)
    local_inline: bool = True
    features: tuple[str, ...] = ()  # served features without a model; () = all features
    featureset_id: str = ""  # pin: refuse models of any other featureset ("" = no pin)
    access_log: bool = True

    def validate(self) -> None:
        """Raises ValueError naming the key."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in (
            "max_query_chars",
            "max_k",
            "max_body_bytes",
            "max_events_per_batch",
            "max_request_line_bytes",
            "max_header_bytes",
            "impression_batch_size",
            "model_threads",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.max_offset, self.body_chars, self.index_poll_s, self.rerank_depth) < 0:
            raise ValueError("max_offset, body_chars, index_poll_s and rerank_depth must be >= 0")
        if self.explain_max_hits < 0:
            raise ValueError(f"explain_max_hits must be >= 0, got {self.explain_max_hits}")
        if self.aggregates_poll_s < 0:
            raise ValueError(f"aggregates_poll_s must be >= 0, got {self.aggregates_poll_s}")
        for name in (
            "candidates_timeout_ms",
            "model_timeout_ms",
            "impression_flush_ms",
            "workers_timeout_s",
            "header_timeout_s",
            "body_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.impression_max_pending < self.impression_batch_size:
            raise ValueError("impression_max_pending must be >= impression_batch_size")


@dataclass(frozen=True)
class EventsConfig:
    """The event store and behavior aggregates (engineer F)."""

    path: str = "var/events.db"
    half_life_s: float = 14 * 24 * 3600.0  # = ltr.behavior.DEFAULT_HALF_LIFE_S
    exam_eta: float = 1.0  # examination curve 1 / position ** eta (ltr.behavior)
    exam_positions: int = 100  # positions past this share the last examination probability
    # clicks of one client_id on one (query, document) the aggregates count per window of
    # click_window_s (by the time the page was served); = ltr.behavior.DEFAULT_CLICK_CAP
    click_cap: int = 1
    click_window_s: float = 24 * 3600.0  # = ltr.behavior.DEFAULT_CLICK_WINDOW_S
    max_size_mb: float = 0.0  # the event store's size cap (PRAGMA max_page_count); 0 = none

    def validate(self) -> None:
        if self.half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, got {self.half_life_s}")
        if self.exam_eta < 0:
            raise ValueError(f"exam_eta must be >= 0, got {self.exam_eta}")
        if self.exam_positions < 1:
            raise ValueError(f"exam_positions must be >= 1, got {self.exam_positions}")
        if self.click_cap < 1:
            raise ValueError(f"click_cap must be >= 1, got {self.click_cap}")
        if not self.click_window_s > 0:
            raise ValueError(f"click_window_s must be > 0, got {self.click_window_s}")
        if not self.max_size_mb >= 0:
            raise ValueError(f"max_size_mb must be >= 0, got {self.max_size_mb}")

    @property
    def max_bytes(self) -> int:
        """``max_size_mb`` in bytes (0 = no cap), what SqliteEventStore takes."""
        return int(self.max_size_mb * 1024 * 1024)
