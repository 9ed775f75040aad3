"""The block-max top-k (FieldIndex.top / top_blocks) returns exactly the dense top-k: the
same rows, order and float64 scores as top_matching over FieldIndex.scores, ties by row.

Synthetic FieldIndexes (uniform, Zipf-like, and mostly duplicated documents, whose equal
tf and lengths make many scores tie) are checked with the block path forced (no read
budget) over many block sizes, filters, repeated and unknown terms, k beyond the matches
and single-term queries; then a real built index (full and incremental build) and the same
version without its BlockMax files, as versions written before them are.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing import layout
from indexing.backend import Filters
from indexing.bm25 import BLOCK_MIN_DOCS, FIRST_ROUND_ROWS, BlockMax, FieldIndex, top_matching
from indexing.build import build_local_index
from indexing.embedding_cache import EmbeddingCache
from indexing.local_store import Snapshot, load_field_index
from tests.test_ann_reuse import CFG, N, fill, make_docs

K1, B = 1.2, 0.75
INF = float("inf")


def _corpus(kind: str, n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(60)]
    if kind == "uniform":
        return [list(rng.choice(vocab, size=rng.integers(1, 12))) for _ in range(n)]
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    p /= p.sum()
    docs = [list(rng.choice(vocab, size=rng.integers(1, 10), p=p)) for _ in range(n)]
    if kind == "ties":  # three in four documents repeat one of 12 templates: equal scores
        templates = docs[:12]
        docs = [templates[i % 12] if rng.random() < 0.75 else d for i, d in enumerate(docs)]
    return docs


def _queries(rng: np.random.Generator) -> list[list[str]]:
    qs: list[list[str]] = [["w0"], ["w7"], ["w59"], ["w3", "w3"], ["w1", "nope"], ["nope"], []]
    for _ in range(14):
        qs.append([f"w{i}" for i in rng.integers(0, 60, size=rng.integers(2, 6))])
    qs.append(["w0", "w1", "w0", "w2", "w40"])  # a repeated frequent term among others
    return qs


def _masks(n: int, rng: np.random.Generator) -> list[np.ndarray | None]:
    return [None, rng.random(n) < 0.5, rng.random(n) < 0.02, np.zeros(n, dtype=bool)]


def _same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    assert got[0].tolist() == want[0].tolist()
    assert got[1].dtype == np.float64
    assert np.array_equal(got[1], want[1])  # bit-identical float64 sums


@pytest.mark.parametrize("kind", ["uniform", "zipf", "ties"])
def test_block_top_equals_dense_on_synthetic_indexes(kind: str) -> None:
    n = 2_500
    fi = FieldIndex.build(_corpus(kind, n, seed=3), K1, B)
    rng = np.random.default_rng(5)
    queries, masks = _queries(rng), _masks(n, rng)
    checked = 0
    for rows in (1, 3, 16, 64, 4096):  # one row per block .. one block for everything
        fb = dataclasses.replace(fi, block_max=BlockMax.build(fi, rows))
        for terms in queries:
            ids = fi.term_ids(terms)
            for mask in masks:
                for k in (1, 10, 100, n + 5):
                    want = top_matching(fi.scores(terms), k, mask)
                    _same(fb.top(terms, k, mask), want)
                    if ids:
                        for first in (1, FIRST_ROUND_ROWS):  # many rounds; the default
                            got = fb.top_blocks(ids, k, mask, max_read=INF, first_rows=first)
                            assert got is not None
                            _same(got, want)
                            checked += 1
    assert checked > 1_000


def test_ties_are_broken_by_row_across_blocks() -> None:
    """200 identical documents all tie: the top 10 are the 10 lowest rows, whichever
    blocks the rounds read first."""
    fi = FieldIndex.build([["a", "b"]] * 200 + [["c"]] * 50, K1, B)
    fb = dataclasses.replace(fi, block_max=BlockMax.build(fi, 7))
    ids = fi.term_ids(["b", "a"])
    rows, scores = fb.top_blocks(ids, 10, None, max_read=INF, first_rows=1) or ([], [])
    assert list(rows) == list(range(10))
    assert len(set(np.asarray(scores).tolist())) == 1


def test_block_max_is_the_largest_contribution_per_block() -> None:
    fi = FieldIndex.build(_corpus("zipf", 500, seed=9), K1, B)
    bm = BlockMax.build(fi, 16)
    for tid in range(len(fi.indptr) - 1):
        s, e = int(fi.indptr[tid]), int(fi.indptr[tid + 1])
        blocks = fi.indices[s:e] // 16
        want = {int(b): float(fi.data[s:e][blocks == b].max()) for b in np.unique(blocks)}
        a, z = int(bm.indptr[tid]), int(bm.indptr[tid + 1])
        got = dict(zip(bm.blocks[a:z].tolist(), bm.maxima[a:z].tolist(), strict=True))
        assert got == want


def test_bounds_prune_a_selective_query() -> None:
    """A rare term beside a common one: the blocks without the rare term cannot reach the
    top 10, so the block path reads a small share of the postings (under 20%)."""
    docs = [["common", "filler"] for _ in range(4_000)]
    for i in range(0, 4_000, 200):
        docs[i] = ["rare", "common"]
    fi = FieldIndex.build(docs, K1, B)
    fb = dataclasses.replace(fi, block_max=BlockMax.build(fi, 32))
    ids = fi.term_ids(["common", "rare"])
    got = fb.top_blocks(ids, 10, None, max_read=0.2)
    assert got is not None
    assert got[0].tolist() == list(range(0, 2_000, 200))
    assert fb.top_blocks(ids, 10, None, max_read=0.001) is None  # the budget is enforced


def test_top_uses_the_blocks_from_block_min_docs() -> None:
    """Past BLOCK_MIN_DOCS, FieldIndex.top answers through the blocks within the default
    read budget (top_blocks gives an answer, not None), as the dense pass does. k = 50:
    under the mask ~90 documents have "rare", so the 50th score needs it."""
    n = BLOCK_MIN_DOCS + 1_000
    rng = np.random.default_rng(11)
    per_term = [np.arange(0, n, 3), np.arange(5, n, 997), np.arange(n)]  # common, rare, x
    term = np.concatenate([np.full(len(d), t) for t, d in enumerate(per_term)])
    doc = np.concatenate(per_term).astype(np.int32)
    tf = rng.integers(1, 4, len(doc))
    lengths = rng.integers(3, 20, n)
    vocab = {"common": 0, "rare": 1, "x": 2}
    fi = FieldIndex.from_postings(vocab, term, doc, tf, lengths, K1, B)
    fb = dataclasses.replace(fi, block_max=BlockMax.build(fi))
    mask = rng.random(n) < 0.3
    for terms in (["rare", "common"], ["x", "rare"], ["common", "x", "common"]):
        for m in (None, mask):
            want = top_matching(fi.scores(terms), 50, m)
            assert fb.top_blocks(fi.term_ids(terms), 50, m) is not None
            _same(fb.top(terms, 50, m), want)


# --- a real built index ------------------------------------------------------------------
@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> list[Path]:
    """A full build, then an incremental one (reused terms, 30 titles changed)."""
    tmp = tmp_path_factory.mktemp("topk")
    docs = make_docs(N)
    changed = [
        dataclasses.replace(d, title=d.title + " lamp lamp") if i % 20 == 0 else d
        for i, d in enumerate(docs)
    ]
    names = []
    with EmbeddingCache(tmp / "cache.sqlite") as cache:
        fill(cache, encoder, docs, seed=1)
        fill(cache, encoder, changed, seed=2)
        names.append(build_local_index(docs, tmp / "idx", encoder, CFG, cache=cache))
        names.append(
            build_local_index(changed, tmp / "idx", encoder, CFG, cache=cache, reuse_previous=True)
        )
    return [tmp / "idx" / "versions" / name for name in names]


QUERIES = ["red tent", "blue lamp lamp", "item 42", "knife boots chair", "mug", "zzz", "desk 7"]


def _check_snapshot(snap: Snapshot) -> None:
    fi = snap.combined
    filters = [None, Filters(category="a"), Filters(ranges={"price": (10.0, 12.0)})]
    for q in QUERIES:
        terms = snap.analyzer.terms(q)
        for flt in filters:
            mask = snap.mask(flt)
            for k in (1, 10, 1_000):
                rows, scores = top_matching(fi.scores(terms), k, mask)
                hits = snap.bm25(q, k, filters=flt)
                assert list(hits.ids) == [snap.ids[r] for r in rows.tolist()]
                assert np.array_equal(hits.scores, scores)
                if fi.block_max is not None and fi.term_ids(terms):
                    got = fi.top_blocks(fi.term_ids(terms), k, mask, max_read=INF)
                    assert got is not None
                    _same(got, (rows, scores))


@pytest.mark.parametrize("which", [0, 1], ids=["full", "incremental"])
def test_built_versions_have_block_max_and_answer_as_dense(
    versions: list[Path], which: int
) -> None:
    version = versions[which]
    meta = json.loads((version / "bm25" / f"{layout.COMBINED}.vocab.json").read_text())
    assert meta["block_rows"] > 0
    for a in layout.BM25_BLOCK_ARRAYS:
        assert layout.bm25_array(version, layout.COMBINED, a).is_file()
    snap = Snapshot(version)
    try:
        assert snap.combined.block_max is not None
        _check_snapshot(snap)
    finally:
        snap.close()


def test_version_without_block_max_answers_identically(
    versions: list[Path], tmp_path: Path
) -> None:
    """A version written before BlockMax (no files, no block_rows) scores every document,
    with the same answers as the version that has them."""
    old = tmp_path / versions[1].name
    shutil.copytree(versions[1], old)
    for a in layout.BM25_BLOCK_ARRAYS:
        layout.bm25_array(old, layout.COMBINED, a).unlink()
    vocab = old / "bm25" / f"{layout.COMBINED}.vocab.json"
    meta = json.loads(vocab.read_text())
    del meta["block_rows"]
    vocab.write_text(json.dumps(meta))
    assert load_field_index(layout.bm25_field(old, layout.COMBINED)).block_max is None
    new_snap, old_snap = Snapshot(versions[1]), Snapshot(old)
    try:
        assert old_snap.combined.block_max is None
        _check_snapshot(old_snap)
        for q in QUERIES:
            a, b = new_snap.bm25(q, 50), old_snap.bm25(q, 50)
            assert a.ids == b.ids and np.array_equal(a.scores, b.scores)
    finally:
        new_snap.close()
        old_snap.close()
