"""The BM25 engine of the local index: indexing (postings), scoring and top-k selection.

Split as bm25s splits itself: tokenization is indexing.analysis.Analyzer, indexing is
build_from_streams / build_field_indexes (postings and bm25s' Lucene-variant
contributions, vectorized), scoring is FieldIndex (a per-field CSC score matrix) and
lucene_idf, selection is top_k. Nothing here touches files: indexing.local_store stores
and loads FieldIndex matrices, indexing.build feeds the analyzed fields in.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from indexing.term_streams import TermIds, slices


# --- scoring -----------------------------------------------------------------------------
def lucene_idf(df: int, n: int) -> float:
    """Lucene's BM25 IDF (always positive)."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


@dataclass(frozen=True)
class FieldIndex:
    """BM25 score matrix of one field in CSC form: column = term, row = document.

    Built by build_field_indexes exactly as bm25s (method "lucene") builds its matrix;
    rows are sorted within each term's postings.
    """

    vocab: Mapping[str, int]
    data: np.ndarray  # float32 BM25 contribution of (term, doc)
    indices: np.ndarray  # document row of each entry
    indptr: np.ndarray  # [n_terms + 1]
    num_docs: int

    @classmethod
    def build(cls, token_lists: Sequence[Sequence[str]], k1: float, b: float) -> FieldIndex:
        """Index analyzed documents exactly as bm25s' Lucene variant does (same vocabulary
        ids, postings and float32 contributions; see build_field_indexes)."""
        return build_field_indexes([token_lists], k1, b)[0][0]

    @classmethod
    def from_postings(
        cls,
        vocab: dict[str, int],
        term: np.ndarray,
        doc: np.ndarray,
        tf: np.ndarray,
        lengths: np.ndarray,
        k1: float,
        b: float,
    ) -> FieldIndex:
        """The CSC matrix from unique (term, doc, tf) postings sorted by (term, doc).

        Reproduces bm25s (method "lucene") operation by operation so the float32 data are
        the same: idf = log(1 + (N - df + .5) / (df + .5)) in double rounded to float32,
        tfc = tf / (k1 * ((1 - b) + b * len / avg_len) + tf) with bm25s' dtype promotion,
        contribution = float32(idf * tfc).
        """
        n = len(lengths)
        df = np.bincount(term, minlength=len(vocab))
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        idf = np.array(
            [math.log(1 + (n - d + 0.5) / (d + 0.5)) for d in df.tolist()], dtype=np.float32
        )
        avg_len = np.asarray(lengths, dtype=np.int64).mean()
        k_doc = k1 * ((1 - b) + b * lengths.astype(np.float64) / avg_len)
        tfc = tf.astype(_TF_DTYPE) / (k_doc.astype(_TF_DTYPE)[doc] + tf.astype(_TF_DTYPE))
        data = (idf[term] * tfc).astype(np.float32)
        return cls(vocab, data, doc.astype(np.int32), indptr, n)

    @classmethod
    def empty(cls, n: int) -> FieldIndex:
        """A field no document has any term in (every score 0)."""
        return cls({}, np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(1, np.int64), n)

    def term_ids(self, terms: Iterable[str]) -> list[int]:
        """Vocabulary ids of the known terms (duplicates kept: each occurrence adds a clause)."""
        vocab = self.vocab
        return [vocab[t] for t in terms if t in vocab]

    def scores(self, terms: Sequence[str]) -> np.ndarray:
        """BM25 of the query terms against every document (float64 [N]; 0 = no match)."""
        ids = self.term_ids(terms)
        out = np.zeros(self.num_docs, dtype=np.float64)
        if not ids:
            return out
        starts, ends = self.indptr[ids], self.indptr[np.asarray(ids) + 1]
        if len(ids) == 1:
            s, e = int(starts[0]), int(ends[0])
            out[self.indices[s:e]] = self.data[s:e]
            return out
        rows = np.concatenate([self.indices[s:e] for s, e in zip(starts, ends, strict=True)])
        vals = np.concatenate([self.data[s:e] for s, e in zip(starts, ends, strict=True)])
        return np.bincount(rows, weights=vals, minlength=self.num_docs)

    def weighted_scores(self, weights: Mapping[str, float]) -> np.ndarray:
        """sum_t weight_t * BM25(t, doc) over every document (float64 [N]): a query of
        boosted term clauses, as Lucene scores a BooleanQuery of BoostQuery(TermQuery)."""
        out = np.zeros(self.num_docs, dtype=np.float64)
        known = [(self.vocab[t], w) for t, w in weights.items() if t in self.vocab and w != 0]
        if not known:
            return out
        spans = [(int(self.indptr[i]), int(self.indptr[i + 1]), w) for i, w in known]
        rows = np.concatenate([self.indices[s:e] for s, e, _ in spans])
        vals = np.concatenate([self.data[s:e].astype(np.float64) * w for s, e, w in spans])
        return np.bincount(rows, weights=vals, minlength=self.num_docs)

    def scores_for(self, terms: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """BM25 of the query terms for just these rows (float64; 0 = no match).

        Binary search in each term's sorted postings: O(len(rows) log df) per term instead
        of a pass over every document, which is what per-candidate features need.
        """
        return self.scores_for_ids(self.term_ids(terms), np.asarray(rows, dtype=np.int64))

    def scores_for_ids(self, tids: Sequence[int], rows: np.ndarray) -> np.ndarray:
        """scores_for with the query's term ids (rows: int64, all valid)."""
        out = np.zeros(len(rows), dtype=np.float64)
        if not len(rows):
            return out
        bounds = self._bounds
        for tid in tids:
            s, e = bounds[tid], bounds[tid + 1]
            if e == s:
                continue
            col = self.indices[s:e]
            pos = col.searchsorted(rows)
            np.minimum(pos, e - s - 1, out=pos)
            # adding 0.0 where the row has no posting leaves it unchanged: same sums as
            # adding the hits alone, in the same term order
            out += np.where(col[pos] == rows, self.data[s:e][pos], 0)
        return out

    @functools.cached_property
    def _bounds(self) -> list[int]:
        """indptr as Python ints (scalar reads without NumPy overhead)."""
        bounds: list[int] = self.indptr.tolist()
        return bounds

    def doc_freq(self, term: str) -> int:
        tid = self.vocab.get(term)
        return 0 if tid is None else int(self.indptr[tid + 1] - self.indptr[tid])


# --- indexing ----------------------------------------------------------------------------
# bm25s computes tf / (k1 * (...) + tf) with tf a float32 array and k1 * (...) a numpy
# float64 scalar: float64 under NumPy 2's promotion rules, float32 under NumPy 1's.
_TF_DTYPE = (np.zeros(1, dtype=np.float32) + np.float64(0.5)).dtype


def bm25s_vocab(tokens: Iterable[str]) -> dict[str, int]:
    """Term -> id in bm25s' order: the iteration order of the set it fills with every
    token in corpus order. bm25s calls ``set.update`` per document; one ``set()`` over
    the chained tokens adds the same keys in the same order, so the set is identical."""
    return {t: i for i, t in enumerate(set(tokens))}


def _postings(
    term: np.ndarray, doc: np.ndarray, n: int, n_terms: int, doc_order: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (term, doc) pairs of a token stream, sorted by (term, doc), with counts.

    With ``doc`` non-decreasing (``doc_order``: tokens in document order), a stable sort
    by term alone orders the pairs by (term, doc); for a vocabulary of at most 65536
    terms that sort is NumPy's radix sort of uint16 keys, O(tokens), ~5x faster than
    np.unique of term * n + doc. A stream of concatenated per-field streams (sorted runs
    of doc) is first put in document order by a stable sort (timsort merges the runs).
    """
    if n_terms > 65536:
        uniq, tf = np.unique(term.astype(np.int64) * n + doc, return_counts=True)
        t = uniq // n
        return t, uniq - t * n, tf
    if not doc_order:
        by_doc = np.argsort(doc, kind="stable")
        term, doc = term[by_doc], doc[by_doc]
    if not len(term):
        return term, doc, np.zeros(0, dtype=np.int64)
    d = doc[np.argsort(term.astype(np.uint16), kind="stable")]
    counts = np.bincount(term, minlength=n_terms)
    t = np.repeat(np.arange(len(counts), dtype=term.dtype), counts)  # = the sorted terms
    first = np.empty(len(d), dtype=bool)  # a new (term, doc) pair starts here
    first[0] = True
    np.not_equal(d[1:], d[:-1], out=first[1:])
    term_starts = np.cumsum(counts)[:-1]
    first[term_starts[term_starts < len(d)]] = True
    starts = np.flatnonzero(first)
    return t[starts], d[starts], np.diff(starts, append=len(d))


def build_field_indexes(
    per_field: Sequence[Sequence[Sequence[str]]], k1: float, b: float
) -> tuple[list[FieldIndex], FieldIndex]:
    """BM25 indexes of each field and of all fields combined, vectorized.

    ``per_field[f][row]`` holds the analyzed terms of field f of a document. The combined
    index equals bm25s over each document's fields concatenated. The result equals what
    bm25s.BM25(method="lucene").index builds with its per-document Python loops
    (tests/test_fast_build.py proves it): term ids once per token, then build_from_streams.
    """
    ids = TermIds()
    streams = []
    for token_lists in per_field:
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        flat = itertools.chain.from_iterable(token_lists)
        streams.append(
            (np.fromiter(map(ids.__getitem__, flat), np.int32, count=int(lengths.sum())), lengths)
        )
    fields, combined, _ = build_from_streams(ids.words, streams, k1, b)
    return fields, combined


# (combined-vocabulary id of every token of a field in document order, tokens per document)
TermStream = tuple[np.ndarray, np.ndarray]


def _vocab_of(
    words: Sequence[str], order: np.ndarray, n_words: int
) -> tuple[dict[str, int], np.ndarray]:
    """(bm25s' vocabulary of the terms ``order`` lists in first-occurrence order, word id ->
    vocabulary id). bm25s fills a set with every token in corpus order; a set only changes
    on a new key, so the set of the distinct terms in first-occurrence order (passed as a
    list, which set() iterates like any iterable) is the same set, in the same order."""
    strings = [words[g] for g in order.tolist()]
    vocab = bm25s_vocab(strings)
    to_vocab = np.full(n_words, -1, dtype=np.int32)
    to_vocab[order] = np.fromiter(map(vocab.__getitem__, strings), np.int32, count=len(order))
    return vocab, to_vocab


_CHUNK = 8_000_000


def _first_occurrences(ids: np.ndarray, n_words: int) -> np.ndarray:
    """The distinct values of ``ids`` (all in [0, n_words)) in order of first occurrence:
    the first position of each value by an unbuffered minimum (one pass, no sort)."""
    first = np.full(n_words, len(ids), dtype=np.int64)
    for s in range(0, len(ids), _CHUNK):  # bounded temporaries at 1M documents
        np.minimum.at(first, ids[s : s + _CHUNK], np.arange(s, min(s + _CHUNK, len(ids))))
    seen = np.flatnonzero(first < len(ids))
    return seen[np.argsort(first[seen], kind="stable")]


def build_from_streams(
    words: Sequence[str], streams: Sequence[TermStream], k1: float, b: float
) -> tuple[list[FieldIndex], FieldIndex, list[TermStream]]:
    """BM25 indexes of each field and of all fields combined from integer term streams
    (indexing.term_streams: ids into ``words``, tokens per document), plus each field's
    stream in combined-vocabulary ids (what write_term_store stores).

    Vocabulary ids follow bm25s (the order of a set filled with the tokens in corpus
    order), derived from each term's first occurrence. The combined field's stream is the
    fields' streams interleaved document by document (a gather, no sort), as bm25s sees
    each document's fields concatenated; postings, df and lengths come from the streams.
    """
    n = len(streams[0][1]) if streams else 0
    n_words = len(words)
    fields: list[FieldIndex] = []
    for ids, lengths in streams:
        if len(lengths) != n:
            raise ValueError("every field needs one token list per document")
        if not len(ids):  # bm25s divides by the average length; nothing to index
            fields.append(FieldIndex.empty(n))
            continue
        vocab, to_vocab = _vocab_of(words, _first_occurrences(ids, n_words), n_words)
        docs = np.repeat(np.arange(n, dtype=np.int32), lengths)
        term, doc, tf = _postings(to_vocab[ids], docs, n, len(vocab))
        fields.append(FieldIndex.from_postings(vocab, term, doc, tf, lengths, k1, b))
    if not any(len(ids) for ids, _ in streams):
        empty = np.zeros(0, dtype=np.int32)
        return fields, FieldIndex.empty(n), [(empty, ln) for _, ln in streams]
    per_field = np.stack([ln for _, ln in streams])  # [fields, n]
    base = np.cumsum([len(ids) for ids, _ in streams]) - [len(ids) for ids, _ in streams]
    row_starts = base[:, None] + np.cumsum(per_field, axis=1) - per_field
    flat = np.concatenate([ids for ids, _ in streams])
    combined_ids = flat[slices(row_starts.T.ravel(), per_field.T.ravel())]
    del flat
    all_lengths = per_field.sum(axis=0)
    vocab_all, to_all = _vocab_of(words, _first_occurrences(combined_ids, n_words), n_words)
    docs = np.repeat(np.arange(n, dtype=np.int32), all_lengths)
    merged = _postings(to_all[combined_ids], docs, n, len(vocab_all))
    del combined_ids, docs
    combined = FieldIndex.from_postings(vocab_all, *merged, all_lengths, k1, b)
    return fields, combined, [(to_all[ids], ln) for ids, ln in streams]


# --- selection ---------------------------------------------------------------------------
def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, best first, ties broken by position (deterministic)."""
    n = len(scores)
    if k <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if n > k:
        part = np.argpartition(-scores, k - 1)[:k]
        kth = scores[part].min()
        sel = np.flatnonzero(scores >= kth)  # every tie at the boundary, then cut below
    else:
        sel = np.arange(n)
    order = np.lexsort((sel, -scores[sel]))[:k]
    return sel[order]
