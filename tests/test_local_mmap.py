"""Format 4: a version's arrays and ANN graph are memory-mapped and shared between processes;
an older version (hnswlib graph, npz matrices) still serves; an unreadable one is refused.

The corpus is small (600 documents, clustered synthetic vectors under the real encoder's
model id, as tests/test_ann_reuse.py) with the ANN threshold lowered so it gets a graph.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing import layout
from indexing.ann import RESCORE_OVERSAMPLE, build_usearch
from indexing.build import build_local_index
from indexing.errors import IndexingError
from indexing.local_store import Snapshot
from tests.test_ann_reuse import CFG, N, clustered, fill, make_docs, recall_vs_exact

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Path:
    from indexing.embedding_cache import EmbeddingCache

    tmp = tmp_path_factory.mktemp("mmap")
    docs = make_docs(N)
    with EmbeddingCache(tmp / "cache.sqlite") as cache:
        fill(cache, encoder, docs, seed=1)
        name = build_local_index(docs, tmp / "idx", encoder, CFG, cache=cache)
    return tmp / "idx" / "versions" / name


def _mapped_files(pid: int | str) -> set[str]:
    """Files a process has memory-mapped (its /proc maps)."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            out.add(parts[5])
    return out


def test_format4_files_and_manifest(version: Path) -> None:
    m = json.loads((version / layout.MANIFEST).read_text())
    assert m["format"] == layout.FORMAT_VERSION == 4
    assert (m["ann"]["library"], m["ann"]["dtype"]) == ("usearch", "i8")
    assert (version / layout.ANN_USEARCH).is_file() and not (version / layout.ANN).exists()
    assert not list((version / layout.BM25_DIR).glob("*" + layout.BM25_MATRIX_SUFFIX))
    for a in layout.BM25_ARRAYS:
        assert layout.bm25_array(version, layout.COMBINED, a).is_file()


def test_two_processes_map_the_same_files(version: Path) -> None:
    """This process and a second one both serve from mappings of the version's files (the
    page cache holds one copy) and answer the same."""
    snap = Snapshot(version)
    try:
        q = snap.vectors[7].copy()
        mine = snap.knn(q, 10)
        maps = _mapped_files("self")
        shared = {
            str(version / layout.VECTORS),
            str(version / layout.ANN_USEARCH),
            str(layout.bm25_array(version, layout.COMBINED, "data")),
            str(version / layout.TERM_IDS),
        }
        assert shared <= maps
        assert not snap.vectors.flags.writeable  # read-only: no process can change the file
        code = (
            "import json, sys, numpy as np; from pathlib import Path; "
            "from indexing.local_store import Snapshot; "
            f"s = Snapshot(Path({str(version)!r})); "
            f"h = s.knn(s.vectors[7].copy(), 10); "
            "maps = {l.split(maxsplit=5)[5].strip() for l in open('/proc/self/maps') "
            "if len(l.split(maxsplit=5)) == 6}; "
            "print(json.dumps({'ids': list(h.ids), 'maps': sorted(maps)}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        )
        other = json.loads(out.stdout)
        assert list(mine.ids) == other["ids"]
        assert shared <= set(other["maps"])
    finally:
        snap.close()


def test_unknown_format_is_refused(version: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / version.name
    shutil.copytree(version, bad)
    m = json.loads((bad / layout.MANIFEST).read_text())
    m["format"] = 99
    (bad / layout.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexingError, match=r"index format 99, expected one of \(1, 2, 3, 4\)"):
        Snapshot(bad)


def test_format3_hnswlib_version_still_serves(version: Path, tmp_path: Path) -> None:
    """A version as format 3 wrote it (npz BM25 matrices, hnswlib graph) loads and answers
    the same BM25 and, within the graphs' recall, the same kNN."""
    import shutil

    import hnswlib

    from tests.test_local_terms import bm25_to_npz

    old = tmp_path / version.name
    shutil.copytree(version, old)
    bm25_to_npz(old)
    vecs = np.load(old / layout.VECTORS)
    rows = np.load(old / layout.ANN_ROWS)
    live = np.flatnonzero(rows >= 0)
    g = hnswlib.Index(space="ip", dim=vecs.shape[1])
    g.init_index(max_elements=len(rows), ef_construction=200, M=16, random_seed=42)
    g.add_items(vecs[rows[live]], live)
    g.save_index(str(old / layout.ANN))
    (old / layout.ANN_USEARCH).unlink()
    m = json.loads((old / layout.MANIFEST).read_text())
    m["format"] = 3
    m["ann"] = {k: v for k, v in m["ann"].items() if k not in ("library", "dtype")}
    (old / layout.MANIFEST).write_text(json.dumps(m))

    new, prev = Snapshot(version), Snapshot(old)
    try:
        assert prev.ann is not None and prev.ann.library == "hnswlib"
        for q in ("red tent", "lamp item 7", "blue boots"):
            a, b = new.bm25(q, 20), prev.bm25(q, 20)
            assert a.ids == b.ids
            np.testing.assert_array_equal(a.scores, b.scores)
        queries = clustered(30, new.dim, seed=5)
        assert recall_vs_exact(prev, queries, 50) >= 0.98
        assert recall_vs_exact(new, queries, 50) >= 0.98
    finally:
        new.close()
        prev.close()


@pytest.mark.parametrize("dtype", ["i8", "f16"])
def test_reduced_precision_graph_with_float32_rescore_keeps_recall(
    tmp_path: Path, dtype: str
) -> None:
    """A graph over int8 / float16 vectors, its RESCORE_OVERSAMPLE * k candidates rescored
    in float32: recall@100 against exact float32 stays >= 0.95 on 3,000 clustered vectors,
    and the scores returned are the exact cosines."""
    from usearch.index import Index

    vecs = clustered(3000, 384, seed=3)
    path = tmp_path / "g.usearch"
    build_usearch(path, vecs, np.arange(len(vecs)), dtype)
    g: Any = Index.restore(str(path), view=True)
    g.expansion_search = 200
    rec = []
    for q in clustered(40, 384, seed=4):
        cand = np.asarray(g.search(q, 100 * RESCORE_OVERSAMPLE, threads=1).keys, dtype=np.int64)
        s = vecs[cand] @ q
        top = cand[np.argsort(-s, kind="stable")[:100]]
        exact = np.argsort(-(vecs @ q), kind="stable")[:100]
        rec.append(len(set(top.tolist()) & set(exact.tolist())) / 100)
        np.testing.assert_allclose(np.sort(vecs[top] @ q), np.sort(vecs[exact] @ q), atol=0.02)
    assert float(np.mean(rec)) >= 0.95, rec  # the target; measured 0.97-0.99
