"""What a build takes from the previous version: unchanged documents' rows, terms, vectors.

indexing.build asks ``unchanged_rows`` which documents the current version stored exactly
as they are now (same stored line); those keep their analyzed terms (``reusable_terms``
says whether the previous term store can lend them: same text fields, same analyzer) and
their vectors (``document_vectors``: same model), and indexing.ann keeps their graph
nodes. Unchanged documents' attributes and category codes come from the previous arrays
(``attrs_and_categories``), and a file equal to the previous version's is hard-linked
(``save_or_link``). Everything here only reads the previous version.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexing import layout
from indexing.analysis import Analyzer
from indexing.config import IndexConfig
from indexing.documents import Document, embedding_text
from indexing.embedding_cache import EmbeddingCache, embed_texts
from indexing.encoders import Encoder
from indexing.local_store import LineStore, link_or_copy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unchanged:
    """Which documents the previous version stored exactly as they are now."""

    rows: np.ndarray  # per document, the previous row with the very same stored line, or -1
    same_ids: bool  # the previous version holds the same ids in the same rows


# Rows compared at once by unchanged_rows: a block of rows that are consecutive rows of
# the previous version too is one comparison of their stored bytes; a block that differs
# is compared row by row.
COMPARE_BLOCK = 256


def unchanged_rows(
    previous: Path | None, ids: Sequence[str], data: bytes, offsets: np.ndarray
) -> Unchanged | None:
    """Per document (``ids``; their stored lines ``data[offsets[i]:offsets[i + 1]]``,
    indexing.local_store.join_lines), the row of the previous version that stored the
    very same document (same stored line: same id, texts, category and attributes), else
    -1; None when there is no readable previous version.

    Documents kept in the previous order (the usual reindex) are compared COMPARE_BLOCK
    rows at a time, as bytes; only blocks holding a change are compared line by line.
    """
    if previous is None:
        return None
    try:
        prev_ids = json.loads((previous / layout.IDS).read_text(encoding="utf-8"))
        store = LineStore(previous / layout.DOCS)
    except (OSError, ValueError) as e:
        log.warning("previous version %s unreadable for reuse: %s", previous, e)
        return None
    try:
        n = len(ids)
        same_ids = prev_ids == list(ids)
        if same_ids:
            rows = np.arange(n, dtype=np.int64)
        else:
            row_of = dict(zip(prev_ids, itertools.count()))
            rows = np.fromiter((row_of.get(d, -1) for d in ids), np.int64, count=n)
        prev_off = np.asarray(store.offsets)
        lens = np.diff(offsets)
        known = rows >= 0
        prev_lens = np.diff(prev_off)
        if len(prev_lens):  # a line of another length is another document
            rows[known & (lens != prev_lens[np.where(known, rows, 0)])] = -1
        view = store.view()
        new_bytes = np.frombuffer(data, dtype=np.uint8)
        prev_bytes = np.frombuffer(view, dtype=np.uint8)
        check: list[int] = []
        for lo in range(0, n, COMPARE_BLOCK):
            hi = min(lo + COMPARE_BLOCK, n)
            r = rows[lo:hi]
            a, z = int(r[0]), int(r[-1])
            if (
                a >= 0
                and z - a == hi - lo - 1
                and bool((np.diff(r) == 1).all())
                and np.array_equal(
                    new_bytes[offsets[lo] : offsets[hi]], prev_bytes[prev_off[a] : prev_off[z + 1]]
                )
            ):
                continue  # equal bytes of equal-length lines: every line equal
            check.extend(range(lo, hi))
        del prev_bytes  # the map closes below: no array may still point into it
        if isinstance(view, memoryview):
            view.release()
        raw = store.raw
        for i in check:
            r0 = int(rows[i])
            if r0 >= 0 and raw(r0) != data[offsets[i] : offsets[i + 1]]:
                rows[i] = -1
    finally:
        store.close()
    return Unchanged(rows, same_ids)


def previous_manifest(previous: Path) -> dict[str, Any] | None:
    """The previous version's manifest, None when unreadable or of a format this code
    cannot read."""
    try:
        m: dict[str, Any] = json.loads((previous / layout.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if m.get("format") in layout.READABLE_FORMATS else None


def reusable_terms(previous: Path, text_fields: Sequence[str], cfg: IndexConfig) -> bool:
    """Whether the previous version's term store holds the same fields, analyzed alike."""
    m = previous_manifest(previous)
    return (
        m is not None
        and int(m["format"]) >= 3
        and m.get("text_fields") == list(text_fields)
        and m.get("analyzer") == Analyzer(cfg.stopwords, cfg.stemmer).settings()
        and all(
            (previous / f).is_file()
            for f in (layout.TERM_SEQS, layout.TERM_IDS, layout.TERM_OFFSETS)
        )
    )


def document_vectors(
    encoder: Encoder,
    docs: Sequence[Document],
    cache: EmbeddingCache | None,
    progress: bool,
    previous: Path | None,
    rows: np.ndarray | None,
    out: Path | None = None,
) -> np.ndarray:
    """Vectors of the documents: an unchanged document's from the previous version (same
    model and dimension: the vector it served), the others through the cache/encoder.

    ``out``: where the new version's vectors file goes. When every unchanged document
    keeps its row (same count), that file is the previous one copied by the kernel with
    the other rows overwritten (the very bytes np.save would write), and the result is a
    read-only map of it: no 1.5 GB array per million documents is assembled and saved.
    """
    m = previous_manifest(previous) if previous is not None and rows is not None else None
    if (
        m is None
        or rows is None
        or previous is None
        or m.get("model_id") != encoder.model_id
        or int(m.get("dim", -1)) != encoder.dim
        or not (rows >= 0).any()
    ):
        return embed_texts(
            encoder, [embedding_text(d) for d in docs], cache=cache, progress=progress
        )
    prev = layout.load_mapped(previous / layout.VECTORS)
    keep = rows >= 0
    if prev.ndim != 2 or prev.shape[1] != encoder.dim or int(rows.max()) >= len(prev):
        log.warning("previous version %s: vectors unusable for reuse", previous)
        return document_vectors(encoder, docs, cache, progress, None, None)
    todo = np.flatnonzero(~keep).tolist()
    if (
        out is not None
        and prev.shape == (len(docs), encoder.dim)
        and prev.dtype == np.float32
        and np.array_equal(rows[keep], np.flatnonzero(keep))
    ):
        copy_file(previous / layout.VECTORS, out)
        if todo:
            new = embed_texts(
                encoder, [embedding_text(docs[i]) for i in todo], cache=cache, progress=progress
            )
            start = int(np.load(out, mmap_mode="r").offset)  # the .npy header's length
            row_bytes = 4 * encoder.dim
            new = np.ascontiguousarray(new, dtype=np.float32)
            # pwrite, not a writable map: flushing a map syncs the whole 1.5 GB copy
            with open(out, "r+b") as f:
                for k, i in enumerate(todo):
                    os.pwrite(f.fileno(), new[k].tobytes(), start + i * row_bytes)
        return layout.load_mapped(out)
    vectors = np.empty((len(docs), encoder.dim), dtype=np.float32)
    vectors[keep] = prev[rows[keep]]
    if todo:
        vectors[todo] = embed_texts(
            encoder, [embedding_text(docs[i]) for i in todo], cache=cache, progress=progress
        )
    return vectors


def copy_file(src: Path, dst: Path) -> None:
    """Copy a file inside the kernel (copy_file_range: no pass through this process's
    memory), else with shutil."""
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            left = os.fstat(fin.fileno()).st_size
            while left > 0:
                done = os.copy_file_range(fin.fileno(), fout.fileno(), left)
                if done == 0:
                    raise OSError("copy_file_range copied nothing")
                left -= done
    except (OSError, AttributeError):
        shutil.copyfile(src, dst)


def _attr_matrix(docs: Sequence[Document], attr_names: Sequence[str]) -> np.ndarray:
    """float64 [N, A]; NaN where a document has no value."""
    attrs = np.full((len(docs), len(attr_names)), np.nan, dtype=np.float64)
    for j, a in enumerate(attr_names):
        col = [d.attrs.get(a) for d in docs]
        attrs[:, j] = [np.nan if v is None else float(v) for v in col]
    return attrs


def attrs_and_categories(
    docs: Sequence[Document],
    attr_names: Sequence[str],
    previous: Path | None,
    rows: np.ndarray | None,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(attribute matrix, sorted categories, int32 category code per row). A document
    stored unchanged in ``previous`` (``rows[i] >= 0``: the same line, so the same
    attributes and category) takes its row of the previous arrays when that version
    names the same attributes and categories; only the others are converted."""
    n = len(docs)
    categories = sorted({d.category for d in docs if d.category is not None})
    attrs = np.full((n, len(attr_names)), np.nan, dtype=np.float64)
    cat = np.full(n, -1, dtype=np.int32)
    todo: list[int] | None = None
    if previous is not None and rows is not None and len(rows) == n and (rows >= 0).any():
        m = previous_manifest(previous)
        try:
            prev_cats = json.loads((previous / layout.CATEGORIES).read_text(encoding="utf-8"))
            prev_attrs = layout.load_mapped(previous / layout.ATTRS)
            prev_cat = layout.load_mapped(previous / layout.CATEGORY)
        except (OSError, ValueError):
            m = None
        if (
            m is not None
            and m.get("attr_names") == list(attr_names)
            and prev_cats == categories
            and prev_attrs.shape[1:] == (len(attr_names),)
            and len(prev_cat) == len(prev_attrs) > int(rows.max())
        ):
            keep = rows >= 0
            attrs[keep] = prev_attrs[rows[keep]]
            cat[keep] = prev_cat[rows[keep]]
            todo = np.flatnonzero(~keep).tolist()
    pick = docs if todo is None else [docs[i] for i in todo]
    where: slice | list[int] = slice(None) if todo is None else todo
    if len(pick):
        attrs[where] = _attr_matrix(pick, attr_names)
        code = {c: i for i, c in enumerate(categories)}
        cat[where] = [code[d.category] if d.category is not None else -1 for d in pick]
    return attrs, categories, cat


def save_or_link(path: Path, name: str, arr: np.ndarray, previous: Path | None) -> None:
    """np.save the array, or link the previous version's file of that name when it holds
    exactly these bytes (an unchanged catalog's attributes, categories)."""
    arr = np.ascontiguousarray(arr)
    if previous is not None and (previous / name).is_file():
        try:
            old = layout.load_mapped(previous / name)
        except (OSError, ValueError):
            old = None
        if (
            old is not None
            and old.dtype == arr.dtype
            and old.shape == arr.shape
            and np.array_equal(old.reshape(-1).view(np.uint8), arr.reshape(-1).view(np.uint8))
        ):
            link_or_copy(previous / name, path / name)
            return
    np.save(path / name, arr)
