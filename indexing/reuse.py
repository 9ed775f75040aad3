"""What a build takes from the previous version: unchanged documents' rows, terms, vectors.

indexing.build asks ``unchanged_rows`` which documents the current version stored exactly
as they are now (same stored line); those keep their analyzed terms (``reusable_terms``
says whether the previous term store can lend them: same text fields, same analyzer) and
their vectors (``document_vectors``: same model), and indexing.ann keeps their graph
nodes. Everything here only reads the previous version.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexing import layout
from indexing.analysis import Analyzer
from indexing.config import IndexConfig
from indexing.documents import Document, embedding_text
from indexing.embedding_cache import EmbeddingCache, embed_texts
from indexing.encoders import Encoder
from indexing.local_store import LineStore

log = logging.getLogger(__name__)


def unchanged_rows(
    previous: Path | None, docs: Sequence[Document], lines: Sequence[bytes]
) -> np.ndarray | None:
    """Per document, the row of the previous version that stored the very same document
    (same stored line: same id, texts, category and attributes), else -1; None when there
    is no readable previous version."""
    if previous is None:
        return None
    try:
        prev_ids = json.loads((previous / layout.IDS).read_text(encoding="utf-8"))
        store = LineStore(previous / layout.DOCS)
    except (OSError, ValueError) as e:
        log.warning("previous version %s unreadable for reuse: %s", previous, e)
        return None
    try:
        row_of = dict(zip(prev_ids, itertools.count()))
        rows = np.fromiter((row_of.get(d.id, -1) for d in docs), np.int64, count=len(docs))
        raw = store.raw
        for i in np.flatnonzero(rows >= 0).tolist():
            if raw(int(rows[i])) != lines[i]:
                rows[i] = -1
    finally:
        store.close()
    return rows


def _previous_manifest(previous: Path) -> dict[str, Any] | None:
    try:
        m: dict[str, Any] = json.loads((previous / layout.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if m.get("format") in layout.READABLE_FORMATS else None


def reusable_terms(previous: Path, text_fields: Sequence[str], cfg: IndexConfig) -> bool:
    """Whether the previous version's term store holds the same fields, analyzed alike."""
    m = _previous_manifest(previous)
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
) -> np.ndarray:
    """Vectors of the documents: an unchanged document's from the previous version (same
    model and dimension: the vector it served), the others through the cache/encoder."""
    m = _previous_manifest(previous) if previous is not None and rows is not None else None
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
    out = np.empty((len(docs), encoder.dim), dtype=np.float32)
    out[keep] = prev[rows[keep]]
    todo = np.flatnonzero(~keep).tolist()
    if todo:
        out[todo] = embed_texts(
            encoder, [embedding_text(docs[i]) for i in todo], cache=cache, progress=progress
        )
    return out
