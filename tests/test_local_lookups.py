"""Snapshot.lookups gives, bit for bit, what the plain per-field / per-row formulas give.

The lookups path is tuned (one gather shared by doc_terms and term_ids, batched BM25
lookups, gathers without a mask when every id is known), so each column is checked here
against the straightforward reference: FieldIndex.scores_for_ids per field, the masked
vector and attribute gathers, and doc_terms encoded with the combined vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from indexing.embedding_cache import EmbeddingCache
from indexing.local_store import Snapshot
from tests.test_local_terms import DOCS, build_docs

QUERIES = ["red shoes shoes", "laptop battery", "the", "acme crème", "zzz-unknown"]


@pytest.fixture(scope="module")
def snap(
    tmp_path_factory: pytest.TempPathFactory, encoder: Any, embedding_cache: EmbeddingCache
) -> Any:
    s = Snapshot(build_docs(tmp_path_factory.mktemp("lookups"), encoder, embedding_cache))
    yield s
    s.close()


def _bits(a: np.ndarray) -> bytes:
    assert a.dtype == np.float64
    return a.tobytes()


def _id_lists(snap: Snapshot) -> list[list[str]]:
    ids = [d.id for d in DOCS]
    rng = np.random.default_rng(7)
    picks = [list(rng.choice(ids, 9)) for _ in range(4)]  # repeats, any order
    return [ids, ids[::-1], ["x4", "nope", ids[0], "x4", ""], ["nope"], [], *picks]


def test_lookups_columns_equal_the_reference_formulas(snap: Snapshot) -> None:
    v = np.random.default_rng(0).standard_normal(snap.dim).astype(np.float32)
    v /= np.linalg.norm(v)
    vocab = snap.combined.vocab
    for query in QUERIES:
        terms = snap.analyzer.terms(query)
        for ids in _id_lists(snap):
            got = snap.lookups(query, ids, v)
            rows = np.array([snap.row_of.get(i, -1) for i in ids], dtype=np.int64)
            known = rows >= 0
            assert list(got.field_bm25) == list(snap.text_fields)
            for name, fi in snap.fields.items():
                want = np.full(len(ids), np.nan)
                want[known] = fi.scores_for_ids(fi.term_ids(terms), rows[known])
                assert _bits(got.field_bm25[name]) == _bits(want), (query, ids, name)
            cos = np.full(len(ids), np.nan)
            cos[known] = snap.vectors[rows[known]] @ v
            assert _bits(got.cosine) == _bits(cos), (query, ids)
            assert list(got.static) == list(snap.attr_names)
            for j, name in enumerate(snap.attr_names):
                col = np.full(len(ids), np.nan)
                col[known] = snap.attrs[rows[known], j]
                assert _bits(got.static[name]) == _bits(col), (query, ids, name)
            per_row = [snap.term_row(int(r)) if r >= 0 else None for r in rows]
            for j, f in enumerate(snap.text_fields):
                assert got.doc_terms[f] == tuple(() if t is None else t[j] for t in per_row)
            tid = got.term_ids
            assert tid is not None and tid.fields == snap.text_fields
            cols = [got.doc_terms[f] for f in snap.text_fields]
            flat = [vocab[t] for col in cols for row in col for t in row]
            assert tid.ids.dtype == np.int32 and tid.ids.tolist() == flat
            lens = [len(row) for col in cols for row in col]
            assert tid.lengths.dtype == np.int64 and tid.lengths.tolist() == lens
            assert not tid.ids.flags.writeable and not tid.lengths.flags.writeable
            assert dict(tid.query_ids) == {t: vocab[t] for t in dict.fromkeys(terms) if t in vocab}


def test_hits_and_fetch_keep_row_order(snap: Snapshot) -> None:
    rows = np.array([3, 0, 3, len(DOCS) - 1], dtype=np.int64)
    hits = snap._hits(rows, np.array([1.0, 0.5, 0.5, 0.25], dtype=np.float32))
    assert hits.ids == tuple(snap.ids[r] for r in rows.tolist()) and type(hits.ids) is tuple
    assert hits.scores.dtype == np.float64 and hits.scores.tolist() == [1.0, 0.5, 0.5, 0.25]
    docs = snap.fetch([*hits.ids, "nope"])
    assert [d.id if d is not None else None for d in docs] == [*hits.ids, None]
