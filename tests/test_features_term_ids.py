"""Features from the index's vocabulary ids (CandidateSet.term_ids, format 3) == features
from the term strings (the _TermTable path), bit for bit.

A format-3 local index hands CandidateSets the analyzed terms as ids of its combined
vocabulary so features skip mapping every term string to an id. Candidate sets come from
the real serving path (CandidateGenerator over LocalBackend) and from Snapshot.lookups
with unknown and repeated ids; each is compared with the same set stripped of its ids.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from indexing.backend import Lookups
from indexing.build import build_local_index
from indexing.config import IndexConfig
from indexing.documents import Document
from indexing.embedding_cache import EmbeddingCache
from indexing.local import LocalBackend
from indexing.local_store import Snapshot
from ltr import derived as D
from ltr import features as F
from ltr.types import BM25, DENSE, CandidateSet, TermIds
from search.candidates import CandidateGenerator
from tests.contract import CONTRACT_DOCS, QUERIES
from tests.test_local_terms import _downgrade

ASYNC = pytest.mark.asyncio(loop_scope="session")
NAMES = tuple(F.FEATURES)

# Repeated words and sequences, empty fields, extra fields only some documents have, a
# document whose only words are stopwords, non-ASCII text.
EXTRA_DOCS = [
    Document(id="x1", title="Red shoes", body="red shoes red shoes", extra={"color": "red"}),
    Document(id="x2", title="red", body="", extra={"color": "red", "brand": "Acme"}),
    Document(id="x3", title="the and of", body="Crème brûlée über naïve", extra={}),
    Document(id="x4", title="Red shoes", body="shoes shoes red", extra={"brand": "acme"}),
    Document(id="x5", title="", body="", extra={"brand": "Acme"}),
    Document(id="x6", title="Running shoes red", body="light running shoes, red", extra={}),
]
DOCS = [*CONTRACT_DOCS, *EXTRA_DOCS]
SPECIAL_QUERIES = [
    "",  # no terms
    "the and of",  # stopwords only
    "zzqx unknownword",  # terms in no document
    "red zzqx shoes",  # known and unknown
    "red red shoes red",  # repeated terms
    "shoes red shoes",  # a repeated pair, both orders
    "crème brûlée",
    "running shoes light",
]


def _queries(seed: int, k: int) -> list[str]:
    """Random queries of 1-6 words of the documents (repeats allowed), sometimes unknown."""
    words = sorted({w for d in DOCS for w in re.findall(r"\w+", f"{d.title} {d.body}".lower())})
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        q = [str(rng.choice(words)) for _ in range(int(rng.integers(1, 7)))]
        if rng.random() < 0.2:
            q.insert(int(rng.integers(0, len(q) + 1)), f"unseen{i}")
        out.append(" ".join(q))
    return out


ALL_QUERIES = [*QUERIES, *SPECIAL_QUERIES, *_queries(0, 60)]


@pytest.fixture(scope="module")
def root(
    tmp_path_factory: pytest.TempPathFactory, encoder: Any, embedding_cache: EmbeddingCache
) -> Path:
    d = tmp_path_factory.mktemp("term-ids")
    build_local_index(DOCS, d, encoder, IndexConfig(), embedding_cache, parallel=False)
    return d


@pytest.fixture(scope="module")
def snap(root: Path) -> Iterator[Snapshot]:
    s = Snapshot(root / "versions" / (root / "CURRENT").read_text().strip())
    yield s
    s.close()


@pytest_asyncio.fixture(loop_scope="session")
async def backend(root: Path, encoder: Any) -> AsyncIterator[LocalBackend]:
    b = LocalBackend.open(root, encoder)
    yield b
    await b.close()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _strip(cs: CandidateSet) -> CandidateSet:
    return dataclasses.replace(cs, term_ids=None)


def _diff(a: np.ndarray, b: np.ndarray) -> list[str]:
    ok = (a == b) | (np.isnan(a) & np.isnan(b))
    return [NAMES[j] for j in np.flatnonzero(~ok.all(axis=0))]


def _assert_same_features(cs: CandidateSet) -> np.ndarray:
    assert cs.term_ids is not None
    got, want = F.compute(cs, NAMES), F.compute(_strip(cs), NAMES)
    assert _same(got, want), f"{cs.query_text!r}: {_diff(got, want)}"
    return got


def _decoded(snap: Snapshot, tid: TermIds) -> list[tuple[str, ...]]:
    assert snap.term_store is not None
    words = snap.term_store.words[tid.ids].tolist()
    ends = np.cumsum(tid.lengths).tolist()
    return [tuple(words[e - n : e]) for e, n in zip(ends, tid.lengths.tolist(), strict=True)]


def _check_ids(snap: Snapshot, cs: CandidateSet) -> None:
    """The ids are those of doc_terms' strings, row by row, field-major."""
    tid = cs.term_ids
    assert tid is not None
    assert tid.fields == tuple(cs.doc_terms) == snap.text_fields
    assert tid.ids.dtype == np.int32 and tid.lengths.dtype == np.int64
    assert not tid.ids.flags.writeable and not tid.lengths.flags.writeable
    assert _decoded(snap, tid) == [t for f in tid.fields for t in cs.doc_terms[f]]
    vocab = snap.combined.vocab
    assert tid.query_ids == {t: vocab[t] for t in cs.query_terms if t in vocab}
    assert tid.bound == len(vocab) and (tid.ids < tid.bound).all()


def _from_lookups(q: str, ids: list[str], lk: Lookups, rng: np.random.Generator) -> CandidateSet:
    """A CandidateSet as generate() builds it, with random ranks (ties, NaNs)."""
    n = len(ids)
    rb = rng.integers(1, 8, n).astype(np.float64)
    rd = rng.integers(1, 8, n).astype(np.float64)
    rb[rng.random(n) < 0.3] = np.nan
    rd[rng.random(n) < 0.3] = np.nan
    return CandidateSet(
        query_text=q,
        query_terms=lk.query_terms,
        ids=tuple(ids),
        scores={BM25: 10 / rb, DENSE: 1 / rd},
        ranks={BM25: rb, DENSE: rd},
        field_bm25=lk.field_bm25,
        dense_cosine=lk.cosine,
        doc_terms=lk.doc_terms,
        idf=lk.idf,
        static=lk.static,
        term_ids=lk.term_ids,
    )


@ASYNC
@pytest.mark.parametrize("block", range(3))
async def test_generated_sets_same_features(
    backend: LocalBackend, snap: Snapshot, encoder: Any, block: int
) -> None:
    rng = np.random.default_rng(block)
    gen = CandidateGenerator(backend, encoder, bm25_k=len(DOCS), knn_k=len(DOCS))
    small = CandidateGenerator(backend, encoder, bm25_k=3, knn_k=5)
    for q in ALL_QUERIES[block::3]:
        cs, degraded = await (gen if rng.random() < 0.5 else small).generate(q)
        assert degraded == []
        _check_ids(snap, cs)
        _assert_same_features(cs)


def test_lookups_with_unknown_and_repeated_ids(snap: Snapshot) -> None:
    rng = np.random.default_rng(7)
    ids = [d.id for d in DOCS]
    for i, q in enumerate(ALL_QUERIES):
        pick = [ids[int(j)] for j in rng.integers(0, len(ids), int(rng.integers(0, 30)))]
        if i % 3 == 0:  # candidates the index does not hold (a reload in between)
            pick.insert(int(rng.integers(0, len(pick) + 1)), f"gone{i}")
        vec = snap.vectors[int(rng.integers(0, snap.n))] if i % 4 else None
        cs = _from_lookups(q, pick, snap.lookups(q, pick, vec), rng)
        _check_ids(snap, cs)
        _assert_same_features(cs)


def test_each_feature_alone(snap: Snapshot) -> None:
    """Memoized intermediates give the same values whichever feature computes them first."""
    rng = np.random.default_rng(3)
    ids = [d.id for d in DOCS]
    for q in [*SPECIAL_QUERIES, *QUERIES]:
        cs = _from_lookups(q, ids, snap.lookups(q, ids, snap.vectors[0]), rng)
        full = _assert_same_features(cs)
        for j, name in enumerate(NAMES):
            D.clear_cache()
            assert _same(F.compute(cs, [name])[:, 0], full[:, j]), (q, name)


def test_wrong_ids_change_the_features(snap: Snapshot) -> None:
    """The comparison can fail: ids off by one give other features for some query."""
    rng = np.random.default_rng(5)
    ids = [d.id for d in DOCS]
    changed = 0
    for q in ALL_QUERIES:
        cs = _from_lookups(q, ids, snap.lookups(q, ids, snap.vectors[1]), rng)
        tid = cs.term_ids
        assert tid is not None
        off = dataclasses.replace(tid, ids=((tid.ids + 1) % tid.bound).astype(np.int32))
        bad = dataclasses.replace(cs, term_ids=off)
        changed += not _same(F.compute(bad, NAMES), F.compute(_strip(cs), NAMES))
    assert changed > len(ALL_QUERIES) // 2


def test_ids_of_other_fields_are_ignored(snap: Snapshot) -> None:
    """doc_terms replaced without its ids (another field set): the strings are encoded."""
    ids = [d.id for d in DOCS]
    rng = np.random.default_rng(9)
    for q in QUERIES:
        cs = _from_lookups(q, ids, snap.lookups(q, ids, snap.vectors[2]), rng)
        fewer = dict(list(cs.doc_terms.items())[:-1])
        sub = dataclasses.replace(cs, doc_terms=fewer)
        assert _same(F.compute(sub, NAMES), F.compute(_strip(sub), NAMES))


class _Unbatched:
    """The real backend whose lookups carry no vocabulary ids (as the Elasticsearch
    backend's)."""

    def __init__(self, inner: LocalBackend) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def lookups(self, query: str, ids: Sequence[str], vector: np.ndarray | None) -> Lookups:
        got = await self._inner.lookups(query, ids, vector)
        return dataclasses.replace(got, term_ids=None)


@ASYNC
async def test_unbatched_backend_has_no_ids(backend: LocalBackend, encoder: Any) -> None:
    gen = CandidateGenerator(backend, encoder)
    plain = CandidateGenerator(_Unbatched(backend), encoder)  # type: ignore[arg-type]
    for q in [*QUERIES, *SPECIAL_QUERIES]:
        cs, _ = await gen.generate(q)
        other, _ = await plain.generate(q)
        assert other.term_ids is None and other.ids == cs.ids
        assert other.doc_terms == cs.doc_terms
        assert _same(F.compute(other, NAMES), F.compute(cs, NAMES))


@ASYNC
@pytest.mark.parametrize("fmt", [1, 2])
async def test_older_formats_have_no_ids_and_same_features(
    root: Path, backend: LocalBackend, tmp_path: Path, encoder: Any, fmt: int
) -> None:
    version = (root / "CURRENT").read_text().strip()
    old_root = tmp_path / "idx"
    shutil.copytree(root / "versions" / version, old_root / "versions" / version)
    (old_root / "CURRENT").write_text(version + "\n")
    _downgrade(old_root / "versions" / version, fmt)
    old = LocalBackend.open(old_root, encoder)
    try:
        gen, old_gen = CandidateGenerator(backend, encoder), CandidateGenerator(old, encoder)
        for q in [*QUERIES, *SPECIAL_QUERIES]:
            cs, _ = await gen.generate(q)
            prev, _ = await old_gen.generate(q)
            assert cs.term_ids is not None and prev.term_ids is None
            assert prev.ids == cs.ids and prev.doc_terms == cs.doc_terms
            assert _same(F.compute(prev, NAMES), F.compute(cs, NAMES))
    finally:
        await old.close()


@ASYNC
async def test_cranfield_sets_same_features(
    small_index: Path, beir_small: Path, encoder: Any
) -> None:
    """Long bodies and real queries: the feedback-vocabulary and bigram features fire."""
    from indexing.loaders import load_beir

    queries = [q.text for q in load_beir(beir_small).queries]
    b = LocalBackend.open(small_index, encoder)
    s = Snapshot(small_index / "versions" / (small_index / "CURRENT").read_text().strip())
    try:
        gen = CandidateGenerator(b, encoder, bm25_k=50, knn_k=50)
        fired = np.zeros(len(NAMES), dtype=bool)
        for q in queries:
            cs, _ = await gen.generate(q)
            _check_ids(s, cs)
            x = _assert_same_features(cs)
            fired |= ((x != 0) & ~np.isnan(x)).any(axis=0)
        for name in ("prf_title", "prf_body", "bigram_title", "bigram_body", "title_jaccard"):
            assert fired[NAMES.index(name)], name
    finally:
        s.close()
        await b.close()
