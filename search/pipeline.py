"""The query pipeline: candidates -> features -> model -> page, with an impression to log.

``Pipeline.featurize`` is search.featurize.featurize over this pipeline's generator and
behavior aggregates (the ONE query -> features path, shared with offline replay), so what
the model scores online is what it was trained on. ``Pipeline.search`` adds the model (or
RRF when there is none), pagination, per-stage timeouts and timings (search.timings), and
returns the page together with the exact feature rows served (the impression the API logs).

Hot swaps: the model and the index are replaced atomically (one attribute assignment each);
a request reads both once at its start, so it never mixes two versions. A retired index
backend is closed only when the last request using it has finished.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from indexing.backend import OVERLAP, Filters, RetrievalBackend
from indexing.documents import Document
from indexing.encoders import Encoder
from indexing.errors import BackendError
from ltr.behavior import AGGREGATE_KEYS
from ltr.features import BEHAVIOR_FEATURES, featureset_id, resolve
from ltr.interleaving import team_draft
from ltr.model import RankModel
from ltr.types import RETRIEVERS, CandidateSet
from search.aggregates import BehaviorAggregates
from search.candidates import CandidateCache, CandidateGenerator
from search.config import RetrievalConfig
from search.errors import InvalidParameterError, InvalidQueryError
from search.events import Impression
from search.featurize import Featurized, Generator, featurize
from search.timings import collect, record

log = logging.getLogger(__name__)

GeneratorFactory = Callable[[RetrievalBackend, Encoder], Generator]


def default_generator_factory(cfg: RetrievalConfig | None = None) -> GeneratorFactory:
    """search.candidates.CandidateGenerator built from a RetrievalConfig (default: defaults),
    behind a CandidateCache over the local backend when the config keeps candidate sets."""
    rcfg = cfg or RetrievalConfig()

    def make(backend: RetrievalBackend, encoder: Encoder) -> Generator:
        from indexing.local import LocalBackend

        gen = CandidateGenerator.from_config(backend, encoder, rcfg)
        # only over a backend that answers from one fixed version (LocalBackend): an
        # Elasticsearch alias can move to a new index under the same backend object
        if rcfg.candidate_cache_size > 0 and isinstance(backend, LocalBackend):
            return CandidateCache(gen, rcfg.candidate_cache_size, backend)
        return gen

    return make


# A prediction runs on the event loop (api.model_inline) up to this many rows x trees:
# 200 candidates x 300 depth-3 trees took ~1 ms at 1M documents (docs/benchmarks.md), and
# a thread hop cost more CPU than that. A bigger model goes to a thread, where
# model_timeout_ms can still cut it off and rank by fusion.
INLINE_TREE_WALKS = 250_000


def _loop_idle() -> bool:
    """Nothing else is ready to run on this event loop: no other request's task waits for
    the core. CPython's loop keeps them in ``_ready``; a loop without it (uvloop) counts as
    busy, so its stages stay inline."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    return ready is not None and len(ready) == 0


class PipelineSettings(Protocol):
    """The serving knobs Pipeline reads. PipelineConfig has them (standalone use) and so
    has search.config.ApiConfig: the API hands the pipeline its own config as is."""

    @property
    def candidates_timeout_ms(self) -> float: ...
    @property
    def model_timeout_ms(self) -> float: ...
    @property
    def model_inline(self) -> bool: ...
    @property
    def body_chars(self) -> int: ...
    @property
    def max_k(self) -> int: ...
    @property
    def max_offset(self) -> int: ...
    @property
    def rerank_depth(self) -> int: ...
    @property
    def explain_max_hits(self) -> int: ...


@dataclass(frozen=True)
class PipelineConfig:
    """Serving knobs of a pipeline used without the API (the API passes its ApiConfig)."""

    candidates_timeout_ms: float = 2000.0  # candidate generation + features, whole stage
    model_timeout_ms: float = 500.0  # then the page is ranked by fusion and "model" degraded
    model_inline: bool = True  # small predictions on the event loop (INLINE_TREE_WALKS)
    body_chars: int = 300  # body text returned per hit (0 = none)
    max_k: int = 100
    max_offset: int = 1000
    rerank_depth: int = 0  # the model reorders the fusion top-R only (0 = every candidate)
    explain_max_hits: int = 10  # explain: SHAP contributions for the top N hits (0 = none)


@dataclass(frozen=True)
class SearchRequest:
    q: str
    k: int = 10
    offset: int = 0
    category: str | None = None
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    explain: bool = False
    query_id: str | None = None
    # the workbench: a debug page is not logged (no impression, so no training data) and
    # ``model`` ranks by another registry version or "rrf" (search.workbench resolves it)
    debug: bool = False
    model: str | None = None
    client_id: str | None = None  # the user or session (sticky experiment assignment)

    def filters(self) -> Filters | None:
        f = Filters(category=self.category, ranges=dict(self.ranges))
        return None if f.is_empty() else f


@dataclass(frozen=True)
class SearchResult:
    request_id: str
    query: str
    model_version: str | None
    featureset_id: str
    hits: list[dict[str, Any]]
    degraded: list[str]
    took_ms: float
    timings_ms: dict[str, float]
    candidates: int
    impression: Impression | None  # the page to log (an empty page too: n = 0)
    # what was scored, for an off-path second opinion (search.experiments shadow mode)
    scored: Scored | None = field(default=None, repr=False)
    candidate_failed: bool = False  # the interleaved candidate model failed: not interleaved

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "query": self.query,
            "model_version": self.model_version,
            "hits": self.hits,
            "degraded": self.degraded,
            "took_ms": round(self.took_ms, 3),
            "candidates": self.candidates,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


class Serving(enum.Enum):
    """Pipeline.search's default ranker: the model serving at the request's start."""

    MODEL = "serving"


SERVING = Serving.MODEL


@dataclass(frozen=True)
class Scored:
    """The candidates and feature rows one request scored, and the ids it served."""

    cs: CandidateSet
    X: np.ndarray
    served: tuple[str, ...]


def _num(x: float) -> float | None:
    """JSON has no NaN: missing values travel as null."""
    return None if not math.isfinite(x) else float(x)


class _IndexState:
    """One index version being served: backend, generator and an in-flight count."""

    def __init__(self, backend: RetrievalBackend, generator: Generator, version: str) -> None:
        self.backend = backend
        self.generator = generator
        self.version = version
        self.inflight = 0
        self.retired = False
        self.closed = False

    async def maybe_close(self) -> None:
        if self.retired and self.inflight == 0 and not self.closed:
            self.closed = True
            try:
                await self.backend.close()
            except Exception:  # closing an old index must never fail a request
                log.exception("closing retired index %s failed", self.version)


class Pipeline:
    """Hybrid retrieval + LTR reranking for one index and (optionally) one model."""

    def __init__(
        self,
        backend: RetrievalBackend,
        encoder: Encoder,
        default_features: Sequence[str],
        index_version: str,
        model: RankModel | None = None,
        aggregates: BehaviorAggregates | None = None,
        config: PipelineSettings | None = None,
        generator_factory: GeneratorFactory | None = None,
        expected_featureset_id: str | None = None,
    ) -> None:
        resolve(default_features)  # unknown names fail at startup, listing the valid ones
        self.default_features = tuple(default_features)
        self.config: PipelineSettings = config or PipelineConfig()
        self.aggregates = aggregates
        self.expected_featureset_id = expected_featureset_id
        self._encoder = encoder
        self._factory = generator_factory or default_generator_factory()
        self._index = self._make_state(backend, index_version)
        self._searching = 0  # searches in flight on this pipeline (its event loop)
        self._model: RankModel | None = None
        if model is not None:
            self.set_model(model)

    # -- state ----------------------------------------------------------------------------
    def _make_state(self, backend: RetrievalBackend, version: str) -> _IndexState:
        return _IndexState(backend, self._factory(backend, self._encoder), version)

    @property
    def model(self) -> RankModel | None:
        return self._model

    @property
    def index_version(self) -> str:
        return self._index.version

    @property
    def encoder(self) -> Encoder:
        """The query encoder (to open a new index version with)."""
        return self._encoder

    @property
    def backend(self) -> RetrievalBackend:
        return self._index.backend

    @property
    def candidate_cache(self) -> CandidateCache | None:
        """The serving index version's candidate cache (None when off)."""
        gen = self._index.generator
        return gen if isinstance(gen, CandidateCache) else None

    @property
    def feature_names(self) -> tuple[str, ...]:
        m = self._model
        return m.feature_names if m is not None else self.default_features

    def check_model(self, model: RankModel) -> None:
        """Refuse a model whose features this code cannot compute identically.

        The model's featureset id must equal the id of its feature list under the current
        feature definitions (a changed feature bumps its version), and, when the settings
        pin a featureset, that one.
        """
        from ltr.errors import FeaturesetMismatchError

        here = featureset_id(model.feature_names)  # unknown names raise UnknownNameError
        if here != model.featureset_id:
            raise FeaturesetMismatchError(
                f"model {model.version} was trained on featureset {model.featureset_id} but "
                f"the serving code computes {here} for the same feature names (a feature "
                "definition changed); retrain the model"
            )
        if self.expected_featureset_id and model.featureset_id != self.expected_featureset_id:
            raise FeaturesetMismatchError(
                f"model {model.version} was trained on featureset {model.featureset_id} but "
                f"the server is configured for {self.expected_featureset_id}"
            )
        if model.manifest.base_margin is not None:
            from ltr.fusion import FUSIONS

            name = model.manifest.base_margin_name
            if name not in FUSIONS:
                from ltr.errors import unknown_name

                raise unknown_name("fusion", str(name), list(FUSIONS))

    def set_model(self, model: RankModel | None) -> None:
        """Serve ``model`` from the next request on (None = rank by RRF)."""
        if model is not None:
            self.check_model(model)
        self._model = model

    async def swap_backend(self, backend: RetrievalBackend, version: str) -> None:
        """Serve a new index version; the old backend closes after its last request."""
        old = self._index
        self._index = self._make_state(backend, version)
        old.retired = True
        await old.maybe_close()

    async def close(self) -> None:
        self._index.retired = True
        await self._index.maybe_close()

    # -- the one query -> features path ---------------------------------------------------
    def _behavior_source(
        self, query: str, names: Sequence[str], now: float
    ) -> Callable[[CandidateSet], Mapping[str, np.ndarray]] | None:
        if not set(names) & set(BEHAVIOR_FEATURES):
            return None
        agg = self.aggregates
        if agg is None:  # no event store: behavior features are missing, i.e. NaN
            return lambda cs: {k: np.full(len(cs), np.nan) for k in AGGREGATE_KEYS}
        return lambda cs: agg.arrays(query, cs.ids, now=now)

    async def featurize(
        self,
        query: str,
        filters: Filters | None = None,
        query_id: str | None = None,
        feature_names: Sequence[str] | None = None,
        now: float | None = None,
        generator: Generator | None = None,
    ) -> Featurized:
        """search.featurize.featurize with this pipeline's generator and behavior data.

        ``now`` fixes the time behavior aggregates are decayed to (replaying a logged
        request with its logged ts reproduces the served vectors exactly).
        """
        names = tuple(feature_names) if feature_names is not None else self.feature_names
        now = time.time() if now is None else now
        return await featurize(
            generator or self._index.generator,
            query,
            names,
            filters=filters,
            query_id=query_id,
            behavior=self._behavior_source(query, names, now),
        )

    # -- search ---------------------------------------------------------------------------
    def validate(self, req: SearchRequest, max_query_chars: int) -> None:
        if not isinstance(req.q, str) or not req.q.strip():
            raise InvalidQueryError("q: the query is empty")
        if len(req.q) > max_query_chars:
            raise InvalidQueryError(f"q: the query is longer than {max_query_chars} characters")
        if not 1 <= req.k <= self.config.max_k:
            raise InvalidParameterError("k", f"must be between 1 and {self.config.max_k}")
        if not 0 <= req.offset <= self.config.max_offset:
            raise InvalidParameterError("offset", f"must be between 0 and {self.config.max_offset}")

    async def search(
        self,
        req: SearchRequest,
        request_id: str | None = None,
        model: RankModel | Serving | None = SERVING,
        *,
        interleave: RankModel | None = None,
    ) -> SearchResult:
        """Rank the candidates of ``req.q`` and return one page (+ the impression to log).

        ``model``: rank by this model (checked with ``check_model``) or None = RRF instead of
        the serving one (the workbench's side-by-side view, an experiment's split arm).
        ``interleave``: a second model whose ranking is merged into the first page by team
        draft (search.experiments), each position's team logged with the impression.
        """
        state = self._index
        state.inflight += 1
        self._searching += 1
        alone = OVERLAP.set(self._searching == 1 and _loop_idle())  # kNN beside BM25
        try:
            chosen = self._model if model is SERVING else model
            rid = request_id or uuid.uuid4().hex
            return await self._search(req, rid, state, chosen, interleave)
        finally:
            OVERLAP.reset(alone)
            self._searching -= 1
            state.inflight -= 1
            await state.maybe_close()

    async def score(
        self, model: RankModel, cs: CandidateSet, X: np.ndarray
    ) -> tuple[list[int], np.ndarray] | None:
        """``model``'s ranking of scored candidates (indexes into ``cs``, best first) and its
        scores; None when the model fails (a second opinion never degrades the page)."""
        degraded: list[str] = []
        scores, _, used = await self._score(model, cs, X, degraded)
        if used is None:
            return None
        return _one_per_id(cs, self._order(cs, scores, used)), scores

    def rank_blocking(
        self, model: RankModel, cs: CandidateSet, X: np.ndarray
    ) -> tuple[list[int], np.ndarray]:
        """``score`` without the event loop or its timeout, for a background thread (a
        shadow model ranks after the response); raises what the model raises."""
        bm = model.margin(cs)  # the manifest's fusion and params (ltr.model)
        scores = np.asarray(model.predict(X, bm), dtype=np.float64)
        return _one_per_id(cs, self._order(cs, scores, model)), scores

    async def _search(
        self,
        req: SearchRequest,
        rid: str,
        state: _IndexState,
        model: RankModel | None,
        interleave: RankModel | None = None,
    ) -> SearchResult:
        t_start = time.perf_counter()
        now = time.time()
        with collect() as timings:
            names = model.feature_names if model is not None else self.default_features
            fsid = model.featureset_id if model is not None else featureset_id(names)
            t0 = time.perf_counter()
            fz = await self._featurize_in_budget(req, names, now, state.generator)
            timings["features"] = max(
                0.0, time.perf_counter() - t0 - timings.get("candidates", 0.0)
            )
            degraded = list(fz.degraded)
            cs, X = fz.cs, fz.X
            scores, base_margin, used_model = await self._score(model, cs, X, degraded)
            ranked = _one_per_id(cs, self._order(cs, scores, used_model))
            page = ranked[req.offset : req.offset + req.k]
            teams: tuple[int, ...] | None = None
            candidate_failed = False
            if interleave is not None and req.offset == 0 and page:
                other = await self.score(interleave, cs, X)
                if other is None:
                    candidate_failed = True
                else:
                    page, teams = self._interleave(cs, ranked, other[0], req.k, rid)
            hits = await self._hits(state, cs, page, scores, req.offset)
            if req.explain and used_model is not None:
                top = page[: self.config.explain_max_hits]
                await self._explain(used_model, X, base_margin, top, hits)
            if req.explain and page:
                _fusion_ranks(cs, page, hits)
                if self.aggregates is not None:
                    self._behavior(req.q, hits, now)
            # an empty page is logged too (a request with n = 0 and no impression rows):
            # the drift report counts zero-result queries; readers of served rows join
            # the impressions table and never see it
            served = tuple(cs.ids[i] for i in page)
            impression = Impression(
                request_id=rid,
                ts=now,
                query=req.q,
                query_id=req.query_id,
                model_version=used_model.version if used_model is not None else None,
                featureset_id=fsid,
                feature_names=tuple(names),
                offset=req.offset,
                doc_ids=served,
                positions=tuple(range(req.offset + 1, req.offset + 1 + len(page))),
                scores=np.asarray(scores, dtype=np.float64)[page],
                features=np.ascontiguousarray(X.reshape(len(cs), len(names))[page]),
                teams=teams,
            )
            timings["total"] = time.perf_counter() - t_start
            return SearchResult(
                request_id=rid,
                query=req.q,
                model_version=used_model.version if used_model is not None else None,
                featureset_id=fsid,
                hits=hits,
                degraded=degraded,
                took_ms=timings["total"] * 1000.0,
                timings_ms={k: v * 1000.0 for k, v in timings.items()},
                candidates=len(cs),
                impression=impression,
                scored=Scored(cs, X, served),
                candidate_failed=candidate_failed,
            )

    @staticmethod
    def _interleave(
        cs: CandidateSet, ranked: list[int], other: list[int], k: int, rid: str
    ) -> tuple[list[int], tuple[int, ...]]:
        """Team draft of the first page: production (team 0) and candidate (team 1); the
        coin flips are seeded by the request id, so a logged page can be redrawn."""
        where = {cs.ids[i]: i for i in ranked}
        ids, teams = team_draft(
            [cs.ids[i] for i in ranked[:k]], [cs.ids[i] for i in other[:k]], k, random.Random(rid)
        )
        return [where[d] for d in ids], tuple(teams)

    async def _featurize_in_budget(
        self, req: SearchRequest, names: Sequence[str], now: float, generator: Generator
    ) -> Featurized:
        """Candidates and features under the whole-stage timeout (candidates_timeout_ms)."""
        try:
            async with asyncio.timeout(self.config.candidates_timeout_ms / 1000.0):
                return await self.featurize(
                    req.q,
                    filters=req.filters(),
                    query_id=req.query_id,
                    feature_names=names,
                    now=now,
                    generator=generator,
                )
        except TimeoutError:
            raise BackendError(
                f"candidate generation took longer than {self.config.candidates_timeout_ms:g} ms"
            ) from None

    def _order(self, cs: CandidateSet, scores: np.ndarray, model: RankModel | None) -> np.ndarray:
        """Best first (ties: union order). With ``rerank_depth`` R > 0 the model reorders
        only the fusion top-R; the rest follow in fusion order (a model trained on logged
        pages never saw candidates deeper than the pages it was shown)."""
        n = len(cs)
        by_score = np.lexsort((np.arange(n), -scores))
        depth = self.config.rerank_depth
        if model is None or depth <= 0 or n <= depth:
            return by_score
        from ltr.fusion import fusion_score

        fused = np.asarray(fusion_score(cs, "rrf", {}), dtype=np.float64)
        by_fusion = np.lexsort((np.arange(n), -fused))
        top = by_fusion[:depth]
        top = top[np.lexsort((top, -scores[top]))]
        return np.concatenate([top, by_fusion[depth:]])

    async def _score(
        self,
        model: RankModel | None,
        cs: CandidateSet,
        X: np.ndarray,
        degraded: list[str],
    ) -> tuple[np.ndarray, np.ndarray | None, RankModel | None]:
        """Model scores (with the manifest's base margin) or RRF; a failing model degrades."""
        from ltr.fusion import fusion_score

        if len(cs) == 0:
            return np.zeros(0), None, model
        if model is None:
            return np.asarray(fusion_score(cs, "rrf", {}), dtype=np.float64), None, None
        t0 = time.perf_counter()
        bm = model.margin(cs)  # the manifest's fusion and params (ltr.model)
        try:
            if self.config.model_inline and len(cs) * model.trees <= INLINE_TREE_WALKS:
                pred = model.predict(X, bm)  # cheaper than the thread hop; no timeout
            else:
                async with asyncio.timeout(self.config.model_timeout_ms / 1000.0):
                    pred = await asyncio.to_thread(model.predict, X, bm)
            scores = np.asarray(pred, dtype=np.float64)
            used: RankModel | None = model
        except Exception as e:  # includes TimeoutError: serve the fusion ranking instead
            log.error("model %s failed (%s); ranking by fusion", model.version, e)
            degraded.append("model")
            scores = bm if bm is not None else np.asarray(fusion_score(cs, "rrf", {}), np.float64)
            used = None
        record("model", time.perf_counter() - t0)
        return scores, bm, used

    async def _hits(
        self,
        state: _IndexState,
        cs: CandidateSet,
        page: list[int],
        scores: np.ndarray,
        offset: int,
    ) -> list[dict[str, Any]]:
        ids = [cs.ids[i] for i in page]
        docs = await state.backend.fetch(ids) if ids else []
        hits = []
        for pos, (i, doc) in enumerate(zip(page, docs, strict=True), start=offset + 1):
            retrievers = {}
            for r in RETRIEVERS:
                s = cs.scores.get(r)
                rk = cs.ranks.get(r)
                retrievers[r] = {
                    "score": _num(float(s[i])) if s is not None else None,
                    "rank": (
                        int(rk[i]) if rk is not None and math.isfinite(float(rk[i])) else None
                    ),
                }
            hits.append(
                {
                    "id": cs.ids[i],
                    "score": _num(float(scores[i])),
                    "position": pos,
                    "fields": self._fields(doc),
                    "retrievers": retrievers,
                }
            )
        return hits

    def _behavior(self, query: str, hits: list[dict[str, Any]], now: float) -> None:
        """The click history of each hit (explain only): the aggregates the behavior
        features are computed from, for this query (``qd_*``) and the document (``d_*``)."""
        assert self.aggregates is not None
        arrays = self.aggregates.arrays(query, [str(h["id"]) for h in hits], now=now)
        for i, h in enumerate(hits):
            h["behavior"] = {k: _num(float(arrays[k][i])) for k in AGGREGATE_KEYS}

    def _fields(self, doc: Document | None) -> dict[str, Any]:
        if doc is None:  # the index changed under the request; the id is still right
            return {}
        body = doc.body
        if self.config.body_chars >= 0 and len(body) > self.config.body_chars:
            body = body[: self.config.body_chars].rstrip() + "…"
        out: dict[str, Any] = {"title": doc.title, "body": body, "category": doc.category}
        out.update({k: v for k, v in doc.extra.items() if k not in out})
        out.update({k: _num(v) for k, v in doc.attrs.items() if k not in out})
        return out

    async def _explain(
        self,
        model: RankModel,
        X: np.ndarray,
        base_margin: np.ndarray | None,
        top: list[int],
        hits: list[dict[str, Any]],
    ) -> None:
        """SHAP contributions of the ``top`` hits (the first explain_max_hits of the page),
        computed in a thread like predict: exact TreeSHAP costs ~1 ms per row, and a page of
        100 explained on the event loop stalled every other request, /health included."""
        if not top:
            return
        bm = None if base_margin is None else base_margin[top]
        contribs = await asyncio.to_thread(model.contributions, X[top], bm)
        names = model.feature_names
        for h, row in zip(hits[: len(top)], contribs, strict=True):
            c = {names[j]: float(row[j]) for j in range(len(names))}
            c["_bias"] = float(row[-1])  # includes the base margin (the fusion score)
            h["contributions"] = c


def _fusion_ranks(cs: CandidateSet, page: list[int], hits: list[dict[str, Any]]) -> None:
    """Each hit's RRF score and rank among all candidates (explain only): where fusion
    alone would have put it, beside each retriever's rank."""
    from ltr.fusion import fusion_score

    fused = np.asarray(fusion_score(cs, "rrf", {}), dtype=np.float64)
    order = np.lexsort((np.arange(len(cs)), -fused))
    rank = np.empty(len(cs), dtype=np.int64)
    rank[order] = np.arange(1, len(cs) + 1)
    for i, h in zip(page, hits, strict=True):
        h["fusion"] = {"name": "rrf", "score": _num(float(fused[i])), "rank": int(rank[i])}


def _one_per_id(cs: CandidateSet, order: np.ndarray) -> list[int]:
    """Business rule: one hit per document id, its best-ranked candidate (the union is
    unique; this stays defensive)."""
    if len(set(cs.ids)) == len(cs):
        return list(order.tolist())
    seen: set[str] = set()
    ranked = []
    for i in order.tolist():
        if cs.ids[i] not in seen:
            seen.add(cs.ids[i])
            ranked.append(i)
    return ranked
