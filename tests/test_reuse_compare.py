"""indexing.reuse.unchanged_rows: block-wise byte comparison with the previous version's
stored lines gives exactly the row-by-row answer (a same-length edit inside a block of
otherwise equal rows included); unchanged files of a reindex are linked, not rewritten."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing import layout
from indexing.local_store import join_lines, write_blobs
from indexing.reuse import COMPARE_BLOCK, unchanged_rows


def _line(doc_id: str, title: str) -> bytes:
    return json.dumps({"id": doc_id, "title": title}).encode() + b"\n"


def _previous(tmp_path: Path, ids: list[str], titles: list[str]) -> Path:
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / layout.IDS).write_text(json.dumps(ids), encoding="utf-8")
    write_blobs(prev / layout.DOCS, [_line(i, t) for i, t in zip(ids, titles, strict=True)])
    return prev


def _reference(
    prev_ids: list[str], prev_lines: list[bytes], ids: list[str], lines: list[bytes]
) -> list[int]:
    row_of = {d: r for r, d in enumerate(prev_ids)}
    out = []
    for d, line in zip(ids, lines, strict=True):
        r = row_of.get(d, -1)
        out.append(r if r >= 0 and prev_lines[r] == line else -1)
    return out


@pytest.mark.parametrize("reorder", [False, True])
def test_block_compare_equals_row_by_row(tmp_path: Path, reorder: bool) -> None:
    n = 3 * COMPARE_BLOCK + 17
    ids = [f"d{i:05d}" for i in range(n)]
    titles = [f"title {i % 50}" for i in range(n)]
    prev = _previous(tmp_path, ids, titles)
    new_titles = list(titles)
    new_titles[COMPARE_BLOCK + 5] = "tilte " + titles[COMPARE_BLOCK + 5][6:]  # same length
    new_titles[2 * COMPARE_BLOCK] = titles[2 * COMPARE_BLOCK] + " longer"
    new_titles[n - 1] = "x"
    new_ids = list(ids)
    if reorder:  # removed, added, a swapped pair
        del new_ids[10:20], new_titles[10:20]
        new_ids.insert(40, "new1")
        new_titles.insert(40, "title 1")
        new_ids[100], new_ids[101] = new_ids[101], new_ids[100]
        new_titles[100], new_titles[101] = new_titles[101], new_titles[100]
    lines = [_line(i, t) for i, t in zip(new_ids, new_titles, strict=True)]
    got = unchanged_rows(prev, new_ids, *join_lines(lines))
    assert got is not None and got.same_ids is not reorder
    prev_lines = [_line(i, t) for i, t in zip(ids, titles, strict=True)]
    want = _reference(ids, prev_lines, new_ids, lines)
    assert got.rows.tolist() == want
    assert int((got.rows < 0).sum()) == (4 if reorder else 3)


def test_no_previous_or_unreadable(tmp_path: Path) -> None:
    assert unchanged_rows(None, ["a"], *join_lines([_line("a", "t")])) is None
    (tmp_path / "broken").mkdir()
    assert unchanged_rows(tmp_path / "broken", ["a"], *join_lines([_line("a", "t")])) is None


def test_unchanged_files_are_linked(tmp_path: Path, encoder: Any) -> None:
    """Same ids and attributes: the reindex links ids.json, attrs.npy, category.npy of
    the previous version; a changed price writes attrs.npy anew; the vectors file (copied,
    changed rows patched) is a full build's."""
    import dataclasses

    from indexing.build import build_local_index
    from indexing.config import IndexConfig
    from indexing.documents import Document, embedding_text
    from indexing.embedding_cache import EmbeddingCache

    docs = [
        Document(id=f"d{i}", title=f"item {i}", attrs={"price": float(i)}, category="c")
        for i in range(60)
    ]
    changed = list(docs)
    changed[7] = dataclasses.replace(docs[7], title="item seven")
    repriced = list(changed)
    repriced[8] = dataclasses.replace(changed[8], attrs={"price": 99.0})
    every = [*docs, changed[7]]
    rng = np.random.default_rng(0)
    v = rng.standard_normal((len(every), encoder.dim)).astype(np.float32)
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        cache.put_many(
            encoder.model_id,
            [embedding_text(d) for d in every],
            v / np.linalg.norm(v, axis=1)[:, None],
        )
        cfg = IndexConfig(keep_versions=5)
        root = tmp_path / "index"
        versions = [
            root / "versions" / build_local_index(d, root, encoder, cfg, cache=cache)
            for d in (docs, changed, repriced)
        ]
        fresh = tmp_path / "fresh"
        v_full = build_local_index(repriced, fresh, encoder, cfg, cache=cache, reuse_previous=False)
        recategorized = list(repriced)  # a category no version had: every code recomputed
        recategorized[9] = dataclasses.replace(repriced[9], category="b", attrs={"weight": 2.0})
        v4 = build_local_index(recategorized, root, encoder, cfg, cache=cache)
        v4_full = build_local_index(
            recategorized, tmp_path / "fresh4", encoder, cfg, cache=cache, reuse_previous=False
        )
    # unchanged rows' attributes and codes taken from the previous version, the vectors
    # file copied from it with the changed rows overwritten: the bytes a full build writes
    for inc, full in (
        (versions[2], fresh / "versions" / v_full),
        (root / "versions" / v4, tmp_path / "fresh4" / "versions" / v4_full),
    ):
        for name in (layout.VECTORS, layout.ATTRS, layout.CATEGORY, layout.CATEGORIES):
            assert (inc / name).read_bytes() == (full / name).read_bytes(), name
    ino = [
        {f: (v / f).stat().st_ino for f in (layout.IDS, layout.ATTRS, layout.CATEGORY)}
        for v in versions
    ]
    assert ino[1] == ino[0]
    assert ino[2][layout.IDS] == ino[0][layout.IDS]
    assert ino[2][layout.ATTRS] != ino[0][layout.ATTRS]
    assert np.load(versions[2] / layout.ATTRS)[8, 0] == 99.0
