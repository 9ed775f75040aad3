"""The feature registry: one definition per feature, used at training and at serving time.

Every feature is a pure, vectorized numpy function of one query's ``CandidateSet`` that
returns a float array aligned with ``cs.ids`` (NaN = missing; XGBoost learns the direction
of missing values). A model is tied to the exact ordered list it was trained on through
``featureset_id`` (sha256 over "name@version"); bump a feature's ``version`` whenever its
math changes so old models are refused instead of silently served skewed inputs.

Groups:
- ``text``: BM25 per field and combined, dense cosine, each retriever's rank/score, RRF,
  term coverage, IDF overlap, title phrase match, lengths, and query-normalized features
  (score / query max, cosine - query max, rank agreement) that let one model generalize
  across queries whose raw score scales differ.
- ``static``: numeric document attributes (rating, review_count, price, popularity).
- ``behavior``: click history aggregates (see ltr.behavior and docs/contracts.md).

What several features derive alike from one set (term matches by term id, lengths, RRF)
is computed once per set by ltr.derived; the smoothed rates and their prior are
ltr.behavior's.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ltr.behavior import CTR_PRIOR_ALPHA, CTR_PRIOR_BETA, smoothed_rate
from ltr.derived import Derived, derived
from ltr.errors import LTRError, unknown_name
from ltr.fusion import minmax, retriever_scores
from ltr.types import BM25, DENSE, EXTRA_RETRIEVERS, CandidateSet

FeatureFn = Callable[[CandidateSet], np.ndarray]


@dataclass(frozen=True)
class Feature:
    """A named, versioned, pure feature function."""

    name: str
    group: str  # "text" | "static" | "behavior"
    fn: FeatureFn
    version: str = "1"
    doc: str = ""
    # XGBoost monotone constraint (+1 never lowers the score as the value grows, -1 never
    # raises it, 0 free): on the retrievers' own scores and ranks, so a tree cannot learn a
    # collection-specific dip ("BM25 between 11.2 and 11.9 is bad") that will not transfer.
    monotone: int = 0


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
    """Sum of the per-field BM25 scores (read-only, computed once per set)."""
    return derived(cs).memo("fields_sum", lambda: _fields_sum_of(cs))


def _fields_sum_of(cs: CandidateSet) -> np.ndarray:
    if not cs.field_bm25:
        return _nan(len(cs.ids))
    # np.sum(stack, axis=0) adds the rows in order; so do these adds, without the stack
    arrays = [_f64(a) for a in cs.field_bm25.values()]
    out = arrays[0].copy()
    for a in arrays[1:]:
        out += a
    return out


# --------------------------------------------------------------------------------------
# text features


def _coverage(field: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        d = derived(cs)
        m = d.match(field)
        if m is None or not d.qterms:
            return _nan(d.n)
        return _row_mean(m)

    return fn


def _coverage_any(cs: CandidateSet) -> np.ndarray:
    d = derived(cs)
    if not d.qterms:
        return _nan(d.n)
    return _row_mean(d.match_any())


def _row_mean(m: np.ndarray) -> np.ndarray:
    """``m.mean(axis=1)`` of a non-empty [n, Q] bool table (what ndarray.mean computes:
    a float64 sum, exact for counts, divided by Q) without its Python-level overhead."""
    return np.add.reduce(m, axis=1, dtype=np.float64) / m.shape[1]


def _idf_weights(d: Derived) -> tuple[np.ndarray, float] | None:
    """Non-negative query term IDFs and their sum; None if the sum is not positive."""
    w = d.memo("idf_w", lambda: np.maximum(d.qidf0, 0.0))
    total = w.sum()
    return (w, total) if total > 0 else None


def _idf_share(field: str | None) -> FeatureFn:
    """Share of the query's IDF mass matched in a field (None = any field)."""

    def fn(cs: CandidateSet) -> np.ndarray:
        d = derived(cs)
        ws = _idf_weights(d)
        m = d.match_any() if field is None else d.match(field)
        if ws is None or m is None:
            return _nan(d.n)
        return (m @ ws[0]) / ws[1]

    return fn


def _idf_overlap(cs: CandidateSet) -> np.ndarray:
    """Sum of IDF of the distinct query terms present in any field (unnormalized)."""
    d = derived(cs)
    if not d.qterms:
        return _nan(d.n)
    return d.match_any() @ d.qidf0


def _matched_idf(reduce: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        d = derived(cs)
        if not d.qterms:
            return _nan(d.n)
        # matched query terms with an IDF; candidates matching any
        m = d.memo("idf_m", lambda: d.match_any() & np.isfinite(d.qidf)[None, :])
        has = d.memo("idf_has", lambda: np.asarray(m.any(axis=1)))
        out = _nan(d.n)
        if has.any():
            red = np.maximum if reduce == "max" else np.minimum
            fill = np.inf if reduce == "min" else -np.inf
            out[has] = red.reduce(np.where(m, d.qidf0[None, :], fill), axis=1)[has]
        return out

    return fn


def _title_phrase(cs: CandidateSet) -> np.ndarray:
    """1 if the analyzed query terms occur contiguously in the analyzed title."""
    n = len(cs.ids)
    title = cs.doc_terms.get("title")
    if title is None or not cs.query_terms:
        return _nan(n)
    if _single_tokens(cs.query_terms):
        # single-token terms (the analyzer's): the phrase is the sequence of their ids
        d = derived(cs)
        col = {t: j for j, t in enumerate(d.qterms)}
        return d.phrase("title", [col[t] for t in cs.query_terms]).astype(np.float64)
    needle = " " + " ".join(cs.query_terms) + " "
    out = np.zeros(n, dtype=np.float64)
    for i in range(n):
        out[i] = needle in (" " + " ".join(title[i]) + " ")
    return out


def _title_jaccard(cs: CandidateSet) -> np.ndarray:
    """Jaccard(query terms, title terms): near-duplicates of the query score close to 1."""
    d = derived(cs)
    qh = d.query_hits("title")
    if qh is None or not d.qterms:
        return _nan(d.n)
    distinct = d.distinct("title")
    assert distinct is not None
    inter = qh.astype(np.float64)
    union = distinct + len(d.qterms) - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), np.nan)


def _query_pairs(cs: CandidateSet) -> list[tuple[str, str]]:
    """Adjacent pairs of different analyzed query terms, in query order."""
    return [(a, b) for a, b in itertools.pairwise(cs.query_terms) if a != b]


def _query_bigrams(cs: CandidateSet) -> tuple[str, ...]:
    """Distinct adjacent pairs of analyzed query terms, as ' a b ' search strings."""
    return tuple(dict.fromkeys(f" {a} {b} " for a, b in _query_pairs(cs)))


def _single_tokens(terms: Iterable[str]) -> bool:
    """Non-empty terms without a space: then ' a b ' occurs in a ' '-joined term list
    exactly where term b directly follows term a (analyzer tokens are always such)."""
    return all(t and " " not in t for t in terms)


def _bigram_share(field: str) -> FeatureFn:
    """Share of the query's term bigrams found adjacent in the field (a proximity signal
    that bag-of-words BM25 and a single document vector both miss); NaN for 1-term queries."""

    def fn(cs: CandidateSet) -> np.ndarray:
        d = derived(cs)
        bigrams = _query_bigrams(cs)
        m = d.match(field)
        if not bigrams or m is None:
            return _nan(d.n)
        if _single_tokens(cs.query_terms):  # " a b " in the text <=> b right after a
            col = {t: j for j, t in enumerate(d.qterms)}
            pairs = dict.fromkeys((col[a], col[b]) for a, b in _query_pairs(cs))
            return d.adjacent_pairs(field, list(pairs)) / len(bigrams)
        out = np.zeros(d.n, dtype=np.float64)
        terms = cs.doc_terms[field]
        # only documents holding >= 2 distinct query terms can contain a bigram
        for i in np.flatnonzero(m.sum(axis=1) >= 2):
            text = " " + " ".join(terms[i]) + " "
            out[i] = sum(b in text for b in bigrams)
        return out / len(bigrams)

    return fn


def _prf_overlap(src: str) -> FeatureFn:
    """Share of the feedback vocabulary present in the candidate's title or body: the
    terms of ``src`` shared by >= PRF_MIN_DOCS[src] of the top PRF_DOCS RRF candidates,
    query terms excluded (ltr.derived: Derived._prf_ids). The cluster hypothesis --
    documents like the consensus top results tend to be relevant. Uses only the retrievers'
    fused ranking, so it is available at serving time."""

    def fn(cs: CandidateSet) -> np.ndarray:
        d = derived(cs)
        cols = d.prf_columns(src)
        if not cols.size or "body" not in cs.doc_terms:
            return _nan(d.n)
        hit = d.presence()["body"][:, cols]
        title = d.presence().get("title")
        if title is not None:
            hit |= title[:, cols]
        return hit.sum(axis=1).astype(np.float64) / cols.size

    return fn


def _short_fields(cs: CandidateSet) -> list[str]:
    """Every text field but the body: the title and a catalog's attribute fields (brand,
    color, type...), short fields whose match says more than a word somewhere in a body."""
    return [f for f in cs.doc_terms if f != "body"]


def _cov_short(cs: CandidateSet) -> np.ndarray:
    """Share of distinct query terms found in a short field (any field but the body)."""
    d = derived(cs)
    ms = [m for f in _short_fields(cs) if (m := d.match(f)) is not None]
    if not ms or not d.qterms:
        return _nan(d.n)
    return _row_mean(np.logical_or.reduce(ms))


def _fields_hit(cs: CandidateSet) -> np.ndarray:
    """Share of the candidate's non-empty short fields that hold a query term."""
    d = derived(cs)
    fields = _short_fields(cs)
    if not fields or not d.qterms:
        return _nan(d.n)
    # [fields, n] tables, summed over the fields (whole numbers: exact in any order)
    hit = np.add.reduce(_per_field(d.query_hits, fields) > 0, axis=0, dtype=np.float64)
    filled = np.add.reduce(_per_field(d.length, fields) > 0, axis=0, dtype=np.float64)
    return np.where(filled > 0, hit / np.maximum(filled, 1.0), np.nan)


def _fields_in_query(cs: CandidateSet) -> np.ndarray:
    """Number of short fields whose every term is a query term (the query names the field's
    whole value: a brand, a color, a type, or a title copied into the query)."""
    d = derived(cs)
    fields = _short_fields(cs)
    if not fields or not d.qterms:
        return _nan(d.n)
    d.count_distinct(fields)  # every field's in one pass
    qh, distinct = _per_field(d.query_hits, fields), _per_field(d.distinct, fields)
    return np.add.reduce((distinct > 0) & (qh >= distinct), axis=0, dtype=np.float64)


def _per_field(get: Callable[[str], np.ndarray | None], fields: list[str]) -> np.ndarray:
    """[len(fields), n]: a per-candidate Derived array of each field (all present)."""
    rows = [get(f) for f in fields]
    assert all(r is not None for r in rows)
    return np.stack(rows)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1 << 16)
def _deletes(term: str) -> frozenset[str]:
    """The term and every string one character shorter (symmetric-delete neighbourhood).
    Cached: the candidates' terms repeat from query to query (a typo query at 1M spent
    most of _fuzzy_cov building these sets)."""
    return frozenset((term, *(term[:i] + term[i + 1 :] for i in range(len(term)))))


def _fuzzy_cov(cs: CandidateSet) -> np.ndarray:
    """Share of the query terms the index does not know (no IDF: typically a typo) that
    match a candidate's term within one edit (two terms whose one-deletion neighbourhoods
    meet: a swap, a dropped, doubled or replaced letter). NaN when every query term is
    known, so it only speaks for queries that BM25 cannot match as typed.

    Each distinct term of the set is compared once (ltr.derived: Derived.vocabulary);
    the candidates holding a near term are found on the term ids."""
    n = len(cs.ids)
    unknown = [t for t in dict.fromkeys(cs.query_terms) if t not in cs.idf and len(t) >= 4]
    if not unknown:
        return _nan(n)
    keys = [_deletes(u) for u in unknown]
    d = derived(cs)
    ids, words = d.vocabulary()
    near = [[j for j, k in enumerate(keys) if not k.isdisjoint(_deletes(t))] for t in words]
    which = [i for i, js in enumerate(near) if js]
    got = np.zeros((n, len(keys)), dtype=bool)  # candidate i holds a term near unknown[j]
    if which:
        table = np.zeros((len(which), len(keys)), dtype=bool)
        for r, i in enumerate(which):
            table[r, near[i]] = True
        cand, k = d.occurrences(ids[which])
        rows, cols = np.nonzero(table[k])
        got[cand[rows], cols] = True
    return np.add.reduce(got, axis=1, dtype=np.float64) / len(keys)


def _unk_share(cs: CandidateSet) -> np.ndarray:
    """Share of the query's distinct terms the index does not know (no IDF), the same for
    every candidate: tells the trees when BM25 sees only part of the query. NaN for a
    query without terms."""
    terms = tuple(dict.fromkeys(cs.query_terms))
    if not terms:
        return _nan(len(cs.ids))
    return np.full(len(cs.ids), sum(t not in cs.idf for t in terms) / len(terms))


def _query_len(cs: CandidateSet) -> np.ndarray:
    return np.full(len(cs.ids), float(len(cs.query_terms)))


def _field_len(field: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        ln = derived(cs).length(field)
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
    return _zscore(_f64(cs.dense_cosine))


def _fields_sum_z(cs: CandidateSet) -> np.ndarray:
    return _zscore(_fields_sum(cs))


def _zscore(a: np.ndarray) -> np.ndarray:
    """(a - mean) / std over the finite values; NaN if fewer than 2 or no spread."""
    fin = a[np.isfinite(a)]
    k = fin.size
    if k < 2:
        return _nan(a.shape[0])
    # fin.mean() and fin.std() with the operations numpy's own use (pairwise sum / k;
    # sqrt(sum of squared deviations / k)), so the same bits, without their Python wrappers
    mean = np.add.reduce(fin) / k
    dev = fin - mean
    np.multiply(dev, dev, out=dev)
    sd = np.sqrt(np.add.reduce(dev) / k)
    if sd == 0:
        return _nan(a.shape[0])
    return (a - mean) / sd


def _minmax_of(retriever: str) -> FeatureFn:
    """ltr.fusion's min-max input of the linear fusion for one retriever (exactly it, so
    the trees see the two numbers the base margin is made of)."""

    def fn(cs: CandidateSet) -> np.ndarray:
        return minmax(retriever_scores(cs, retriever))

    return fn


def _rank_of(retriever: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        return _rank(cs, retriever)

    return fn


def _rrf_norm(cs: CandidateSet) -> np.ndarray:
    return _div_by_max(derived(cs).rrf())


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
    """Candidates with impressions at this level (read-only, computed once per set)."""

    def make() -> np.ndarray:
        imp = _beh(cs, f"{level}_impressions")
        return np.isfinite(imp) & (imp > 0)

    return derived(cs).memo(("history", level), make)


def _beh_count(level: str, key: str, log: bool = True) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        v = _beh(cs, f"{level}_{key}")
        v = np.where(_history_mask(cs, level), v, np.nan)
        return np.log1p(np.maximum(v, 0.0)) if log else v

    return fn


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


def _reg(
    name: str, group: str, fn: FeatureFn, doc: str, version: str = "1", monotone: int = 0
) -> None:
    FEATURES[name] = Feature(
        name=name, group=group, fn=fn, version=version, doc=doc, monotone=monotone
    )


_T = "text"
_reg(
    "bm25",
    _T,
    lambda cs: _score(cs, BM25),
    "combined-field BM25 (NaN outside BM25 top-N)",
    monotone=1,
)
_reg(
    "bm25_rank",
    _T,
    lambda cs: _rank(cs, BM25),
    "1-based BM25 rank (NaN if not retrieved)",
    monotone=-1,
)
_reg("dense", _T, lambda cs: _score(cs, DENSE), "kNN score (NaN outside kNN top-N)", monotone=1)
_reg(
    "dense_rank",
    _T,
    lambda cs: _rank(cs, DENSE),
    "1-based kNN rank (NaN if not retrieved)",
    monotone=-1,
)
_reg("dense_cosine", _T, _cosine, "cosine(query, doc) for every candidate", monotone=1)
_reg("bm25_title", _T, lambda cs: _field_bm25(cs, "title"), "BM25 against the title field")
_reg("bm25_body", _T, lambda cs: _field_bm25(cs, "body"), "BM25 against the body field")
_reg("bm25_fields_sum", _T, _fields_sum, "sum of per-field BM25 over all text fields")
_reg("rrf", _T, lambda cs: derived(cs).rrf(), "reciprocal rank fusion, k=60", monotone=1)
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
_reg(
    "bm25_norm", _T, lambda cs: _div_by_max(_score(cs, BM25)), "BM25 / query's max BM25", monotone=1
)
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
_reg("dense_gap", _T, _cosine_gap, "cosine minus the query's max cosine", monotone=1)
_reg("dense_z", _T, _cosine_z, "cosine z-scored within the query", monotone=1)
_reg("rrf_norm", _T, _rrf_norm, "RRF / query's max RRF", monotone=1)
_reg("rank_agreement", _T, _rank_agreement, "|log2 rank_bm25 - log2 rank_dense|")
_reg("both_retrieved", _T, _both_retrieved, "1 if both retrievers returned the candidate")
_reg("min_rank", _T, _min_rank, "best rank over the retrievers", monotone=-1)
# per-query normalized retriever scores: the same value means the same thing on any
# collection (raw BM25 scales with the vocabulary, cosine with the corpus' topic spread)
_reg(
    "bm25_minmax",
    _T,
    _minmax_of(BM25),
    "min-max BM25 in the query (0 if not retrieved)",
    monotone=1,
)
_reg("dense_minmax", _T, _minmax_of(DENSE), "min-max cosine in the query's candidates", monotone=1)
_reg(
    "bm25_z", _T, lambda cs: _zscore(_score(cs, BM25)), "BM25 z-scored within the query", monotone=1
)

# the extra retrievers' scores and ranks (search.config extra_retrievers; NaN / 0 where a
# retriever is off or did not return the candidate)
for _r in EXTRA_RETRIEVERS:
    _reg(f"{_r}_minmax", _T, _minmax_of(_r), f"min-max {_r} score in the query", monotone=1)
    _reg(f"{_r}_rank", _T, _rank_of(_r), f"1-based {_r} rank", monotone=-1)
# field-match features: which fields the query terms are in, for any set of text fields
_reg("cov_short", _T, _cov_short, "share of query terms in any field but the body")
_reg("fields_hit", _T, _fields_hit, "share of non-empty short fields holding a query term")
_reg("fields_in_query", _T, _fields_in_query, "short fields whose every term is in the query")
# in the default: +0.027 NDCG@10 on the demo catalog (its misspelled queries), no loss on
# Cranfield or CACM (docs/evaluation.md, issue 13)
_reg("fuzzy_cov", _T, _fuzzy_cov, "share of unknown query terms within one edit of a doc term")
# opt-in: measured on the three collections, no gain (docs/evaluation.md, issue 13)
_reg("unk_share", _T, _unk_share, "share of the query's distinct terms unknown to the index")
# opt-in text features: measured (docs/evaluation.md), not in the default set
OPTIONAL_TEXT_FEATURES: tuple[str, ...] = (
    *(f"{r}_{k}" for r in EXTRA_RETRIEVERS for k in ("minmax", "rank")),
    "cov_short",
    "fields_hit",
    "fields_in_query",
    "unk_share",
)

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

TEXT_FEATURES: tuple[str, ...] = tuple(
    n for n, f in FEATURES.items() if f.group == _T and n not in OPTIONAL_TEXT_FEATURES
)
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


def monotone_constraints(names: Sequence[str]) -> tuple[int, ...]:
    """The XGBoost ``monotone_constraints`` of a feature list (its features' ``monotone``;
    0 for a column that is not a registered feature, e.g. a test's synthetic one)."""
    return tuple(f.monotone if (f := FEATURES.get(n)) is not None else 0 for n in names)


def featureset_id(names: Sequence[str]) -> str:
    """sha256 over the ordered "name@version" list: ties a model to its exact inputs."""
    feats = resolve(names)
    payload = "\n".join(f"{f.name}@{f.version}" for f in feats)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


_RESOLVED: dict[tuple[str, ...], tuple[Feature, ...]] = {}


def resolved(names: Sequence[str]) -> tuple[Feature, ...]:
    """resolve() of a name list, remembered (a server asks for the same list every time)."""
    key = tuple(names)
    feats = _RESOLVED.get(key)
    if feats is None or any(FEATURES.get(f.name) is not f for f in feats):
        feats = resolve(key)
        if len(_RESOLVED) >= 64:
            _RESOLVED.clear()
        _RESOLVED[key] = feats
    return feats


def compute(cs: CandidateSet, names: Sequence[str]) -> np.ndarray:
    """Feature matrix float32 [n_candidates, len(names)] in the given order (NaN = missing)."""
    feats = resolved(names)
    n = len(cs.ids)
    # one feature per row of the transpose (contiguous writes), then one transposing copy
    XT = np.empty((len(feats), n), dtype=np.float32)
    for j, f in enumerate(feats):
        col = np.asarray(f.fn(cs), dtype=np.float64)
        if col.shape != (n,):
            raise LTRError(f"feature {f.name!r} returned shape {col.shape}, expected ({n},)")
        XT[j] = col
    return np.ascontiguousarray(XT.T)


def groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Group name -> the given feature names in that group (for reports/ablations)."""
    out: dict[str, list[str]] = {}
    for f in resolve(names):
        out.setdefault(f.group, []).append(f.name)
    return out
