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
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
#
# Term membership works on integer term ids: a request maps the terms of every field of
# every candidate to ids of one process-wide term table in one C-level pass (no Python
# object per candidate), then tests them against the few words features ask about (query
# terms, feedback vocabulary) with one vectorized table lookup. Everything after that pass
# (feedback vocabulary, distinct terms, adjacent query terms) works on the id arrays. The
# per-candidate Python sets of the previous implementation made the cyclic GC ~half of the
# features stage. The values are those of the set-based implementation, kept in
# tests/features_reference.py.
#
# The id pass touches every term string of every candidate (~12K strings for 165
# candidates of a 10-field catalog) and is most of the remaining cost (100K catalog, CPU per
# request: ~0.85 ms with format-1 rows, ~0.6 ms with format 3's shared vocabulary strings).
# Caching per-row id arrays across requests, keyed by the backend's cached term tuples, was
# measured and rejected: with every row a cache hit (format 3) the per-row lookups and the
# join of cached arrays still cost ~0.63 ms, and with format 1's 10K-row LRU (~14-23% of
# the rows hits in a 300-query benchmark) it cost 2x the plain pass.
# What replaced the pass: a format-3 index stores the terms as ids of its own vocabulary,
# so Snapshot.lookups gathers a request's ids with a few array ops (+0.1-0.2 ms CPU there)
# and hands them over as CandidateSet.term_ids; sets without them (other backends,
# formats 1-2, tests) still use the table. Same 100K catalog, 300 queries, with and
# without ids alternating per query in one process: compute() over the model's 52
# features -0.8..-1.0 ms CPU (~2.0-2.5 -> 1.2-1.5 ms), a whole search -0.55..-0.65 ms CPU
# and ~-0.6 ms wall.


class _TermTable:
    """Term -> int id (ids are only ever compared within one table)."""

    MAX_TERMS = 2_000_000  # then a new table: the vocabulary of old index versions goes

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.lock = threading.Lock()

    def encode(self, terms: Iterable[str]) -> np.ndarray:
        """int32 ids of a flat iterable of terms; unseen terms get new ids."""
        terms = terms if isinstance(terms, (list, tuple)) else list(terms)
        return self.encode_rows((terms,), len(terms))

    def encode_rows(self, rows: Iterable[Any], total: int, depth: int = 1) -> np.ndarray:
        """int32 ids of the terms of ``rows`` (sequences of terms; ``depth`` 2: sequences
        of them), ``total`` terms in all; unseen terms get new ids."""
        ids = self.ids

        def terms() -> Iterator[str]:
            it: Iterable[Any] = rows
            for _ in range(depth):
                it = itertools.chain.from_iterable(it)
            return iter(it)

        try:  # every term known: a C-level loop, no intermediate list
            return np.fromiter(map(ids.__getitem__, terms()), dtype=np.int32, count=total)
        except KeyError:
            with self.lock:  # new ids must be unique: assign them under the lock
                return np.fromiter(
                    (ids.setdefault(t, len(ids)) for t in terms()), np.int32, count=total
                )

    def lookup(self, terms: Iterable[str]) -> np.ndarray:
        """Ids of these terms (-1 for a term no encoded document holds: it matches none)."""
        get = self.ids.get
        return np.array([get(t, -1) for t in terms], dtype=np.int64)


_LUT = threading.local()


def _words_lut(need: int) -> np.ndarray:
    """This thread's id -> column + 1 table (all zero between uses), >= ``need`` long.
    Shared by every id space: each use zeroes what it set."""
    lut: np.ndarray | None = getattr(_LUT, "lut", None)
    if lut is None or lut.shape[0] < need:
        lut = np.zeros(max(need, 2 * (0 if lut is None else lut.shape[0])), np.int32)
        _LUT.lut = lut
    return lut


_TABLE = _TermTable()
_TABLE_LOCK = threading.Lock()


def _term_table() -> _TermTable:
    global _TABLE
    with _TABLE_LOCK:
        if len(_TABLE.ids) > _TermTable.MAX_TERMS:
            _TABLE = _TermTable()
        return _TABLE


_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


class _Derived:
    """Lazily computed intermediate arrays of one CandidateSet."""

    def __init__(self, cs: CandidateSet) -> None:
        self.cs = cs
        self.n = len(cs.ids)
        # distinct query terms in first-occurrence order
        self.qterms: tuple[str, ...] = tuple(dict.fromkeys(cs.query_terms))
        self.qidf = np.array([cs.idf.get(t, np.nan) for t in self.qterms], dtype=np.float64)
        # missing IDF counts 0 (read-only); nan_to_num is also what maps +-inf, if any
        if np.isinf(self.qidf).any():
            self.qidf0 = np.nan_to_num(self.qidf, nan=0.0)
        else:
            self.qidf0 = np.where(np.isnan(self.qidf), 0.0, self.qidf)
        self.qidf0.flags.writeable = False
        self._rrf: np.ndarray | None = None
        self._presence: dict[str, np.ndarray] | None = None
        # word columns of the presence tables: the query terms first (column j = qterms[j]),
        # then the feedback vocabularies; _wids holds their term ids (-1 = in no document)
        self._wids = _EMPTY_I64
        self._prf_cols: dict[str, np.ndarray] = {}  # field -> its feedback words' columns
        self._flat = _EMPTY_I32  # term ids of every field of every candidate, concatenated
        self._col = _EMPTY_I32  # per term of _flat: its word column + 1 (0 = no word)
        self._ends = _EMPTY_I64  # end of each row (candidate x field) in _flat
        self._lens = _EMPTY_I64  # terms per row
        self._rows: dict[str, tuple[int, int]] = {}  # field -> (first row, rows)
        self._len: dict[str, np.ndarray] = {}
        self._any: np.ndarray | None = None
        self._hit = np.zeros((0, 0), dtype=bool)  # every field's presence table, stacked
        self._memo: dict[object, np.ndarray] = {}  # small shared intermediates (see memo)

    def fields(self) -> tuple[str, ...]:
        return tuple(self.cs.doc_terms)

    def memo(self, key: object, make: Callable[[], np.ndarray]) -> np.ndarray:
        """``make()`` once per set (read-only): inputs several features derive alike."""
        a = self._memo.get(key)
        if a is None:
            a = make()
            a.flags.writeable = False
            self._memo[key] = a
        return a

    def rrf(self) -> np.ndarray:
        """rrf_scores of the set, computed once (read-only)."""
        if self._rrf is None:
            self._rrf = rrf_scores(self.cs)
            self._rrf.flags.writeable = False
        return self._rrf

    def _all_presence(self) -> dict[str, np.ndarray]:
        """Field -> [n, W] bool: word j occurs in candidate i's field.

        The words are what any feature asks about: the query terms and the feedback
        vocabularies. One table lookup over the concatenated term ids of every field: the
        backend's vocabulary ids (cs.term_ids) when it has them, else the _TermTable's.
        All ids of one set come from one of the two, never both.
        """
        if self._presence is not None:
            return self._presence
        fields = self.fields()
        per_field = [self.cs.doc_terms[f] for f in fields]
        nrows = sum(map(len, per_field))
        tid = self.cs.term_ids
        if tid is not None and tid.fields == fields and tid.lengths.shape == (nrows,):
            lens, flat = tid.lengths, tid.ids
            ends = np.cumsum(lens)
            get = tid.query_ids.get
            qids = np.array([get(t, -1) for t in self.qterms], dtype=np.int64)
            bound = tid.bound
        else:  # no ids, or ids of other rows than doc_terms (ignored): encode the strings
            table = _term_table()
            rows = itertools.chain.from_iterable(per_field)
            lens = np.fromiter(map(len, rows), np.int64, nrows)
            ends = np.cumsum(lens)
            # encode first: then every term of these documents has an id
            flat = table.encode_rows(per_field, int(ends[-1]) if nrows else 0, depth=2)
            qids = table.lookup(self.qterms)
            bound = len(table.ids)  # > every id read so far (the table only grows)
        self._flat, self._ends, self._lens = flat, ends, lens
        start = 0
        for f, rws in zip(fields, per_field, strict=True):
            self._rows[f] = (start, len(rws))
            start += len(rws)
        extra: dict[int, None] = {}  # feedback word ids, title's then body's, distinct
        prf: dict[str, list[int]] = {}
        for f in PRF_MIN_DOCS:
            if f in self.cs.doc_terms:
                prf[f] = self._prf_ids(f, qids)
                extra.update(dict.fromkeys(prf[f]))
        q = len(qids)
        col_of = {w: q + k for k, w in enumerate(extra)}
        self._prf_cols = {f: np.array([col_of[w] for w in v], np.int64) for f, v in prf.items()}
        wids = np.concatenate([qids, np.fromiter(extra, np.int64, len(extra))])
        self._wids = wids
        known = np.flatnonzero(wids >= 0)
        hit = np.zeros((nrows, len(wids)), dtype=bool)
        col = _EMPTY_I32
        if known.size and flat.size:
            lut = _words_lut(bound + 1)
            lut[wids[known]] = known + 1
            try:
                col = lut[flat]
            finally:
                lut[wids[known]] = 0
            pos = np.flatnonzero(col)
            if pos.size:
                hit[np.searchsorted(ends, pos, side="right"), col[pos] - 1] = True
        self._col = col
        self._hit = hit
        out: dict[str, np.ndarray] = {}
        for f in fields:
            start, size = self._rows[f]
            out[f] = hit[start : start + size]
        self._presence = out
        return out

    def _prf_ids(self, field: str, qids: np.ndarray) -> list[int]:
        """Feedback vocabulary of a field as term ids: the terms of ``field`` shared by >=
        PRF_MIN_DOCS[field] of the top PRF_DOCS RRF candidates, query terms excluded (the
        vocabulary the fused top results agree on). Needs _flat/_ends/_rows.

        Sorted by id, so the column order depends on the id space (backend vocabulary or
        _TermTable); the features only count columns, which no order changes."""
        start, size = self._rows[field]
        if self.n == 0 or size == 0:
            return []
        top = self.memo("prf_top", lambda: np.argsort(-self.rrf(), kind="stable")[:PRF_DOCS])
        ends, lens, flat = self._ends, self._lens, self._flat
        counts: Counter[int] = Counter()
        for r in (top + start).tolist():
            e = int(ends[r])
            counts.update(set(flat[e - int(lens[r]) : e].tolist()))
        q = set(qids.tolist())
        m = PRF_MIN_DOCS.get(field, 2)
        return sorted(t for t, c in counts.items() if c >= m and t not in q)

    def _segment(self, field: str) -> tuple[int, int, int, int]:
        """(first row, rows, first term, end term) of a field in _flat (presence computed)."""
        start, size = self._rows[field]
        if not size:
            return start, 0, 0, 0
        t0 = int(self._ends[start - 1]) if start else 0
        return start, size, t0, int(self._ends[start + size - 1])

    def adjacent_pairs(self, field: str, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        """[n] float: how many of the distinct query-term pairs (qterms columns ``a``, ``b``)
        occur with term b directly after term a in the candidate's field."""
        self._all_presence()
        out = np.zeros(self.n, dtype=np.float64)
        start, size, t0, t1 = self._segment(field)
        q = len(self.qterms)
        if not size or not pairs or t1 - t0 < 2 or not self._col.size:
            return out
        c = self._col[t0:t1]
        isq = (c > 0) & (c <= q)  # a query term (the query terms are the first words)
        pos = np.flatnonzero(isq[:-1] & isq[1:])
        if not pos.size:
            return out
        k = q + 1
        code = c[pos].astype(np.int64) * k + c[pos + 1]
        ok = np.zeros(pos.size, dtype=bool)
        for a, b in pairs:
            ok |= code == (a + 1) * k + b + 1
        pos, code = pos[ok], code[ok]
        if not pos.size:
            return out
        ends = self._ends[start : start + size] - t0
        rows = np.searchsorted(ends, pos, side="right")
        same = pos + 1 < ends[rows]  # both terms in the same candidate's field
        key = rows[same] * (k * k) + code[same]
        if key.size > 1:  # each distinct pair counts once per candidate
            key.sort()
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        out += np.bincount(key // (k * k), minlength=self.n)
        return out

    def prf_columns(self, field: str) -> np.ndarray:
        """Presence columns of a field's feedback vocabulary (empty: none or no field)."""
        self._all_presence()
        return self._prf_cols.get(field, _EMPTY_I64)

    def match(self, field: str) -> np.ndarray | None:
        """[n, Q] bool: query term j occurs in the candidate's field; None if field absent."""
        if field not in self.cs.doc_terms:
            return None
        p = self._all_presence()[field]
        return p[:, : len(self.qterms)]  # the query terms are the first words

    def distinct(self, field: str) -> np.ndarray | None:
        """Number of distinct terms of each candidate's field (distinct ids: one table)."""
        if field not in self.cs.doc_terms:
            return None
        self._all_presence()
        start, size, t0, t1 = self._segment(field)
        seg = self._flat[t0:t1]
        if not seg.size:
            return np.zeros(size, dtype=np.float64)
        row = np.repeat(np.arange(size, dtype=np.int64), self._lens[start : start + size])
        v = int(seg.max()) + 1
        key = row * v + seg
        key.sort()
        first = np.empty(key.size, dtype=bool)  # first of each distinct (row, term)
        first[0] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        return np.bincount(key[first] // v, minlength=size).astype(np.float64)

    def match_any(self) -> np.ndarray:
        """[n, Q] bool: query term j occurs in any text field."""
        acc = self._any
        if acc is None:
            p = self._all_presence()
            q, n = len(self.qterms), self.n
            if all(m.shape[0] == n for m in p.values()):
                # the fields' tables are consecutive blocks of n rows of one table
                acc = np.asarray(self._hit[:, :q].reshape(len(p), n, q).any(axis=0))
            else:
                acc = np.zeros((n, q), dtype=bool)
                for f in self.fields():
                    m = self.match(f)
                    if m is not None:
                        acc |= m
            self._any = acc
        return acc

    def length(self, field: str) -> np.ndarray | None:
        if field not in self.cs.doc_terms:
            return None
        a = self._len.get(field)
        if a is None:
            if self._presence is not None:  # the row lengths are known
                start, size = self._rows[field]
                a = self._lens[start : start + size].astype(np.float64)
            else:
                a = np.fromiter(map(len, self.cs.doc_terms[field]), np.float64, self.n)
            self._len[field] = a
        return a


_CACHE: OrderedDict[int, _Derived] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16
# The set most recently looked up: every feature of one compute() asks for the same set,
# and this check skips the lock and the LRU bookkeeping (one tuple read is atomic).
_LAST: tuple[CandidateSet, _Derived] | None = None


def _derived(cs: CandidateSet) -> _Derived:
    global _LAST
    last = _LAST
    if last is not None and last[0] is cs:
        return last[1]
    key = id(cs)
    with _CACHE_LOCK:
        d = _CACHE.get(key)
        if d is not None and d.cs is cs:
            _CACHE.move_to_end(key)
            _LAST = (cs, d)
            return d
    d = _Derived(cs)
    with _CACHE_LOCK:
        _CACHE[key] = d
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _LAST = (cs, d)
    return d


def _clear_cache() -> None:
    """Forget every derived set (tests: recompute from scratch)."""
    global _LAST
    with _CACHE_LOCK:
        _CACHE.clear()
        _LAST = None


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
    return _derived(cs).memo("fields_sum", lambda: _fields_sum_of(cs))


def _fields_sum_of(cs: CandidateSet) -> np.ndarray:
    if not cs.field_bm25:
        return _nan(len(cs.ids))
    return np.sum([_f64(a) for a in cs.field_bm25.values()], axis=0)


def rrf_scores(cs: CandidateSet, k: float = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion over the retrievers' 1-based ranks (a missing rank adds 0)."""
    out = np.zeros(len(cs.ids), dtype=np.float64)
    for r in cs.ranks.values():
        rr = _f64(r)
        # NaN ranks give NaN here (quietly) and are replaced by 0
        out += np.where(np.isfinite(rr), 1.0 / (k + rr), 0.0)
    return out


# --------------------------------------------------------------------------------------
# text features


def _coverage(field: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        d = _derived(cs)
        m = d.match(field)
        if m is None or not d.qterms:
            return _nan(d.n)
        return _row_mean(m)

    return fn


def _coverage_any(cs: CandidateSet) -> np.ndarray:
    d = _derived(cs)
    if not d.qterms:
        return _nan(d.n)
    return _row_mean(d.match_any())


def _row_mean(m: np.ndarray) -> np.ndarray:
    """``m.mean(axis=1)`` of a non-empty [n, Q] bool table (what ndarray.mean computes:
    a float64 sum, exact for counts, divided by Q) without its Python-level overhead."""
    return np.add.reduce(m, axis=1, dtype=np.float64) / m.shape[1]


def _idf_weights(d: _Derived) -> tuple[np.ndarray, float] | None:
    """Non-negative query term IDFs and their sum; None if the sum is not positive."""
    w = d.memo("idf_w", lambda: np.maximum(d.qidf0, 0.0))
    total = w.sum()
    return (w, total) if total > 0 else None


def _idf_share(field: str | None) -> FeatureFn:
    """Share of the query's IDF mass matched in a field (None = any field)."""

    def fn(cs: CandidateSet) -> np.ndarray:
        d = _derived(cs)
        ws = _idf_weights(d)
        m = d.match_any() if field is None else d.match(field)
        if ws is None or m is None:
            return _nan(d.n)
        return (m @ ws[0]) / ws[1]

    return fn


def _idf_overlap(cs: CandidateSet) -> np.ndarray:
    """Sum of IDF of the distinct query terms present in any field (unnormalized)."""
    d = _derived(cs)
    if not d.qterms:
        return _nan(d.n)
    return d.match_any() @ d.qidf0


def _matched_idf(reduce: str) -> FeatureFn:
    def fn(cs: CandidateSet) -> np.ndarray:
        d = _derived(cs)
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
    needle = " " + " ".join(cs.query_terms) + " "
    rows: Iterable[int] = range(n)
    if _single_tokens(cs.query_terms):
        # single-token terms: a title holding the phrase holds every query term
        m = _derived(cs).match("title")
        assert m is not None
        rows = np.flatnonzero(m.all(axis=1)).tolist()
    out = np.zeros(n, dtype=np.float64)
    for i in rows:
        out[i] = needle in (" " + " ".join(title[i]) + " ")
    return out


def _title_jaccard(cs: CandidateSet) -> np.ndarray:
    """Jaccard(query terms, title terms): near-duplicates of the query score close to 1."""
    d = _derived(cs)
    m = d.match("title")
    ln = d.length("title")
    if m is None or ln is None or not d.qterms:
        return _nan(d.n)
    distinct = d.distinct("title")
    assert distinct is not None
    inter = m.sum(axis=1).astype(np.float64)
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
        d = _derived(cs)
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


PRF_DOCS = 5  # pseudo-relevance feedback: the top RRF candidates taken as "relevant"
# field -> in how many of the PRF_DOCS a term must occur to join the feedback vocabulary
PRF_MIN_DOCS = {"title": 2, "body": 3}


def _prf_overlap(src: str) -> FeatureFn:
    """Share of the feedback vocabulary present in the candidate's title or body: the
    terms of ``src`` shared by >= PRF_MIN_DOCS[src] of the top PRF_DOCS RRF candidates,
    query terms excluded (see _Derived._prf_ids). The cluster hypothesis -- documents like
    the consensus top results tend to be relevant. Uses only the retrievers' fused ranking,
    so it is available at serving time."""

    def fn(cs: CandidateSet) -> np.ndarray:
        d = _derived(cs)
        cols = d.prf_columns(src)
        if not cols.size or "body" not in cs.doc_terms:
            return _nan(d.n)
        hit = d._all_presence()["body"][:, cols]
        title = d._all_presence().get("title")
        if title is not None:
            hit |= title[:, cols]
        return hit.sum(axis=1).astype(np.float64) / cols.size

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
    return _zscore(_f64(cs.dense_cosine))


def _fields_sum_z(cs: CandidateSet) -> np.ndarray:
    return _zscore(_fields_sum(cs))


def _zscore(a: np.ndarray) -> np.ndarray:
    """(a - mean) / std over the finite values; NaN if fewer than 2 or no spread."""
    fin = a[np.isfinite(a)]
    if fin.size < 2:
        return _nan(a.shape[0])
    sd = fin.std()
    if sd == 0:
        return _nan(a.shape[0])
    return (a - fin.mean()) / sd


def _rrf_norm(cs: CandidateSet) -> np.ndarray:
    return _div_by_max(_derived(cs).rrf())


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

    return _derived(cs).memo(("history", level), make)


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
_reg("rrf", _T, lambda cs: _derived(cs).rrf(), "reciprocal rank fusion, k=60")
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


def synthetic_candidate_set(n: int = 200, seed: int = 0, behavior: bool = True) -> CandidateSet:
    """A realistic random CandidateSet (title ~10, body ~150 terms) for benchmarks."""
    rng = np.random.default_rng(seed)
    vocab = [f"t{i}" for i in range(3000)]
    qterms = tuple(vocab[i] for i in rng.choice(300, size=6, replace=False))

    def terms(k: int) -> tuple[str, ...]:
        return tuple(vocab[i] for i in rng.zipf(1.3, size=k) % len(vocab))

    ranks_b = rng.permutation(n).astype(np.float64) + 1
    ranks_d = rng.permutation(n).astype(np.float64) + 1
    ranks_b[rng.random(n) < 0.3] = np.nan
    ranks_d[np.isfinite(ranks_b) & (rng.random(n) < 0.3)] = np.nan
    beh: dict[str, np.ndarray] = {}
    if behavior:
        from ltr.behavior import AGGREGATE_KEYS

        imp = np.where(rng.random(n) < 0.5, rng.integers(1, 50, n).astype(np.float64), np.nan)
        for key in AGGREGATE_KEYS:
            beh[key] = imp * rng.random(n)
    return CandidateSet(
        query_text=" ".join(qterms),
        query_terms=qterms,
        ids=tuple(f"d{i}" for i in range(n)),
        scores={BM25: 20 / ranks_b, DENSE: 1 / ranks_d},
        ranks={BM25: ranks_b, DENSE: ranks_d},
        field_bm25={"title": rng.random(n) * 5, "body": rng.random(n) * 15},
        dense_cosine=rng.random(n),
        doc_terms={
            "title": tuple(terms(10) for _ in range(n)),
            "body": tuple(terms(150) for _ in range(n)),
        },
        idf={t: float(rng.random() * 8) for t in qterms},
        static={"rating": rng.random(n) * 5, "review_count": rng.integers(0, 1000, n) * 1.0},
        behavior=beh,
    )


def benchmark_compute(n: int = 200, repeats: int = 50) -> dict[str, float]:
    """Median wall time of compute() over every registered feature for ``n`` candidates.

    Each call gets a fresh CandidateSet so the per-set cache does not flatter the number.
    """
    import time

    names = tuple(FEATURES)
    sets = [synthetic_candidate_set(n, seed=i) for i in range(repeats)]
    times, cpu = [], []
    for cs in sets:
        t0, c0 = time.perf_counter(), time.process_time()
        compute(cs, names)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "n": float(n),
        "features": float(len(names)),
        "ms_per_call": 1000 * float(np.median(times)),
        "ms_p90": 1000 * float(np.percentile(times, 90)),
        "cpu_ms_per_call": 1000 * float(np.mean(cpu)),
    }
