"""The field-match features (cov_short, fields_hit, fields_in_query) and fuzzy_cov on term
ids == their set-based definitions, bit for bit.

The frozen reference (tests/features_reference.py) predates these features, so their
set-based definitions live here: fuzzy_cov is ltr.features' string implementation as it was
before it moved to term ids. Random sets over a tiny vocabulary with several short fields,
empty rows and fields, repeated terms and misspelled query terms (one edit away from a
vocabulary word, unknown to the index) make the corner cases frequent.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from ltr import derived as D
from ltr import features as F
from ltr.types import BM25, CandidateSet

VOCAB = ("heat", "flow", "wing", "slab", "jet", "drag", "lift", "mach", "rotor", "blade")
# one edit from a vocabulary word (replaced, dropped, doubled, swapped letter), or not
TYPOS = ("heta", "flw", "wingg", "slabb", "dragg", "lfit", "mahc", "rotr", "blde", "zzzz")
NAMES = ("cov_short", "fields_hit", "fields_in_query", "fuzzy_cov", "title_jaccard")


def _random_set(seed: int) -> CandidateSet:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 25))
    words = VOCAB + TYPOS[: int(rng.integers(0, 4))]  # documents may hold a typo too
    qterms = tuple(
        str(rng.choice(VOCAB if rng.random() < 0.6 else TYPOS))
        for _ in range(int(rng.integers(0, 6)))
    )
    fields = [f for f in ("title", "body", "brand", "color", "size") if rng.random() < 0.8]

    def row(f: str) -> tuple[str, ...]:
        k = int(rng.integers(0, 3 if f in ("brand", "color") else 12))
        return tuple(str(w) for w in rng.choice(words[: int(rng.integers(2, len(words)))], k))

    return CandidateSet(
        query_text=" ".join(qterms),
        query_terms=qterms,
        ids=tuple(f"d{i}" for i in range(n)),
        scores={BM25: rng.random(n)},
        ranks={BM25: np.arange(1.0, n + 1)},
        field_bm25={},
        dense_cosine=rng.random(n),
        doc_terms={f: tuple(row(f) for _ in range(n)) for f in fields},
        idf={t: 1.0 + len(t) for t in qterms if t in VOCAB},
        static={},
    )


def _short(cs: CandidateSet) -> list[tuple[tuple[str, ...], ...]]:
    return [rows for f, rows in cs.doc_terms.items() if f != "body"]


def ref_cov_short(cs: CandidateSet) -> np.ndarray:
    q = set(cs.query_terms)
    short = _short(cs)
    if not short or not q:
        return np.full(len(cs.ids), np.nan)
    held = [{t for rows in short for t in rows[i]} for i in range(len(cs))]
    return np.array([np.float64(len(q & h)) / len(q) for h in held])


def ref_fields_hit(cs: CandidateSet) -> np.ndarray:
    q = set(cs.query_terms)
    short = _short(cs)
    out = np.full(len(cs.ids), np.nan)
    if short and q:
        for i in range(len(cs)):
            filled = sum(len(rows[i]) > 0 for rows in short)
            hit = sum(bool(q & set(rows[i])) for rows in short)
            out[i] = np.float64(hit) / filled if filled else np.nan
    return out


def ref_fields_in_query(cs: CandidateSet) -> np.ndarray:
    q = set(cs.query_terms)
    short = _short(cs)
    if not short or not q:
        return np.full(len(cs.ids), np.nan)
    return np.array(
        [float(sum(bool(rows[i]) and set(rows[i]) <= q for rows in short)) for i in range(len(cs))]
    )


@functools.cache
def _deletes(term: str) -> frozenset[str]:
    return frozenset((term, *(term[:i] + term[i + 1 :] for i in range(len(term)))))


def ref_fuzzy_cov(cs: CandidateSet) -> np.ndarray:
    n = len(cs.ids)
    unknown = [t for t in dict.fromkeys(cs.query_terms) if t not in cs.idf and len(t) >= 4]
    if not unknown:
        return np.full(n, np.nan)
    keys = [_deletes(u) for u in unknown]
    vocab = {t for f in cs.doc_terms.values() for terms in f for t in terms}
    hits = {t: {j for j, k in enumerate(keys) if not k.isdisjoint(_deletes(t))} for t in vocab}
    out = np.zeros(n, dtype=np.float64)
    for i in range(n):
        got: set[int] = set()
        for f in cs.doc_terms.values():
            for t in f[i]:
                got |= hits[t]
        out[i] = len(got) / len(unknown)
    return out


def ref_title_jaccard(cs: CandidateSet) -> np.ndarray:
    q = set(cs.query_terms)
    title = cs.doc_terms.get("title")
    if title is None or not q:
        return np.full(len(cs.ids), np.nan)
    out = []
    for terms in title:
        inter, union = len(q & set(terms)), len(q | set(terms))
        out.append(np.float64(inter) / union if union else np.nan)
    return np.array(out)


REFS = {
    "cov_short": ref_cov_short,
    "fields_hit": ref_fields_hit,
    "fields_in_query": ref_fields_in_query,
    "fuzzy_cov": ref_fuzzy_cov,
    "title_jaccard": ref_title_jaccard,
}


def _check(cs: CandidateSet, names: tuple[str, ...] = NAMES) -> None:
    got = F.compute(cs, names)
    ref = np.stack([REFS[f](cs) for f in names], axis=1).astype(np.float32).reshape(got.shape)
    bad = [f for j, f in enumerate(names) if got[:, j].tobytes() != ref[:, j].tobytes()]
    assert not bad, f"{cs.query_text!r} {dict(cs.doc_terms)}: {bad}"


@pytest.mark.parametrize("block", range(4))
def test_random_sets_match_the_set_definitions(block: int) -> None:
    for seed in range(block * 100, (block + 1) * 100):
        _check(_random_set(seed))


def test_each_feature_alone_and_in_any_order() -> None:
    """Shared intermediates (distinct counts, query hits) give the same values whichever
    feature computes them first."""
    for seed in range(40):
        cs = _random_set(seed)
        for name in NAMES:
            D.clear_cache()
            _check(cs, (name,))
        for order in itertools.islice(itertools.permutations(NAMES), 0, 120, 17):
            D.clear_cache()
            _check(cs, order)


def test_fuzzy_needs_a_term_of_four_letters_and_counts_each_unknown_term_once() -> None:
    rows = (("heat", "wing"), ("hat",), ("wingg", "winng", "heta"), ())
    cs = CandidateSet(
        query_text="heta wingg jet hta",
        query_terms=("heta", "wingg", "heta", "jet", "hta"),
        ids=("a", "b", "c", "d"),
        scores={},
        ranks={},
        field_bm25={},
        dense_cosine=np.zeros(4),
        doc_terms={"title": rows, "brand": ((), (), ("heat",), ("wing",))},
        idf={"jet": 1.0},
        static={},
    )
    # unknown terms of >= 4 letters: heta, wingg ("hta" is too short, "jet" known)
    assert F.compute(cs, ["fuzzy_cov"])[:, 0].tolist() == [1.0, 0.0, 1.0, 0.5]
    _check(cs)
