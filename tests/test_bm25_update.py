"""The incremental BM25 side (indexing.bm25_update) answers exactly as a full build.

Vocabulary ids may differ between the two (an incremental build keeps the previous ids
and appends new terms), so matrices, block bounds and stored terms are compared by term
string and by row, float32 contributions bit for bit. The first test runs the posting
update alone against indexing.bm25.build_from_streams; the others run real builds
(MiniLM's model id over an EmbeddingCache of synthetic vectors, as tests/test_ann_reuse.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing import layout
from indexing.bm25 import BlockMax, FieldIndex, build_from_streams, contributions
from indexing.bm25_update import MAX_CHANGED_SHARE, update_postings
from indexing.build import build_local_index
from indexing.config import IndexConfig
from indexing.documents import Document, embedding_text
from indexing.embedding_cache import EmbeddingCache
from indexing.local_store import Snapshot, load_field_index

CFG = IndexConfig(ann_threshold=50, keep_versions=10)
K1, B = 1.2, 0.75


def by_term(fi: FieldIndex) -> dict[str, tuple[list[int], bytes]]:
    """term -> (rows, float32 contributions as bytes) of every term with postings."""
    out = {}
    for t, i in fi.vocab.items():
        s, e = int(fi.indptr[i]), int(fi.indptr[i + 1])
        if e > s:
            out[t] = (np.asarray(fi.indices[s:e]).tolist(), np.asarray(fi.data[s:e]).tobytes())
    return out


def blocks_by_term(fi: FieldIndex) -> dict[str, tuple[list[int], bytes]]:
    bm = fi.block_max or BlockMax.build(fi)
    out = {}
    for t, i in fi.vocab.items():
        s, e = int(bm.indptr[i]), int(bm.indptr[i + 1])
        if e > s:
            out[t] = (np.asarray(bm.blocks[s:e]).tolist(), np.asarray(bm.maxima[s:e]).tobytes())
    return out


def _stream(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    flat = np.array([t for d in docs for t in d], dtype=np.int32)
    return flat, lengths


@pytest.mark.parametrize("in_place", [True, False])
def test_update_postings_equals_a_full_build(in_place: bool) -> None:
    """Rows changed (new terms, repeated terms, emptied), and unless ``in_place`` rows
    removed and added in order: the updated postings and contributions are a full
    build's, term by term. A planted off-by-one in the insert or a missed drop fails."""
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(400)]
    n = 500
    old = [rng.zipf(1.4, size=rng.integers(0, 14)).clip(max=300).tolist() for _ in range(n)]
    fi = build_from_streams(words, [_stream(old)], K1, B)[0][0]
    assert fi.tf is not None
    new = [list(d) for d in old]
    rows = np.arange(n)
    for r, terms in {0: [350, 351, 351], 7: [], 133: [2, 2, 2, 5], 499: [1, 399]}.items():
        new[r], rows[r] = terms, -1
    if not in_place:  # remove 40 rows, add 3 rows at the front and 2 in the middle
        keep = np.ones(n, dtype=bool)
        keep[rng.choice(np.arange(1, 499), size=40, replace=False)] = False
        new = [d for d, k in zip(new, keep, strict=True) if k]
        rows = rows[keep]
        for at, terms in ((0, [360, 3]), (0, [3]), (200, [361, 1, 1]), (201, [4])):
            new.insert(at, terms)
            rows = np.insert(rows, at, -1)
    n_new = len(new)
    want = build_from_streams(words, [_stream(new)], K1, B)[0][0]

    vocab = dict(fi.vocab)
    todo = np.flatnonzero(rows < 0)
    term = np.array([vocab.setdefault(words[t], len(vocab)) for i in todo for t in new[i]])
    doc = np.repeat(todo, [len(new[i]) for i in todo])
    new_of_old = np.full(n, -1, dtype=np.int32)
    new_of_old[rows[rows >= 0]] = np.flatnonzero(rows >= 0)
    indptr, indices, tf = update_postings(
        fi.indptr, fi.indices, fi.tf, None if in_place else new_of_old, new_of_old < 0,
        n_new, term, doc, len(vocab),
    )  # fmt: skip
    lengths = np.array([len(d) for d in new], dtype=np.int64)
    got = FieldIndex(
        vocab, contributions(indptr, indices, tf, lengths, K1, B), indices, indptr, n_new
    )
    assert by_term(got) == by_term(want)
    assert blocks_by_term(got) == blocks_by_term(want)
    assert set(fi.vocab) - set(want.vocab)  # some old term lost its last posting...
    assert all(got.doc_freq(t) == 0 for t in set(fi.vocab) - set(want.vocab))  # ...and stays


def make_docs(n: int, start: int = 0) -> list[Document]:
    words = ["red", "blue", "tent", "lamp", "knife", "boots", "chair", "mug", "rope", "desk"]
    return [
        Document(
            id=f"d{i:05d}",
            title=f"{words[i % 10]} {words[(i // 10) % 10]} item {i}",
            body=f"body of {i} with {words[(i * 7) % 10]} {words[(i * 3) % 10]}",
            extra={"color": ["red", "blue", "green"][i % 3], "brand": f"brand{i % 7}"},
            attrs={"price": float(i % 97)},
            category="a" if i % 2 else "b",
        )
        for i in range(start, start + n)
    ]


def fill(cache: EmbeddingCache, encoder: Any, docs: list[Document]) -> None:
    rng = np.random.default_rng(len(docs))
    v = rng.standard_normal((len(docs), encoder.dim)).astype(np.float32)
    cache.put_many(
        encoder.model_id, [embedding_text(d) for d in docs], v / np.linalg.norm(v, axis=1)[:, None]
    )


def assert_same_answers(inc_dir: Path, full_dir: Path, docs: list[Document]) -> None:
    """Every field's postings and contributions, the block bounds, every row's stored
    terms and searches agree between an incremental and a full build."""
    inc, full = Snapshot(inc_dir), Snapshot(full_dir)
    try:
        assert inc.text_fields == full.text_fields
        for f in (*inc.text_fields, layout.COMBINED):
            a = load_field_index(layout.bm25_field(inc_dir, f))
            b = load_field_index(layout.bm25_field(full_dir, f))
            assert a.num_docs == b.num_docs == len(docs), f
            assert by_term(a) == by_term(b), f
            if f == layout.COMBINED:
                assert blocks_by_term(a) == blocks_by_term(b)
        ids = [d.id for d in docs]
        assert inc.doc_terms(ids) == full.doc_terms(ids)
        for q in ("zeppelin", "red lantern", "item 5", "acme", "teal", "body of 77", "blue"):
            assert inc.idf(q.split()) == full.idf(q.split())
            for field in (None, "title", "body", "color", "brand"):
                a, b = inc.bm25(q, 50, field), full.bm25(q, 50, field)
                assert a.ids == b.ids
                np.testing.assert_array_equal(a.scores, b.scores)
    finally:
        inc.close()
        full.close()


@pytest.fixture()
def built(tmp_path: Path, encoder: Any) -> tuple[Path, EmbeddingCache, list[Document]]:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    docs = make_docs(400)
    fill(cache, encoder, docs)
    build_local_index(docs, tmp_path / "index", encoder, CFG, cache=cache)
    return tmp_path / "index", cache, docs


def _rebuild(
    root: Path, cache: EmbeddingCache, encoder: Any, docs: list[Document], tmp: Path, **kw: Any
) -> tuple[dict[str, float], Path, Path]:
    fill(cache, encoder, docs)
    stages: dict[str, float] = {}
    v = build_local_index(docs, root, encoder, CFG, cache=cache, stages=stages, **kw)
    v_full = build_local_index(docs, tmp, encoder, CFG, cache=cache, reuse_previous=False)
    return stages, root / "versions" / v, tmp / "versions" / v_full


@pytest.mark.parametrize("parallel", [False, True])
def test_changed_in_place_updates_and_links_the_untouched_fields(
    built: Any, encoder: Any, tmp_path: Path, parallel: bool
) -> None:
    """Titles (one with a term nobody had), one body and one brand changed in place: the
    update path runs, untouched fields' files are the previous version's (hard links),
    and everything answers as a full build."""
    root, cache, docs = built
    prev = root / "versions" / sorted(p.name for p in (root / "versions").iterdir())[-1]
    new = list(docs)
    new[3] = dataclasses.replace(docs[3], title="zeppelin lantern")
    new[50] = dataclasses.replace(docs[50], title=docs[50].title + " lantern lantern")
    new[51] = dataclasses.replace(docs[51], body="")
    new[52] = dataclasses.replace(docs[52], extra={**docs[52].extra, "brand": "acme"})
    new[399] = dataclasses.replace(docs[399], title="")
    stages, inc_dir, full_dir = _rebuild(
        root, cache, encoder, new, tmp_path / "f", parallel=parallel
    )
    assert stages["bm25_incremental"] == 1.0
    assert stages["analyzed_rows"] == 5
    assert_same_answers(inc_dir, full_dir, new)
    same = (prev / "bm25" / "color.indices.npy").stat().st_ino
    assert (inc_dir / "bm25" / "color.indices.npy").stat().st_ino == same  # no row changed
    assert (inc_dir / "bm25" / "title.indices.npy").stat().st_ino != (
        prev / "bm25" / "title.indices.npy"
    ).stat().st_ino
    # and again from the updated version, back to the first documents
    stages, inc_dir, full_dir = _rebuild(root, cache, encoder, docs, tmp_path / "g")
    assert stages["bm25_incremental"] == 1.0
    assert_same_answers(inc_dir, full_dir, docs)


def test_removed_and_added_in_order_update(built: Any, encoder: Any, tmp_path: Path) -> None:
    """Rows removed (their unique terms gone), added at the front, middle and end, one
    changed, the unchanged ones in their order: updated, and the same answers."""
    root, cache, docs = built
    added = [dataclasses.replace(d, extra={"color": "teal"}) for d in make_docs(6, start=900)]
    new = added[:2] + docs[:100] + added[2:4] + docs[130:399] + added[4:]
    new[10] = dataclasses.replace(new[10], title="acme zeppelin")
    stages, inc_dir, full_dir = _rebuild(root, cache, encoder, new, tmp_path / "f")
    assert stages["bm25_incremental"] == 1.0
    assert (stages["reused_rows"], stages["analyzed_rows"]) == (len(new) - 7, 7)
    assert_same_answers(inc_dir, full_dir, new)


def test_falls_back_to_a_full_build(built: Any, encoder: Any, tmp_path: Path) -> None:
    """Reordered rows, too many changes, or a previous version without term frequencies
    (written before they were stored): the full path, with the same answers."""
    root, cache, docs = built
    stages, inc_dir, full_dir = _rebuild(root, cache, encoder, docs[::-1], tmp_path / "a")
    assert "bm25_incremental" not in stages and stages["reused_rows"] == len(docs)
    assert_same_answers(inc_dir, full_dir, docs[::-1])
    many = int(MAX_CHANGED_SHARE * len(docs)) + 1
    new = [
        dataclasses.replace(d, body=d.body + " more") if i < many else d
        for i, d in enumerate(docs[::-1])
    ]
    stages, inc_dir, full_dir = _rebuild(root, cache, encoder, new, tmp_path / "b")
    assert "bm25_incremental" not in stages and stages["analyzed_rows"] == many
    assert_same_answers(inc_dir, full_dir, new)
    meta_file = inc_dir / "bm25" / "title.vocab.json"  # as an older build wrote it
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    del meta["tf"]
    meta_file.unlink()  # a hard link may share the file: replace, never edit in place
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    new2 = list(new)
    new2[-1] = dataclasses.replace(new[-1], title="zeppelin")
    stages, inc_dir, full_dir = _rebuild(root, cache, encoder, new2, tmp_path / "c")
    assert "bm25_incremental" not in stages and stages["analyzed_rows"] == 1
    assert_same_answers(inc_dir, full_dir, new2)
    cache.close()
