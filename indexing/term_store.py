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


def write_term_store(path: Path, streams: Sequence[TermStream]) -> None:
    """Write a version's analyzed terms in format 3 (see TermStore) from each field's
    combined-vocabulary token stream (indexing.bm25.build_from_streams).

    Term sequences are deduplicated across rows and fields (a brand, a color, a size is
    stored once, not once per product), numbered in order of first occurrence, field by
    field; a row's sequence is keyed by the bytes of its ids, so nothing is decoded.
    """
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
        return self.ids[slices(starts, lens)], lens
