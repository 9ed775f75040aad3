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
from typing import TYPE_CHECKING

import numpy as np

from indexing import layout
from indexing.analysis import ASCII_BYTE_MAP, STEM_CACHE_MAX, Analyzer

if TYPE_CHECKING:  # imported where a build needs it: bm25.py, which queries use, imports this
    import pyarrow as pa

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
    """Lowercased token -> term id (-1: the analyzer drops it); a miss asks the analyzer
    and ``ids``. Bounded like the analyzer's own token cache."""

    def __init__(self, analyzer: Analyzer, ids: TermIds) -> None:
        super().__init__()
        self.term = analyzer.term
        self.ids = ids

    def __missing__(self, token: str) -> int:
        term = self.term(token)
        i = -1 if term is None else self.ids[term]
        if len(self) < STEM_CACHE_MAX:
            self[token] = i
        return i


# Fields with at least this many texts to analyze are tokenized in bulk with Arrow; below
# it, text by text in Python (importing pyarrow costs ~0.9 s, more than a small field's
# whole analysis).
BULK_MIN_TEXTS = 20_000
ASCII_CHUNK = 200_000  # texts tokenized at once in bulk (bounds the tokens' memory)
_BYTE_MAP = np.frombuffer(ASCII_BYTE_MAP, dtype=np.uint8)


def _kept(ids: np.ndarray, token_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids without the dropped tokens' -1, terms per text) of texts whose tokens' ids are
    ``ids[token_offsets[i]:token_offsets[i + 1]]``."""
    keep = ids >= 0
    kept = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(keep, out=kept[1:])
    return ids[keep], np.diff(kept[token_offsets])


def _python_ids(
    analyzer: Analyzer, token_ids: _TokenIds, texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(term ids of the texts' terms, concatenated; terms per text): Analyzer.tokens per
    text, every token through ``token_ids`` in one pass."""
    tokens = [analyzer.tokens(t) for t in texts]
    offsets = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, tokens), np.int64, count=len(tokens)), out=offsets[1:])
    flat = itertools.chain.from_iterable(tokens)
    ids = np.fromiter(map(token_ids.__getitem__, flat), np.int32, count=int(offsets[-1]))
    return _kept(ids, offsets)


def _ascii_ids(token_ids: _TokenIds, texts: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """_python_ids of ASCII texts, in Arrow: one byte map over the buffer lowercases and
    blanks every non-word byte (what Analyzer.tokens does per text), a whitespace split,
    then each distinct token goes through ``token_ids`` once. Empty and one-character
    tokens map to -1 like any dropped token."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(texts)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + n + 1]
    buf = texts.buffers()[2]  # None when every text is empty
    data = np.frombuffer(buf, dtype=np.uint8) if buf is not None else _BYTE_MAP[:0]
    data = data[offsets[0] : offsets[-1]]
    mapped = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets - offsets[0]), pa.py_buffer(_BYTE_MAP[data])
    )
    split = pc.ascii_split_whitespace(mapped)
    tokens = pc.dictionary_encode(split.flatten())
    distinct = tokens.dictionary.to_pylist()
    table = np.fromiter(map(token_ids.__getitem__, distinct), np.int32, count=len(distinct))
    return _kept(table[tokens.indices.to_numpy()], split.offsets.to_numpy())


# Split ASCII texts into sentences (at ".") when they hold at least this many per text
# on average, and tokenize each distinct sentence once: a product description repeats its
# catalog's stock sentences (100K demo bodies: 807K sentences, 66K distinct; 2.4x faster).
# Tokens never span a ".", so the terms are the same.
PIECES_MIN_PER_TEXT = 2.0


def _sentence_ids(
    token_ids: _TokenIds, texts: pa.LargeStringArray
) -> tuple[np.ndarray, np.ndarray]:
    """_ascii_ids of texts made of repeated sentences: each distinct piece between two
    "." tokenized once, the texts' ids gathered from their pieces'."""
    import pyarrow.compute as pc

    pieces = pc.split_pattern(texts, pattern=".")
    coded = pc.dictionary_encode(pieces.flatten())
    ids, lengths = _ascii_ids(token_ids, coded.dictionary)
    which = coded.indices.to_numpy()
    per_piece = lengths[which]
    flat = ids[slices((np.cumsum(lengths) - lengths)[which], per_piece)]
    ends = np.zeros(len(which) + 1, dtype=np.int64)
    np.cumsum(per_piece, out=ends[1:])
    return flat, np.diff(ends[pieces.offsets.to_numpy()])


def _bulk_ids(
    analyzer: Analyzer, token_ids: _TokenIds, texts: pa.LargeStringArray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(term ids of every text's terms, concatenated; start of each text in them; terms
    per text) of an Arrow array: ASCII texts by _ascii_ids (or _sentence_ids), ASCII_CHUNK
    at a time, the others by _python_ids."""
    import pyarrow.compute as pc

    n = len(texts)
    lengths = np.zeros(n, dtype=np.int64)
    ascii_rows = np.flatnonzero(pc.string_is_ascii(texts).to_numpy(zero_copy_only=False))
    parts: list[np.ndarray] = []
    order: list[np.ndarray] = []  # rows in the order of their ids in ``parts``
    ascii_texts = texts if len(ascii_rows) == n else texts.take(ascii_rows)
    for c in range(0, len(ascii_rows), ASCII_CHUNK):
        chunk = ascii_texts.slice(c, ASCII_CHUNK)
        periods = pc.sum(pc.count_substring(chunk, ".")).as_py() or 0
        if periods >= PIECES_MIN_PER_TEXT * len(chunk):
            ids, ln = _sentence_ids(token_ids, chunk)
        else:
            ids, ln = _ascii_ids(token_ids, chunk)
        rows = ascii_rows[c : c + ASCII_CHUNK]
        lengths[rows] = ln
        parts.append(ids)
        order.append(rows)
    if len(ascii_rows) < n:
        other = np.ones(n, dtype=bool)
        other[ascii_rows] = False
        rows = np.flatnonzero(other)
        ids, lengths[rows] = _python_ids(analyzer, token_ids, texts.take(rows).to_pylist())
        parts.append(ids)
        order.append(rows)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    # start of each text: its rows' lengths summed in the order the parts were appended
    in_order = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    starts = np.zeros(n, dtype=np.int64)
    placed = lengths[in_order]
    starts[in_order] = np.cumsum(placed) - placed
    return flat, starts, lengths


def _encode(
    analyzer: Analyzer, token_ids: _TokenIds, texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each distinct text of ``texts`` analyzed once (a catalog's brand or color holds a
    few dozen values): (term ids of the distinct texts' terms, concatenated; start and
    terms of each distinct text; the distinct text of each row)."""
    if len(texts) >= BULK_MIN_TEXTS:
        import pyarrow as pa
        import pyarrow.compute as pc

        coded = pc.dictionary_encode(pa.array(texts, type=pa.large_string()))
        flat, starts, lengths = _bulk_ids(analyzer, token_ids, coded.dictionary)
        return flat, starts, lengths, coded.indices.to_numpy()
    slot: dict[str, int] = {}
    which = np.fromiter((slot.setdefault(t, len(slot)) for t in texts), np.int64, len(texts))
    flat, lengths = _python_ids(analyzer, token_ids, list(slot))
    return flat, np.cumsum(lengths) - lengths, lengths, which


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
        rows_texts = field if every else [field[i] for i in todo.tolist()]
        t_ids, t_start, t_len, which = _encode(analyzer, token_ids, rows_texts)
        starts[todo] = pool_size + t_start[which]
        lengths[todo] = t_len[which]
        pool.append(t_ids)
        pool_size += len(t_ids)
        spans.append((starts, lengths))
    flat = np.concatenate(pool) if pool else np.zeros(0, dtype=np.int32)
    return ids.words, [(flat[slices(s, ln)], ln) for s, ln in spans]


def analyze_rows(
    analyzer: Analyzer, texts: Sequence[Sequence[str]], rows: np.ndarray, ids: TermIds
) -> list[Stream]:
    """One Stream per field of just ``rows``' texts (``texts[field][row]``), as ids of
    ``ids`` (new terms appended to it): what an incremental build analyzes. Each distinct
    text is analyzed once, as in analyze_fields."""
    token_ids = _TokenIds(analyzer, ids)
    out: list[Stream] = []
    for field in texts:
        t_ids, t_start, t_len, which = _encode(
            analyzer, token_ids, [field[i] for i in rows.tolist()]
        )
        out.append((t_ids[slices(t_start[which], t_len[which])], t_len[which]))
    return out
