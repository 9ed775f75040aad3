"""ltr.features (term ids, vectorized membership) == the set-based reference, bit for bit.

Served feature vectors are logged and replayed for training, so the faster implementation
must not move a single value. The reference is the previous implementation, frozen in
tests/features_reference.py. Compared on real candidate sets (Cranfield queries against
the small local index, MiniLM) and on synthetic and hand-made edge cases.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing.local import LocalBackend
from ltr import derived as D
from ltr import features as F
from ltr.types import BM25, DENSE, CandidateSet
from scripts.benchmark_features import synthetic_candidate_set
from search.candidates import CandidateGenerator
from tests import features_reference as R

# the frozen reference predates the normalized retriever features (issue 13, tested in
# tests/test_features_normalized.py): compare every feature it has
NAMES = tuple(R.FEATURES)


def assert_same(cs: CandidateSet) -> None:
    new = F.compute(cs, NAMES)
    ref = R.compute(cs, NAMES)
    same = (new == ref) | (np.isnan(new) & np.isnan(ref))
    bad = [NAMES[j] for j in np.flatnonzero(~same.all(axis=0))]
    assert not bad, f"{cs.query_text!r}: features differ from the reference: {bad}"


def test_reference_is_the_same_registry() -> None:
    # the same registry, in the same order, plus the features added since
    assert tuple(n for n in F.FEATURES if n in R.FEATURES) == NAMES
    assert set(F.FEATURES) - set(NAMES) == {
        "bm25_minmax", "dense_minmax", "bm25_z", "fuzzy_cov", *F.OPTIONAL_TEXT_FEATURES
    }  # fmt: skip
    assert R.featureset_id(NAMES) == F.featureset_id(NAMES)


def test_real_candidate_sets(small_index: Path, encoder: Any, cranfield_dir: Path) -> None:
    """Every Cranfield query against the small index; twice (term-table cache hits)."""
    queries = [
        json.loads(x)["text"]
        for x in (cranfield_dir / "queries.jsonl").read_text().splitlines()
        if x.strip()
    ]

    async def sets() -> list[CandidateSet]:
        b = LocalBackend.open(small_index, encoder)
        try:
            gen = CandidateGenerator(b, encoder, bm25_k=50, knn_k=50)
            return [(await gen.generate(q))[0] for q in queries]
        finally:
            await b.close()

    got = asyncio.run(sets())
    assert len(got) > 200 and sum(len(cs) for cs in got) > 5000
    assert any(np.nansum(F.compute(cs, ["bigram_body"])) > 0 for cs in got)
    assert any(np.nansum(F.compute(cs, ["prf_body"])) > 0 for cs in got)
    for _ in range(2):
        D.clear_cache()
        for cs in got:
            assert_same(cs)


@pytest.mark.parametrize("seed", range(8))
def test_synthetic_sets(seed: int) -> None:
    for n in (0, 1, 7, 120):
        assert_same(synthetic_candidate_set(n, seed=seed, behavior=seed % 2 == 0))


def _cs(**over: object) -> CandidateSet:
    n = 4
    base: dict[str, object] = dict(
        query_text="heat transfer heat slab",
        query_terms=("heat", "transfer", "heat", "slab"),
        ids=tuple(f"d{i}" for i in range(n)),
        scores={BM25: np.array([4.0, 3.0, 2.0, np.nan]), DENSE: np.array([0.9, np.nan, 0.5, 0.4])},
        ranks={BM25: np.array([1.0, 2.0, 3.0, np.nan]), DENSE: np.array([1.0, np.nan, 2.0, 3.0])},
        field_bm25={"title": np.ones(n), "body": np.ones(n)},
        dense_cosine=np.array([0.9, 0.1, 0.5, 0.4]),
        doc_terms={
            "title": (("heat", "transfer"), ("transfer", "heat", "heat"), (), ("slab", "wing")),
            "body": (
                ("heat", "transfer", "heat", "slab", "wing"),
                ("slab", "heat", "transfer"),
                ("wing", "wing", "flow"),
                ("transfer", "slab", "heat", "transfer"),
            ),
            "brand": ((), ("heat",), (), ()),
        },
        idf={"heat": 1.0, "transfer": 2.5},
        static={},
    )
    base.update(over)
    return CandidateSet(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"query_terms": ()},
        {"query_terms": ("unseen", "words")},
        {"query_terms": ("heat",)},
        {"query_terms": ("transfer", "heat", "transfer", "heat")},
        {"query_terms": ("heat transfer", "slab")},  # not analyzer tokens: string fallback
        {"query_terms": ("", "heat")},
        {"doc_terms": {"body": (("heat",),) * 4}},  # no title
        {"doc_terms": {"title": (("heat",),) * 4}},  # no body
        {"doc_terms": {}},
    ],
)
def test_edge_cases(over: dict[str, object]) -> None:
    cs = _cs(**over)
    assert_same(cs)
    # lists instead of tuples (another backend), with strings that are not interned
    fresh = {
        f: tuple(["".join(list(w)) for w in t] for t in seqs) for f, seqs in cs.doc_terms.items()
    }
    assert_same(_cs(**{**over, "doc_terms": fresh}))


def test_term_table_rollover(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new term table (vocabulary bound reached) keeps the values."""
    monkeypatch.setattr(D.TermTable, "MAX_TERMS", 100)
    tables = set()
    for seed in range(4):
        assert_same(synthetic_candidate_set(60, seed=seed))
        tables.add(id(D.term_table()))
    assert len(tables) > 1
