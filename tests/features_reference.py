"""FROZEN REFERENCE: ltr/features.py as it was before term-id membership (commit 2a8db46).

The slow set-based implementation (one Python set per candidate and field per request), kept
only so tests/test_features_parity.py can prove the vectorized ltr.features computes the
same values bit for bit. Do not import it outside tests; do not "fix" it.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ltr.errors import LTRError, unknown_name
from ltr.types import BM25, DENSE, CandidateSet

FeatureFn = Callable[[CandidateSet], np.ndarray]

# Beta(alpha, beta) prior for smoothed click-through rates: a prior mean of 0.1 with the
# weight of 10 impressions. CTR on a handful of impressions is mostly noise; the prior pulls
# it towards a typical CTR until evidence accumulates. Changing it changes the features'
# math, so it is part of the behavior features' version string.
CTR_PRIOR_ALPHA = 1.0
CTR_PRIOR_BETA = 9.0

RRF_K = 60.0


@dataclass(frozen=True)
class Feature:
    """A named, versioned, pure feature function."""

    name: str
    group: str  # "text" | "static" | "behavior"
    fn: FeatureFn
    version: str = "1"
    doc: str = ""


# --------------------------------------------------------------------------------------
# Per-CandidateSet derived data shared by many features (term matches, lengths...).
# Computed once per CandidateSet; a small identity-keyed LRU holds strong references so an
# id() cannot be reused while its entry is cached.


class _Derived:
    """Lazily computed intermediate arrays of one CandidateSet."""

    def __init__(self, cs: CandidateSet) -> None:
        self.cs = cs
        self.n = len(cs.ids)
        # distinct query terms in first-occurrence order
        self.qterms: tuple[str, ...] = tuple(dict.fromkeys(cs.query_terms))
        self.qidf = np.array([cs.idf.get(t, np.nan) for t in self.qterms], dtype=np.float64)
        self._match: dict[str, np.ndarray] = {}
        self._len: dict[str, np.ndarray] = {}
        self._any: np.ndarray | None = None
        self._prf: dict[str, frozenset[str]] = {}
        self._hits: dict[str, list[set[str]]] = {}

    def fields(self) -> tuple[str, ...]:
        return tuple(self.cs.doc_terms)

    def match(self, field: str) -> np.ndarray | None:
        """[n, Q] bool: query term j occurs in the candidate's field; None if field absent."""
        if field not in self.cs.doc_terms:
            return None
        m = self._match.get(field)
        if m is None:
            q = len(self.qterms)
            m = np.zeros((self.n, q), dtype=bool)
            if q:
                index = {t: j for j, t in enumerate(self.qterms)}
                qset = index.keys()
                rows: list[int] = []
                cols: list[int] = []
                for i, hits in enumerate(self.hits(field) or ()):
                    for t in qset & hits:
                        rows.append(i)
                        cols.append(index[t])
                m[rows, cols] = True
            self._match[field] = m
        return m

    def prf_vocab(self, field: str) -> frozenset[str]:
        """Feedback vocabulary of a field (see _prf_terms), cached."""
        v = self._prf.get(field)
        if v is None:
            v = _prf_terms(self.cs, field, PRF_MIN_DOCS.get(field, 2))
            self._prf[field] = v
        return v

    def hits(self, field: str) -> list[set[str]] | None:
        """Per candidate, its field's terms that matter to any feature (query terms and
        feedback vocabulary). The one unavoidable loop over candidates: a C-level set
        intersection that walks each document's terms once, shared by every feature."""
        if field not in self.cs.doc_terms:
            return None
        h = self._hits.get(field)
        if h is None:
            vocab = set(self.qterms)
            for f in PRF_MIN_DOCS:
                if f in self.cs.doc_terms:
                    vocab |= self.prf_vocab(f)
            inter = vocab.intersection
            h = [inter(t) for t in self.cs.doc_terms[field]]
            self._hits[field] = h
        return h

    def match_any(self) -> np.ndarray:
        """[n, Q] bool: query term j occurs in any text field."""
        if self._any is None:
            acc = np.zeros((self.n, len(self.qterms)), dtype=bool)
            for f in self.fields():
                m = self.match(f)
                if m is not None:
                    acc |= m
            self._any = acc
        return self._any

    def length(self, field: str) -> np.ndarray | None:
        if field not in self.cs.doc_terms:
            return None
        a = self._len.get(field)
        if a is None:
            a = np.fromiter((len(t) for t in self.cs.doc_terms[field]), np.float64, self.n)
            self._len[field] = a
        return a


_CACHE: OrderedDict[int, _Derived] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def _derived(cs: CandidateSet) -> _Derived:
    key = id(cs)
    with _CACHE_LOCK:
        d = _CACHE.get(key)
        if d is not None and d.cs is cs:
            _CACHE.move_to_end(key)
            return d
    d = _Derived(cs)
    with _CACHE_LOCK:
        _CACHE[key] = d
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return d


# --------------------------------------------------------------------------------------
# helpers


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan, dtype=np.float64)


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _score(cs: CandidateSet, retriever: str) -> np.ndarray:
    s = cs.scores.get(retriever)
    return _nan(len(cs.ids)) if s is None else _f64(s)


def _rank(cs: CandidateSet, retriever: str) -> np.ndarray:
    r = cs.ranks.get(retriever)
    return _nan(len(cs.ids)) if r is None else _f64(r)


def _nanmax(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.max()) if finite.size else float("nan")


def _div_by_max(a: np.ndarray) -> np.ndarray:
    """a / max over the query's candidates; NaN if no positive max (nothing to compare)."""
    m = _nanmax(a)
    if not np.isfinite(m) or m <= 0:
        return _nan(a.shape[0])
    return a / m


def _field_bm25(cs: CandidateSet, field: str) -> np.ndarray:
    a = cs.field_bm25.get(field)
    return _nan(len(cs.ids)) if a is None else _f64(a)


def _fields_sum(cs: CandidateSet) -> np.ndarray:
    if not cs.field_bm25:
        return _nan(len(cs.ids))
    return np.sum([_f64(a) for a in cs.field_bm25.values()], axis=0)


def rrf_scores(cs: CandidateSet, k: float = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion over the retrievers' 1-based ranks (a missing rank adds 0)."""
    out = np.zeros(len(cs.ids), dtype=np.float64)
    for r in cs.ranks.values():
        rr = _f64(r)
        out += np.where(np.isfinite(rr), 1.0 / (k + np.nan_to_num(rr, nan=0.0)), 0.0)
    return out


# --------------------------------------------------------------------------------------
# text features


def _coverage(field: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        d = _derived(cs)
        m = d.match(field)
        if m is None or not d.qterms:
            return _nan(d.n)
        return m.mean(axis=1)

    return fn


def _coverage_any(cs: CandidateSet) -> np.ndarray:
    d = _derived(cs)
    if not d.qterms:
        return _nan(d.n)
    return d.match_any().mean(axis=1)


def _idf_weights(d: _Derived) -> np.ndarray | None:
    w = np.nan_to_num(d.qidf, nan=0.0)
    w = np.maximum(w, 0.0)
    return w if w.sum() > 0 else None


def _idf_share(field: str | None) -> FeatureFn:
    """Share of the query's IDF mass matched in a field (None = any field)."""

    def fn(cs: CandidateSet) -> np.ndarray:
        d = _derived(cs)
        w = _idf_weights(d)
        m = d.match_any() if field is None else d.match(field)
        if w is None or m is None:
            return _nan(d.n)
        return (m @ w) / w.sum()

    return fn


def _idf_overlap(cs: CandidateSet) -> np.ndarray:
    """Sum of IDF of the distinct query terms present in any field (unnormalized)."""
    d = _derived(cs)
    if not d.qterms:
        return _nan(d.n)
    return d.match_any() @ np.nan_to_num(d.qidf, nan=0.0)


def _matched_idf(reduce: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        d = _derived(cs)
        if not d.qterms:
            return _nan(d.n)
        m = d.match_any() & np.isfinite(d.qidf)[None, :]
        vals = np.where(m, np.nan_to_num(d.qidf, nan=0.0)[None, :], np.nan)
        out = _nan(d.n)
        has = m.any(axis=1)
        if has.any():
            red = np.max if reduce == "max" else np.min
            out[has] = red(
                np.where(m[has], vals[has], np.inf if reduce == "min" else -np.inf), axis=1
            )
        return out

    return fn


def _title_phrase(cs: CandidateSet) -> np.ndarray:
    """1 if the analyzed query terms occur contiguously in the analyzed title."""
    n = len(cs.ids)
    title = cs.doc_terms.get("title")
    if title is None or not cs.query_terms:
        return _nan(n)
    needle = " " + " ".join(cs.query_terms) + " "
    return np.fromiter(
        (needle in (" " + " ".join(t) + " ") for t in title), dtype=np.float64, count=n
    )


def _title_jaccard(cs: CandidateSet) -> np.ndarray:
    """Jaccard(query terms, title terms): near-duplicates of the query score close to 1."""
    d = _derived(cs)
    m = d.match("title")
    ln = d.length("title")
    if m is None or ln is None or not d.qterms:
        return _nan(d.n)
    title = cs.doc_terms["title"]
    distinct = np.fromiter((len(set(t)) for t in title), np.float64, d.n)
    inter = m.sum(axis=1).astype(np.float64)
    union = distinct + len(d.qterms) - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), np.nan)


def _query_bigrams(cs: CandidateSet) -> tuple[str, ...]:
    """Distinct adjacent pairs of analyzed query terms, as ' a b ' search strings."""
    t = cs.query_terms
    return tuple(dict.fromkeys(f" {a} {b} " for a, b in itertools.pairwise(t) if a != b))


def _bigram_share(field: str) -> FeatureFn:
    """Share of the query's term bigrams found adjacent in the field (a proximity signal
    that bag-of-words BM25 and a single document vector both miss); NaN for 1-term queries."""

    def fn(cs: CandidateSet) -> np.ndarray:
        d = _derived(cs)
        bigrams = _query_bigrams(cs)
        m = d.match(field)
        if not bigrams or m is None:
            return _nan(d.n)
        out = np.zeros(d.n, dtype=np.float64)
        terms = cs.doc_terms[field]
        # only documents holding >= 2 distinct query terms can contain a bigram
        for i in np.flatnonzero(m.sum(axis=1) >= 2):
            text = " " + " ".join(terms[i]) + " "
            out[i] = sum(b in text for b in bigrams)
        return out / len(bigrams)

    return fn


PRF_DOCS = 5  # pseudo-relevance feedback: the top RRF candidates taken as "relevant"
# field -> in how many of the PRF_DOCS a term must occur to join the feedback vocabulary
PRF_MIN_DOCS = {"title": 2, "body": 3}


def _prf_terms(cs: CandidateSet, field: str, min_docs: int) -> frozenset[str]:
    """Terms of ``field`` shared by >= ``min_docs`` of the top PRF_DOCS RRF candidates,
    query terms excluded: the vocabulary the fused top results agree on."""
    terms = cs.doc_terms.get(field)
    if terms is None or len(cs.ids) == 0:
        return frozenset()
    top = np.argsort(-rrf_scores(cs), kind="stable")[:PRF_DOCS]
    counts: dict[str, int] = {}
    for i in top:
        for t in set(terms[i]):
            counts[t] = counts.get(t, 0) + 1
    q = set(cs.query_terms)
    return frozenset(t for t, c in counts.items() if c >= min_docs and t not in q)


def _prf_overlap(src: str) -> FeatureFn:
    """Share of the feedback vocabulary (see _prf_terms) present in the candidate's title
    or body: the cluster hypothesis -- documents like the consensus top results tend to be
    relevant. Uses only the retrievers' fused ranking, so it is available at serving time."""

    def fn(cs: CandidateSet) -> np.ndarray:
        d = _derived(cs)
        fb = d.prf_vocab(src)
        body, title = d.hits("body"), d.hits("title")
        if not fb or body is None:
            return _nan(d.n)
        if title is None:
            return np.fromiter((len(fb & b) for b in body), np.float64, d.n) / len(fb)
        return np.fromiter(
            (len(fb & (b | t)) for b, t in zip(body, title, strict=True)), np.float64, d.n
        ) / len(fb)

    return fn


def _query_len(cs: CandidateSet) -> np.ndarray:
    return np.full(len(cs.ids), float(len(cs.query_terms)))


def _field_len(field: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        ln = _derived(cs).length(field)
        return _nan(len(cs.ids)) if ln is None else ln

    return fn


def _rank_agreement(cs: CandidateSet) -> np.ndarray:
    """|log2 rank_bm25 - log2 rank_dense|: 0 when both retrievers agree; NaN if one missed."""
    rb, rd = _rank(cs, BM25), _rank(cs, DENSE)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(np.log2(rb) - np.log2(rd))


def _both_retrieved(cs: CandidateSet) -> np.ndarray:
    return (np.isfinite(_rank(cs, BM25)) & np.isfinite(_rank(cs, DENSE))).astype(np.float64)


def _min_rank(cs: CandidateSet) -> np.ndarray:
    rb, rd = _rank(cs, BM25), _rank(cs, DENSE)
    out = np.fmin(rb, rd)  # fmin ignores a single NaN
    return out


def _cosine(cs: CandidateSet) -> np.ndarray:
    return _f64(cs.dense_cosine)


def _cosine_gap(cs: CandidateSet) -> np.ndarray:
    c = _f64(cs.dense_cosine)
    m = _nanmax(c)
    return c - m if np.isfinite(m) else _nan(c.shape[0])


def _cosine_z(cs: CandidateSet) -> np.ndarray:
    c = _f64(cs.dense_cosine)
    fin = c[np.isfinite(c)]
    if fin.size < 2 or fin.std() == 0:
        return _nan(c.shape[0])
    return (c - fin.mean()) / fin.std()


def _fields_sum_z(cs: CandidateSet) -> np.ndarray:
    s = _fields_sum(cs)
    fin = s[np.isfinite(s)]
    if fin.size < 2 or fin.std() == 0:
        return _nan(s.shape[0])
    return (s - fin.mean()) / fin.std()


def _rrf_norm(cs: CandidateSet) -> np.ndarray:
    return _div_by_max(rrf_scores(cs))


# --------------------------------------------------------------------------------------
# static features


def _static(name: str, log: bool) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        a = cs.static.get(name)
        if a is None:
            return _nan(len(cs.ids))
        v = _f64(a)
        if log:
            with np.errstate(invalid="ignore"):
                v = np.log1p(np.where(v >= 0, v, np.nan))
        return v

    return fn


# --------------------------------------------------------------------------------------
# behavior features (raw aggregates in cs.behavior; keys in docs/contracts.md)


def _beh(cs: CandidateSet, key: str) -> np.ndarray:
    a = cs.behavior.get(key)
    return _nan(len(cs.ids)) if a is None else _f64(a)


def _history_mask(cs: CandidateSet, level: str) -> np.ndarray:
    imp = _beh(cs, f"{level}_impressions")
    return np.isfinite(imp) & (imp > 0)


def _beh_count(level: str, key: str, log: bool = True) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        v = _beh(cs, f"{level}_{key}")
        v = np.where(_history_mask(cs, level), v, np.nan)
        return np.log1p(np.maximum(v, 0.0)) if log else v

    return fn


def smoothed_rate(
    clicks: np.ndarray,
    trials: np.ndarray,
    alpha: float = CTR_PRIOR_ALPHA,
    beta: float = CTR_PRIOR_BETA,
) -> np.ndarray:
    """Posterior mean of a Beta(alpha, beta) prior after ``clicks`` out of ``trials``."""
    return (clicks + alpha) / (trials + alpha + beta)


def _beh_rate(level: str, num: str, den: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        c, t = _beh(cs, f"{level}_{num}"), _beh(cs, f"{level}_{den}")
        ok = _history_mask(cs, level) & np.isfinite(c) & np.isfinite(t)
        out = _nan(len(cs.ids))
        out[ok] = smoothed_rate(c[ok], t[ok])
        return out

    return fn


# --------------------------------------------------------------------------------------
# the registry

FEATURES: dict[str, Feature] = {}


def _reg(name: str, group: str, fn: FeatureFn, doc: str, version: str = "1") -> None:
    FEATURES[name] = Feature(name=name, group=group, fn=fn, version=version, doc=doc)


_T = "text"
_reg("bm25", _T, lambda cs: _score(cs, BM25), "combined-field BM25 (NaN outside BM25 top-N)")
_reg("bm25_rank", _T, lambda cs: _rank(cs, BM25), "1-based BM25 rank (NaN if not retrieved)")
_reg("dense", _T, lambda cs: _score(cs, DENSE), "kNN score (NaN outside kNN top-N)")
_reg("dense_rank", _T, lambda cs: _rank(cs, DENSE), "1-based kNN rank (NaN if not retrieved)")
_reg("dense_cosine", _T, _cosine, "cosine(query, doc) for every candidate")
_reg("bm25_title", _T, lambda cs: _field_bm25(cs, "title"), "BM25 against the title field")
_reg("bm25_body", _T, lambda cs: _field_bm25(cs, "body"), "BM25 against the body field")
_reg("bm25_fields_sum", _T, _fields_sum, "sum of per-field BM25 over all text fields")
_reg("rrf", _T, rrf_scores, "reciprocal rank fusion, k=60")
_reg("cov_title", _T, _coverage("title"), "share of distinct query terms in the title")
_reg("cov_body", _T, _coverage("body"), "share of distinct query terms in the body")
_reg("cov_any", _T, _coverage_any, "share of distinct query terms in any field")
_reg("idf_overlap", _T, _idf_overlap, "sum of IDF of query terms present in any field")
_reg("idf_share_any", _T, _idf_share(None), "share of query IDF mass matched in any field")
_reg("idf_share_title", _T, _idf_share("title"), "share of query IDF mass matched in title")
_reg("matched_idf_max", _T, _matched_idf("max"), "max IDF of matched query terms")
_reg("matched_idf_min", _T, _matched_idf("min"), "min IDF of matched query terms")
_reg("title_phrase", _T, _title_phrase, "analyzed query occurs contiguously in the title")
_reg("title_jaccard", _T, _title_jaccard, "Jaccard of query and title terms (near-duplicates)")
_reg("bigram_title", _T, _bigram_share("title"), "share of query bigrams adjacent in title")
_reg("bigram_body", _T, _bigram_share("body"), "share of query bigrams adjacent in body")
_reg(
    "prf_title",
    _T,
    _prf_overlap("title"),
    "share of title terms shared by >= 2 of the top-5 RRF docs found in the candidate",
)
_reg(
    "prf_body",
    _T,
    _prf_overlap("body"),
    "share of body terms shared by >= 3 of the top-5 RRF docs found in the candidate",
)
_reg("query_len", _T, _query_len, "number of analyzed query terms")
_reg("len_title", _T, _field_len("title"), "analyzed title length")
_reg("len_body", _T, _field_len("body"), "analyzed body length")
_reg("bm25_norm", _T, lambda cs: _div_by_max(_score(cs, BM25)), "BM25 / query's max BM25")
_reg(
    "bm25_fields_norm", _T, lambda cs: _div_by_max(_fields_sum(cs)), "field BM25 sum / query's max"
)
_reg("bm25_fields_z", _T, _fields_sum_z, "field BM25 sum z-scored within the query")
_reg(
    "bm25_title_norm",
    _T,
    lambda cs: _div_by_max(_field_bm25(cs, "title")),
    "title BM25 / query's max",
)
_reg("dense_gap", _T, _cosine_gap, "cosine minus the query's max cosine")
_reg("dense_z", _T, _cosine_z, "cosine z-scored within the query")
_reg("rrf_norm", _T, _rrf_norm, "RRF / query's max RRF")
_reg("rank_agreement", _T, _rank_agreement, "|log2 rank_bm25 - log2 rank_dense|")
_reg("both_retrieved", _T, _both_retrieved, "1 if both retrievers returned the candidate")
_reg("min_rank", _T, _min_rank, "best rank over the retrievers")

_S = "static"
_reg("rating", _S, _static("rating", log=False), "document rating")
_reg("log_review_count", _S, _static("review_count", log=True), "log1p(review_count)")
_reg("log_price", _S, _static("price", log=True), "log1p(price)")
_reg("log_popularity", _S, _static("popularity", log=True), "log1p(popularity)")

_B = "behavior"
_BV = f"1:prior={CTR_PRIOR_ALPHA:g},{CTR_PRIOR_BETA:g}"
for _lvl, _what in (("qd", "this query and document"), ("d", "the document, all queries")):
    _reg(
        f"{_lvl}_log_impressions",
        _B,
        _beh_count(_lvl, "impressions"),
        f"log1p impressions of {_what}",
    )
    _reg(f"{_lvl}_log_clicks", _B, _beh_count(_lvl, "clicks"), f"log1p clicks of {_what}")
    _reg(
        f"{_lvl}_ctr",
        _B,
        _beh_rate(_lvl, "clicks", "impressions"),
        f"Beta-smoothed CTR of {_what}",
        _BV,
    )
    _reg(
        f"{_lvl}_ctr_debiased",
        _B,
        _beh_rate(_lvl, "clicks", "examinations"),
        f"Beta-smoothed clicks / examinations (position-debiased) of {_what}",
        _BV,
    )
    _reg(
        f"{_lvl}_log_decayed_clicks",
        _B,
        _beh_count(_lvl, "decayed_clicks"),
        f"log1p recency-decayed clicks of {_what}",
    )
    _reg(
        f"{_lvl}_ctr_decayed",
        _B,
        _beh_rate(_lvl, "decayed_clicks", "decayed_impressions"),
        f"Beta-smoothed recency-decayed CTR of {_what}",
        _BV,
    )

TEXT_FEATURES: tuple[str, ...] = tuple(n for n, f in FEATURES.items() if f.group == _T)
DEFAULT_TEXT_FEATURES: tuple[str, ...] = TEXT_FEATURES
STATIC_FEATURES: tuple[str, ...] = tuple(n for n, f in FEATURES.items() if f.group == _S)
BEHAVIOR_FEATURES: tuple[str, ...] = tuple(n for n, f in FEATURES.items() if f.group == _B)


def resolve(names: Iterable[str]) -> tuple[Feature, ...]:
    """Features for these names in order; an unknown name raises UnknownNameError."""
    out = []
    for n in names:
        f = FEATURES.get(n)
        if f is None:
            raise unknown_name("feature", n, list(FEATURES))
        out.append(f)
    return tuple(out)


def featureset_id(names: Sequence[str]) -> str:
    """sha256 over the ordered "name@version" list: ties a model to its exact inputs."""
    feats = resolve(names)
    payload = "\n".join(f"{f.name}@{f.version}" for f in feats)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def compute(cs: CandidateSet, names: Sequence[str]) -> np.ndarray:
    """Feature matrix float32 [n_candidates, len(names)] in the given order (NaN = missing)."""
    feats = resolve(names)
    n = len(cs.ids)
    X = np.empty((n, len(feats)), dtype=np.float32)
    for j, f in enumerate(feats):
        col = np.asarray(f.fn(cs), dtype=np.float64)
        if col.shape != (n,):
            raise LTRError(f"feature {f.name!r} returned shape {col.shape}, expected ({n},)")
        X[:, j] = col
    return X


def groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Group name -> the given feature names in that group (for reports/ablations)."""
    out: dict[str, list[str]] = {}
    for f in resolve(names):
        out.setdefault(f.group, []).append(f.name)
    return out
