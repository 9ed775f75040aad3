"""RM3 query expansion (indexing.prf) and the extra retrievers it and the title field add.

The expansion is checked against an independent transcription of Anserini's
``Rm3Reranker.estimateRelevanceModel`` + ``FeatureVector.interpolate`` (the usual RM3
reference; io.anserini.rerank.lib), the weighted search against rank-bm25 (the outside
reference of our BM25, see tests/test_bm25_reference.py), and the retrievers end to end
through CandidateGenerator over a real local index.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from rank_bm25 import BM25L

from indexing.analysis import Analyzer
from indexing.bm25 import FieldIndex
from indexing.local import LocalBackend
from indexing.prf import Rm3Params, expand
from ltr import features as F
from ltr.fusion import rrf_scores
from ltr.types import BM25, DENSE, RM3, TITLE
from search.candidates import CandidateGenerator
from tests.test_features import col, make_cs

ASYNC = pytest.mark.asyncio(loop_scope="session")

FEEDBACK = [
    ("wing", "flutter", "flutter", "panel", "the", "x"),
    ("wing", "panel", "panel", "heat", "flutter", "supersonic"),
    ("heat", "transfer", "slab", "slab"),
]
SCORES = [9.0, 6.0, 3.0]
DF = {"wing": 1, "flutter": 2, "panel": 2, "heat": 40, "the": 95, "x": 1, "transfer": 3,
      "slab": 1, "supersonic": 2}  # fmt: skip


def anserini_rm3(
    query: list[str], docs: list[tuple[str, ...]], scores: list[float], n: int, p: Rm3Params
) -> dict[str, float]:
    """Straight from Anserini's Java: per-document term vectors (2-20 chars of [a-z0-9],
    df / N <= 10%) pruned to fbTerms, weight = sum tf / |pruned doc| * score, pruned to
    fbTerms and L1-normalized, then interpolated with the L1-normalized query."""
    vocab: set[str] = set()
    vecs = []
    for terms in docs[: p.fb_docs]:
        v = {
            t: float(c)
            for t, c in Counter(terms).items()
            if 2 <= len(t) <= 20 and t.isalnum() and DF[t] / n <= p.max_df_ratio
        }
        v = dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))[: p.fb_terms])
        vocab |= set(v)
        vecs.append(v)
    norms = [sum(v.values()) for v in vecs]
    rm = {
        t: sum(v.get(t, 0.0) / nm * s for v, nm, s in zip(vecs, norms, scores, strict=False))
        for t in vocab
    }
    rm = dict(sorted(rm.items(), key=lambda kv: (-kv[1], kv[0]))[: p.fb_terms])
    total = sum(rm.values())
    rm = {t: w / total for t, w in rm.items()}
    q = {t: c / len(query) for t, c in Counter(query).items()}
    a = p.orig_weight
    return {t: a * q.get(t, 0.0) + (1 - a) * rm.get(t, 0.0) for t in set(q) | set(rm)}


@pytest.mark.parametrize("params", [Rm3Params(), Rm3Params(fb_docs=2, fb_terms=3, orig_weight=0.3)])
def test_expansion_equals_the_anserini_estimate(params: Rm3Params) -> None:
    query = ["wing", "heat", "wing"]
    got = expand(query, FEEDBACK, SCORES, DF.__getitem__, 100, params)
    want = anserini_rm3(query, FEEDBACK, SCORES, 100, params)
    assert got.keys() == want.keys()
    for t in want:
        assert got[t] == pytest.approx(want[t], rel=1e-12)
    assert sum(got.values()) == pytest.approx(1.0)
    # every added term comes from the feedback documents used, never a frequent one
    used = {t for d in FEEDBACK[: params.fb_docs] for t in d}
    added = set(got) - set(query)
    assert added and added <= used
    assert "the" not in got and "x" not in got  # df 95% / 1 character
    if params.fb_docs == 2:
        assert not added & {"transfer", "slab"}  # only in the third document


def test_hand_computed_weights() -> None:
    # one feedback document: panel 2/5, flutter, wing, supersonic 1/5 each (heat: df 40%)
    got = expand(["panel"], [FEEDBACK[1]], [6.0], DF.__getitem__, 100, Rm3Params())
    assert got == pytest.approx({"panel": 0.5 + 0.5 * 0.4, "wing": 0.1, "flutter": 0.1,
                                 "supersonic": 0.1})  # fmt: skip
    # no usable feedback: the query alone
    assert expand(["a1", "b2"], [], [], DF.__getitem__, 100) == {"a1": 0.5, "b2": 0.5}


def test_weighted_search_equals_rank_bm25_sums() -> None:
    an = Analyzer("en", "english")
    corpus = [an.terms(t) for t in (
        "flutter of a wing panel at supersonic speed", "heat transfer in a slab",
        "wing flutter flutter tests", "panel methods for wings", "slab heating",
    )]  # fmt: skip
    index = FieldIndex.build(corpus, 1.2, 0.75)
    ref = BM25L([list(t) for t in corpus], k1=1.2, b=0.75, delta=0.0)
    weights = {"flutter": 0.4, "wing": 0.35, "slab": 0.25, "absent": 0.1}
    want = np.zeros(len(corpus))
    for t, w in weights.items():
        tf = np.array([d.get(t, 0) for d in ref.doc_freqs], dtype=np.float64)
        per = ref.get_scores([t]) if t in ref.idf else np.zeros(len(corpus))
        want += w * np.divide(per, 2.2 * tf, out=np.zeros_like(per), where=tf > 0)
    np.testing.assert_allclose(index.weighted_scores(weights), want, rtol=1e-5, atol=1e-6)
    assert not index.weighted_scores({"absent": 1.0}).any()


@pytest_asyncio.fixture(loop_scope="session")
async def backend(contract_index: Path, encoder: Any) -> AsyncIterator[LocalBackend]:
    b = LocalBackend.open(contract_index, encoder)
    yield b
    await b.close()


@ASYNC
async def test_generator_adds_the_rm3_and_title_candidates(backend: LocalBackend) -> None:
    q = "waterproof hiking boots"
    base = CandidateGenerator(backend, backend._encoder, 5, 5)  # type: ignore[arg-type]
    more = CandidateGenerator(backend, backend._encoder, 5, 5, extra_retrievers=(RM3, TITLE))  # type: ignore[arg-type]
    cs0, _ = await base.generate(q)
    cs, degraded = await more.generate(q)
    assert not degraded
    first = await backend.bm25(q, 5)
    rm3 = await backend.rm3(q, first, 5)
    title = await backend.bm25(q, 5, TITLE)
    assert len(rm3) and len(title)
    assert set(cs.ids) == set(cs0.ids) | set(rm3.ids) | set(title.ids)
    pos = {d: i for i, d in enumerate(cs.ids)}
    for name, hits in ((RM3, rm3), (TITLE, title)):
        for rank, (d, s) in enumerate(zip(hits.ids, hits.scores, strict=True), start=1):
            assert cs.ranks[name][pos[d]] == rank and cs.scores[name][pos[d]] == s
    # RRF stays the fusion of the two base retrievers
    want = sum(
        np.where(np.isfinite(cs.ranks[r]), 1.0 / (60.0 + np.nan_to_num(cs.ranks[r], nan=1.0)), 0)
        for r in (BM25, DENSE)
    )
    np.testing.assert_allclose(rrf_scores(cs), want)
    assert np.isfinite(col(cs, "rm3_rank")).sum() == len(rm3)
    assert math.isnan(col(cs0, "rm3_rank")[0]) and col(cs0, "rm3_minmax")[0] == 0.0


def test_field_match_features() -> None:
    cs = make_cs(
        query_terms=("acme", "red", "boot"),
        doc_terms={
            "title": (("acme", "red", "boot"), ("boot",), ("trail", "shoe")),
            "body": (("acme", "red", "boot"), ("acme",), ("red", "boot")),
            "brand": (("acme",), ("acme", "co"), ()),
            "color": (("red",), ("blue",), ("red",)),
        },
        idf={"acme": 1.0, "red": 1.0, "boot": 1.0},
    )
    # short fields = title, brand, color (never the body)
    np.testing.assert_allclose(col(cs, "cov_short"), [1.0, 2 / 3, 1 / 3], rtol=1e-6)
    # d3's brand is empty: one of its two filled short fields holds a query term
    np.testing.assert_allclose(col(cs, "fields_hit"), [1.0, 2 / 3, 1 / 2], rtol=1e-6)
    # whole value in the query: d1 title+brand+color, d2 its title ("acme co" is not), d3 color
    np.testing.assert_allclose(col(cs, "fields_in_query"), [3.0, 1.0, 1.0])
    # title and body only (a paper collection): the title alone is the short field
    plain = make_cs()
    np.testing.assert_allclose(col(plain, "cov_short"), col(plain, "cov_title"))
    for name in ("cov_short", "fields_hit", "fields_in_query"):
        assert name in F.OPTIONAL_TEXT_FEATURES and name not in F.DEFAULT_TEXT_FEATURES


def test_fuzzy_coverage_of_unknown_query_terms() -> None:
    # "samdal" is not in the index (no IDF): a typo of "sandal" (one replaced letter)
    cs = make_cs(
        query_terms=("suede", "samdal"),
        idf={"suede": 1.0},
        doc_terms={
            "title": (("suede", "sandal"), ("boot",), ("sadnal",)),  # d3: a swap
            "body": (("x",), ("sandl",), ("y",)),  # d2: two edits away
        },
    )
    np.testing.assert_allclose(col(cs, "fuzzy_cov"), [1.0, 0.0, 1.0])
    assert np.isnan(col(make_cs(), "fuzzy_cov")).all()  # every query term known


def test_unknown_term_share_is_query_level() -> None:
    # "tee" and "samdal" are unknown; "suede" twice counts once
    cs = make_cs(query_terms=("suede", "tee", "suede", "samdal"), idf={"suede": 1.0})
    np.testing.assert_allclose(col(cs, "unk_share"), [2 / 3] * len(cs.ids), rtol=1e-6)
    assert (col(make_cs(), "unk_share") == 0.0).all()  # every query term known
    assert np.isnan(col(make_cs(query_terms=()), "unk_share")).all()
    assert "unk_share" in F.OPTIONAL_TEXT_FEATURES and "unk_share" not in F.DEFAULT_TEXT_FEATURES


def test_unknown_extra_retriever_is_refused() -> None:
    from search.config import RetrievalConfig

    with pytest.raises(ValueError, match=r"unknown retriever 'bm25f'; valid: rm3, title"):
        RetrievalConfig(extra_retrievers=("bm25f",)).validate()
    RetrievalConfig(extra_retrievers=(RM3, TITLE)).validate()
    with pytest.raises(ValueError, match="fb_docs"):
        Rm3Params(fb_docs=0).validate()


@ASYNC
async def test_a_feedback_id_the_version_lacks_drops_with_its_own_score(
    backend: LocalBackend,
) -> None:
    """Feedback ids are matched to rows; an id this version does not hold (a document removed
    since the first pass) must not shift the remaining documents' scores onto each other."""
    from indexing.backend import Hits

    first = await backend.bm25("waterproof hiking boots", 5)
    assert len(first) >= 3
    with_gone = Hits(
        ids=("no-such-doc", *first.ids), scores=np.array([99.0, *first.scores.tolist()])
    )
    want = await backend.rm3("waterproof hiking boots", first, 5)
    got = await backend.rm3("waterproof hiking boots", with_gone, 5)
    assert got.ids == want.ids
    np.testing.assert_allclose(got.scores, want.scores)
