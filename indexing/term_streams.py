"""A corpus's analyzed text fields as integer term streams, analyzed once per distinct text.

indexing.bm25.build_from_streams indexes these streams and indexing.term_store stores them;
no per-token string work is left after this module. Each field of N documents becomes
(term ids of every token in document order, tokens per document), the ids indexing one
``words`` list shared by all fields.

Two ways in:
- ``analyze_fields``: a full build. Each distinct text of a field is analyzed once (a
  catalog's brand, color or size fields hold a few dozen distinct values over 100K rows),
  and its terms become ids through one dict that grows as new terms appear.
- the same with ``previous`` (a ``PreviousTerms``): an incremental build. Rows whose
  document is unchanged take their term sequences from the previous version's term store
  (ids into its combined vocabulary, which seeds ``words``); only the other rows are
  analyzed. The streams, and therefore every BM25 statistic built from them, are the
  ones a full analysis of the same texts would give.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexing import layout
from indexing.analysis import SEPARATOR, STEM_CACHE_MAX, Analyzer, split_ascii_texts

# (int32 term ids of every token of a field in document order, int64 tokens per document)
Stream = tuple[np.ndarray, np.ndarray]


def slices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions of the concatenated slices [starts[i], starts[i] + lengths[i])."""
    if not len(lengths):
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    pos = np.arange(int(ends[-1]), dtype=np.int64)
    pos += np.repeat(starts - (ends - lengths), lengths)
    return pos


class TermIds(dict[str, int]):
    """term -> id; a new term gets the next id and is appended to ``words``, so
    ``map(ids.__getitem__, terms)`` runs in C for every term seen before."""

    def __init__(self, words: Sequence[str] = ()) -> None:
        super().__init__(zip(words, itertools.count()))
        self.words = list(words)

    def __missing__(self, term: str) -> int:
        i = self[term] = len(self.words)
        self.words.append(term)
        return i


@dataclass(frozen=True)
class PreviousTerms:
    """What an incremental build takes from the previous version's term store: its
    combined vocabulary (by id), term_seqs, term_offsets and term_ids (memory-mapped),
    and for each new row the previous row it reuses (-1: analyze the row)."""

    words: list[str]
    seqs: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    rows: np.ndarray

    @classmethod
    def load(cls, version: Path, rows: np.ndarray) -> PreviousTerms:
        meta = json.loads(
            (
                layout.bm25_field(version, layout.COMBINED).with_suffix(layout.BM25_VOCAB_SUFFIX)
            ).read_text(encoding="utf-8")
        )
        vocab: dict[str, int] = meta["vocab"]
        words = [""] * len(vocab)
        for t, i in vocab.items():
            words[i] = t
        return cls(
            words,
            layout.load_mapped(version / layout.TERM_SEQS),
            layout.load_mapped(version / layout.TERM_OFFSETS),
            layout.load_mapped(version / layout.TERM_IDS),
            rows,
        )


class _TokenIds(dict[str, int]):
    """Lowercased token -> term id (-1: the analyzer drops it; -2: the separator of
    split_ascii_texts); a miss asks the analyzer and ``ids``. Bounded like the analyzer's
    own token cache."""

    def __init__(self, analyzer: Analyzer, ids: TermIds) -> None:
        super().__init__({SEPARATOR: -2})
        self.term = analyzer.term
        self.ids = ids

    def __missing__(self, token: str) -> int:
        term = self.term(token)
        i = -1 if term is None else self.ids[term]
        if len(self) < STEM_CACHE_MAX:
            self[token] = i
        return i


ASCII_CHUNK = 20_000  # texts split at once (bounds the token list's memory)


def _encode(
    analyzer: Analyzer, token_ids: _TokenIds, texts: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(term ids of every text's terms, concatenated; start of each text in them; terms
    per text): Analyzer.terms of each text as ids. ASCII texts are split ASCII_CHUNK at a
    time in one pass; the others one by one."""
    n = len(texts)
    lookup = token_ids.__getitem__
    starts = np.zeros(n, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    parts: list[np.ndarray] = []
    size = 0
    batch = [i for i, t in enumerate(texts) if t.isascii() and SEPARATOR not in t]
    for c in range(0, len(batch), ASCII_CHUNK):
        rows = batch[c : c + ASCII_CHUNK]
        tokens = split_ascii_texts([texts[i] for i in rows])
        a = np.fromiter(map(lookup, tokens), dtype=np.int32, count=len(tokens))
        keep = a >= 0
        kept_before_sep = np.cumsum(keep)[a == -2]  # terms up to each text's end
        ln = np.diff(kept_before_sep, prepend=0)
        lengths[rows] = ln
        starts[rows] = size + kept_before_sep - ln
        parts.append(a[keep])
        size += int(kept_before_sep[-1]) if len(rows) else 0
    if len(batch) < n:
        done = np.zeros(n, dtype=bool)
        done[batch] = True
        for i in np.flatnonzero(~done).tolist():
            a = np.fromiter(map(lookup, analyzer.tokens(texts[i])), dtype=np.int32)
            a = a[a >= 0]
            starts[i], lengths[i] = size, len(a)
            parts.append(a)
            size += len(a)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return flat, starts, lengths


def analyze_fields(
    analyzer: Analyzer,
    texts: Sequence[Sequence[str]],
    previous: PreviousTerms | None = None,
) -> tuple[list[str], list[Stream]]:
    """(words, one Stream per field) of ``texts[field][row]`` (see the module docstring)."""
    n = len(texts[0]) if texts else 0
    ids = TermIds(previous.words if previous is not None else ())
    token_ids = _TokenIds(analyzer, ids)
    pool: list[np.ndarray] = []  # every stream is a gather from these, concatenated
    pool_size = 0
    reuse = np.zeros(n, dtype=bool)
    if previous is not None:
        if len(previous.rows) != n:
            raise ValueError("previous.rows needs one entry per document")
        reuse = previous.rows >= 0
        pool.append(np.asarray(previous.ids, dtype=np.int32))
        pool_size = len(previous.ids)
    todo = np.flatnonzero(~reuse)
    every = len(todo) == n
    spans: list[tuple[np.ndarray, np.ndarray]] = []
    for j, field in enumerate(texts):
        starts = np.zeros(n, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        if previous is not None and reuse.any():
            seq = np.asarray(previous.seqs[j])[previous.rows[reuse]]
            offsets = previous.offsets
            starts[reuse] = offsets[seq]
            lengths[reuse] = offsets[seq + 1] - offsets[seq]
        rows_texts = list(field) if every else [field[i] for i in todo.tolist()]
        distinct = dict.fromkeys(rows_texts)
        slot = dict(zip(distinct, itertools.count()))
        t_ids, t_start, t_len = _encode(analyzer, token_ids, list(distinct))
        which = np.fromiter(map(slot.__getitem__, rows_texts), np.int64, count=len(rows_texts))
        starts[todo] = pool_size + t_start[which]
        lengths[todo] = t_len[which]
        pool.append(t_ids)
        pool_size += len(t_ids)
        spans.append((starts, lengths))
    flat = np.concatenate(pool) if pool else np.zeros(0, dtype=np.int32)
    return ids.words, [(flat[slices(s, ln)], ln) for s, ln in spans]
