"""The ANN index of a local index version: faiss IVF for new builds; usearch and hnswlib
graphs of earlier versions still load and serve.

New versions get an inverted-file index (faiss ``IndexIVFScalarQuantizer``: k-means cells,
int8 codes of each vector's residual, inner product on normalized vectors). A query scans
every vector of its ``nprobe`` nearest cells, served from a read-only memory map of the
file (``IO_FLAG_MMAP_IFC``), so every worker process shares one copy in the page cache. The
index only proposes RESCORE_OVERSAMPLE * k candidates; indexing.local_store rescores them
with the float32 vectors, so the scores served are exact cosines.

Why IVF and not the HNSW graphs before it (docs/benchmarks.md, "ANN choice"): on product
vectors with many near-duplicates, usearch and hnswlib graphs (M 16) left whole clusters
unreached (recall@100 0.84-0.87 at ef 200, some queries 0.0; 0.95 took ef 800), while
IVF scans its probed cells exhaustively: recall@100 0.995 / 0.999 at 100K / 1M at the
default nprobe, for a smaller file; with its cells trained and assigned by
indexing.kmeans, ~1/20 of the graph's build CPU at 1M (12-13 vs 270.6 CPU s).

A build extends the previous version's index when it can (same model, dimension, library
and index kind): unchanged documents keep their code under their label, removed or changed
ones are removed, new or changed ones are added under fresh labels (the cells are not
retrained). Labels are therefore not rows; layout.ANN_ROWS maps them. Beyond
ANN_MAX_DELETED the cells are retrained from scratch. indexing.build calls build_ann;
indexing.local_store calls open_ann.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from indexing import layout
from indexing.kmeans import TwoLevel

log = logging.getLogger(__name__)

ANN_LIBRARY = "faiss"
ANN_KIND = "IVF,SQ8"  # the manifest's ann.index: k-means cells, int8 residual codes
# The IVF proposes this many times k candidates; the float32 rescore keeps the best k
# (int8 codes reorder near ties, the rescore puts them back).
RESCORE_OVERSAMPLE = 2
# Training vectors per cell (a sample of the corpus; faiss asks for >= 39) and k-means
# iterations. Training is most of a build's CPU: 64 per cell cost twice the CPU of 32 for
# the same recall at 100K (0.998 vs 0.997 at nprobe 32), so 40 (docs/benchmarks.md).
TRAIN_PER_CELL = 40
KMEANS_ITER = 10
# A scratch build assigns each vector to the best cell of its ASSIGN_PROBE best k-means
# groups (indexing.kmeans.TwoLevel); checked against the exact nearest cell in
# docs/benchmarks.md ("Reindex at 1M").
ASSIGN_PROBE = 4
# Retrain the cells from scratch when more than this share of the labels given since they
# were trained has been removed (changed or deleted documents): the cells were fitted to
# vectors that are gone.
ANN_MAX_DELETED = 0.2


def ivf_cells(n: int) -> int:
    """Cells for n vectors: about 4 sqrt(n) as a power of two (1,024 at 100K, 4,096 at
    1M), with at least 39 vectors per cell (faiss' minimum for k-means)."""
    cells = 2 ** round(math.log2(max(4.0 * math.sqrt(max(n, 1)), 1.0)))
    while cells > 1 and cells * 39 > n:
        cells //= 2
    return cells


def _threads() -> int:
    """Construction threads (faiss' OpenMP, NumPy's BLAS): every core but one, which a large
    build's BM25 child process uses meanwhile (indexing.build). Threads that wait for a busy
    core spin: with 2 BLAS threads on the 2-core machine the 1M IVF cost 23 CPU s instead
    of 11-13 with one (docs/benchmarks.md, "Reindex at 1M")."""
    return max(1, (os.cpu_count() or 1) - 1)


def load_ann_rows(path: Path, manifest: Mapping[str, Any]) -> np.ndarray | None:
    """Index label -> row of a version (-1 = removed); None when labels are rows (format 1)."""
    if manifest.get("format") == 1 or not (path / layout.ANN_ROWS).is_file():
        return None
    return layout.load_mapped(path / layout.ANN_ROWS)


class AnnGraph:
    """A loaded ANN index: labels of candidates for the top k of a query vector.

    ``breadth`` is the search effort: nprobe (cells scanned) for faiss IVF, ef for the
    HNSW graphs of earlier versions; None takes the manifest's.
    """

    def __init__(
        self, path: Path, manifest: Mapping[str, Any], dim: int, breadth: int | None = None
    ) -> None:
        a = manifest["ann"]
        self.library: str = a.get("library", "hnswlib")
        self._oversample = 1
        if self.library == "faiss":
            import faiss

            file = path / layout.ANN_FAISS
            ivf: Any = faiss.read_index(str(file), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
            if ivf.d != dim:
                raise OSError(f"{file}: a faiss index of dim {ivf.d}, expected {dim}")
            self._index: Any = ivf
            self._oversample = RESCORE_OVERSAMPLE
            default = int(a["nprobe"])
        elif self.library == "usearch":
            from usearch.index import Index, ScalarKind

            index = Index.restore(str(path / layout.ANN_USEARCH), view=True)
            if index is None or index.ndim != dim:
                raise OSError(f"{path / layout.ANN_USEARCH}: not a usearch index of dim {dim}")
            self._index = index
            self._oversample = 1 if index.dtype == ScalarKind.F32 else 2
            default = int(a["ef_search"])
        elif self.library == "hnswlib":
            import hnswlib

            self._index = hnswlib.Index(space="ip", dim=dim)
            self._index.load_index(str(path / layout.ANN))
            self._index.set_num_threads(1)
            default = int(a["ef_search"])
        else:
            raise OSError(f"{path}: unknown ANN library {self.library!r}")
        self.set_breadth(breadth or default)

    def set_breadth(self, breadth: int) -> None:
        """Search effort: cells scanned (IVF) or candidates examined (HNSW) per query."""
        self.breadth = int(breadth)
        if self.library == "faiss":
            self._index.nprobe = self.breadth
        elif self.library == "usearch":
            self._index.expansion_search = self.breadth
        else:
            self._index.set_ef(self.breadth)

    def search(self, vector: np.ndarray, k: int) -> np.ndarray:
        """int64 labels of candidates for the k nearest: k of them from a float32 graph, a
        multiple of k from a reduced-precision index (the caller rescores them in float32
        and keeps k). A faiss query runs on the calling thread only."""
        want = k * self._oversample
        if self.library == "faiss":
            _, labels = self._index.search(vector.reshape(1, -1), want)
            found = labels[0]
            return found[found >= 0].astype(np.int64)
        if self.library == "usearch":
            found = self._index.search(vector, want, threads=1)
            return np.asarray(found.keys, dtype=np.int64)
        labels, _ = self._index.knn_query(vector, k=k, num_threads=1)
        return labels[0].astype(np.int64)


def open_ann(
    path: Path, manifest: Mapping[str, Any], dim: int, breadth: int | None = None
) -> AnnGraph:
    return AnnGraph(path, manifest, dim, breadth)


def ivf_groups(cells: int) -> int:
    """Outer k-means groups of the two-level training: about sqrt(cells) (64 at 4,096)."""
    return max(1, 2 ** round(math.log2(math.sqrt(max(cells, 1)))))


def build_ivf(path: Path, vectors: np.ndarray, labels: np.ndarray, cells: int) -> None:
    """An IVF-SQ8 index of ``vectors`` under ``labels`` with ``cells`` k-means cells, trained
    on a fixed sample, saved to ``path`` (also what scripts/benchmark_ann.py measures).

    The cells are trained in two levels and every vector is assigned through them
    (indexing.kmeans): ~ivf_groups(cells) + ASSIGN_PROBE * cells / groups inner products
    per vector instead of ``cells``, as NumPy matrix products; faiss only encodes the
    residuals. The index is an ordinary flat-quantizer IVF, searched exactly as before.
    """
    with threadpool_limits(_threads(), user_api="blas"):
        _build_ivf(path, vectors, labels, cells)


def _build_ivf(path: Path, vectors: np.ndarray, labels: np.ndarray, cells: int) -> None:
    import faiss

    n, dim = vectors.shape
    faiss.omp_set_num_threads(_threads())
    rng = np.random.default_rng(17)
    n_train = min(n, cells * TRAIN_PER_CELL)
    sample = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else np.arange(n)
    xt = np.ascontiguousarray(vectors[sample], np.float32)
    levels = TwoLevel(xt, cells, ivf_groups(cells), KMEANS_ITER, seed=17)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(levels.centroids)
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, cells, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    at = levels.assign(xt, ASSIGN_PROBE)
    residuals = xt - levels.centroids[at]
    index.train_encoder(len(xt), faiss.swig_ptr(residuals), faiss.swig_ptr(at))
    index.is_trained = True
    del xt, residuals
    _add(index, vectors, labels, levels)
    faiss.write_index(index, str(path))


def _add(
    index: Any, vectors: np.ndarray, labels: np.ndarray, levels: TwoLevel | None = None
) -> None:
    """Add under ``labels``; with ``levels`` (a scratch build) each vector's cell comes from
    its two-level assignment, else faiss assigns it to its nearest cell."""
    import faiss

    step = 100_000  # no float32 copy of all vectors at once (1M x 384 is 1.5 GB)
    for s in range(0, len(labels), step):
        x = np.ascontiguousarray(vectors[s : s + step], np.float32)
        ids = np.ascontiguousarray(labels[s : s + step], np.int64)
        if levels is None:
            index.add_with_ids(x, ids)
        else:
            cell = levels.assign(x, ASSIGN_PROBE)
            index.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(cell))


def _reusable(
    previous: Path | None, model_id: str, dim: int, read_ids: bool = True
) -> tuple[dict[str, Any], list[str] | None, np.ndarray, np.ndarray] | None:
    """(manifest, ids, vectors (memory-mapped), label -> row) of a previous version whose
    IVF a new build can extend, or None (no version, other model/dim/library, no index).
    ``read_ids`` False: ids is None (the caller knows them; saves parsing 1M ids)."""
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
            or a.get("index") != ANN_KIND
            or not (previous / layout.ANN_FAISS).is_file()
        ):
            return None
        ids = json.loads((previous / layout.IDS).read_text(encoding="utf-8")) if read_ids else None
        vectors = layout.load_mapped(previous / layout.VECTORS)
        n_prev = len(ids) if ids is not None else len(vectors)
        rows = load_ann_rows(previous, m)
        if rows is None:
            rows = np.arange(n_prev, dtype=np.int64)
    except (OSError, ValueError, KeyError) as e:
        log.warning("previous version %s unusable for ANN reuse: %s", previous, e)
        return None
    if vectors.ndim != 2 or vectors.shape != (n_prev, dim):
        return None
    return m, ids, vectors, rows


def build_ann(
    path: Path,
    ids: Sequence[str],
    vectors: np.ndarray,
    previous: Path | None,
    model_id: str,
    nprobe: int,
    same_ids: bool = False,
) -> dict[str, Any]:
    """Write layout.ANN_FAISS (+ layout.ANN_ROWS: label -> row, -1 = removed).

    Reuses the previous version's index when it can: documents whose id and vector bytes
    are unchanged keep their code, removed or changed ones are removed, new or changed
    ones are added under fresh labels. The previous version is only read (its index is
    loaded into memory and saved into ``path``). Returns the manifest's record of what
    was done. ``same_ids``: the previous version holds exactly ``ids`` in the same rows
    (indexing.reuse.Unchanged.same_ids), so row i maps to previous row i without reading
    and mapping its ids.
    """
    import faiss

    n, dim = vectors.shape
    record: dict[str, Any] = {"library": ANN_LIBRARY, "index": ANN_KIND, "space": "ip"}
    prev = _reusable(previous, model_id, dim, read_ids=not same_ids)
    if prev is not None and previous is not None:
        _, prev_ids, prev_vectors, prev_rows = prev
        n_prev = len(prev_vectors)
        if same_ids and n_prev != n:
            raise ValueError(f"same_ids with {n} ids but {n_prev} previous rows")
        label_of_prev_row = np.full(n_prev, -1, dtype=np.int64)
        live = np.flatnonzero(prev_rows >= 0)
        label_of_prev_row[prev_rows[live]] = live
        if prev_ids is None:  # same ids in the same rows
            prev_row = np.arange(n, dtype=np.int64)
        else:
            prev_row_of = {d: i for i, d in enumerate(prev_ids)}
            prev_row = np.fromiter((prev_row_of.get(d, -1) for d in ids), dtype=np.int64, count=n)
        common = np.flatnonzero(prev_row >= 0)
        same = np.zeros(n, dtype=bool)
        step = 100_000  # compare in slices: no [N, dim] temporaries at 1M documents
        for s in range(0, len(common), step):
            if prev_ids is None:  # row i is previous row i: compare in place, no gathers
                c: Any = slice(s, s + step)
                a = np.ascontiguousarray(vectors[c]).view(np.uint32)
                b = np.ascontiguousarray(prev_vectors[c], dtype=np.float32).view(np.uint32)
            else:
                c = common[s : s + step]
                a = np.ascontiguousarray(vectors[c]).view(np.uint32)
                b = np.ascontiguousarray(prev_vectors[prev_row[c]], dtype=np.float32)
                b = b.view(np.uint32)
            same[c] = np.all(a == b, axis=1)
        kept_prev = np.zeros(n_prev, dtype=bool)
        kept_prev[prev_row[same]] = True
        added = np.flatnonzero(~same)
        n_labels_prev = len(prev_rows)
        n_labels = n_labels_prev + len(added)
        dead = n_labels - n
        if dead / max(n_labels, 1) <= ANN_MAX_DELETED and int(same.sum()) > 0:
            index: Any = faiss.read_index(str(previous / layout.ANN_FAISS))  # into memory
            removed = label_of_prev_row[~kept_prev]
            removed = removed[removed >= 0]
            if len(removed):
                index.remove_ids(faiss.IDSelectorBatch(removed.astype(np.int64)))
            rows = np.full(n_labels, -1, dtype=np.int64)
            rows[label_of_prev_row[prev_row[same]]] = np.flatnonzero(same)
            new_labels = np.arange(n_labels_prev, n_labels, dtype=np.int64)
            rows[new_labels] = added
            if len(added):
                faiss.omp_set_num_threads(_threads())
                _add(index, vectors[added], new_labels)
            faiss.write_index(index, str(path / layout.ANN_FAISS))
            np.save(path / layout.ANN_ROWS, rows)
            return {
                **record,
                "cells": int(index.nlist),
                "nprobe": nprobe,
                "build": "incremental",
                "reused_from": str(prev[0].get("version", previous.name)),
                "kept": int(same.sum()),
                "added": len(added),
                "deleted": len(removed),
                "labels": n_labels,
            }
        log.info("ANN: %d of %d labels would be removed; retraining the cells", dead, n_labels)
    cells = ivf_cells(n)
    build_ivf(path / layout.ANN_FAISS, vectors, np.arange(n), cells)
    np.save(path / layout.ANN_ROWS, np.arange(n, dtype=np.int64))
    return {
        **record,
        "cells": cells,
        "nprobe": nprobe,
        "build": "scratch",
        "reused_from": None,
        "kept": 0,
        "added": n,
        "deleted": 0,
        "labels": n,
    }
