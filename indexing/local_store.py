"""On-disk format of one local index version and its synchronous query engine.

A version directory holds everything one immutable index needs:
- ``manifest.json``: version, created, doc_count, text_fields, attr_names, analyzer,
  model_id, dim, bm25 params, ann settings (written last by the builder).
- ``ids.json``: document ids by row.
- ``bm25/<field>.npz`` + ``bm25/<field>.vocab.json``: bm25s (method="lucene") score matrices
  in CSC form (term -> postings of precomputed per-document BM25 contributions), one per
  text field plus ``_all`` (all text fields concatenated); built by build_field_indexes,
  equal to what bm25s builds.
- ``vectors.npy``: L2-normalized float32 [N, dim]; ``ann.bin``: hnswlib index (optional)
  and ``ann_rows.npy``: its label -> row (-1 = deleted node; a reindex extends the
  previous graph, so labels are not rows; format 1 had no such file: label = row).
- ``attrs.npy``: float64 [N, A], NaN where a document has no value; ``category.npy`` int32
  codes into ``categories.json`` (-1 = none). Filters and static features are vectorized.
- ``docs.jsonl`` with ``docs.offsets.npy``: the stored Document of each row, read from an
  mmap (thread-safe).
- the analyzed terms per field of each row (no re-analysis at query time). Format 3:
  ``term_seqs.npy`` int32 [fields, N] = id of the row's term sequence in that field;
  distinct sequences (deduplicated across rows and fields) are slices
  ``term_ids[term_offsets[s]:term_offsets[s + 1]]`` of int32 ids into the combined field's
  vocabulary (``bm25/_all.vocab.json``). Formats 1-2: ``terms.jsonl`` (one JSON line of
  lists per row) with ``terms.offsets.npy``.

``Snapshot`` answers queries synchronously; indexing.local.LocalBackend runs it off the
event loop. Everything here is read-only once written.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from indexing.analysis import Analyzer
from indexing.backend import Filters, Hits, check_query_vector
from indexing.documents import Document
from indexing.errors import IndexingError, IndexNotFoundError, InvalidRequestError
from ltr.errors import unknown_name
from ltr.types import TermIds

COMBINED = "_all"  # name of the combined-field BM25 index on disk
# Formats 1-2: decoded terms.jsonl rows kept per snapshot (LRU; a hit skips the decode).
TERMS_CACHE_ROWS = 10_000
# Format 3: term references held by the decoded-sequence cache before it starts over. A
# decoded sequence is a tuple of the vocabulary's own str objects (8 bytes per term plus
# the tuple), so 6M references are ~50 MB: about what 10K rows of freshly decoded JSON
# strings took, while covering every row of a 100K-product catalog.
TERMS_CACHE_TERMS = 6_000_000
# 2: the hnswlib graph's labels are no longer rows (a reindex reuses the previous graph);
# ``ann_rows.npy`` maps them. Format 1 versions (labels = rows) still load.
# 3: analyzed terms as int32 vocabulary ids of deduplicated sequences (TermStore) instead
# of terms.jsonl. Formats 1 and 2 still load.
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
ANN_ROWS = "ann_rows.npy"
TERM_SEQS = "term_seqs.npy"
TERM_IDS = "term_ids.npy"
TERM_OFFSETS = "term_offsets.npy"
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200


# What Snapshot.lookups returns: (query terms, BM25 per field, cosine, analyzed terms per
# field, idf of the distinct query terms, numeric attributes, the analyzed terms as
# vocabulary ids or None), each aligned with the ids.
Lookups = tuple[
    tuple[str, ...],
    dict[str, np.ndarray],
    np.ndarray,
    dict[str, tuple[tuple[str, ...], ...]],
    dict[str, float],
    dict[str, np.ndarray],
    TermIds | None,
]


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

    def save(self, path: Path) -> None:
        np.savez(path.with_suffix(".npz"), data=self.data, indices=self.indices, indptr=self.indptr)
        path.with_suffix(".vocab.json").write_text(
            json.dumps({"num_docs": self.num_docs, "vocab": self.vocab}), encoding="utf-8"
        )

    @classmethod
    def load(cls, path: Path) -> FieldIndex:
        meta = json.loads(path.with_suffix(".vocab.json").read_text(encoding="utf-8"))
        with np.load(path.with_suffix(".npz")) as z:
            return cls(meta["vocab"], z["data"], z["indices"], z["indptr"], int(meta["num_docs"]))

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


# bm25s computes tf / (k1 * (...) + tf) with tf a float32 array and k1 * (...) a numpy
# float64 scalar: float64 under NumPy 2's promotion rules, float32 under NumPy 1's.
_TF_DTYPE = (np.zeros(1, dtype=np.float32) + np.float64(0.5)).dtype


def bm25s_vocab(tokens: Iterable[str]) -> dict[str, int]:
    """Term -> id in bm25s' order: the iteration order of the set it fills with every
    token in corpus order. bm25s calls ``set.update`` per document; one ``set()`` over
    the chained tokens adds the same keys in the same order, so the set is identical."""
    return {t: i for i, t in enumerate(set(tokens))}


def _flat_ids(
    token_lists: Sequence[Sequence[str]], vocab: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(term id of every token, in document order; token count per document)."""
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    total = int(lengths.sum())
    ids = np.fromiter(
        map(vocab.__getitem__, itertools.chain.from_iterable(token_lists)),
        dtype=np.int64,
        count=total,
    )
    return ids, lengths


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
        uniq, tf = np.unique(term * n + doc, return_counts=True)
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
    index equals bm25s over each document's fields concatenated; its token stream is the
    per-field term ids mapped into its vocabulary, so nothing is concatenated or
    re-analyzed. The result equals what bm25s.BM25(method="lucene").index builds with its
    per-document Python loops (tests/test_fast_build.py proves it), at a fraction of the
    cost: term ids once per token, then one sort per field.
    """
    fields, combined, _ = build_indexes_and_streams(per_field, k1, b)
    return fields, combined


# (combined-vocabulary id of every token of a field in document order, tokens per document)
TermStream = tuple[np.ndarray, np.ndarray]


def build_indexes_and_streams(
    per_field: Sequence[Sequence[Sequence[str]]], k1: float, b: float
) -> tuple[list[FieldIndex], FieldIndex, list[TermStream]]:
    """build_field_indexes, plus each field's token stream in combined-vocabulary ids
    (what write_term_store stores)."""
    n = len(per_field[0]) if per_field else 0
    fields: list[FieldIndex] = []
    streams: list[tuple[dict[str, int], np.ndarray, np.ndarray]] = []
    field_lengths: list[np.ndarray] = []
    all_lengths = np.zeros(n, dtype=np.int64)
    for token_lists in per_field:
        if len(token_lists) != n:
            raise ValueError("every field needs one token list per document")
        vocab = bm25s_vocab(itertools.chain.from_iterable(token_lists))
        ids, lengths = _flat_ids(token_lists, vocab)
        field_lengths.append(lengths)
        all_lengths += lengths
        if not len(ids):  # bm25s divides by the average length; nothing to index
            fields.append(FieldIndex.empty(n))
            streams.append((vocab, ids, np.zeros(0, dtype=np.int64)))
            continue
        docs = np.repeat(np.arange(n, dtype=np.int64), lengths)
        term, doc, tf = _postings(ids, docs, n, len(vocab))
        fields.append(FieldIndex.from_postings(vocab, term, doc, tf, lengths, k1, b))
        streams.append((vocab, ids, docs))
    if not any(len(ids) for _, ids, _ in streams):
        empty = np.zeros(0, dtype=np.int64)
        return fields, FieldIndex.empty(n), [(empty, ln) for ln in field_lengths]
    chain = itertools.chain.from_iterable
    vocab_all = bm25s_vocab(chain(chain(zip(*per_field, strict=True))))
    all_terms: list[np.ndarray] = []
    for vocab, ids, _ in streams:
        to_all = np.fromiter(map(vocab_all.__getitem__, vocab), dtype=np.int64, count=len(vocab))
        all_terms.append(to_all[ids])
    merged = _postings(
        np.concatenate(all_terms),
        np.concatenate([d for *_, d in streams]),
        n,
        len(vocab_all),
        doc_order=False,
    )
    combined = FieldIndex.from_postings(vocab_all, *merged, all_lengths, k1, b)
    return fields, combined, list(zip(all_terms, field_lengths, strict=True))


def _slices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions of the concatenated slices [starts[i], starts[i] + lengths[i])."""
    if not len(lengths):
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    pos = np.arange(int(ends[-1]), dtype=np.int64)
    pos += np.repeat(starts - (ends - lengths), lengths)
    return pos


def write_term_store(
    path: Path, per_field: Sequence[Sequence[tuple[str, ...]]], streams: Sequence[TermStream]
) -> None:
    """Write a version's analyzed terms in format 3 (see the module docstring and TermStore).

    Term sequences are deduplicated across rows and fields (a brand, a color, a size is
    stored once, not once per product); a sequence's ids are gathered from the combined-
    vocabulary token streams BM25 indexing already computed, so nothing is encoded again.
    """
    n = len(per_field[0]) if per_field else 0
    seqs = np.zeros((len(per_field), n), dtype=np.int32)
    seq_of: dict[tuple[str, ...], int] = {}
    parts: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for j, (token_lists, (ids, field_lengths)) in enumerate(zip(per_field, streams, strict=True)):
        local = list(dict.fromkeys(token_lists))  # distinct sequences, first occurrence first
        if len(local) == n and n:  # every row distinct: first occurrences are the rows
            local_ids = np.arange(n, dtype=np.int64)
            first_rows = local_ids
        else:
            local_of = {t: i for i, t in enumerate(local)}
            local_ids = np.fromiter(map(local_of.__getitem__, token_lists), np.int64, count=n)
            _, first_rows = np.unique(local_ids, return_index=True)
        to_global = np.empty(len(local), dtype=np.int64)
        new: list[int] = []
        for i, t in enumerate(local):
            g = seq_of.get(t)
            if g is None:
                g = seq_of[t] = len(seq_of)
                new.append(i)
            to_global[i] = g
        seqs[j] = to_global[local_ids]
        if not new:
            continue
        rows = first_rows[np.asarray(new, dtype=np.int64)]
        starts = np.cumsum(field_lengths) - field_lengths
        if len(rows) == n:  # every row is a new sequence, in row order: the whole stream
            parts.append(ids)
            lengths.append(field_lengths)
        else:
            parts.append(ids[_slices(starts[rows], field_lengths[rows])])
            lengths.append(field_lengths[rows])
    offsets = np.zeros(len(seq_of) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    np.save(path / TERM_IDS, flat.astype(np.int32))
    np.save(path / TERM_OFFSETS, offsets)
    np.save(path / TERM_SEQS, seqs)


class TermStore:
    """Format 3 analyzed terms of a version: per (field, row) a sequence id, per sequence
    a slice of vocabulary ids (memory-mapped).

    A decoded sequence is a tuple of the vocabulary's own str objects, cached in an object
    array by sequence id: a request's rows map to cached tuples in one C-level gather, with
    no JSON decode and no new str or tuple objects for anything seen before. The cache
    holds up to ``cache_terms`` term references, then starts over (a new array: readers of
    the old one are unaffected, so no lock is needed).
    """

    def __init__(self, path: Path, vocab: Mapping[str, int], cache_terms: int) -> None:
        words: list[str] = [""] * len(vocab)
        for t, i in vocab.items():
            words[i] = t
        self.words = np.empty(len(words), dtype=object)
        self.words[:] = words
        self.seqs: np.ndarray = np.load(path / TERM_SEQS)
        self.offsets: np.ndarray = np.load(path / TERM_OFFSETS)
        ids = np.zeros(0, np.int32)  # an empty array cannot be mapped
        if self.offsets[-1]:
            ids = np.asarray(np.load(path / TERM_IDS, mmap_mode="r"))  # plain ndarray view
        self.ids: np.ndarray = ids
        self.empty = len(self.offsets) - 1  # the slot of unknown rows: ()
        self.cache_terms = cache_terms
        self._held = 0
        self._state = self._new_state()

    def _new_state(self) -> tuple[np.ndarray, np.ndarray]:
        tuples = np.full(self.empty + 1, None, dtype=object)
        tuples[self.empty] = ()
        done = np.zeros(self.empty + 1, dtype=bool)
        done[self.empty] = True
        return tuples, done

    def _fill(self, seqs: np.ndarray) -> np.ndarray:
        """A cache state holding every sequence in ``seqs`` (decodes what it lacks)."""
        tuples, done = self._state
        miss = np.unique(seqs[~done[seqs]])
        need = int((self.offsets[miss + 1] - self.offsets[miss]).sum())
        if self._held and self._held + need > self.cache_terms:
            tuples, done = self._state = self._new_state()
            self._held = 0
            miss = np.unique(seqs[~done[seqs]])
            need = int((self.offsets[miss + 1] - self.offsets[miss]).sum())
        starts = self.offsets[miss]
        counts = self.offsets[miss + 1] - starts
        words = self.words[self.ids[_slices(starts, counts)]].tolist()
        pos = 0
        for s, k in zip(miss.tolist(), counts.tolist(), strict=True):
            tuples[s] = tuple(words[pos : pos + k])
            pos += k
        done[miss] = True
        self._held += need
        return tuples

    def columns(self, rows: np.ndarray) -> list[tuple[tuple[str, ...], ...]]:
        """Per field, the analyzed terms of each row (() for a row < 0)."""
        known = rows >= 0
        seqs = self.seqs[:, np.where(known, rows, 0)]
        if not known.all():
            seqs[:, ~known] = self.empty
        tuples, done = self._state
        if not done[seqs].all():
            tuples = self._fill(seqs)
        return list(map(tuple, tuples[seqs].tolist()))  # C loops: gather, then the tuples

    def id_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """columns(rows) as vocabulary ids, gathered without touching a string: (int32 ids
        of the terms of every (field, row), concatenated field-major; int64 terms per
        (field, row), 0 for a row < 0)."""
        known = rows >= 0
        every = bool(known.all())
        seqs = self.seqs[:, rows if every else np.where(known, rows, 0)]
        starts = self.offsets[seqs]
        lens = self.offsets[seqs + 1] - starts
        if not every:
            lens[:, ~known] = 0
        starts, lens = starts.ravel(), lens.ravel()
        return self.ids[_slices(starts, lens)], lens


def load_ann_rows(path: Path, manifest: Mapping[str, Any]) -> np.ndarray | None:
    """hnswlib label -> row of a version (-1 = deleted node); None when labels are rows
    (format 1)."""
    if manifest.get("format") == 1 or not (path / ANN_ROWS).is_file():
        return None
    rows: np.ndarray = np.load(path / ANN_ROWS)
    return rows


def lucene_idf(df: int, n: int) -> float:
    """Lucene's BM25 IDF (always positive)."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


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


def read_line(raw: bytes) -> Any:
    """One stored document line: orjson (~4x faster), or json for what only json accepts
    (NaN, Infinity). orjson reads an integer beyond 64 bits as the nearest float, which is
    what Document.attrs (floats) holds either way."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


class _LineStore:
    """JSON lines addressed by row through an offsets array, read from a read-only mmap.

    Not os.pread: a request reads ~150 rows, and every pread released and re-took the GIL,
    so under concurrent searches each row waited for the event-loop thread's switch
    interval (py-spy on the 100K server at 32 connections: 12% of samples in pread). A
    slice of the map is a memory copy under the GIL. Version files never change once
    written, so the map stays valid for the snapshot's life.
    """

    def __init__(self, path: Path) -> None:
        self.offsets = np.load(path.with_suffix(".offsets.npy"))
        self._mm: mmap.mmap | None = None
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size > 0:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def raw(self, row: int) -> bytes:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        if self._mm is None:
            if start == end:
                return b""
            raise IndexingError("line store is closed")
        return self._mm[start:end]

    def get(self, row: int) -> Any:
        return read_line(self.raw(row))

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __del__(self) -> None:  # a snapshot replaced by reload() is closed when dropped
        self.close()


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_line(obj: Any) -> str:
    """The compact JSON of one stored line (what every line store writes)."""
    return _ENCODE(obj)


def write_lines(path: Path, objs: Iterable[Any]) -> None:
    """Write JSON lines plus the byte offset of each line (offsets[-1] = file size)."""
    write_blobs(path, [json_line(obj).encode() + b"\n" for obj in objs])


def doc_line(doc: Document) -> bytes:
    """The stored line of a document (with its newline): what json.loads reads back as
    ``doc.to_json()``. orjson (~5x faster than the json encoder) unless an attribute is
    NaN or infinite (orjson would write null) or orjson refuses the document (an integer
    beyond 64 bits, a lone surrogate): then json_line, as before."""
    obj = doc.to_json()
    try:
        if all(map(math.isfinite, doc.attrs.values())):
            return orjson.dumps(obj) + b"\n"
    except (TypeError, orjson.JSONEncodeError):
        pass
    return json_line(obj).encode() + b"\n"


def write_blobs(path: Path, blobs: Sequence[bytes]) -> None:
    """Write encoded lines (each ending in a newline) plus the byte offset of each line."""
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)), out=offsets[1:])
    with open(path, "wb") as f:
        f.write(b"".join(blobs))
        f.flush()
        os.fsync(f.fileno())
    np.save(path.with_suffix(".offsets.npy"), offsets)


class Snapshot:
    """One loaded index version; every method is synchronous and thread-safe (read-only)."""

    def __init__(self, path: Path, ef_search: int | None = None) -> None:
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise IndexNotFoundError(f"{path}: no manifest.json (not a complete index version)")
        self.path = path
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        m = self.manifest
        if m.get("format") not in READABLE_FORMATS:
            raise IndexingError(
                f"{path}: index format {m.get('format')!r}, expected one of {READABLE_FORMATS}"
            )
        self.version: str = m["version"]
        self.text_fields: tuple[str, ...] = tuple(m["text_fields"])
        self.attr_names: tuple[str, ...] = tuple(m["attr_names"])
        self.analyzer = Analyzer(m["analyzer"]["stopwords"], m["analyzer"]["stemmer"])
        self.ids: list[str] = json.loads((path / "ids.json").read_text(encoding="utf-8"))
        self.row_of: dict[str, int] = {d: i for i, d in enumerate(self.ids)}
        self.n = len(self.ids)
        self.fields = {f: FieldIndex.load(path / "bm25" / f) for f in self.text_fields}
        self.combined = FieldIndex.load(path / "bm25" / COMBINED)
        self.vectors: np.ndarray = np.load(path / "vectors.npy")
        self.dim = int(m["dim"])
        self.attrs: np.ndarray = np.load(path / "attrs.npy")
        self.cat_codes: np.ndarray = np.load(path / "category.npy")
        self.categories: list[str] = json.loads((path / "categories.json").read_text("utf-8"))
        self._cat_index = {c: i for i, c in enumerate(self.categories)}
        self.ann: Any = None
        self.ann_rows: np.ndarray | None = None  # hnswlib label -> row (None: label = row)
        if m["ann"]["enabled"]:
            import hnswlib

            self.ann_rows = load_ann_rows(path, m)
            self.ann = hnswlib.Index(space="ip", dim=self.dim)
            self.ann.load_index(str(path / "ann.bin"))
            self.ann.set_ef(int(ef_search or m["ann"]["ef_search"]))
            self.ann.set_num_threads(1)
        self.docs = _LineStore(path / "docs.jsonl")
        # format 3: TermStore; formats 1-2: terms.jsonl rows behind an LRU
        self.term_store: TermStore | None = None
        self.terms: _LineStore | None = None
        if m["format"] >= 3:
            self.term_store = TermStore(path, self.combined.vocab, TERMS_CACHE_TERMS)
        else:
            self.terms = _LineStore(path / "terms.jsonl")
        self._terms_cache: OrderedDict[int, tuple[tuple[str, ...], ...]] = OrderedDict()
        self._terms_lock = threading.Lock()
        self.terms_cache_rows = TERMS_CACHE_ROWS

    def close(self) -> None:
        self.docs.close()
        if self.terms is not None:
            self.terms.close()

    # --- helpers -------------------------------------------------------------------
    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row per id, -1 for unknown ids."""
        return np.fromiter(
            map(self.row_of.get, ids, itertools.repeat(-1)), dtype=np.int64, count=len(ids)
        )

    def mask(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean [N]: documents passing the filters (None = no filter); Filters.matches rules."""
        if filters is None or filters.is_empty():
            return None
        m = np.ones(self.n, dtype=bool)
        if filters.category is not None:
            code = self._cat_index.get(filters.category)
            if code is None:
                return np.zeros(self.n, dtype=bool)
            m &= self.cat_codes == code
        for name, (lo, hi) in filters.ranges.items():
            if name not in self.attr_names:  # no document has it: nothing matches
                return np.zeros(self.n, dtype=bool)
            col = self.attrs[:, self.attr_names.index(name)]
            m &= ~np.isnan(col)
            if lo is not None:
                m &= col >= lo
            if hi is not None:
                m &= col <= hi
        return m

    def _field(self, field: str | None) -> FieldIndex:
        if field is None:
            return self.combined
        fi = self.fields.get(field)
        if fi is None:
            raise unknown_name("text field", field, self.text_fields)
        return fi

    def _vector(self, vector: np.ndarray) -> np.ndarray:
        return check_query_vector(vector, self.dim)

    @staticmethod
    def _check_k(k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidRequestError(f"k must be a positive integer, got {k!r}")

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> Hits:
        ids = self.ids
        return Hits(tuple(ids[r] for r in rows.tolist()), np.asarray(scores, dtype=np.float64))

    # --- retrieval -----------------------------------------------------------------
    def bm25(
        self, query: str, k: int, field: str | None = None, filters: Filters | None = None
    ) -> Hits:
        self._check_k(k)
        fi = self._field(field)
        terms = self.analyzer.terms(query)
        scores = fi.scores(terms)
        m = self.mask(filters)
        eligible = scores > 0 if m is None else (scores > 0) & m
        rows = np.flatnonzero(eligible)
        if len(rows) == 0:
            return Hits((), np.zeros(0, dtype=np.float64))
        best = rows[top_k(scores[rows], k)]
        return self._hits(best, scores[best])

    def knn(self, vector: np.ndarray, k: int, filters: Filters | None = None) -> Hits:
        self._check_k(k)
        v = self._vector(vector)
        m = self.mask(filters)
        if m is None and self.ann is not None:
            labels, _ = self.ann.knn_query(v, k=min(k, self.n), num_threads=1)
            cand = labels[0].astype(np.int64)
            if self.ann_rows is not None:
                cand = self.ann_rows[cand]  # deleted nodes are never returned: all >= 0
            s = self.vectors[cand] @ v  # exact cosine of the ANN's candidates
            order = np.lexsort((cand, -s))
            return self._hits(cand[order], s[order].astype(np.float64))
        if m is None:
            return self.knn_exact(v, k)
        rows = np.flatnonzero(m)
        if len(rows) == 0:
            return Hits((), np.zeros(0, dtype=np.float64))
        s = self.vectors[rows] @ v
        pos = top_k(s, k)
        return self._hits(rows[pos], s[pos].astype(np.float64))

    def knn_exact(self, vector: np.ndarray, k: int) -> Hits:
        """Exact top-k by brute-force matmul, ANN or not (the reference for ANN recall)."""
        self._check_k(k)
        v = self._vector(vector)
        s = self.vectors @ v
        best = top_k(s, k)
        return self._hits(best, s[best].astype(np.float64))

    # --- per-candidate lookups -----------------------------------------------------
    def fetch(self, ids: Sequence[str]) -> list[Document | None]:
        return [None if r < 0 else Document.from_json(self.docs.get(r)) for r in self.rows(ids)]

    def field_scores(self, query: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return self._field_scores(self.analyzer.terms(query), self.rows(ids))

    def _field_scores(self, terms: Sequence[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        known = rows >= 0
        if known.all():
            return {
                name: fi.scores_for_ids(fi.term_ids(terms), rows)
                for name, fi in self.fields.items()
            }
        out: dict[str, np.ndarray] = {}
        for name, fi in self.fields.items():
            col = np.full(len(rows), np.nan, dtype=np.float64)
            col[known] = fi.scores_for_ids(fi.term_ids(terms), rows[known])
            out[name] = col
        return out

    def cosine(self, vector: np.ndarray, ids: Sequence[str]) -> np.ndarray:
        return self._cosine(self._vector(vector), self.rows(ids))

    def _cosine(self, v: np.ndarray, rows: np.ndarray) -> np.ndarray:
        known = rows >= 0
        out = np.full(len(rows), np.nan, dtype=np.float64)
        out[known] = self.vectors[rows[known]] @ v
        return out

    def term_row(self, row: int) -> tuple[tuple[str, ...], ...]:
        """Analyzed terms of every text field of one row (decoded once, then cached)."""
        if self.term_store is not None:
            return tuple(c[0] for c in self.term_store.columns(np.array([row], dtype=np.int64)))
        assert self.terms is not None
        with self._terms_lock:
            got = self._terms_cache.get(row)
            if got is not None:
                self._terms_cache.move_to_end(row)
                return got
        # Term rows are lists of plain strings, which orjson decodes ~3x faster than json
        # (interning them cost more than it saved once features map terms to ids).
        got = tuple(map(tuple, orjson.loads(self.terms.raw(row))))
        if self.terms_cache_rows > 0:
            with self._terms_lock:
                self._terms_cache[row] = got
                while len(self._terms_cache) > self.terms_cache_rows:
                    self._terms_cache.popitem(last=False)
        return got

    def doc_terms(self, ids: Sequence[str]) -> dict[str, tuple[tuple[str, ...], ...]]:
        return self._doc_terms(self.rows(ids))

    def _doc_terms(self, rows: np.ndarray) -> dict[str, tuple[tuple[str, ...], ...]]:
        if self.term_store is not None:
            return dict(zip(self.text_fields, self.term_store.columns(rows), strict=True))
        empty: tuple[tuple[str, ...], ...] = ((),) * len(self.text_fields)
        per_doc = [empty if r < 0 else self.term_row(r) for r in rows.tolist()]
        return {f: tuple(d[j] for d in per_doc) for j, f in enumerate(self.text_fields)}

    def _term_ids(self, terms: Sequence[str], rows: np.ndarray) -> TermIds | None:
        """_doc_terms(rows) as combined-vocabulary ids (format 3; None for formats 1-2)."""
        store = self.term_store
        if store is None:
            return None
        ids, lens = store.id_rows(rows)
        ids.flags.writeable = lens.flags.writeable = False  # a cached set shares them
        vocab = self.combined.vocab
        qids = {t: vocab[t] for t in terms if t in vocab}
        return TermIds(self.text_fields, ids, lens, qids, len(store.words))

    def idf(self, terms: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in terms:
            df = self.combined.doc_freq(t)
            if df > 0:
                out[t] = lucene_idf(df, self.combined.num_docs)
        return out

    def static_attrs(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Numeric attribute -> value per id (NaN where missing or the id is unknown)."""
        return self._static_attrs(self.rows(ids))

    def _static_attrs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        known = rows >= 0
        out: dict[str, np.ndarray] = {}
        for j, name in enumerate(self.attr_names):
            col = np.full(len(rows), np.nan, dtype=np.float64)
            col[known] = self.attrs[rows[known], j]
            out[name] = col
        return out

    def lookups(self, query: str, ids: Sequence[str], vector: np.ndarray | None) -> Lookups:
        """Every per-candidate lookup features need, in one synchronous call.

        Returns (query terms, field_scores, cosine, doc_terms, idf of the distinct query
        terms, static_attrs, term_ids): the same values as the separate methods (cosine is
        NaN for every candidate when ``vector`` is None), with the query analyzed and the
        rows resolved once.
        """
        terms = self.analyzer.terms(query)
        rows = self.rows(list(ids))
        if vector is None:
            cos = np.full(len(rows), np.nan, dtype=np.float64)
        else:
            cos = self._cosine(self._vector(vector), rows)
        distinct = list(dict.fromkeys(terms))
        return (
            terms,
            self._field_scores(terms, rows),
            cos,
            self._doc_terms(rows),
            self.idf(distinct),
            self._static_attrs(rows),
            self._term_ids(distinct, rows),
        )
