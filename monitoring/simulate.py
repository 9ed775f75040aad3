"""A seeded simulated search log, to measure how often the drift report is wrong.

Why simulated: calibrating alarms needs many windows where the truth is known -- stable
windows (same query mix, same users, another seed) and windows with a shift of a known size.
The world is shaped like real traffic, because that is what makes naive drift tests alarm:
Zipf query traffic (rows are clustered by query, not independent), ten served rows per
request, per-query text features, candidates from two retrievers, documents with catalog
attributes, click-history features that exist only for documents with history, and
position-biased clicks (PBM), and queries that find nothing (empty first pages: a share
``zero_rate`` of the traffic that moves from window to window by ``zero_jitter``, as the mix
of failing queries does from day to day). The output has the columns of
``search.events.SqliteEventStore.served_features``, so every part of the report runs on it,
and ``window_pages`` adds the window's (first pages, empty ones) as
``SqliteEventStore.first_pages`` gives them (empty pages have no rows).

Shifts (``Shift(kind, size)``; size 0 = stable):

- ``query_mix``: a share ``size`` of the traffic goes to new, short head queries;
- ``retriever``: the dense retriever fails on a share ``size`` of requests (the page then
  comes from BM25 alone);
- ``catalog``: a share ``size`` of the served documents are new (no rating or reviews yet,
  other prices);
- ``clicks``: users' click behaviour changes: a share ``size`` of them click what the model
  ranks worst (attractiveness inverted) -- concept drift;
- ``zero_results``: the index loses documents: a share ``size`` of the requests that found
  something now get an empty page (the zero-result rate rises by about ``size``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SHIFT_KINDS: tuple[str, ...] = ("query_mix", "retriever", "catalog", "clicks", "zero_results")

# Real feature names, so ltr.features decides each one's group (and method/threshold).
SIM_FEATURES: tuple[str, ...] = (
    "bm25",
    "bm25_rank",
    "dense",
    "dense_rank",
    "dense_cosine",
    "both_retrieved",
    "cov_title",
    "query_len",
    "rrf",
    "rating",
    "log_review_count",
    "log_price",
    "qd_ctr",
    "qd_log_clicks",
    "d_ctr",
    "d_log_impressions",
)
DEPTH = 10
# Empty first pages: e-commerce search logs commonly report 5-15% of searches finding nothing;
# the low end, moving by 15% (relative, one standard deviation) between windows.
ZERO_RATE = 0.05
ZERO_JITTER = 0.15


@dataclass(frozen=True)
class Shift:
    kind: str = "none"  # "none" or one of SHIFT_KINDS
    size: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("none", *SHIFT_KINDS):
            raise ValueError(f"unknown shift {self.kind!r}; valid: {', '.join(SHIFT_KINDS)}")
        if not 0.0 <= self.size <= 1.0:
            raise ValueError(f"shift size must be in [0, 1], got {self.size}")


class World:
    """Queries, documents and users; ``window`` draws one window of served traffic."""

    def __init__(
        self,
        n_queries: int = 3000,
        n_docs: int = 20_000,
        seed: int = 0,
        zero_rate: float = ZERO_RATE,
        zero_jitter: float = ZERO_JITTER,
    ) -> None:
        if not 0.0 <= zero_rate < 1.0 or zero_jitter < 0.0:
            raise ValueError("zero_rate must be in [0, 1) and zero_jitter >= 0")
        self.zero_rate, self.zero_jitter = zero_rate, zero_jitter
        rng = np.random.default_rng(seed)
        self.n_queries, self.n_docs = n_queries, n_docs
        # traffic: Zipf over query ranks (head queries get most of the searches)
        w = 1.0 / np.arange(1, n_queries + 1) ** 1.05
        self.traffic = w / w.sum()
        self.q_len = np.clip(rng.poisson(3.0, n_queries) + 1, 1, 12)
        self.q_match = rng.normal(0.0, 1.0, n_queries)  # how well the catalog covers it
        # each query's served documents (same candidates every time it is searched)
        self.q_docs = rng.integers(0, n_docs, (n_queries, DEPTH))
        self.q_rel = rng.beta(1.2, 2.5, (n_queries, DEPTH))
        self.q_src = rng.choice(3, (n_queries, DEPTH), p=[0.25, 0.25, 0.5])  # bm25/dense/both
        self.d_price = rng.lognormal(3.0, 1.0, n_docs)
        self.d_rating = np.where(rng.random(n_docs) < 0.1, np.nan, rng.uniform(1, 5, n_docs))
        self.d_reviews = np.where(np.isnan(self.d_rating), 0, rng.poisson(30, n_docs))
        self.d_pop = rng.pareto(1.5, n_docs)
        self.seed = seed

    def window(self, n_requests: int, seed: int, shift: Shift = Shift()) -> pd.DataFrame:
        """``n_requests`` served first pages of 10, with clicks, as the impression log has."""
        return self.window_pages(n_requests, seed, shift)[0]

    def window_pages(
        self, n_requests: int, seed: int, shift: Shift = Shift()
    ) -> tuple[pd.DataFrame, tuple[int, int]]:
        """``window`` and its (first pages, empty ones): the ``n_requests`` that found
        something (fewer under a ``zero_results`` shift) plus the queries that found nothing
        (their own seeded stream: the served rows are the same as without them)."""
        rng = np.random.default_rng([self.seed, seed])
        # the shift draws from its own stream: the same seed gives the same window with
        # and without a shift, apart from the shifted part
        srng = np.random.default_rng([self.seed, seed, 1])
        n = n_requests
        q = rng.choice(self.n_queries, n, p=self.traffic)
        q_len = self.q_len[q].astype(float)
        q_match = self.q_match[q]
        new_query = np.zeros(n, bool)
        if shift.kind == "query_mix":  # new short head queries, matched differently
            new_query = srng.random(n) < shift.size
            q_len[new_query] = srng.choice([1.0, 2.0], int(new_query.sum()))
            q_match[new_query] = srng.normal(-1.0, 0.7, int(new_query.sum()))
        docs = self.q_docs[q].copy()
        rel = self.q_rel[q].copy()
        src = self.q_src[q].copy()
        if new_query.any():  # new queries, new candidates
            k = int(new_query.sum())
            docs[new_query] = srng.integers(0, self.n_docs, (k, DEPTH))
            rel[new_query] = srng.beta(1.2, 2.5, (k, DEPTH))
        if shift.kind == "retriever":  # dense fails: the page comes from BM25 alone
            failed = srng.random(n) < shift.size
            src[failed] = 0
        rows = n * DEPTH
        qr = np.repeat(np.arange(n), DEPTH)
        rel_f, src_f = rel.ravel(), src.ravel()
        doc_f = docs.ravel()
        from_bm25, from_dense = src_f != 1, src_f != 0
        noise = rng.normal(0.0, 1.0, rows)
        lenr = np.repeat(q_len, DEPTH)
        matchr = np.repeat(q_match, DEPTH)
        bm25 = np.where(from_bm25, 2.0 * lenr + 3.0 * rel_f + 1.5 * matchr + noise + 4.0, np.nan)
        cos = 0.35 + 0.25 * rel_f + 0.04 * matchr + 0.05 * rng.normal(0.0, 1.0, rows)
        dense = np.where(from_dense, cos, np.nan)
        bm25_rank = np.where(from_bm25, rng.integers(1, 30, rows), np.nan)
        dense_rank = np.where(from_dense, rng.integers(1, 30, rows), np.nan)
        rrf = np.nan_to_num(1 / (60 + bm25_rank)) + np.nan_to_num(1 / (60 + dense_rank))
        cov = np.clip(np.round((0.4 + 0.4 * rel_f + 0.1 * matchr) * lenr) / lenr, 0, 1)
        price = self.d_price[doc_f].copy()
        rating = self.d_rating[doc_f].copy()
        reviews = self.d_reviews[doc_f].astype(float)
        if shift.kind == "catalog":  # new documents: no rating/reviews yet, other prices
            new_doc = srng.random(rows) < shift.size
            price[new_doc] = srng.lognormal(3.8, 1.0, int(new_doc.sum()))
            rating[new_doc] = np.nan
            reviews[new_doc] = 0.0
        # click history: documents and (query, doc) pairs seen before; head queries more
        pop = self.d_pop[doc_f]
        has_d = rng.random(rows) < 1.0 - np.exp(-3.0 * pop - 0.5)
        q_hist = np.repeat(np.log1p(self.traffic[q] * 5e4), DEPTH)
        has_qd = rng.random(rows) < np.clip(q_hist / 6.0, 0.02, 0.95)
        if shift.kind == "query_mix":
            has_qd &= ~np.repeat(new_query, DEPTH)
        d_imp = np.where(has_d, np.log1p(rng.poisson(20 + 200 * pop)), np.nan)
        d_ctr = np.where(has_d, rng.beta(2 + 4 * rel_f, 12), np.nan)
        qd_clicks = np.where(has_qd, np.log1p(rng.poisson(1 + 10 * rel_f * q_hist)), np.nan)
        qd_ctr = np.where(has_qd, rng.beta(1 + 6 * rel_f, 8), np.nan)
        score = 1.2 * rel_f + 0.15 * noise
        # served order: by the model score within each request
        order = np.lexsort((-score, qr))
        position = np.tile(np.arange(1, DEPTH + 1), n)
        # clicks: PBM, examination 1/position, attractiveness from relevance
        attract = 0.05 + 0.85 * rel_f
        if shift.kind == "clicks":
            flipped = np.repeat(srng.random(n) < shift.size, DEPTH)
            attract = np.where(flipped, 0.9 - 0.85 * rel_f, attract)
        feats = {
            "bm25": bm25,
            "bm25_rank": bm25_rank,
            "dense": dense,
            "dense_rank": dense_rank,
            "dense_cosine": cos,
            "both_retrieved": (from_bm25 & from_dense).astype(float),
            "cov_title": cov,
            "query_len": lenr,
            "rrf": rrf,
            "rating": rating,
            "log_review_count": np.log1p(reviews),
            "log_price": np.log1p(price),
            "qd_ctr": qd_ctr,
            "qd_log_clicks": qd_clicks,
            "d_ctr": d_ctr,
            "d_log_impressions": d_imp,
        }
        frame = pd.DataFrame({k: np.asarray(v, dtype=np.float32)[order] for k, v in feats.items()})
        exam = 1.0 / position
        clicked = (rng.random(rows) < exam * attract[order]).astype("int64")
        qtext = np.where(new_query, np.char.add("new ", q.astype(str)), q.astype(str))
        meta = pd.DataFrame(
            {
                "request_id": np.char.add(f"{seed}-", qr.astype(str)),
                "ts": np.repeat(np.arange(n, dtype=float), DEPTH),
                "query": np.repeat(np.char.add("q", qtext), DEPTH),
                "query_id": None,
                "doc_id": np.char.add("d", doc_f[order].astype(str)),
                "position": position,
                "model_version": "v0001",
                "featureset_id": "sim",
                "score": score[order],
                "clicked": clicked,
            }
        )
        out = pd.concat([meta, frame], axis=1)
        zrng = np.random.default_rng([self.seed, seed, 2])
        rate = min(self.zero_rate * float(np.exp(zrng.normal(0.0, self.zero_jitter))), 0.9)
        no_hit = int(zrng.binomial(n, rate / (1.0 - rate)))  # beside the n that found some
        lost = np.zeros(n, bool)
        if shift.kind == "zero_results":  # the index lost what these requests found
            lost = srng.random(n) < shift.size
            out = out[~lost[qr[order]]].reset_index(drop=True)
        return out, (n + no_hit, no_hit + int(lost.sum()))
