"""The ANN graph of a local index version (hnswlib, inner product on normalized vectors).

A build extends the previous version's graph when it can (same model, dimension, format
and graph parameters): unchanged documents keep their node, so a small reindex costs a
few inserts instead of a whole graph. Labels are therefore not rows; layout.ANN_ROWS maps
them. indexing.build calls build_ann; indexing.local_store loads the graph.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexing import layout
from indexing.local_store import load_ann_rows

log = logging.getLogger(__name__)

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
# Rebuild the graph from scratch when more than this share of its nodes would be deleted
# (deleted nodes still cost memory and search time; their labels are never reused).
ANN_MAX_DELETED = 0.2


def _reusable_graph(
    previous: Path | None, model_id: str, dim: int
) -> tuple[dict[str, Any], list[str], np.ndarray, np.ndarray] | None:
    """(manifest, ids, vectors (memory-mapped), label -> row) of a previous version whose
    hnswlib graph a new build can extend, or None (no version, other model/dim/format, no
    graph, other graph parameters)."""
    if previous is None:
        return None
    try:
        m = json.loads((previous / layout.MANIFEST).read_text(encoding="utf-8"))
        a = m.get("ann", {})
        if (
            m.get("format") not in layout.READABLE_FORMATS
            or m.get("model_id") != model_id
            or int(m.get("dim", -1)) != dim
            or not a.get("enabled")
            or (a.get("M"), a.get("ef_construction")) != (HNSW_M, HNSW_EF_CONSTRUCTION)
            or not (previous / layout.ANN).is_file()
        ):
            return None
        ids = json.loads((previous / layout.IDS).read_text(encoding="utf-8"))
        vectors = np.load(previous / layout.VECTORS, mmap_mode="r")
        rows = load_ann_rows(previous, m)
        if rows is None:
            rows = np.arange(len(ids), dtype=np.int64)
    except (OSError, ValueError, KeyError) as e:
        log.warning("previous version %s unusable for graph reuse: %s", previous, e)
        return None
    if vectors.shape != (len(ids), dim):
        return None
    return m, ids, vectors, rows


def build_ann(
    path: Path,
    ids: Sequence[str],
    vectors: np.ndarray,
    previous: Path | None,
    model_id: str,
) -> dict[str, Any]:
    """Write layout.ANN (+ layout.ANN_ROWS: hnswlib label -> row, -1 = deleted node).

    Reuses the previous version's graph when it can: documents whose id and vector bytes
    are unchanged keep their node, removed or changed ones are marked deleted, new or
    changed ones are added under fresh labels. The previous version is only read (its
    graph is loaded into memory and saved into ``path``). Returns the manifest's record
    of what was done.
    """
    import hnswlib

    n, dim = vectors.shape
    threads = min(2, os.cpu_count() or 1)
    prev = _reusable_graph(previous, model_id, dim)
    if prev is not None and previous is not None:
        _, prev_ids, prev_vectors, prev_rows = prev
        label_of_prev_row = np.full(len(prev_ids), -1, dtype=np.int64)
        live = np.flatnonzero(prev_rows >= 0)
        label_of_prev_row[prev_rows[live]] = live
        prev_row_of = {d: i for i, d in enumerate(prev_ids)}
        prev_row = np.fromiter((prev_row_of.get(d, -1) for d in ids), dtype=np.int64, count=n)
        common = np.flatnonzero(prev_row >= 0)
        same = np.zeros(n, dtype=bool)
        if len(common):
            a = vectors[common].view(np.uint32)
            b = np.asarray(prev_vectors[prev_row[common]], dtype=np.float32).view(np.uint32)
            same[common] = np.all(a == b, axis=1)
        kept_prev = np.zeros(len(prev_ids), dtype=bool)
        kept_prev[prev_row[same]] = True
        n_labels_prev = len(prev_rows)
        added = np.flatnonzero(~same)
        n_labels = n_labels_prev + len(added)
        dead = n_labels - n
        if dead / max(n_labels, 1) <= ANN_MAX_DELETED and int(same.sum()) > 0:
            index = hnswlib.Index(space="ip", dim=dim)
            index.load_index(str(previous / layout.ANN), max_elements=n_labels)  # type: ignore[operator]
            index.set_num_threads(threads)
            newly_dead = label_of_prev_row[~kept_prev]
            for label in newly_dead.tolist():
                index.mark_deleted(label)
            rows = np.full(n_labels, -1, dtype=np.int64)
            rows[label_of_prev_row[prev_row[same]]] = np.flatnonzero(same)
            new_labels = np.arange(n_labels_prev, n_labels, dtype=np.int64)
            rows[new_labels] = added
            if len(added):
                index.add_items(vectors[added], new_labels, num_threads=threads)
            index.save_index(str(path / layout.ANN))
            np.save(path / layout.ANN_ROWS, rows)
            return {
                "build": "incremental",
                "reused_from": str(prev[0].get("version", previous.name)),
                "kept": int(same.sum()),
                "added": len(added),
                "deleted": len(newly_dead),
                "labels": n_labels,
            }
        log.info(
            "hnswlib: %d of %d graph nodes would be deleted; building from scratch", dead, n_labels
        )
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=42)
    index.set_num_threads(threads)
    index.add_items(vectors, np.arange(n), num_threads=threads)
    index.save_index(str(path / layout.ANN))
    np.save(path / layout.ANN_ROWS, np.arange(n, dtype=np.int64))
    return {
        "build": "scratch",
        "reused_from": None,
        "kept": 0,
        "added": n,
        "deleted": 0,
        "labels": n,
    }
