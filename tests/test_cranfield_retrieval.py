"""Retrieval quality on the real Cranfield collection (all 225 queries), by ir-measures.

Floors are ~0.02 below the measured values (docs/benchmarks.md, "Retrieval"), so a
regression in analysis, BM25 scoring or the dense path fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexing.loaders import BeirDataset, load_beir
from indexing.local import LocalBackend

pytestmark = pytest.mark.slow

# Measured on this machine's copy (bm25s Lucene k1=1.2 b=0.75, English stopwords + stemmer;
# all-MiniLM-L6-v2 over title + body). Dense: 0.3817 with the torch backend, 0.3847 with
# onnx-int8 (the default) on AVX-512 VNNI, 0.3736 with the int8 model quantized for AVX2
# (AMD EPYC, 2026-12-04); the floor sits 0.02 below the torch value.
MEASURED = {"bm25": 0.3695, "dense": 0.3817}
FLOOR = {name: round(v - 0.02, 3) for name, v in MEASURED.items()}
# The same runs with each query's grade-0 documents removed (the README's near-copy quirk).
MEASURED_FILTERED = {"bm25": 0.4197, "dense": 0.4216}  # dense onnx-int8: 0.4233
FLOOR_FILTERED = {name: round(v - 0.02, 3) for name, v in MEASURED_FILTERED.items()}
K = 100


@pytest.fixture(scope="module")
def cranfield(cranfield_dir: Path) -> BeirDataset:
    return load_beir(cranfield_dir)


@pytest.fixture(scope="module")
def cranfield_backend(cranfield_index: Path, encoder: Any) -> Iterator[LocalBackend]:
    """The session's Cranfield index (conftest: built once per run, default settings)."""
    backend = LocalBackend.open(cranfield_index, encoder)
    yield backend
    asyncio.run(backend.close())


def without_judged_zero(
    ds: BeirDataset, run: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """The run minus each query's grade-0 documents (Cranfield's near-copy source papers)."""
    zero = {(j.query_id, j.doc_id) for j in ds.qrels if j.grade == 0}
    return {q: {d: s for d, s in docs.items() if (q, d) not in zero} for q, docs in run.items()}


def ndcg10(ds: BeirDataset, run: dict[str, dict[str, float]]) -> float:
    """Mean NDCG@10 (gain = grade, as trec_eval) over every judged query; an empty run is 0."""
    import ir_measures
    from ir_measures import nDCG

    qrels = [ir_measures.Qrel(j.query_id, j.doc_id, int(j.grade)) for j in ds.qrels]
    scored = [ir_measures.ScoredDoc(q, d, s) for q, docs in run.items() for d, s in docs.items()]
    per_query = {m.query_id: m.value for m in ir_measures.iter_calc([nDCG @ 10], qrels, scored)}
    judged = {j.query_id for j in ds.qrels}
    return sum(per_query.get(q, 0.0) for q in judged) / len(judged)


def test_bm25_ndcg(cranfield: BeirDataset, cranfield_backend: LocalBackend) -> None:
    async def run() -> dict[str, dict[str, float]]:
        out = {}
        for q in cranfield.queries:
            hits = await cranfield_backend.bm25(q.text, K)
            out[q.id] = dict(zip(hits.ids, map(float, hits.scores), strict=True))
        return out

    results = asyncio.run(run())
    score = ndcg10(cranfield, results)
    filtered = ndcg10(cranfield, without_judged_zero(cranfield, results))
    print(f"cranfield bm25 ndcg@10 = {score:.4f} (grade-0 docs removed: {filtered:.4f})")
    assert filtered >= FLOOR_FILTERED["bm25"]
    assert len(cranfield.queries) == 225
    assert score >= FLOOR["bm25"]


def test_dense_ndcg(cranfield: BeirDataset, cranfield_backend: LocalBackend, encoder: Any) -> None:
    vectors = encoder.encode([q.text for q in cranfield.queries])

    async def run() -> dict[str, dict[str, float]]:
        out = {}
        for q, v in zip(cranfield.queries, vectors, strict=True):
            hits = await cranfield_backend.knn(v, K)
            out[q.id] = dict(zip(hits.ids, map(float, hits.scores), strict=True))
        return out

    results = asyncio.run(run())
    score = ndcg10(cranfield, results)
    filtered = ndcg10(cranfield, without_judged_zero(cranfield, results))
    print(f"cranfield dense ndcg@10 = {score:.4f} (grade-0 docs removed: {filtered:.4f})")
    assert filtered >= FLOOR_FILTERED["dense"]
    assert score >= FLOOR["dense"]
