"""The ANN graph of a local index version: usearch HNSW (format 4), hnswlib (formats 1-3).

Format 4 builds a usearch graph (inner product on normalized vectors) that stores its own
copy of the vectors in ``ANN_DTYPE`` and is served from a read-only memory map
(``Index.restore(view=True)``): every worker process of a server shares one copy in the
page cache, where an hnswlib graph is read into each process's own memory (hnswlib cannot
serve from a mapped file). The graph only proposes candidates; indexing.local_store
rescores them with the float32 vectors, so the scores served are exact cosines.
docs/benchmarks.md ("Scale") has the side-by-side measurement behind the choice.

A build extends the previous version's graph when it can (same model, dimension, library,
dtype and graph parameters): unchanged documents keep their node, so a small reindex costs
a few inserts instead of a whole graph. Labels are therefore not rows; layout.ANN_ROWS maps
them. Versions of formats 1-3 (hnswlib) still load and serve; their graph is not reused (the
first format-4 build makes a usearch graph from scratch). indexing.build calls build_ann;
indexing.local_store calls open_ann.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexing import layout

log = logging.getLogger(__name__)

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
# usearch's scalar type for the graph's copy of the vectors: "i8" is a quarter of float32
# and, with the float32 rescore of the candidates, keeps recall@100 (docs/benchmarks.md).
ANN_DTYPE = "i8"
ANN_LIBRARY = "usearch"
# A graph over reduced-precision vectors proposes this many times k candidates; the float32
# rescore keeps the best k (quantization reorders near ties, the rescore puts them back).
RESCORE_OVERSAMPLE = 2
# Rebuild the graph from scratch when more than this share of its nodes would be deleted
# (deleted nodes still cost memory and search time; their labels are never reused).
ANN_MAX_DELETED = 0.2


def _threads() -> int:
    """Graph construction uses every core (it is a build, not a request)."""
    return max(1, os.cpu_count() or 1)


def load_ann_rows(path: Path, manifest: Mapping[str, Any]) -> np.ndarray | None:
    """Graph label -> row of a version (-1 = deleted node); None when labels are rows
    (format 1)."""
    if manifest.get("format") == 1 or not (path / layout.ANN_ROWS).is_file():
        return None
    return layout.load_mapped(path / layout.ANN_ROWS)


class AnnGraph:
    """A loaded graph: labels of the approximate top k of a query vector."""

    def __init__(self, path: Path, manifest: Mapping[str, Any], dim: int, ef_search: int) -> None:
        a = manifest["ann"]
        self.library: str = a.get("library", "hnswlib")
        if self.library == "usearch":
            from usearch.index import Index, ScalarKind

            index = Index.restore(str(path / layout.ANN_USEARCH), view=True)
            if index is None or index.ndim != dim:
                raise OSError(f"{path / layout.ANN_USEARCH}: not a usearch index of dim {dim}")
            self._index: Any = index
            self._oversample = 1 if index.dtype == ScalarKind.F32 else RESCORE_OVERSAMPLE
        elif self.library == "hnswlib":
            import hnswlib

            self._index = hnswlib.Index(space="ip", dim=dim)
            self._index.load_index(str(path / layout.ANN))
            self._index.set_num_threads(1)
        else:
            raise OSError(f"{path}: unknown ANN library {self.library!r}")
        self.set_ef(ef_search)

    def set_ef(self, ef: int) -> None:
        """Search breadth (candidates examined per query)."""
        if self.library == "usearch":
            self._index.expansion_search = int(ef)
        else:
            self._index.set_ef(int(ef))

    def search(self, vector: np.ndarray, k: int) -> np.ndarray:
        """int64 labels of candidates for the k nearest: k of them from an hnswlib graph
        (float32), RESCORE_OVERSAMPLE * k from a usearch graph whose vectors are reduced
        (the caller rescores them in float32 and keeps k)."""
        if self.library == "usearch":
            found = self._index.search(vector, k * self._oversample, threads=1)
            return np.asarray(found.keys, dtype=np.int64)
        labels, _ = self._index.knn_query(vector, k=k, num_threads=1)
        return labels[0].astype(np.int64)


def open_ann(path: Path, manifest: Mapping[str, Any], dim: int, ef_search: int) -> AnnGraph:
    return AnnGraph(path, manifest, dim, ef_search)


def build_usearch(path: Path, vectors: np.ndarray, labels: np.ndarray, dtype: str) -> None:
    """A usearch graph of ``vectors`` under ``labels`` in ``dtype``, saved to ``path``
    (also what scripts/benchmark_scale.py compares against hnswlib)."""
    from usearch.index import Index

    index = Index(
        ndim=vectors.shape[1],
        metric="ip",
        dtype=dtype,
        connectivity=HNSW_M,
        expansion_add=HNSW_EF_CONSTRUCTION,
    )
    index.add(
        labels.astype(np.uint64), np.ascontiguousarray(vectors, np.float32), threads=_threads()
    )
    index.save(str(path))


def _reusable_graph(
    previous: Path | None, model_id: str, dim: int
) -> tuple[dict[str, Any], list[str], np.ndarray, np.ndarray] | None:
    """(manifest, ids, vectors (memory-mapped), label -> row) of a previous version whose
    usearch graph a new build can extend, or None (no version, other model/dim/library/
    dtype, no graph, other graph parameters)."""
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
            or a.get("library") != ANN_LIBRARY
            or a.get("dtype") != ANN_DTYPE
            or (a.get("M"), a.get("ef_construction")) != (HNSW_M, HNSW_EF_CONSTRUCTION)
            or not (previous / layout.ANN_USEARCH).is_file()
        ):
            return None
        ids = json.loads((previous / layout.IDS).read_text(encoding="utf-8"))
        vectors = layout.load_mapped(previous / layout.VECTORS)
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
    """Write layout.ANN_USEARCH (+ layout.ANN_ROWS: label -> row, -1 = deleted node).

    Reuses the previous version's graph when it can: documents whose id and vector bytes
    are unchanged keep their node, removed or changed ones are marked deleted, new or
    changed ones are added under fresh labels. The previous version is only read (its
    graph is loaded into memory and saved into ``path``). Returns the manifest's record
    of what was done.
    """
    from usearch.index import Index

    n, dim = vectors.shape
    record = {
        "library": ANN_LIBRARY,
        "dtype": ANN_DTYPE,
        "space": "ip",
        "M": HNSW_M,
        "ef_construction": HNSW_EF_CONSTRUCTION,
    }
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
        step = 100_000  # compare in slices: no [N, dim] temporaries at 1M documents
        for s in range(0, len(common), step):
            c = common[s : s + step]
            a = np.ascontiguousarray(vectors[c]).view(np.uint32)
            b = np.ascontiguousarray(prev_vectors[prev_row[c]], dtype=np.float32).view(np.uint32)
            same[c] = np.all(a == b, axis=1)
        kept_prev = np.zeros(len(prev_ids), dtype=bool)
        kept_prev[prev_row[same]] = True
        n_labels_prev = len(prev_rows)
        added = np.flatnonzero(~same)
        n_labels = n_labels_prev + len(added)
        dead = n_labels - n
        if dead / max(n_labels, 1) <= ANN_MAX_DELETED and int(same.sum()) > 0:
            index = Index.restore(str(previous / layout.ANN_USEARCH), view=False)
            if index is None:
                raise OSError(f"{previous / layout.ANN_USEARCH}: not a usearch index")
            newly_dead = label_of_prev_row[~kept_prev]
            newly_dead = newly_dead[newly_dead >= 0]
            if len(newly_dead):
                index.remove(newly_dead.astype(np.uint64))
            rows = np.full(n_labels, -1, dtype=np.int64)
            rows[label_of_prev_row[prev_row[same]]] = np.flatnonzero(same)
            new_labels = np.arange(n_labels_prev, n_labels, dtype=np.int64)
            rows[new_labels] = added
            if len(added):
                index.add(
                    new_labels.astype(np.uint64),
                    np.ascontiguousarray(vectors[added], np.float32),
                    threads=_threads(),
                )
            index.save(str(path / layout.ANN_USEARCH))
            np.save(path / layout.ANN_ROWS, rows)
            return {
                **record,
                "build": "incremental",
                "reused_from": str(prev[0].get("version", previous.name)),
                "kept": int(same.sum()),
                "added": len(added),
                "deleted": len(newly_dead),
                "labels": n_labels,
            }
        log.info(
            "ANN: %d of %d graph nodes would be deleted; building from scratch", dead, n_labels
        )
    build_usearch(path / layout.ANN_USEARCH, vectors, np.arange(n), ANN_DTYPE)
    np.save(path / layout.ANN_ROWS, np.arange(n, dtype=np.int64))
    return {
        **record,
        "build": "scratch",
        "reused_from": None,
        "kept": 0,
        "added": n,
        "deleted": 0,
        "labels": n,
    }
