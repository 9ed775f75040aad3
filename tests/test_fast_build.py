"""The vectorized index build equals what bm25s and the old analyzer produce.

build_field_indexes replaced bm25s' per-document Python loops; these tests build the same
corpora both ways and require identical vocabularies, indptr and indices, and data equal
to the bit (the same float operations in the same order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing.analysis import Analyzer
from indexing.bm25 import FieldIndex, build_field_indexes
from tests.contract import CONTRACT_DOCS


def bm25s_reference(token_lists: Sequence[Sequence[str]], k1: float, b: float) -> FieldIndex:
    """The previous FieldIndex.build: bm25s' own indexer, postings sorted by row."""
    import bm25s

    n = len(token_lists)
    if not any(token_lists):
        return FieldIndex.empty(n)
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(list(token_lists), create_empty_token=False, show_progress=False)
    sc = retriever.scores
    data = np.asarray(sc["data"], dtype=np.float32)
    indices = np.asarray(sc["indices"], dtype=np.int32)
    indptr = np.asarray(sc["indptr"], dtype=np.int64)
    term = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    order = np.lexsort((indices, term))
    return FieldIndex(dict(retriever.vocab_dict), data[order], indices[order], indptr, n)


def assert_same(ours: FieldIndex, ref: FieldIndex) -> None:
    assert ours.num_docs == ref.num_docs
    assert dict(ours.vocab) == dict(ref.vocab)
    assert list(ours.vocab) == list(ref.vocab)  # same ids in the same order
    np.testing.assert_array_equal(ours.indptr, ref.indptr)
    np.testing.assert_array_equal(ours.indices, ref.indices)
    assert ours.data.dtype == ref.data.dtype == np.float32
    assert ours.indices.dtype == ref.indices.dtype and ours.indptr.dtype == ref.indptr.dtype
    np.testing.assert_array_equal(ours.data, ref.data)  # bit-identical, not just close


def synthetic_fields(n: int, seed: int) -> list[list[tuple[str, ...]]]:
    """Two analyzed fields with skewed term frequencies, repeats and empty documents."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(300)]
    p = 1.0 / np.arange(1, 301)
    p /= p.sum()
    fields: list[list[tuple[str, ...]]] = [[], []]
    for _ in range(n):
        for f, mean in ((0, 4), (1, 30)):
            k = int(rng.poisson(mean)) if rng.random() > 0.05 else 0
            fields[f].append(tuple(str(w) for w in rng.choice(words, k, p=p)))
    return fields


ANALYZER = Analyzer()
CONTRACT_FIELDS = [
    [ANALYZER.terms(d.title) for d in CONTRACT_DOCS],
    [ANALYZER.terms(d.body) for d in CONTRACT_DOCS],
]


@pytest.mark.parametrize(("k1", "b"), [(1.2, 0.75), (0.9, 0.4), (2.0, 1.0), (1.5, 0.0)])
@pytest.mark.parametrize("corpus", ["contract", "synthetic"])
def test_fields_and_combined_equal_bm25s(corpus: str, k1: float, b: float) -> None:
    per_field = CONTRACT_FIELDS if corpus == "contract" else synthetic_fields(400, seed=3)
    fields, combined = build_field_indexes(per_field, k1, b)
    for ours, tokens in zip(fields, per_field, strict=True):
        assert_same(ours, bm25s_reference(tokens, k1, b))
    concatenated = [a + b_ for a, b_ in zip(*per_field, strict=True)]
    assert_same(combined, bm25s_reference(concatenated, k1, b))
    assert_same(FieldIndex.build(concatenated, k1, b), combined)


def test_empty_and_single_field_edges() -> None:
    empty: list[tuple[str, ...]] = [(), (), ()]
    some = [("a", "b", "a"), (), ("b",)]
    fields, combined = build_field_indexes([empty, some], 1.2, 0.75)
    assert fields[0].num_docs == 3 and len(fields[0].vocab) == 0
    assert_same(fields[1], bm25s_reference(some, 1.2, 0.75))
    assert_same(combined, bm25s_reference(some, 1.2, 0.75))
    _, none = build_field_indexes([empty, empty], 1.2, 0.75)
    assert none.num_docs == 3 and not len(none.data)
    assert np.all(none.scores(["a"]) == 0)


def test_scores_equal_bm25s_retrieval() -> None:
    """End to end: the same top scores as bm25s' own retrieve on the combined field."""
    import bm25s

    per_field = synthetic_fields(300, seed=5)
    concatenated = [a + b for a, b in zip(*per_field, strict=True)]
    _, combined = build_field_indexes(per_field, 1.2, 0.75)
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    retriever.index([list(t) for t in concatenated], show_progress=False)
    for query in (["w0", "w5"], ["w17"], ["w1", "w1", "w250"]):
        ref = retriever.get_scores(query)
        np.testing.assert_allclose(combined.scores(query), ref, rtol=1e-6, atol=1e-7)


OLD_TEXTS = [
    "Ünïcode WÖRDS straße naïve café 東京 x y zz __init__ 123 4.5 The THE running runs ran",
    "a_b x1 _ __ 1 12 A-B can't e-mail U.S.A. \t\n tab\x00null ~`!@#$%^&*()[]{}|\\;:'\",.<>/?",
    "",
    "   ",
    "The quick brown foxes were jumping over the lazy dogs' kennels, running and runs.",
]


def old_terms(analyzer_stop: frozenset[str], stemmer: object | None, text: str) -> list[str]:
    """The previous Analyzer.terms: regex split, stopwords, then PyStemmer."""
    import re

    tokens = [t for t in re.findall(r"(?u)\b\w\w+\b", text.lower()) if t not in analyzer_stop]
    if stemmer is None:
        return tokens
    return list(stemmer.stemWords(tokens))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("stop", "stem"), [("en", "english"), ("", "english"), ("en", ""), ("", "")]
)
def test_analyzer_equals_regex_reference(stop: str, stem: str) -> None:
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    from tests.contract import CONTRACT_DOCS as docs

    analyzer = Analyzer(stop, stem)
    stopset = frozenset(STOPWORDS_EN) if stop else frozenset()
    stemmer = Stemmer.Stemmer("english") if stem else None
    texts = [*OLD_TEXTS, *(d.title for d in docs), *(d.body for d in docs)]
    for text in texts * 2:  # the second pass is served from the token cache
        assert list(analyzer.terms(text)) == old_terms(stopset, stemmer, text), text


def test_analyzer_matches_bm25s_tokenize() -> None:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    texts = [d.title + " " + d.body for d in CONTRACT_DOCS] + OLD_TEXTS
    ref = bm25s.tokenize(
        texts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
    )
    assert [list(ANALYZER.terms(t)) for t in texts] == [list(t) for t in ref]


def test_parallel_build_equals_inline(tmp_path: Path, encoder: Any, embedding_cache: Any) -> None:
    """The BM25 side built in a child process gives the same index as built inline (term
    ids may differ between processes, as bm25s' did: compared per term)."""
    from indexing.build import build_local_index
    from indexing.config import IndexConfig
    from indexing.layout import COMBINED, bm25_field
    from indexing.local_store import Snapshot, load_field_index

    snaps = []
    for parallel in (False, True):
        root = tmp_path / f"p{parallel}"
        v = build_local_index(
            CONTRACT_DOCS, root, encoder, IndexConfig(), embedding_cache, parallel=parallel
        )
        assert not list((root / "versions" / v).glob(".bm25-job*"))
        snaps.append(Snapshot(root / "versions" / v))
    a, b = snaps
    # term ids index the combined vocabulary, whose order is per process: compare terms
    assert [a.term_row(r) for r in range(a.n)] == [b.term_row(r) for r in range(b.n)]
    for name in (*a.text_fields, COMBINED):
        fa, fb = (
            load_field_index(bm25_field(a.path, name)),
            load_field_index(bm25_field(b.path, name)),
        )
        assert set(fa.vocab) == set(fb.vocab)
        for t, i in fa.vocab.items():
            j = fb.vocab[t]
            sa, sb = slice(fa.indptr[i], fa.indptr[i + 1]), slice(fb.indptr[j], fb.indptr[j + 1])
            np.testing.assert_array_equal(fa.indices[sa], fb.indices[sb])
            np.testing.assert_array_equal(fa.data[sa], fb.data[sb])
    for q in ("laptop battery", "waterproof boots", "steel knife"):
        ha, hb = a.bm25(q, 10), b.bm25(q, 10)
        assert ha.ids == hb.ids
        np.testing.assert_array_equal(ha.scores, hb.scores)


@pytest.mark.parametrize("bulk", [True, False])
@pytest.mark.parametrize("stemmer", ["english", ""])
def test_term_streams_equal_the_analyzer_per_text(
    stemmer: str, bulk: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """analyze_fields (distinct texts once; in bulk: ASCII texts tokenized by Arrow, by
    sentence where they hold periods, ASCII_CHUNK at a time, the others in Python; else
    all in Python) gives exactly Analyzer.terms of every row: non-ASCII text between
    ASCII texts across chunk boundaries, control characters, periods (leading, doubled,
    inside tokens), empty texts, one-letter tokens, stopwords, underscores and repeated
    texts included."""
    from indexing import term_streams
    from indexing.term_streams import analyze_fields

    monkeypatch.setattr(term_streams, "BULK_MIN_TEXTS", 0 if bulk else 10**9)
    monkeypatch.setattr(term_streams, "PIECES_MIN_PER_TEXT", 0.5)  # sentences in some chunks
    monkeypatch.setattr(term_streams, "ASCII_CHUNK", 7)  # many chunks of distinct texts

    odd = [
        "",
        "a b c",
        "The running SHOES_x2 of the day",
        "Crème brûlée — naïve café",
        "sep\x01inside text\x01",
        "  spaced   out\ttabs\nnewlines\x1c\x1fx\x0bv\x0c\rz  ",
        "über-cool 東京 shoes",
        "running runs ran",
        "Ships today. Ships today.Ships today. ..a.b. The end.",
        ". leading and trailing periods .",
    ]
    titles = [odd[i % len(odd)] + f" item{i % 50}" for i in range(2_000)]
    bodies = [odd[(i * 3) % len(odd)] for i in range(len(titles))]
    analyzer = Analyzer("en", stemmer)
    words, streams = analyze_fields(Analyzer("en", stemmer), [titles, bodies])
    for texts, (ids, lengths) in zip([titles, bodies], streams, strict=True):
        expected = analyzer.terms_many(texts)
        assert lengths.tolist() == [len(t) for t in expected]
        assert [words[i] for i in ids.tolist()] == [w for t in expected for w in t]


def test_term_store_hashed_grouping_equals_keying_rows_by_bytes(tmp_path: Path) -> None:
    """write_term_store (rows grouped by a NumPy hash, checked token by token) writes the
    same files as keying every row by its bytes: sequences shared across rows and fields,
    empty rows, a sequence that is a prefix of another, repeated terms."""
    from indexing.bm25 import build_from_streams
    from indexing.term_store import _write_term_store_keyed, write_term_store
    from indexing.term_streams import analyze_fields

    titles = ["red tent", "", "red tent", "red", "tent red", "red red tent", ""] * 30
    colors = ["red", "red tent", "", "blue", "red", "tent", "red tent"] * 30
    words, streams = analyze_fields(Analyzer("en", "english"), [titles, colors])
    _, _, stored = build_from_streams(words, streams, 1.2, 0.75)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_term_store(tmp_path / "a", stored)
    _write_term_store_keyed(tmp_path / "b", stored)
    for name in ("term_ids.npy", "term_offsets.npy", "term_seqs.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    seqs = np.load(tmp_path / "a" / "term_seqs.npy")
    assert seqs.max() + 1 == len(np.load(tmp_path / "a" / "term_offsets.npy")) - 1 == 7
