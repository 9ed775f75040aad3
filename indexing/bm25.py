"""The BM25 engine of the local index: indexing (postings), scoring and top-k selection.

Split as bm25s splits itself: tokenization is indexing.analysis.Analyzer, indexing is
build_from_streams / build_field_indexes (postings and bm25s' Lucene-variant
contributions, vectorized), scoring is FieldIndex (a per-field CSC score matrix) and
lucene_idf, selection is top_k / top_matching and FieldIndex.top (exact top-k that skips
blocks of documents by their BlockMax upper bounds). Nothing here touches files:
indexing.local_store stores and loads FieldIndex matrices, indexing.build feeds the
analyzed fields in.
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


# Rows per block of BlockMax: smaller blocks bound scores tighter (fewer postings read per
# query) but take more entries. 1M demo catalog, 500 queries, top 100 (docs/benchmarks.md,
# "BM25 top-k"): 8 / 16 / 32 rows gave CPU ms mean 2.6 / 2.4 / 3.5, p99 7.5 / 10.0 / 22.7
# (0 / 6 / 58 queries fell back to the dense pass) for 175 / 133 / 96 MiB of bounds.
BLOCK_ROWS = 16
# FieldIndex.top reads the blocks it selects only while their postings stay under this
# share of the query terms' postings; beyond it the dense pass over every document is
# cheaper (measured at 1M: the block path cost about the dense pass at 15-20% read).
MAX_BLOCK_READ = 0.15
# FieldIndex.top_blocks reads the blocks of the highest bounds first, FIRST_ROUND_ROWS * k
# rows of them, then 4x more per round. Each round costs passes over every block's bound,
# and a first round short of k matches gives no k-th score to drop blocks by. 1M demo
# catalog, 293 queries, top 100: 4 rows per k left 233 first rounds short (3.0 rounds on
# average), 32 left none (1.6 rounds, 766 blocks read on average against 708), and took
# 0.72x / 0.78x the time (p50 / mean; docs/benchmarks.md, "BM25 top-k at 1M").
FIRST_ROUND_ROWS = 32
# Below this many documents the dense pass is cheaper than the bounds (100K: 0.27 vs 0.62
# ms p50; 1M: 3.4 vs 1.8 ms); a power law through those puts the crossing near 370-390K
# documents (not measured in between).
BLOCK_MIN_DOCS = 400_000


@dataclass(frozen=True)
class BlockMax:
    """Per term, the largest contribution in each block of ``rows`` consecutive documents
    it has postings in: an upper bound of any document's score in a block (the idea of
    Lucene's block-max WAND, applied to blocks of rows instead of postings blocks)."""

    rows: int
    indptr: np.ndarray  # [n_terms + 1]: term t's entries are [indptr[t], indptr[t + 1])
    blocks: np.ndarray  # int32 block number (row // rows) of each entry, ascending per term
    maxima: np.ndarray  # float32 largest contribution of the term in that block

    @classmethod
    def build(cls, fi: FieldIndex, rows: int = BLOCK_ROWS) -> BlockMax:
        """The bounds of a FieldIndex (postings sorted by (term, row)): one pass, vectorized."""
        n_terms = len(fi.indptr) - 1
        block = np.asarray(fi.indices) // rows  # int32 like the rows: half the memory at 1M
        if not len(block):
            return cls(rows, np.zeros(n_terms + 1, np.int64), block.astype(np.int32), fi.data[:0])
        new = np.empty(len(block), dtype=bool)  # a new (term, block) run starts here
        new[0] = True
        np.not_equal(block[1:], block[:-1], out=new[1:])
        term_starts = np.asarray(fi.indptr[1:-1])
        new[term_starts[term_starts < len(block)]] = True
        starts = np.flatnonzero(new)
        del new
        maxima = np.maximum.reduceat(np.asarray(fi.data), starts)
        per_term = np.diff(np.searchsorted(starts, fi.indptr))
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(per_term, out=indptr[1:])
        return cls(rows, indptr, block[starts].astype(np.int32), maxima)

    @functools.cached_property
    def _bounds(self) -> list[int]:
        bounds: list[int] = self.indptr.tolist()
        return bounds

    def bounds(self, tids: Sequence[int], n_blocks: int) -> np.ndarray:
        """Upper bound of the query's score in every block (float64 [n_blocks]; 0 = no
        match). Summed in the query's term order, as the scores are: each document's
        contribution is at most its block's maximum, and rounding is monotonic, so every
        document's float64 score is <= its block's bound."""
        bounds = self._bounds
        spans = [(bounds[t], bounds[t + 1]) for t in tids]
        # cast while concatenating: bincount would copy int32 / float32 inputs once more
        blocks = np.concatenate([self.blocks[s:e] for s, e in spans], dtype=np.intp)
        maxima = np.concatenate([self.maxima[s:e] for s, e in spans], dtype=np.float64)
        # bincount adds each block's maxima in this order: the query's term order
        ub = np.bincount(blocks, weights=maxima, minlength=n_blocks)
        return ub


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
    block_max: BlockMax | None = None  # None: top() scores every document
    # term frequency of each entry: built, saved and read back by builds only (what an
    # incremental build recomputes ``data`` from); None when loaded for serving
    tf: np.ndarray | None = None

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
        """The CSC matrix from unique (term, doc, tf) postings sorted by (term, doc)
        (see contributions for the float32 data)."""
        df = np.bincount(term, minlength=len(vocab))
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        data = contributions(indptr, doc, tf, lengths, k1, b)
        return cls(vocab, data, doc.astype(np.int32), indptr, len(lengths), tf=narrow_tf(tf))

    @classmethod
    def empty(cls, n: int) -> FieldIndex:
        """A field no document has any term in (every score 0)."""
        return cls(
            {},
            np.zeros(0, np.float32),
            np.zeros(0, np.int32),
            np.zeros(1, np.int64),
            n,
            tf=np.zeros(0, np.uint16),
        )

    def term_ids(self, terms: Iterable[str]) -> list[int]:
        """Vocabulary ids of the known terms (duplicates kept: each occurrence adds a clause)."""
        vocab = self.vocab
        return [vocab[t] for t in terms if t in vocab]

    def scores(self, terms: Sequence[str]) -> np.ndarray:
        """BM25 of the query terms against every document (float64 [N]; 0 = no match)."""
        return self.scores_of_ids(self.term_ids(terms))

    def scores_of_ids(self, ids: Sequence[int]) -> np.ndarray:
        """scores with the query's term ids (one per occurrence)."""
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

    def top(
        self, terms: Sequence[str], k: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best matching rows (score > 0, passing ``mask``), best first, ties by row,
        with their float64 scores: exactly top_matching(scores(terms), k, mask), through
        the blocks whose bound can reach the k-th score when the index has BlockMax and
        at least BLOCK_MIN_DOCS documents."""
        ids = self.term_ids(terms)
        if self.block_max is not None and ids and self.num_docs >= BLOCK_MIN_DOCS:
            got = self.top_blocks(ids, k, mask)
            if got is not None:
                return got
        return top_matching(self.scores_of_ids(ids), k, mask)

    def top_blocks(
        self,
        ids: Sequence[int],
        k: int,
        mask: np.ndarray | None = None,
        max_read: float = MAX_BLOCK_READ,
        first_rows: int = FIRST_ROUND_ROWS,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """top() by block bounds; None when it would read more than ``max_read`` of the
        query terms' postings (the caller scores every document instead).

        Blocks are scored in rounds of growing size (``first_rows`` * k rows, then 4x
        more per round), highest bounds first, keeping the k best rows so far; theta is
        the k-th best score. A document scores at most its block's bound, so a block
        whose bound is below theta (strictly: none of its rows can even tie) is dropped
        unread; theta only grows, so once no block is left the k best are final. The
        scores are the dense pass's float64 sums (postings added in the query's term
        order), ties broken by row."""
        bm = self.block_max
        assert bm is not None
        n_blocks = -(-self.num_docs // bm.rows)
        ub = bm.bounds(ids, n_blocks)
        if mask is not None:  # a block none of whose documents pass cannot contribute
            ub[~_any_per_block(mask, bm.rows, n_blocks)] = 0.0
        bounds = self._bounds
        budget = max_read * sum(bounds[t + 1] - bounds[t] for t in set(ids))
        rows = np.zeros(0, dtype=np.int64)
        scores = np.zeros(0, dtype=np.float64)
        step = -(-first_rows * k // bm.rows)
        # the first round's blocks straight from ub: most blocks of a query of common
        # terms have a positive bound (~57K of 62.5K at 1M), so no list of them is built
        if step < n_blocks:
            chunk = np.argpartition(ub, n_blocks - step)[n_blocks - step :]
            chunk = chunk[ub[chunk] > 0]
        else:
            chunk = np.flatnonzero(ub > 0)
        while len(chunk):
            got = self._score_blocks(ids, np.sort(chunk), mask, budget)
            if got is None:
                return None
            new_rows, new_scores, budget = got
            rows = np.concatenate([rows, new_rows])
            scores = np.concatenate([scores, new_scores])
            keep = np.lexsort((rows, -scores))[:k]
            rows, scores = rows[keep], scores[keep]
            ub[chunk] = 0.0  # read: never chosen again (theta, a score, is > 0)
            # theta = the k-th best score so far; no k rows yet: every block left
            left = np.flatnonzero(ub >= scores[-1] if len(rows) == k else ub > 0)
            step *= 4
            # the step highest bounds left (a partition, not a sort)
            chunk = left[np.argpartition(-ub[left], step - 1)[:step]] if len(left) > step else left
        return rows, scores

    def _score_blocks(
        self, ids: Sequence[int], blocks: np.ndarray, mask: np.ndarray | None, budget: float
    ) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(rows, float64 scores, budget left) of the matching rows (score > 0, passing
        ``mask``) of ``blocks`` (ascending), in row order; None when their postings
        exceed ``budget``."""
        assert self.block_max is not None
        rows_per = self.block_max.rows
        lo = blocks.astype(self.indices.dtype) * rows_per  # same dtype: no copy of a column
        edges = np.empty(2 * len(lo), dtype=lo.dtype)  # lo, hi of each block: ascending
        edges[0::2] = lo
        edges[1::2] = lo + rows_per
        bounds = self._bounds
        spans = []
        total = 0
        for tid in ids:
            s, e = bounds[tid], bounds[tid + 1]
            at = self.indices[s:e].searchsorted(edges)
            a = at[0::2]
            n = at[1::2] - a
            total += int(n.sum())
            spans.append((s, e, a, n))
        if total > budget:
            return None
        shift = (np.arange(len(blocks), dtype=np.int64) - blocks) * rows_per
        locs, vals = [], []
        for s, e, a, n in spans:  # the query's term order: the dense pass's sums
            pos = slices(a, n)
            locs.append(self.indices[s:e][pos] + np.repeat(shift, n))
            vals.append(self.data[s:e][pos])
        width = len(blocks) * rows_per
        vals64 = np.concatenate(vals, dtype=np.float64)
        sums = np.bincount(np.concatenate(locs), weights=vals64, minlength=width)
        rows = (lo.astype(np.int64)[:, None] + np.arange(rows_per)).ravel()
        ok = sums > 0  # rows past the last document have no postings
        if mask is not None:
            ok[ok] = mask[rows[ok]]
        return rows[ok], sums[ok], budget - total

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

    def scores_for_ids(
        self, tids: Sequence[int], rows: np.ndarray, keys: np.ndarray | None = None
    ) -> np.ndarray:
        """scores_for with the query's term ids (rows: int64, all valid). ``keys``: the
        rows as the postings' dtype, when the caller has them cast for several fields
        (searchsorted would otherwise copy the whole column to the rows' wider dtype)."""
        out = np.zeros(len(rows), dtype=np.float64)
        if not len(rows):
            return out
        bounds = self._bounds
        if keys is None:
            keys = rows.astype(self.indices.dtype)  # rows < N: exact
        for tid in tids:
            s, e = bounds[tid], bounds[tid + 1]
            if e == s:
                continue
            col = self.indices[s:e]
            pos = col.searchsorted(keys)
            hit = col.take(pos, mode="clip") == keys  # clip: a position past the end
            # adding 0.0 where the row has no posting leaves it unchanged: same sums as
            # adding the hits alone, in the same term order
            np.add(out, self.data[s:e].take(pos, mode="clip"), out=out, where=hit)
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


def narrow_tf(tf: np.ndarray) -> np.ndarray:
    """Term frequencies in the smallest unsigned type that holds them (uint16 unless a
    term occurs 65536+ times in one document)."""
    tf = np.asarray(tf)
    if not len(tf) or int(tf.max()) < 1 << 16:
        return tf.astype(np.uint16)
    return tf.astype(np.uint32)


def contributions(
    indptr: np.ndarray, doc: np.ndarray, tf: np.ndarray, lengths: np.ndarray, k1: float, b: float
) -> np.ndarray:
    """float32 BM25 contribution of every entry of a CSC matrix (term t's entries are
    [indptr[t], indptr[t + 1]), ``doc`` their rows, ``tf`` their term frequencies) over
    documents of ``lengths`` terms: the one formula of full and incremental builds.

    Reproduces bm25s (method "lucene") operation by operation so the float32 data are
    the same: idf = lucene_idf in double (once per distinct df) rounded to float32,
    tfc = tf / (k1 * ((1 - b) + b * len / avg_len) + tf) with bm25s' dtype promotion,
    contribution = float32(idf * tfc).
    """
    if not len(doc):  # no term in any document (and an average length of 0)
        return np.zeros(0, dtype=np.float32)
    n = len(lengths)
    df = np.diff(indptr)
    dfs, which = np.unique(df, return_inverse=True)
    idf = np.asarray([lucene_idf(d, n) for d in dfs.tolist()], dtype=np.float32)[which]
    avg_len = np.asarray(lengths, dtype=np.int64).mean()
    k_doc = k1 * ((1 - b) + b * np.asarray(lengths).astype(np.float64) / avg_len)
    tfc = np.asarray(tf).astype(_TF_DTYPE)
    denom = k_doc.astype(_TF_DTYPE)[doc]
    denom += tfc
    tfc /= denom
    del denom
    tfc *= np.repeat(idf, df)  # = idf[term]: float32 times float64 is float64, as in bm25s
    return tfc.astype(np.float32)


def bm25s_vocab(tokens: Iterable[str]) -> dict[str, int]:
    """Term -> id in bm25s' order: the iteration order of the set it fills with every
    token in corpus order. bm25s calls ``set.update`` per document; one ``set()`` over
    the chained tokens adds the same keys in the same order, so the set is identical."""
    return {t: i for i, t in enumerate(set(tokens))}


def _postings(
    term: np.ndarray, doc: np.ndarray, n: int, n_terms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (term, doc) pairs of a token stream (any order), sorted by (term, doc), with
    counts: one in-place sort of the keys term * n + doc. Keys of 32 bits where
    n_terms * n fits (NumPy's AVX-512 / AVX2 sort: at 1M documents and 30M tokens ~2.5x
    faster than a stable radix argsort of the terms and a gather of the documents)."""
    if not len(term):
        return term, doc, np.zeros(0, dtype=np.int64)
    kind = np.dtype(np.uint32 if n_terms * n < 1 << 32 else np.uint64)
    width = kind.type(n)
    key = term.astype(kind)
    np.multiply(key, width, out=key)
    np.add(key, doc.astype(kind, copy=False), out=key)
    key.sort()
    first = np.empty(len(key), dtype=bool)  # a new (term, doc) pair starts here
    first[0] = True
    np.not_equal(key[1:], key[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    del first
    uniq = key[starts]
    del key
    t = np.floor_divide(uniq, width)
    np.subtract(uniq, t * width, out=uniq)
    tf = np.diff(starts, append=len(term))
    return t.astype(term.dtype), uniq.astype(doc.dtype), tf


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
def _any_per_block(mask: np.ndarray, rows: int, n_blocks: int) -> np.ndarray:
    """Whether each block of ``rows`` rows has a True in ``mask`` (bool [n_blocks]); with
    rows a multiple of 8, 8 flags at a time (any() along a short axis is ~10x slower)."""
    padded = np.zeros(n_blocks * rows, dtype=bool)
    padded[: len(mask)] = mask
    if rows % 8:
        return np.asarray(padded.reshape(n_blocks, rows).any(axis=1))
    words = padded.view(np.uint64).reshape(n_blocks, rows // 8)
    out = np.not_equal(words[:, 0], 0)
    for j in range(1, rows // 8):
        out |= words[:, j] != 0
    return out


def top_matching(
    scores: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows with a score > 0 that pass ``mask``, best first, ties by row, and
    their scores: the dense selection every retrieval over a full score array uses."""
    eligible = scores > 0 if mask is None else (scores > 0) & mask
    rows = np.flatnonzero(eligible)
    best = rows[top_k(scores[rows], k)]
    return best, scores[best]


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
