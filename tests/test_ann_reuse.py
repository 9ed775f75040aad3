"""A reindex extends the previous version's ANN index (faiss IVF) instead of rebuilding it.

Vectors come from an EmbeddingCache filled with clustered synthetic vectors under the
real encoder's model id (as scripts/benchmark.py does), so no text is embedded; the
threshold is lowered so a 600-document corpus gets a graph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing.build import build_local_index
from indexing.config import IndexConfig
from indexing.documents import Document, embedding_text
from indexing.embedding_cache import EmbeddingCache
from indexing.local import LocalBackend
from indexing.local_store import Snapshot

CFG = IndexConfig(ann_threshold=50, keep_versions=10)
N = 600


def make_docs(n: int, start: int = 0, tag: str = "") -> list[Document]:
    words = ["red", "blue", "tent", "lamp", "knife", "boots", "chair", "mug", "rope", "desk"]
    return [
        Document(
            id=f"d{i:05d}",
            title=f"{words[i % 10]} {words[(i // 10) % 10]} item {i}",
            body=f"body of {i} {tag} with {words[(i * 7) % 10]}",
            attrs={"price": float(i % 97)},
            category="a" if i % 2 else "b",
        )
        for i in range(start, start + n)
    ]


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((24, dim)).astype(np.float32)
    v = centers[rng.integers(0, 24, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(cache: EmbeddingCache, encoder: Any, docs: list[Document], seed: int) -> None:
    cache.put_many(
        encoder.model_id, [embedding_text(d) for d in docs], clustered(len(docs), encoder.dim, seed)
    )


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def recall_vs_exact(snap: Snapshot, queries: np.ndarray, k: int) -> float:
    rec = []
    for q in queries:
        exact = set(snap.knn_exact(q, k).ids)
        rec.append(len(set(snap.knn(q, k).ids) & exact) / k)
    return float(np.mean(rec))


@pytest.fixture()
def setup(tmp_path: Path, encoder: Any) -> tuple[Path, EmbeddingCache, list[Document]]:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    docs = make_docs(N)
    fill(cache, encoder, docs, seed=1)
    return tmp_path / "index", cache, docs


def test_same_docs_twice_reuses_graph_and_answers_the_same(setup: Any, encoder: Any) -> None:
    root, cache, docs = setup
    v1 = build_local_index(docs, root, encoder, CFG, cache=cache)
    v2 = build_local_index(docs, root, encoder, CFG, cache=cache)
    s1, s2 = Snapshot(root / "versions" / v1), Snapshot(root / "versions" / v2)
    assert s1.manifest["ann"]["build"] == "scratch"
    a2 = s2.manifest["ann"]
    assert (a2["build"], a2["reused_from"], a2["kept"], a2["added"], a2["deleted"]) == (
        "incremental",
        v1,
        N,
        0,
        0,
    )
    queries = clustered(40, encoder.dim, seed=9)
    for q in queries:
        h1, h2 = s1.knn(q, 20), s2.knn(q, 20)
        assert h1.ids == h2.ids
        np.testing.assert_array_equal(h1.scores, h2.scores)
    cache.close()


def test_changed_removed_added_docs(setup: Any, encoder: Any) -> None:
    root, cache, docs = setup
    v1 = build_local_index(docs, root, encoder, CFG, cache=cache)
    before = tree_digest(root / "versions" / v1)
    removed = {d.id for d in docs[:30]}
    changed = [
        Document(
            id=d.id, title=d.title, body=d.body + " revised", attrs=d.attrs, category=d.category
        )
        for d in docs[30:60]
    ]
    added = make_docs(30, start=N, tag="new")
    fill(cache, encoder, changed, seed=2)
    fill(cache, encoder, added, seed=3)
    new_docs = changed + docs[60:] + added  # rows move too: labels must not be rows
    v2 = build_local_index(new_docs, root, encoder, CFG, cache=cache)
    assert tree_digest(root / "versions" / v1) == before  # the previous version is untouched

    snap = Snapshot(root / "versions" / v2)
    a = snap.manifest["ann"]
    assert (a["build"], a["kept"], a["added"], a["deleted"], a["labels"]) == (
        "incremental",
        N - 60,
        60,
        60,
        N + 60,
    )
    queries = np.concatenate([clustered(60, encoder.dim, seed=11), snap.vectors[:40]])
    assert recall_vs_exact(snap, queries, 100) >= 0.98
    old_snap = Snapshot(root / "versions" / v1)
    for q in [*queries, *old_snap.vectors[:60]]:  # also the removed/changed docs' old vectors
        hits = snap.knn(q, 100)
        assert not removed & set(hits.ids)
        np.testing.assert_allclose(hits.scores, snap.cosine(q, hits.ids), rtol=1e-6)
    for row in range(30):  # a changed document is found by its new vector, first
        assert snap.knn(snap.vectors[row], 1).ids == (new_docs[row].id,)


def test_large_change_rebuilds_from_scratch(setup: Any, encoder: Any) -> None:
    root, cache, docs = setup
    build_local_index(docs, root, encoder, CFG, cache=cache)
    v2 = build_local_index(docs[200:], root, encoder, CFG, cache=cache)  # a third removed
    snap = Snapshot(root / "versions" / v2)
    assert snap.manifest["ann"]["build"] == "scratch"
    assert snap.manifest["ann"]["labels"] == N - 200
    assert recall_vs_exact(snap, clustered(30, encoder.dim, seed=5), 50) >= 0.98


def test_other_model_rebuilds_and_filters_stay_exact(setup: Any, encoder: Any) -> None:
    root, cache, docs = setup
    build_local_index(docs, root, encoder, IndexConfig(ann_threshold=N + 1), cache=cache)
    v2 = build_local_index(docs, root, encoder, CFG, cache=cache)  # previous has no graph
    assert Snapshot(root / "versions" / v2).manifest["ann"]["build"] == "scratch"
    v3 = build_local_index(docs[:-10], root, encoder, CFG, cache=cache)
    backend = LocalBackend.open(root, encoder)
    assert backend.version == v3 and backend.manifest["ann"]["build"] == "incremental"
    snap = Snapshot(root / "versions" / v3)
    from indexing.backend import Filters

    f = Filters(category="a")
    for q in clustered(10, encoder.dim, seed=4):
        hits = snap.knn(q, 10, f)
        rows = np.flatnonzero(snap.mask(f))
        s = snap.vectors[rows] @ q
        best = rows[np.argsort(-s)[:10]]
        assert hits.ids == tuple(snap.ids[r] for r in best)


def test_incremental_reindex_answers_as_a_full_rebuild(
    setup: Any, encoder: Any, tmp_path: Path
) -> None:
    """100 changed documents: the reindex that extends the previous graph and a full build of
    the same documents in a fresh directory answer the same (BM25 hits and scores, exact kNN,
    per-candidate lookups; the two graphs' top 10 agree within their recall)."""
    root, cache, docs = setup
    build_local_index(docs, root, encoder, CFG, cache=cache)
    changed = [
        Document(
            id=d.id, title=d.title + " lantern", body=d.body, attrs=d.attrs, category=d.category
        )
        if i % 6 == 0
        else d
        for i, d in enumerate(docs)
    ]
    fill(cache, encoder, [d for i, d in enumerate(changed) if i % 6 == 0], seed=7)
    v_inc = build_local_index(changed, root, encoder, CFG, cache=cache)
    v_full = build_local_index(changed, tmp_path / "fresh", encoder, CFG, cache=cache)
    inc = Snapshot(root / "versions" / v_inc)
    full = Snapshot(tmp_path / "fresh" / "versions" / v_full)
    try:
        assert inc.manifest["ann"]["build"] == "incremental"
        assert inc.manifest["ann"]["added"] == 100
        assert full.manifest["ann"]["build"] == "scratch"
        for q in ("red lantern", "tent item 12", "blue boots lantern", "mug"):
            a, b = inc.bm25(q, 50), full.bm25(q, 50)
            assert a.ids == b.ids
            np.testing.assert_array_equal(a.scores, b.scores)
        overlap = []
        for q in clustered(20, encoder.dim, seed=13):
            a, b = inc.knn_exact(q, 10), full.knn_exact(q, 10)  # the same vectors and rows
            assert a.ids == b.ids
            np.testing.assert_array_equal(a.scores, b.scores)
            # the graphs differ (extended vs built; a threaded build is not deterministic)
            overlap.append(len(set(inc.knn(q, 10).ids) & set(full.knn(q, 10).ids)) / 10)
        assert float(np.mean(overlap)) >= 0.95, overlap
        ids = [d.id for d in changed[:40]]
        la, lb = inc.lookups("red lantern", ids, None), full.lookups("red lantern", ids, None)
        assert la.doc_terms == lb.doc_terms and la.idf == lb.idf
        for k in la.field_bm25:
            np.testing.assert_array_equal(la.field_bm25[k], lb.field_bm25[k])
    finally:
        inc.close()
        full.close()
        cache.close()


def _bm25_files(version: Path) -> dict[str, str]:
    """Digests of everything the BM25 side writes (matrices, vocabularies, term store)."""
    d = tree_digest(version)
    return {k: v for k, v in d.items() if k.startswith("bm25/") or k.startswith("term_")}


@pytest.mark.parametrize("parallel", [False, True])
def test_incremental_bm25_reuses_unchanged_rows_and_equals_a_full_rebuild(
    setup: Any, encoder: Any, tmp_path: Path, parallel: bool
) -> None:
    """Deleted, changed (title, body, an extra field), added and moved documents: only the
    changed and added ones are analyzed, yet the BM25 matrices, vocabularies (df, avgdl) and
    term store are byte for byte those of a full rebuild, and both answer the same. In the
    BM25 child process (which reads the previous term store itself) the vocabulary ids
    follow that process's string hashes, so there the answers are compared, not bytes."""
    root, cache, docs = setup
    docs = [
        Document(
            id=d.id,
            title=d.title,
            body=d.body,
            extra={"color": ["red", "blue", "green"][i % 3], "brand": f"brand{i % 7}"},
            attrs=d.attrs,
            category=d.category,
        )
        for i, d in enumerate(docs)
    ]
    fill(cache, encoder, docs, seed=21)
    build_local_index(docs, root, encoder, CFG, cache=cache)
    edits = {
        40: {"title": "zeppelin lantern"},  # a term no document had
        41: {"body": "only words"},  # drops this row's body terms
        42: {"extra": {"color": "red", "brand": "acme"}},
        43: {"title": ""},
    }
    changed = [dataclasses.replace(docs[i], **kw) for i, kw in edits.items()]  # type: ignore[arg-type]
    added = [
        dataclasses.replace(d, extra={"color": "teal", "brand": "new"})
        for d in make_docs(25, start=N, tag="fresh")
    ]
    # rows 0-29 deleted (their unique "item N" terms vanish), rows shuffled, 25 added
    kept = [d for d in docs[30:] if d.id not in {c.id for c in changed}]
    new_docs = kept[::-1][:300] + changed + added + kept[::-1][300:]
    fill(cache, encoder, changed + added, seed=22)

    stages: dict[str, float] = {}
    v_inc = build_local_index(
        new_docs, root, encoder, CFG, cache=cache, stages=stages, parallel=parallel
    )
    assert stages["reused_rows"] == len(kept)
    assert stages["analysis"] > 0  # reported back by the child too
    assert stages["analyzed_rows"] == len(changed) + len(added)
    v_full = build_local_index(new_docs, tmp_path / "full", encoder, CFG, cache=cache)
    inc_dir, full_dir = root / "versions" / v_inc, tmp_path / "full" / "versions" / v_full
    manifest = json.loads((inc_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["bm25_child_process"] is parallel
    if not parallel:
        assert _bm25_files(inc_dir) == _bm25_files(full_dir)
    for name in ("vectors.npy", "docs.jsonl", "ids.json", "attrs.npy"):
        assert (inc_dir / name).read_bytes() == (full_dir / name).read_bytes(), name
    inc, full = Snapshot(inc_dir), Snapshot(full_dir)
    try:
        for q in ("zeppelin", "red lantern", "item 5", "acme", "teal fresh", "body of 77"):
            for field in (None, "title", "body", "color", "brand"):
                a, b = inc.bm25(q, 50, field), full.bm25(q, 50, field)
                assert a.ids == b.ids
                np.testing.assert_array_equal(a.scores, b.scores)
        assert inc.bm25("zeppelin", 5).ids == (docs[40].id,)
        assert inc.bm25("item 5", 5).ids[0] != docs[5].id  # deleted
        for q in clustered(10, encoder.dim, seed=23):
            a, b = inc.knn_exact(q, 10), full.knn_exact(q, 10)
            assert a.ids == b.ids
        ids = [d.id for d in new_docs[295:330]]
        assert inc.doc_terms(ids) == full.doc_terms(ids)
    finally:
        inc.close()
        full.close()
        cache.close()


def test_other_text_fields_or_analyzer_analyze_everything(
    setup: Any, encoder: Any, tmp_path: Path
) -> None:
    """A previous version with other text fields or another analyzer lends no terms."""
    root, cache, docs = setup
    build_local_index(docs, root, encoder, CFG, cache=cache)
    stages: dict[str, float] = {}
    other = dataclasses.replace(CFG, stemmer="")
    v2 = build_local_index(docs, root, encoder, other, cache=cache, stages=stages)
    assert (stages["reused_rows"], stages["analyzed_rows"]) == (N, N)
    v_full = build_local_index(docs, tmp_path / "full", encoder, other, cache=cache)
    assert _bm25_files(root / "versions" / v2) == _bm25_files(
        tmp_path / "full" / "versions" / v_full
    )
    with_extra = [dataclasses.replace(d, extra={"color": "red"}) for d in docs]
    fill(cache, encoder, with_extra, seed=24)
    v3 = build_local_index(with_extra, root, encoder, other, cache=cache)
    v_full3 = build_local_index(with_extra, tmp_path / "full3", encoder, other, cache=cache)
    assert _bm25_files(root / "versions" / v3) == _bm25_files(
        tmp_path / "full3" / "versions" / v_full3
    )
    cache.close()


def test_same_ids_mapping_equals_the_id_lookup(setup: Any, encoder: Any, tmp_path: Path) -> None:
    """build_ann's shortcut for a previous version with the same ids in the same rows
    (no ids file read, row i -> previous row i) writes the very same index and label map
    as looking every id up; a wrong mapping would keep a changed vector's old code."""
    from indexing.ann import build_ann

    root, cache, docs = setup
    v1 = build_local_index(docs, root, encoder, CFG, cache=cache)
    prev = root / "versions" / v1
    vectors = np.array(Snapshot(prev).vectors, dtype=np.float32)
    changed = [5, 77, 300, 599]
    vectors[changed] = clustered(len(changed), encoder.dim, seed=21)
    ids = [d.id for d in docs]
    out = {}
    for same in (False, True):
        d = tmp_path / f"out-{same}"
        d.mkdir()
        out[same] = build_ann(d, ids, vectors, prev, encoder.model_id, 8, same_ids=same)
        out[same]["files"] = tree_digest(d)
    assert out[True] == out[False]
    assert (out[True]["build"], out[True]["kept"], out[True]["added"]) == (
        "incremental",
        N - len(changed),
        len(changed),
    )
    rows = np.load(tmp_path / "out-True" / "ann_rows.npy")
    assert rows[N:].tolist() == changed  # the changed rows' new labels
    assert sorted(rows[rows >= 0].tolist()) == list(range(N))
    with pytest.raises(ValueError, match="same_ids"):
        build_ann(tmp_path, ids[:-1], vectors[:-1], prev, encoder.model_id, 8, same_ids=True)
    cache.close()
