"""Per-CandidateSet intermediates the features share, each computed once per set.

The term-id engine: term membership (which query terms and feedback words occur in which
candidate's field) works on integer term ids, with distinct terms, adjacent query-term
pairs and the pseudo-relevance-feedback vocabulary read off the same id arrays; plus field
lengths, the set's RRF and small memos of inputs several features derive alike. Counts
that many features read per row (query terms, distinct terms, phrase and pair positions)
come from one pass over every row with a per-term row array, not a small numpy call per
field or feature (their fixed cost was much of the features' CPU at 1M, issue 17).
``derived(cs)`` returns the one ``Derived`` of a set (identity-keyed LRU); ltr.features
holds the feature functions that read it.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ltr.fusion import rrf_scores
from ltr.types import CandidateSet

PRF_DOCS = 5  # pseudo-relevance feedback: the top RRF candidates taken as "relevant"
# field -> in how many of the PRF_DOCS a term must occur to join the feedback vocabulary
PRF_MIN_DOCS = {"title": 2, "body": 3}


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


class TermTable:
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


def words_lut(need: int) -> np.ndarray:
    """This thread's id -> column + 1 table (all zero between uses), >= ``need`` long.
    Shared by every id space: each use zeroes what it set."""
    lut: np.ndarray | None = getattr(_LUT, "lut", None)
    if lut is None or lut.shape[0] < need:
        lut = np.zeros(max(need, 2 * (0 if lut is None else lut.shape[0])), np.int32)
        _LUT.lut = lut
    return lut


def row_sums(m: np.ndarray) -> np.ndarray:
    """``m.sum(axis=1)`` (int64) of a [rows, k] bool table. Column by column for a few
    columns: numpy's reduction along a short last axis costs ~20-40 ns per row (2,000 rows x 3
    columns: ~40 us against ~8); whole numbers, so the order cannot change a value."""
    if m.shape[1] > 12:
        return np.add.reduce(m, axis=1, dtype=np.int64)
    out = np.zeros(m.shape[0], dtype=np.int64)
    for j in range(m.shape[1]):
        out += m[:, j]
    return out


_TABLE = TermTable()
_TABLE_LOCK = threading.Lock()


def term_table() -> TermTable:
    global _TABLE
    with _TABLE_LOCK:
        if len(_TABLE.ids) > TermTable.MAX_TERMS:
            _TABLE = TermTable()
        return _TABLE


_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


class Derived:
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
        self._tok_row = _EMPTY_I32  # per term of _flat: its row
        self._bound = 0  # > every id of _flat
        self._rows: dict[str, tuple[int, int]] = {}  # field -> (first row, rows)
        self._len: dict[str, np.ndarray] = {}
        self._distinct: dict[str, np.ndarray] = {}
        self._any: np.ndarray | None = None
        self._qhits = _EMPTY_I64  # per row: distinct query terms in it
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
        """rrf_scores of the set, computed once (read-only; the array ltr.fusion keeps)."""
        if self._rrf is None:
            self._rrf = rrf_scores(self.cs)
        return self._rrf

    def presence(self) -> dict[str, np.ndarray]:
        """Field -> [n, W] bool: word j occurs in candidate i's field.

        The words are what any feature asks about: the query terms and the feedback
        vocabularies. One table lookup over the concatenated term ids of every field: the
        backend's vocabulary ids (cs.term_ids) when it has them, else the TermTable's.
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
            table = term_table()
            rows = itertools.chain.from_iterable(per_field)
            lens = np.fromiter(map(len, rows), np.int64, nrows)
            ends = np.cumsum(lens)
            # encode first: then every term of these documents has an id
            flat = table.encode_rows(per_field, int(ends[-1]) if nrows else 0, depth=2)
            qids = table.lookup(self.qterms)
            bound = len(table.ids)  # > every id read so far (the table only grows)
        self._flat, self._ends, self._lens = flat, ends, lens
        self._tok_row = np.repeat(np.arange(nrows, dtype=np.int32), lens)
        self._bound = bound
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
        w = len(wids)
        col = _EMPTY_I32
        if known.size and flat.size:
            lut = words_lut(bound + 1)
            lut[wids[known]] = known + 1
            try:
                col = lut.take(flat)
            finally:
                lut[wids[known]] = 0
            # every term sets (its row, its column + 1); column 0 collects the non-words.
            # One scatter of every term costs less than finding the few word terms first
            # (nonzero + searchsorted).
            hit0 = np.zeros((nrows, w + 1), dtype=bool)
            at = self._tok_row if hit0.size < 2**31 else self._tok_row.astype(np.int64)
            hit0.reshape(-1)[at * (w + 1) + col] = True
            hit = np.ascontiguousarray(hit0[:, 1:])
        else:
            hit = np.zeros((nrows, w), dtype=bool)
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
        TermTable); the features only count columns, which no order changes."""
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
        self.presence()
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
        rows = self._tok_row[pos + t0].astype(np.int64) - start
        same = pos + 1 < ends[rows]  # both terms in the same candidate's field
        key = rows[same] * (k * k) + code[same]
        if key.size > 1:  # each distinct pair counts once per candidate
            key.sort()
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        out += np.bincount(key // (k * k), minlength=self.n)
        return out

    def phrase(self, field: str, seq: Sequence[int]) -> np.ndarray:
        """[rows of field] bool: the query terms of columns ``seq`` (non-empty) occur in
        this order, one right after the other, in the candidate's field."""
        self.presence()
        start, size, t0, t1 = self._segment(field)
        out = np.zeros(size, dtype=bool)
        k = len(seq)
        if t1 - t0 < k or not self._col.size:
            return out
        c = self._col[t0:t1]
        end = c.size - k + 1
        at = c[:end] == seq[0] + 1  # phrase starts: term j of the phrase at start + j
        for j in range(1, k):
            at &= c[j : end + j] == seq[j] + 1
        pos = np.flatnonzero(at) + t0
        rows = self._tok_row[pos]
        out[rows[rows == self._tok_row[pos + k - 1]] - start] = True  # all in one row
        return out

    def prf_columns(self, field: str) -> np.ndarray:
        """Presence columns of a field's feedback vocabulary (empty: none or no field)."""
        self.presence()
        return self._prf_cols.get(field, _EMPTY_I64)

    def match(self, field: str) -> np.ndarray | None:
        """[n, Q] bool: query term j occurs in the candidate's field; None if field absent."""
        if field not in self.cs.doc_terms:
            return None
        p = self.presence()[field]
        return p[:, : len(self.qterms)]  # the query terms are the first words

    def query_hits(self, field: str) -> np.ndarray | None:
        """[n] int: distinct query terms in the candidate's field (``match(field)``'s row
        sums, counted once for every row of every field); None if the field is absent."""
        if field not in self.cs.doc_terms:
            return None
        self.presence()
        if self._qhits.shape[0] != self._hit.shape[0]:
            qh = row_sums(self._hit[:, : len(self.qterms)])
            qh.flags.writeable = False
            self._qhits = qh
        start, size = self._rows[field]
        return self._qhits[start : start + size]

    def distinct(self, field: str) -> np.ndarray | None:
        """Number of distinct terms of each candidate's field (distinct ids: one table)."""
        if field not in self.cs.doc_terms:
            return None
        got = self._distinct.get(field)
        if got is None:
            self.count_distinct((field,))
            got = self._distinct[field]
        return got

    def count_distinct(self, fields: Sequence[str]) -> None:
        """distinct() of several fields (present ones) with one sort: (row, id) keys."""
        self.presence()
        todo = [f for f in fields if f in self.cs.doc_terms and f not in self._distinct]
        if not todo:
            return
        segs = [self._segment(f) for f in todo]
        ids = np.concatenate([self._flat[t0:t1] for _, _, t0, t1 in segs])
        counts = np.zeros(0, dtype=np.int64)
        if ids.size:
            rows = np.concatenate([self._tok_row[t0:t1] for _, _, t0, t1 in segs])
            v = int(ids.max()) + 1
            if self._lens.size * v >= 2**31:  # else int32 keys: they sort ~2x faster
                rows = rows.astype(np.int64)
            key = rows * v + ids
            key.sort()
            first = np.empty(key.size, dtype=bool)  # first of each distinct (row, term)
            first[0] = True
            np.not_equal(key[1:], key[:-1], out=first[1:])
            counts = np.bincount(key[first] // v, minlength=self._lens.size)
        for f, (start, size, t0, t1) in zip(todo, segs, strict=True):
            a = counts[start : start + size] if t1 > t0 else np.zeros(size, dtype=np.int64)
            a = a.astype(np.float64)
            a.flags.writeable = False  # shared by every feature that asks
            self._distinct[f] = a

    def vocabulary(self) -> tuple[np.ndarray, list[str]]:
        """The distinct term ids of every field of every candidate (sorted) and each one's
        string, read off one of its occurrences: per distinct term, not per occurrence."""
        self.presence()
        flat = self._flat
        if not flat.size:
            return _EMPTY_I64, []
        s = np.sort(flat)
        first = np.empty(s.size, dtype=bool)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        ids = s[first]
        lut = words_lut(self._bound + 1)
        lut[flat] = np.arange(1, flat.size + 1, dtype=np.int32)  # one position + 1 per id
        try:
            pos = lut.take(ids) - 1
        finally:
            lut[ids] = 0
        rows = self._tok_row[pos]
        off = (pos - (self._ends[rows] - self._lens[rows])).tolist()
        terms = list(itertools.chain.from_iterable(self.cs.doc_terms[f] for f in self.fields()))
        return ids, [terms[r][o] for r, o in zip(rows.tolist(), off, strict=True)]

    def occurrences(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(candidate, k) of every occurrence, in any field, of the term with id ``ids[k]``
        (distinct ids of vocabulary())."""
        self.presence()
        lut = words_lut(self._bound + 1)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        try:
            c = lut.take(self._flat)
        finally:
            lut[ids] = 0
        pos = np.flatnonzero(c)
        cand = np.concatenate([np.arange(size) for _, size in self._rows.values()] or [_EMPTY_I64])
        return cand[self._tok_row[pos]], c[pos] - 1

    def match_any(self) -> np.ndarray:
        """[n, Q] bool: query term j occurs in any text field."""
        acc = self._any
        if acc is None:
            p = self.presence()
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


_CACHE: OrderedDict[int, Derived] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16
# The set most recently looked up: every feature of one compute() asks for the same set,
# and this check skips the lock and the LRU bookkeeping (one tuple read is atomic).
_LAST: tuple[CandidateSet, Derived] | None = None


def derived(cs: CandidateSet) -> Derived:
    """The one Derived of ``cs`` (made on first use, kept while the set is recent)."""
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
    d = Derived(cs)
    with _CACHE_LOCK:
        _CACHE[key] = d
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _LAST = (cs, d)
    return d


def clear_cache() -> None:
    """Forget every derived set (tests: recompute from scratch)."""
    global _LAST
    with _CACHE_LOCK:
        _CACHE.clear()
        _LAST = None
