"""The id-array paths of ltr.features (feedback vocabulary, adjacent query-term pairs,
distinct title terms, match_any over stacked fields, memoized intermediates, the cached
feature list) == the frozen set-based reference, bit for bit.

Random candidate sets over a tiny vocabulary make the corner cases frequent: a query pair
repeated in one field, a pair split across two candidates' rows, reversed pairs, repeated
query terms, terms in no document, ties in the fused ranking, empty rows and fields, NaN and
infinite IDFs.
"""

from __future__ import annotations

import numpy as np
import pytest

from ltr import derived as D
from ltr import features as F
from ltr.errors import UnknownNameError
from ltr.types import BM25, DENSE, CandidateSet
from tests import features_reference as R

# infinite IDFs overflow in both implementations, identically
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# the frozen reference predates the normalized retriever features (issue 13, tested in
# tests/test_features_normalized.py): compare every feature it has
NAMES = tuple(R.FEATURES)
VOCAB = ("heat", "flow", "wing", "slab", "jet", "drag", "lift", "mach")


def _random_set(seed: int) -> CandidateSet:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 25))
    nq = int(rng.integers(0, 6))
    # mostly vocabulary words (repeats allowed), sometimes a word no document holds
    qterms = tuple(
        str(rng.choice(VOCAB)) if rng.random() < 0.85 else f"unseen{seed}" for _ in range(nq)
    )
    fields = ["title", "body", "brand"]
    if rng.random() < 0.15:
        fields.remove(str(rng.choice(fields)))

    def row() -> tuple[str, ...]:
        k = int(rng.integers(0, 14))
        return tuple(str(w) for w in rng.choice(VOCAB[: int(rng.integers(2, 9))], size=k))

    # ranks with ties in the fused score (equal ranks) and NaN (not retrieved)
    rb = rng.integers(1, 6, n).astype(np.float64)
    rd = rng.integers(1, 6, n).astype(np.float64)
    rb[rng.random(n) < 0.3] = np.nan
    rd[rng.random(n) < 0.3] = np.nan
    idf: dict[str, float] = {}
    for t in qterms:
        u = rng.random()
        if u < 0.7:
            idf[t] = float(rng.random() * 6)
        elif u < 0.8:
            idf[t] = float("inf")
        # else: missing (NaN)
    return CandidateSet(
        query_text=" ".join(qterms),
        query_terms=qterms,
        ids=tuple(f"d{i}" for i in range(n)),
        scores={BM25: 10 / rb, DENSE: 1 / rd},
        ranks={BM25: rb, DENSE: rd},
        field_bm25={f: rng.random(n) * 4 for f in fields if f != "brand"},
        dense_cosine=rng.random(n),
        doc_terms={f: tuple(row() for _ in range(n)) for f in fields},
        idf=idf,
        static={"rating": rng.random(n) * 5},
        behavior={},
    )


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _diff(cs: CandidateSet, new: np.ndarray, ref: np.ndarray) -> list[str]:
    ok = (new == ref) | (np.isnan(new) & np.isnan(ref))
    return [NAMES[j] for j in np.flatnonzero(~ok.all(axis=0))]


@pytest.mark.parametrize("block", range(6))
def test_random_sets_match_the_reference(block: int) -> None:
    for seed in range(block * 60, (block + 1) * 60):
        cs = _random_set(seed)
        new = F.compute(cs, NAMES)
        ref = R.compute(cs, NAMES)
        assert _same(new, ref), f"seed {seed}: {_diff(cs, new, ref)}"


def test_each_feature_alone_matches_the_reference() -> None:
    """Memoized intermediates give the same values whichever feature computes them first."""
    for seed in range(40):
        cs = _random_set(seed)
        for name in NAMES:
            D.clear_cache()
            new = F.compute(cs, [name])
            assert _same(new, R.compute(cs, [name])), f"seed {seed}: {name}"


def test_feature_order_does_not_matter() -> None:
    rng = np.random.default_rng(1)
    for seed in range(20):
        cs = _random_set(seed)
        order = [NAMES[j] for j in rng.permutation(len(NAMES))]
        D.clear_cache()
        new = F.compute(cs, order)
        assert _same(new, R.compute(cs, order)), f"seed {seed}"


def test_adjacent_pairs_count_each_pair_once_per_candidate() -> None:
    cs = CandidateSet(
        query_text="heat flow heat",
        query_terms=("heat", "flow", "heat"),
        ids=("a", "b", "c", "d"),
        scores={BM25: np.ones(4)},
        ranks={BM25: np.arange(1.0, 5.0)},
        field_bm25={"body": np.ones(4)},
        dense_cosine=np.zeros(4),
        doc_terms={
            "body": (
                ("heat", "flow", "x", "heat", "flow"),  # (heat, flow) twice: counts once
                ("flow", "heat"),  # the other pair
                ("x", "heat"),  # "heat" ends this row ...
                ("flow", "heat", "flow"),  # ... "flow" starts the next: no pair across rows
            )
        },
        idf={"heat": 1.0, "flow": 2.0},
        static={},
    )
    got = F.compute(cs, ["bigram_body"])[:, 0]
    assert got.tolist() == [0.5, 0.5, 0.0, 1.0]
    assert _same(F.compute(cs, NAMES), R.compute(cs, NAMES))


def test_big_term_ids_and_a_new_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """distinct() packs (row, term id) in one int64: ids from a large table still fit."""
    table = D.term_table()
    with table.lock:
        for i in range(50_000):
            table.ids.setdefault(f"filler{i}", len(table.ids))
    for seed in range(10):
        cs = _random_set(seed)
        assert _same(F.compute(cs, NAMES), R.compute(cs, NAMES))
    monkeypatch.setattr(D.TermTable, "MAX_TERMS", 10)
    for seed in range(10, 20):
        cs = _random_set(seed)
        assert _same(F.compute(cs, NAMES), R.compute(cs, NAMES))


def test_compute_name_lists() -> None:
    cs = _random_set(3)
    as_tuple = F.compute(cs, NAMES)
    assert _same(F.compute(cs, list(NAMES)), as_tuple)
    assert as_tuple.flags.c_contiguous and as_tuple.dtype == np.float32
    with pytest.raises(UnknownNameError):
        F.compute(cs, ["bm25", "no_such_feature"])
    empty = F.compute(_random_set(3), [])
    assert empty.shape == (len(cs), 0)


def test_derived_data_is_per_candidate_set() -> None:
    """An equal but distinct CandidateSet object gets its own derived data."""
    a = _random_set(5)
    b = _random_set(6)
    xa = F.compute(a, NAMES)
    xb = F.compute(b, NAMES)
    assert _same(F.compute(a, NAMES), xa)
    assert _same(F.compute(b, NAMES), xb)
    assert _same(xa, R.compute(a, NAMES)) and _same(xb, R.compute(b, NAMES))
