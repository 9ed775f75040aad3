"""The format-3 term store returns exactly the analyzer's terms; older versions still load.

Format 3 stores each version's analyzed terms as int32 ids of deduplicated sequences
(indexing.term_store.TermStore) instead of terms.jsonl. Whatever the storage, doc_terms
must hand out the same tuples the analyzer produced at build time.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing.analysis import Analyzer
from indexing.bm25 import _postings
from indexing.bm25_side import text_field_names
from indexing.build import build_local_index
from indexing.config import IndexConfig
from indexing.documents import Document
from indexing.embedding_cache import EmbeddingCache
from indexing.layout import (
    ANN_ROWS,
    BM25_ARRAYS,
    BM25_BLOCK_ARRAYS,
    BM25_DIR,
    BM25_MATRIX_SUFFIX,
    BM25_TF,
    BM25_VOCAB_SUFFIX,
    FORMAT_VERSION,
    TERM_IDS,
    TERM_OFFSETS,
    TERM_SEQS,
    bm25_array,
)
from indexing.local import LocalBackend
from indexing.local_store import Snapshot, json_line, write_lines
from tests.contract import CONTRACT_DOCS

# Repeated sequences across rows and fields, empty fields, an extra field only some
# documents have, a text whose only words are stopwords, and non-ASCII text.
EXTRA_DOCS = [
    Document(id="x1", title="Red shoes", body="red shoes", extra={"color": "red"}),
    Document(id="x2", title="red", body="", extra={"color": "red", "brand": "Acme"}),
    Document(id="x3", title="the and of", body="Crème brûlée über naïve", extra={}),
    Document(id="x4", title="Red shoes", body="shoes shoes red", extra={"brand": "acme"}),
]
DOCS = [*CONTRACT_DOCS, *EXTRA_DOCS]


def expected_terms(docs: list[Document]) -> dict[str, list[tuple[str, ...]]]:
    analyzer = Analyzer()
    fields = text_field_names(docs)
    return {
        f: [analyzer.terms(d.text_fields().get(f, d.extra.get(f, ""))) for d in docs]
        for f in fields
    }


def build_docs(root: Path, encoder: Any, embedding_cache: EmbeddingCache) -> Path:
    """The version directory of DOCS indexed under ``root`` (also tests.test_local_lookups)."""
    v = build_local_index(
        DOCS, root / "idx", encoder, IndexConfig(), embedding_cache, parallel=False
    )
    return root / "idx" / "versions" / v


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, encoder: Any, embedding_cache: EmbeddingCache
) -> Path:
    return build_docs(tmp_path_factory.mktemp("terms"), encoder, embedding_cache)


def test_format3_doc_terms_equal_the_analyzer(built: Path) -> None:
    snap = Snapshot(built)
    try:
        assert snap.manifest["format"] == FORMAT_VERSION
        assert snap.term_store is not None and snap.terms is None
        assert not (built / "terms.jsonl").exists()
        want = expected_terms(DOCS)
        ids = [d.id for d in DOCS]
        got = snap.doc_terms(ids)
        assert list(got) == list(snap.text_fields) == list(want)
        for f in want:
            assert got[f] == tuple(want[f]), f
            assert all(type(t) is tuple and all(type(w) is str for w in t) for t in got[f])
        # any order, repeats and unknown ids (empty terms), twice (the second from the cache)
        mixed = ["x4", "nope", ids[0], "x4", "x2", ""]
        for _ in range(2):
            got = snap.doc_terms(mixed)
            for f in want:
                exp = [() if i in ("nope", "") else want[f][ids.index(i)] for i in mixed]
                assert got[f] == tuple(exp)
        assert snap.doc_terms([]) == {f: () for f in want}
        for r in (0, len(DOCS) - 1):
            assert snap.term_row(r) == tuple(want[f][r] for f in want)
        # repeated sequences are stored once
        store = snap.term_store
        assert len(store.offsets) - 1 < sum(len(v) for v in want.values())
    finally:
        snap.close()


def test_term_cache_starting_over_keeps_values(built: Path) -> None:
    snap = Snapshot(built)
    try:
        assert snap.term_store is not None
        want = snap.doc_terms([d.id for d in DOCS])
        snap.term_store.cache_terms = 5  # smaller than one request: starts over each time
        rng = np.random.default_rng(0)
        for _ in range(20):
            pick = [DOCS[int(i)].id for i in rng.integers(0, len(DOCS), 7)]
            got = snap.doc_terms(pick)
            for f, col in got.items():
                assert col == tuple(want[f][[d.id for d in DOCS].index(i)] for i in pick)
    finally:
        snap.close()


def bm25_to_npz(version: Path) -> None:
    """Rewrite format 4's per-array BM25 files as the one npz per field of formats 1-3
    (which had no BlockMax bounds nor term frequencies)."""
    for vocab in (version / BM25_DIR).glob("*" + BM25_VOCAB_SUFFIX):
        field = vocab.name[: -len(BM25_VOCAB_SUFFIX)]
        arrays = {a: np.load(bm25_array(version, field, a)) for a in BM25_ARRAYS}
        np.savez(version / BM25_DIR / (field + BM25_MATRIX_SUFFIX), **arrays)
        for a in (*BM25_ARRAYS, *BM25_BLOCK_ARRAYS, BM25_TF):
            bm25_array(version, field, a).unlink(missing_ok=True)
        meta = json.loads(vocab.read_text())
        meta.pop("block_rows", None)
        meta.pop("tf", None)
        vocab.write_text(json.dumps(meta))


def _downgrade(version: Path, fmt: int) -> None:
    """Rewrite a format-4 version as format 1, 2 or 3 wrote it (npz BM25 matrices; formats
    1-2: terms.jsonl, no term store)."""
    bm25_to_npz(version)
    if fmt == 3:
        manifest = json.loads((version / "manifest.json").read_text())
        manifest["format"] = fmt
        (version / "manifest.json").write_text(json.dumps(manifest))
        return
    snap = Snapshot(version)
    rows = [snap.term_row(r) for r in range(snap.n)]
    snap.close()
    write_lines(version / "terms.jsonl", rows)
    for name in (TERM_SEQS, TERM_IDS, TERM_OFFSETS):
        (version / name).unlink()
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["format"] = fmt
    if fmt == 1:
        (version / ANN_ROWS).unlink(missing_ok=True)
    (version / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_older_formats_load_and_return_the_same(built: Path, tmp_path: Path, fmt: int) -> None:
    import shutil

    root = tmp_path / "idx"
    old = root / "versions" / built.name
    shutil.copytree(built, old)
    (root / "CURRENT").write_text(built.name + "\n")
    _downgrade(old, fmt)
    assert not list((old / BM25_DIR).glob("*.npy"))
    if fmt < 3:
        line = (old / "terms.jsonl").read_bytes().split(b"\n")[0].decode()
        assert line == json_line([list(t) for t in Snapshot(built).term_row(0)])

    new, prev = Snapshot(built), Snapshot(old)
    try:
        assert (prev.term_store is None) == (fmt < 3) and prev.manifest["format"] == fmt
        ids = [d.id for d in DOCS] + ["nope"]
        q = "red shoes laptop"
        vec = new.vectors[3]
        a, b = new.lookups(q, ids, vec), prev.lookups(q, ids, vec)
        assert a.query_terms == b.query_terms and a.doc_terms == b.doc_terms
        assert a.idf == b.idf
        for x, y in ((a.field_bm25, b.field_bm25), (a.static, b.static)):
            assert list(x) == list(y)
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        np.testing.assert_array_equal(a.cosine, b.cosine)
        assert a.doc_terms == {f: (*v, ()) for f, v in expected_terms(DOCS).items()}
    finally:
        new.close()
        prev.close()
    backend = LocalBackend.open(root)  # and it serves
    assert backend.version == built.name


def _postings_reference(
    term: np.ndarray, doc: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    uniq, tf = np.unique(term * n + doc, return_counts=True)
    t = uniq // n
    return t, uniq - t * n, tf


@pytest.mark.parametrize("n_terms", [7, 300, 65536, 70000, 10_000_000])  # last: 64-bit keys
def test_postings_equal_unique(n_terms: int) -> None:
    rng = np.random.default_rng(n_terms)
    n = 500
    streams = []
    for _ in range(3):  # three fields' streams, each in document order
        lengths = rng.poisson(6, n)
        doc = np.repeat(np.arange(n, dtype=np.int64), lengths)
        term = rng.integers(0, n_terms, len(doc)).astype(np.int64)
        streams.append((term, doc))
    for term, doc in streams:
        got = _postings(term, doc, n, n_terms)
        for g, w in zip(got, _postings_reference(term, doc, n), strict=True):
            np.testing.assert_array_equal(g, w)
    term = np.concatenate([t for t, _ in streams])
    doc = np.concatenate([d for _, d in streams])
    got = _postings(term, doc, n, n_terms)  # runs of documents, not in document order
    for g, w in zip(got, _postings_reference(term, doc, n), strict=True):
        np.testing.assert_array_equal(g, w)
    got = _postings(term.astype(np.int32), doc.astype(np.int32), n, n_terms)
    assert [g.dtype for g in got] == [np.int32, np.int32, np.int64]  # what from_postings takes
    for g, w in zip(got, _postings_reference(term, doc, n), strict=True):
        np.testing.assert_array_equal(g, w)


def test_doc_lines_read_back_like_json_lines() -> None:
    """docs.jsonl lines (orjson where it is exact) parse to what json_line's lines parse to."""
    import math

    from indexing.local_store import doc_line, read_line

    odd = [
        Document(id="n1", title="nan", attrs={"price": float("nan"), "rating": 2.0}),
        Document(id="n2", attrs={"price": float("inf"), "w": -float("inf")}),
        Document(id="b1", attrs={"big": 2**70, "small": 1e-320, "f": 0.1 + 0.2, "e": 1e16}),
        Document(id="u1", title='tab\tquote" back\\ \u00e9\u4e2d\U0001f600 \x00\x1f\u2028'),
        Document(id="c1", category=None, extra={"brand": ""}, attrs={"i": 3, "neg": -0.0}),
    ]
    for d in [*DOCS, *odd]:
        line = doc_line(d)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        got, want = json.loads(line), json.loads(json_line(d.to_json()))
        # fetch reads lines with read_line: the same documents, floats bit for bit
        mine, ref = Document.from_json(read_line(line)), Document.from_json(got)
        assert (mine.id, mine.title, mine.body, mine.extra, mine.category) == (
            ref.id,
            ref.title,
            ref.body,
            ref.extra,
            ref.category,
        )
        assert [(k, struct.pack("<d", v)) for k, v in mine.attrs.items()] == [
            (k, struct.pack("<d", v)) for k, v in ref.attrs.items()
        ]
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
        for k, v in want["attrs"].items():  # NaN != NaN: compare floats bit for bit
            g = got["attrs"][k]
            assert type(g) is type(v) and (g == v or (math.isnan(g) and math.isnan(v)))
            if isinstance(v, float):
                assert math.copysign(1, g) == math.copysign(1, v)
        assert Document.from_json(got) == Document.from_json(want) or d.id.startswith("n")


def test_doc_line_bytes_same_for_dict_and_other_mappings() -> None:
    """doc_line's plain-dict shortcut writes the very bytes of orjson over to_json(), and a
    document whose fields are other mappings gets the same line (the stored lines are
    compared byte for byte to find unchanged documents)."""
    from types import MappingProxyType

    import orjson

    from indexing.local_store import doc_line

    docs = [
        *DOCS,
        Document(id="x", title="t", extra={"b": "2", "a": "1"}, category=None, attrs={"z": 1.5}),
    ]
    for d in docs:
        assert doc_line(d) == orjson.dumps(d.to_json()) + b"\n"
        proxied = Document(
            id=d.id,
            title=d.title,
            body=d.body,
            extra=MappingProxyType(dict(d.extra)),
            category=d.category,
            attrs=MappingProxyType(dict(d.attrs)),
        )
        assert doc_line(proxied) == doc_line(d)
