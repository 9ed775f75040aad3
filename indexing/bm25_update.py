"""The BM25 side of an incremental build: the previous version's matrices and term store
updated for the few changed rows, instead of rebuilt from every row's terms.

A full build (indexing.bm25_side.write_bm25 -> indexing.bm25.build_from_streams) sorts every
token of the corpus and computes every contribution from it. When most rows are unchanged
and keep their order, this module instead, per field and for the combined field:

- keeps the previous vocabulary ids and appends the terms it has never seen (a term no
  document has any more stays, with no postings: it scores and counts as absent);
- drops the postings of the changed and removed rows, renumbers the kept rows (their
  order is kept, so every term's postings stay sorted by row) and inserts the changed
  rows' postings at their (term, row) places (a binary search per term, no sort);
- recomputes every contribution from the stored term frequencies and lengths with the
  very formula of a full build (indexing.bm25.contributions: df, N and the average
  length change with any edit), then the block bounds;
- hard-links the files of a field none of whose rows changed, and extends the term store
  (the changed rows' sequences appended; unreferenced ones compacted away when they
  outgrow the live ones) instead of rewriting it.

The result scores every (term, document), stores every row's analyzed terms and answers
every search exactly as a full build of the same documents (tests/test_bm25_update.py);
only vocabulary ids and the term store's layout may differ. ``plan`` says when this
applies; otherwise the caller builds from scratch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from indexing import layout
from indexing.analysis import Analyzer
from indexing.bm25 import FieldIndex, contributions, narrow_tf
from indexing.local_store import link_or_copy, save_field_index
from indexing.reuse import previous_manifest
from indexing.term_streams import PreviousTerms, Stream, TermIds, analyze_rows, slices

log = logging.getLogger(__name__)

# Above this share of changed or added rows the full build runs instead. The update's
# cost is a few passes over every posting (drop, insert, contributions: the same at any
# share) plus a binary search per changed row's term. Measured: 2.5-2.9 BM25 CPU s vs
# 28.6-32.2 for the full path (unchanged rows' terms reused) at 100 changed rows of 1M,
# 0.6 vs 4.1 at 10% of 100K (docs/benchmarks.md, "Incremental reindex at 1M"). So the
# limit is not a measured crossover: it bounds the term store's appended sequences and
# the per-term Python loop, which grow with the share.
MAX_CHANGED_SHARE = 0.1

Timer = Callable[[str], AbstractContextManager[Any]]


def plan(
    previous: Path,
    rows: np.ndarray,
    text_fields: Sequence[str],
    k1: float,
    b: float,
    analyzer: Analyzer,
) -> str | None:
    """None when the previous version can be updated into this build's BM25 side, else
    the reason it cannot (the caller then builds from scratch). ``rows``: per new row, the
    previous row holding the same document, or -1."""
    m = previous_manifest(previous)
    if m is None:
        return "previous version unreadable"
    try:
        metas = [
            json.loads(
                layout.bm25_field(previous, f)
                .with_suffix(layout.BM25_VOCAB_SUFFIX)
                .read_text(encoding="utf-8")
            )
            for f in (*text_fields, layout.COMBINED)
        ]
    except (OSError, ValueError) as e:
        return f"previous version unreadable: {e}"
    if m.get("format") != layout.FORMAT_VERSION or m.get("text_fields") != list(text_fields):
        return "previous version has another format or other text fields"
    if m.get("bm25", {}).get("k1") != k1 or m.get("bm25", {}).get("b") != b:
        return "previous version has other BM25 parameters"
    if m.get("analyzer") != analyzer.settings():
        return "previous version has another analyzer"
    if not all(meta.get("tf") for meta in metas):
        return "previous version stores no term frequencies"
    kept = rows[rows >= 0]
    if not len(kept) or (len(kept) > 1 and not bool((np.diff(kept) > 0).all())):
        return "the unchanged documents changed order"
    if len(rows) - len(kept) > MAX_CHANGED_SHARE * len(rows):
        return f"more than {MAX_CHANGED_SHARE:.0%} of the documents changed"
    return None


def _prev_arrays(previous: Path, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, tf) of a previous field, memory-mapped."""
    return (
        np.asarray(layout.load_mapped(layout.bm25_array(previous, field, "indptr"))),
        layout.load_mapped(layout.bm25_array(previous, field, "indices")),
        layout.load_mapped(layout.bm25_array(previous, field, layout.BM25_TF)),
    )


def _link_field(previous: Path, path: Path, field: str, block_max: bool) -> None:
    """The field's files of the previous version, linked unchanged into ``path``."""
    names = [*layout.BM25_ARRAYS, layout.BM25_TF]
    if block_max:
        names += list(layout.BM25_BLOCK_ARRAYS)
    for name in names:
        link_or_copy(layout.bm25_array(previous, field, name), layout.bm25_array(path, field, name))
    src = layout.bm25_field(previous, field)
    link_or_copy(
        src.with_name(field + layout.BM25_VOCAB_SUFFIX),
        layout.bm25_field(path, field).with_name(field + layout.BM25_VOCAB_SUFFIX),
    )


def update_postings(
    indptr: np.ndarray,
    indices: np.ndarray,
    tf: np.ndarray,
    new_of_old: np.ndarray | None,
    drop: np.ndarray,
    n: int,
    term: np.ndarray,
    doc: np.ndarray,
    n_terms: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, tf) of a CSC posting list (entries sorted by (term, row)) with
    the entries of the previous rows flagged in ``drop`` removed, the kept rows renumbered
    by ``new_of_old`` (increasing; None: rows keep their numbers) and the tokens ``term``
    of rows ``doc`` (new row numbers) added, for ``n`` rows and ``n_terms`` terms (>= the
    previous count: new terms get ids at the end)."""
    df = np.zeros(n_terms, dtype=np.int64)
    df[: len(indptr) - 1] = np.diff(indptr)
    gone = np.flatnonzero(drop[indices])
    if len(gone):
        df -= np.bincount(np.searchsorted(indptr, gone, side="right") - 1, minlength=n_terms)
        indices = np.delete(indices, gone)
        tf = np.delete(tf, gone)
    if new_of_old is not None:
        indices = new_of_old[indices]
    key = np.unique(term.astype(np.int64) * n + doc, return_counts=True)
    t = key[0] // n
    r = (key[0] - t * n).astype(np.int32)
    counts = key[1]
    bounds = np.zeros(n_terms + 1, dtype=np.int64)
    np.cumsum(df, out=bounds[1:])
    pos = np.empty(len(t), dtype=np.int64)
    firsts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]]) if len(t) else t
    lasts = np.r_[firsts[1:], len(t)] if len(t) else t
    for s, e, tid in zip(firsts.tolist(), lasts.tolist(), t[firsts].tolist(), strict=True):
        a, z = int(bounds[tid]), int(bounds[tid + 1])
        pos[s:e] = a + np.searchsorted(indices[a:z], r[s:e])
    if len(counts) and int(counts.max()) > np.iinfo(tf.dtype).max:
        tf = tf.astype(np.uint32)
    indices = np.insert(indices, pos, r)
    tf = np.insert(tf, pos, counts.astype(tf.dtype))
    df += np.bincount(t, minlength=n_terms)
    out = np.zeros(n_terms + 1, dtype=np.int64)
    np.cumsum(df, out=out[1:])
    return out, indices.astype(np.int32, copy=False), tf


def _same_rows(prev: PreviousTerms, field: int, todo: np.ndarray, stream: Stream) -> np.ndarray:
    """Per todo row, whether its new terms in ``field`` are the previous same row's
    (rows kept their numbers): bool [len(todo)]."""
    ids, lens = stream
    seq = np.asarray(prev.seqs[field])[todo]
    starts = prev.offsets[seq]
    prev_lens = prev.offsets[seq + 1] - starts
    same = prev_lens == lens
    if not same.any():
        return same
    cand = np.flatnonzero(same)
    new_starts = np.cumsum(lens) - lens
    a = np.asarray(prev.ids)[slices(starts[cand], lens[cand])]
    z = ids[slices(new_starts[cand], lens[cand])]
    owner = np.repeat(np.arange(len(cand)), lens[cand])
    differs = np.bincount(owner, weights=a != z, minlength=len(cand)) > 0
    same[cand[differs]] = False
    return same


def update_bm25(
    path: Path,
    previous: Path,
    texts: Sequence[Sequence[str]],
    text_fields: Sequence[str],
    rows: np.ndarray,
    k1: float,
    b: float,
    analyzer: Analyzer,
    times: Timer,
) -> None:
    """Write the BM25 matrices and term store of a version into ``path`` by updating
    ``previous`` (``plan`` said it applies): rows with ``rows[row] >= 0`` are that
    previous row's document, the others are analyzed from ``texts[field][row]``."""
    n = len(rows)
    keep = rows >= 0
    todo = np.flatnonzero(~keep)
    kept_new = np.flatnonzero(keep)
    with times("analysis"):
        prev = PreviousTerms.load(previous, rows)
        n_prev = prev.seqs.shape[1]
        identity = n == n_prev and np.array_equal(rows[keep], kept_new)
        new_of_old = np.full(n_prev, -1, dtype=np.int32)
        new_of_old[rows[keep]] = kept_new
        drop = new_of_old < 0
        ids = TermIds(prev.words)
        streams = analyze_rows(analyzer, texts, todo, ids)
        seqs = np.asarray(prev.seqs)
        offsets = np.asarray(prev.offsets)
        lengths = np.empty((len(text_fields), n), dtype=np.int64)
        lengths[:, keep] = (offsets[seqs + 1] - offsets[seqs])[:, rows[keep]]
        for j, (_, ln) in enumerate(streams):
            lengths[j, todo] = ln
        # per field, which todo rows hold the same terms as before (rows kept in place)
        same = [
            _same_rows(prev, j, todo, s) if identity else np.zeros(len(todo), dtype=bool)
            for j, s in enumerate(streams)
        ]
    with times("bm25"):
        (path / layout.BM25_DIR).mkdir()
        remap = None if identity else new_of_old
        for j, name in enumerate(text_fields):
            if identity and same[j].all():
                _link_field(previous, path, name, block_max=False)
                continue
            src = layout.bm25_field(previous, name)
            meta = json.loads(src.with_name(name + layout.BM25_VOCAB_SUFFIX).read_text("utf-8"))
            vocab: dict[str, int] = meta["vocab"]
            n_before = len(vocab)
            t_ids, ln = streams[j]
            words = ids.words
            field_ids = np.fromiter(
                (vocab.setdefault(words[w], len(vocab)) for w in t_ids.tolist()),
                np.int64,
                count=len(t_ids),
            )
            indptr, indices, tf = update_postings(
                *_prev_arrays(previous, name), remap, drop, n,
                field_ids, np.repeat(todo, ln), len(vocab),
            )  # fmt: skip
            data = contributions(indptr, indices, tf, lengths[j], k1, b)
            fi = FieldIndex(vocab, data, indices, indptr, n, tf=narrow_tf(tf))
            same_vocab = len(vocab) == n_before and n == n_prev
            dst = layout.bm25_field(path, name)
            save_field_index(fi, dst, vocab_from=src if same_vocab else None)
        n_words_before = len(prev.words)
        if identity and all(s.all() for s in same):
            _link_field(previous, path, layout.COMBINED, block_max=True)
        else:
            flat = np.concatenate([s[0] for s in streams])
            docs = np.concatenate([np.repeat(todo, s[1]) for s in streams])
            indptr, indices, tf = update_postings(
                *_prev_arrays(previous, layout.COMBINED), remap, drop, n,
                flat, docs, len(ids.words),
            )  # fmt: skip
            data = contributions(indptr, indices, tf, lengths.sum(axis=0), k1, b)
            same_vocab = len(ids.words) == n_words_before and n == n_prev
            all_vocab = (
                {} if same_vocab else dict(zip(ids.words, range(len(ids.words)), strict=True))
            )
            fi = FieldIndex(all_vocab, data, indices, indptr, n, tf=narrow_tf(tf))
            src = layout.bm25_field(previous, layout.COMBINED)
            save_field_index(
                fi,
                layout.bm25_field(path, layout.COMBINED),
                block_max=True,
                vocab_from=src if same_vocab else None,
            )
    with times("term_store"):
        _extend_term_store(path, previous, prev, streams, todo, keep, same, n)


# The appended sequences of incremental builds are compacted away once the store holds
# more than this many times the terms its rows still refer to.
MAX_STORE_GROWTH = 1.5


def _extend_term_store(
    path: Path,
    previous: Path,
    prev: PreviousTerms,
    streams: Sequence[Stream],
    todo: np.ndarray,
    keep: np.ndarray,
    same: Sequence[np.ndarray],
    n: int,
) -> None:
    """The term store of the new rows: kept rows keep their sequence ids, a changed row
    whose field holds the same terms keeps its sequence, the others' sequences are
    appended (not deduplicated: the rows read the same terms either way)."""
    seqs_prev = np.asarray(prev.seqs)
    offsets = np.asarray(prev.offsets)
    n_seqs = len(offsets) - 1
    seqs = np.empty((len(streams), n), dtype=np.int64)
    seqs[:, keep] = seqs_prev[:, prev.rows[keep]]
    parts: list[np.ndarray] = []
    lens: list[np.ndarray] = []
    for j, (ids, ln) in enumerate(streams):
        new = ~same[j]
        seqs[j, todo[same[j]]] = seqs_prev[j, todo[same[j]]]
        seqs[j, todo[new]] = n_seqs + np.arange(int(new.sum()))
        n_seqs += int(new.sum())
        starts = np.cumsum(ln) - ln
        parts.append(ids[slices(starts[new], ln[new])])
        lens.append(ln[new])
    added = np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64)
    if not len(added):
        link_or_copy(previous / layout.TERM_IDS, path / layout.TERM_IDS)
        link_or_copy(previous / layout.TERM_OFFSETS, path / layout.TERM_OFFSETS)
        np.save(path / layout.TERM_SEQS, seqs.astype(np.int32))
        return
    all_offsets = np.concatenate([offsets, offsets[-1] + np.cumsum(added)])
    all_ids = np.concatenate([np.asarray(prev.ids, dtype=np.int32), *parts])
    used = np.zeros(n_seqs, dtype=bool)
    used[seqs.ravel()] = True
    seq_lens = np.diff(all_offsets)
    if len(all_ids) > MAX_STORE_GROWTH * int(seq_lens[used].sum()):
        live = np.flatnonzero(used)
        renum = np.full(n_seqs, -1, dtype=np.int64)
        renum[live] = np.arange(len(live))
        all_ids = all_ids[slices(all_offsets[live], seq_lens[live])]
        all_offsets = np.zeros(len(live) + 1, dtype=np.int64)
        np.cumsum(seq_lens[live], out=all_offsets[1:])
        seqs = renum[seqs]
    np.save(path / layout.TERM_IDS, all_ids)
    np.save(path / layout.TERM_OFFSETS, all_offsets)
    np.save(path / layout.TERM_SEQS, seqs.astype(np.int32))
