"""Format 3 analyzed terms of a local index version: the writer and the reader.

Per (field, row) a sequence id (``term_seqs.npy``); per distinct sequence a slice of int32
ids into the combined field's vocabulary (``term_ids.npy`` cut by ``term_offsets.npy``).
Sequences are deduplicated across rows and fields, so a brand, a color or a size is stored
once, not once per product. File names come from indexing.layout.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from indexing.bm25 import TermStream
from indexing.layout import TERM_IDS, TERM_OFFSETS, TERM_SEQS, load_mapped
from indexing.term_streams import slices

_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: powers stay distinct mod 2**64


def _row_hashes(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A polynomial hash (mod 2**64) of each row's id sequence: sum of (id + 1) * B**pos,
    from one wrapping cumulative sum over the stream (no per-row Python)."""
    n = len(lengths)
    if not len(ids):
        return np.zeros(n, dtype=np.uint64)
    ends = np.cumsum(lengths)
    pos = np.arange(len(ids), dtype=np.int64) - np.repeat(ends - lengths, lengths)
    powers = np.cumprod(np.full(int(lengths.max()), _HASH_BASE, dtype=np.uint64))
    with np.errstate(over="ignore"):
        contrib = (ids.astype(np.uint64) + np.uint64(1)) * powers[pos]
        del pos
        acc = np.concatenate(([np.uint64(0)], np.cumsum(contrib, dtype=np.uint64)))
        return acc[ends] - acc[ends - lengths]


def write_term_store(path: Path, streams: Sequence[TermStream]) -> None:
    """Write a version's analyzed terms in format 3 (see TermStore) from each field's
    combined-vocabulary token stream (indexing.bm25.build_from_streams).

    Term sequences are deduplicated across rows and fields (a brand, a color, a size is
    stored once, not once per product) and numbered in order of first occurrence, field
    by field, row by row. Rows are grouped by (hash, length) of their id sequence, all in
    NumPy; every row is then checked token by token against its group's first row, and a
    hash collision (never seen) falls back to keying rows by their bytes.
    """
    n = len(streams[0][1]) if streams else 0
    lengths = np.concatenate([ln for _, ln in streams]) if streams else np.zeros(0, np.int64)
    flat = (
        np.concatenate([np.asarray(i, dtype=np.int32) for i, _ in streams])
        if streams
        else np.zeros(0, dtype=np.int32)
    )
    hashes = np.concatenate([_row_hashes(i, ln) for i, ln in streams]) if streams else lengths
    starts = np.cumsum(lengths) - lengths
    order = np.lexsort((lengths, hashes))  # stable: a group's first row comes first
    h, ln = hashes[order], lengths[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (h[1:] != h[:-1]) | (ln[1:] != ln[:-1])
    group = np.cumsum(new_group) - 1
    first_row = order[new_group]  # each group's first (field, row), field-major
    rep = np.empty(len(order), dtype=np.int64)
    rep[order] = first_row[group]
    dup = np.flatnonzero(rep != np.arange(len(rep)))  # rows that share a group's first row
    a = flat[slices(starts[dup], lengths[dup])]
    if not np.array_equal(a, flat[slices(starts[rep[dup]], lengths[dup])]):
        _write_term_store_keyed(path, streams)
        return
    seq_of_group = np.empty(len(first_row), dtype=np.int64)
    seq_of_group[np.argsort(first_row, kind="stable")] = np.arange(len(first_row))
    seq_of_row = np.empty(len(order), dtype=np.int64)
    seq_of_row[order] = seq_of_group[group]
    reps = np.sort(first_row)  # the rows stored, in sequence order
    offsets = np.zeros(len(reps) + 1, dtype=np.int64)
    np.cumsum(lengths[reps], out=offsets[1:])
    np.save(path / TERM_IDS, flat[slices(starts[reps], lengths[reps])])
    np.save(path / TERM_OFFSETS, offsets)
    np.save(path / TERM_SEQS, seq_of_row.reshape(len(streams), n).astype(np.int32))


def _write_term_store_keyed(path: Path, streams: Sequence[TermStream]) -> None:
    """write_term_store with each row's sequence keyed by the bytes of its ids (a dict
    per row: the reference, and the fallback on a hash collision)."""
    n = len(streams[0][1]) if streams else 0
    seqs = np.zeros((len(streams), n), dtype=np.int32)
    seq_of: dict[bytes, int] = {}
    parts: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for j, (ids, field_lengths) in enumerate(streams):
        ids32 = np.asarray(ids, dtype=np.int32)
        buf = ids32.tobytes()
        ends = np.cumsum(field_lengths)
        starts = ends - field_lengths
        keys = list(map(buf.__getitem__, map(slice, (4 * starts).tolist(), (4 * ends).tolist())))
        local = list(dict.fromkeys(keys))  # distinct sequences, first occurrence first
        if len(local) == n and n:  # every row distinct: first occurrences are the rows
            local_ids = np.arange(n, dtype=np.int64)
            first_rows = local_ids
        else:
            local_of = dict(zip(local, itertools.count()))
            local_ids = np.fromiter(map(local_of.__getitem__, keys), np.int64, count=n)
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
        if len(rows) == n:  # every row is a new sequence, in row order: the whole stream
            parts.append(ids32)
            lengths.append(field_lengths)
        else:
            parts.append(ids32[slices(starts[rows], field_lengths[rows])])
            lengths.append(field_lengths[rows])
    offsets = np.zeros(len(seq_of) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
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
        self.seqs: np.ndarray = load_mapped(path / TERM_SEQS)
        self.offsets: np.ndarray = load_mapped(path / TERM_OFFSETS)
        self.ids: np.ndarray = load_mapped(path / TERM_IDS)
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
        words = self.words[self.ids[slices(starts, counts)]].tolist()
        pos = 0
        for s, k in zip(miss.tolist(), counts.tolist(), strict=True):
            tuples[s] = tuple(words[pos : pos + k])
            pos += k
        done[miss] = True
        self._held += need
        return tuples

    def sequences(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(sequence id per (field, row) [fields, rows], known) for columns_of and
        id_rows_of: one gather that both share (a lookup needs both). ``known`` is None
        when every row is >= 0; else the rows >= 0, the others read row 0's sequences."""
        known = rows >= 0
        if known.all():
            return self.seqs.take(rows, axis=1), None
        return self.seqs.take(np.where(known, rows, 0), axis=1), known

    def columns(self, rows: np.ndarray) -> list[tuple[tuple[str, ...], ...]]:
        """Per field, the analyzed terms of each row (() for a row < 0)."""
        return self.columns_of(*self.sequences(rows))

    def columns_of(
        self, seqs: np.ndarray, known: np.ndarray | None
    ) -> list[tuple[tuple[str, ...], ...]]:
        """columns() of sequences() output."""
        if known is not None:
            seqs = seqs.copy()
            seqs[:, ~known] = self.empty
        tuples, done = self._state
        if not done[seqs].all():
            tuples = self._fill(seqs)
        return list(map(tuple, tuples[seqs].tolist()))  # C loops: gather, then the tuples

    def id_rows_of(
        self, seqs: np.ndarray, known: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """columns_of() as vocabulary ids, gathered without touching a string: (int32 ids
        of the terms of every (field, row), concatenated field-major; int64 terms per
        (field, row), 0 for a row < 0)."""
        starts = self.offsets[seqs]
        lens = self.offsets[seqs + 1] - starts
        if known is not None:
            lens[:, ~known] = 0
        starts, lens = starts.ravel(), lens.ravel()
        return self.ids[slices(starts, lens)], lens
