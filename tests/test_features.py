"""Feature registry, feature math on hand-made candidate sets, behavior aggregates, featurize."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from ltr import behavior as bh
from ltr import features as F
from ltr.errors import UnknownNameError
from ltr.types import BM25, DENSE, CandidateSet

NAN = float("nan")


def make_cs(**over: object) -> CandidateSet:
    """Three candidates: d1 (both retrievers), d2 (BM25 only), d3 (dense only)."""
    base: dict[str, object] = dict(
        query_text="heat transfer slab",
        query_terms=("heat", "transfer", "slab"),
        ids=("d1", "d2", "d3"),
        scores={BM25: np.array([10.0, 5.0, NAN]), DENSE: np.array([0.8, NAN, 0.9])},
        ranks={BM25: np.array([1.0, 2.0, NAN]), DENSE: np.array([2.0, NAN, 1.0])},
        field_bm25={"title": np.array([4.0, 0.0, 1.0]), "body": np.array([6.0, 5.0, 0.5])},
        dense_cosine=np.array([0.8, 0.5, 0.9]),
        doc_terms={
            "title": (("heat", "transfer", "slab"), ("flow",), ("heat", "slab", "wing")),
            "body": (("heat", "transfer", "in", "slab"), ("transfer", "flow"), ("wing",)),
        },
        idf={"heat": 1.0, "transfer": 2.0, "slab": 3.0},
        static={},
    )
    base.update(over)
    return CandidateSet(**base)  # type: ignore[arg-type]


def col(cs: CandidateSet, name: str) -> np.ndarray:
    return F.compute(cs, [name])[:, 0].astype(np.float64)


def test_registry_groups_and_unknown_name() -> None:
    assert set(F.DEFAULT_TEXT_FEATURES) <= set(F.FEATURES)
    assert all(F.FEATURES[n].group == "static" for n in F.STATIC_FEATURES)
    assert all(F.FEATURES[n].group == "behavior" for n in F.BEHAVIOR_FEATURES)
    assert len(F.STATIC_FEATURES) == 4 and len(F.BEHAVIOR_FEATURES) == 12
    with pytest.raises(UnknownNameError, match=r"unknown feature 'nope'; valid: .*bm25"):
        F.resolve(["bm25", "nope"])
    with pytest.raises(UnknownNameError):
        F.compute(make_cs(), ["nope"])


def test_featureset_id_is_ordered_and_versioned() -> None:
    a = F.featureset_id(["bm25", "dense"])
    assert a == F.featureset_id(["bm25", "dense"])
    assert a != F.featureset_id(["dense", "bm25"])
    assert len(a) == 64
    with pytest.raises(UnknownNameError):
        F.featureset_id(["bm25", "x"])


def test_compute_shape_dtype_and_every_feature_finite_or_nan() -> None:
    names = F.DEFAULT_TEXT_FEATURES + F.STATIC_FEATURES + F.BEHAVIOR_FEATURES
    X = F.compute(make_cs(), names)
    assert X.shape == (3, len(names)) and X.dtype == np.float32
    assert not np.isinf(X).any()
    # empty candidate set
    empty = make_cs(
        ids=(),
        scores={BM25: np.array([]), DENSE: np.array([])},
        ranks={BM25: np.array([]), DENSE: np.array([])},
        field_bm25={"title": np.array([]), "body": np.array([])},
        dense_cosine=np.array([]),
        doc_terms={"title": (), "body": ()},
    )
    assert F.compute(empty, names).shape == (0, len(names))


def test_retriever_features_keep_nan_for_missing() -> None:
    cs = make_cs()
    np.testing.assert_array_equal(col(cs, "bm25"), [10.0, 5.0, NAN])
    np.testing.assert_array_equal(col(cs, "dense_rank"), [2.0, NAN, 1.0])
    np.testing.assert_allclose(col(cs, "rrf"), [1 / 61 + 1 / 62, 1 / 62, 1 / 61])
    np.testing.assert_allclose(col(cs, "bm25_norm"), [1.0, 0.5, NAN])
    np.testing.assert_allclose(col(cs, "dense_gap"), [-0.1, -0.4, 0.0], atol=1e-6)
    np.testing.assert_allclose(col(cs, "rank_agreement"), [1.0, NAN, NAN])
    np.testing.assert_array_equal(col(cs, "both_retrieved"), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(col(cs, "min_rank"), [1.0, 2.0, 1.0])
    np.testing.assert_allclose(col(cs, "bm25_fields_sum"), [10.0, 5.0, 1.5])


def test_term_match_features() -> None:
    cs = make_cs()
    np.testing.assert_allclose(col(cs, "cov_title"), [1.0, 0.0, 2 / 3])
    np.testing.assert_allclose(col(cs, "cov_body"), [1.0, 1 / 3, 0.0])
    np.testing.assert_allclose(col(cs, "cov_any"), [1.0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(col(cs, "idf_overlap"), [6.0, 2.0, 4.0])
    np.testing.assert_allclose(col(cs, "idf_share_title"), [1.0, 0.0, 4 / 6])
    np.testing.assert_allclose(col(cs, "matched_idf_max"), [3.0, 2.0, 3.0])
    np.testing.assert_allclose(col(cs, "matched_idf_min"), [1.0, 2.0, 1.0])
    # phrase: contiguous in d1's title only ("heat slab wing" lacks "transfer")
    np.testing.assert_array_equal(col(cs, "title_phrase"), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(col(cs, "title_jaccard"), [1.0, 0.0, 2 / 4])
    np.testing.assert_array_equal(col(cs, "query_len"), [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(col(cs, "len_body"), [4.0, 2.0, 1.0])


def test_no_matching_term_gives_nan_matched_idf_and_missing_field_gives_nan() -> None:
    cs = make_cs(doc_terms={"body": (("x",), ("y",), ("z",))})
    assert np.isnan(col(cs, "matched_idf_max")).all()
    assert np.isnan(col(cs, "cov_title")).all()  # no title field at all
    np.testing.assert_array_equal(col(cs, "cov_body"), [0.0, 0.0, 0.0])
    cs2 = make_cs(query_terms=())
    assert np.isnan(col(cs2, "cov_any")).all() and np.isnan(col(cs2, "title_phrase")).all()


def test_static_features_log_and_nan() -> None:
    cs = make_cs(
        static={"rating": np.array([4.5, NAN, 3.0]), "review_count": np.array([0.0, 99.0, NAN])}
    )
    np.testing.assert_array_equal(col(cs, "rating"), [4.5, NAN, 3.0])
    np.testing.assert_allclose(col(cs, "log_review_count"), [0.0, math.log(100), NAN], rtol=1e-6)
    assert np.isnan(col(cs, "log_price")).all()  # attribute absent from the collection


@dataclass
class S:
    query: str
    docs: tuple[str, ...]
    clicks: tuple[int, ...]
    ts: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


def test_aggregate_sessions_and_behavior_features() -> None:
    now = 1000.0
    sessions = [
        S("q", ("d1", "d2"), (1, 0), ts=now),
        S("q", ("d2", "d1"), (1, 1), ts=now - 100.0),  # one half-life old
        S("r", ("d1",), (0,), ts=now),
    ]
    agg = bh.aggregate_sessions(sessions, now=now, half_life_s=100.0, exam_probs=[1.0, 0.5])
    assert set(agg) == set(bh.AGGREGATE_KEYS)
    assert agg["qd_impressions"][("q", "d1")] == 2
    assert agg["qd_clicks"][("q", "d1")] == 2
    assert agg["qd_examinations"][("q", "d1")] == 1.5
    assert agg["qd_decayed_clicks"][("q", "d1")] == pytest.approx(1.5)
    assert agg["d_impressions"][("d1",)] == 3
    assert agg["d_examinations"][("d1",)] == 2.5

    arrays = bh.behavior_arrays(agg, "q", ["d1", "d2", "d3"])
    assert arrays["qd_clicks"][2] != arrays["qd_clicks"][2]  # NaN: no history
    cs = make_cs().with_behavior(arrays)
    a, b = bh.CTR_PRIOR_ALPHA, bh.CTR_PRIOR_BETA
    np.testing.assert_allclose(
        col(cs, "qd_ctr"), [(2 + a) / (2 + a + b), (1 + a) / (2 + a + b), NAN], rtol=1e-6
    )
    np.testing.assert_allclose(col(cs, "qd_ctr_debiased")[0], (2 + a) / (1.5 + a + b), rtol=1e-6)
    np.testing.assert_allclose(
        col(cs, "d_log_impressions"), [math.log(4), math.log(3), NAN], rtol=1e-6
    )
    # no behavior at all -> every behavior feature NaN, never 0
    assert np.isnan(F.compute(make_cs(), F.BEHAVIOR_FEATURES)).all()


def test_behavior_validation_errors() -> None:
    with pytest.raises(bh.BehaviorError, match="half_life_s"):
        bh.aggregate_sessions([], now=0.0, half_life_s=0.0)
    with pytest.raises(bh.BehaviorError, match="empty"):
        bh.aggregate_sessions([S("q", ("a",), (1,))], now=0.0, exam_probs=[])
    from ltr.click_models import Session

    agg = bh.aggregate_sessions([Session("q", ("a", "b"), (True, False), ts=5.0)], now=5.0)
    assert agg["qd_clicks"] == {("q", "a"): 1.0, ("q", "b"): 0.0}
    with pytest.raises(bh.BehaviorError, match="shape"):
        bh.aggregate_sessions([S("q", ("a", "b"), (1,))], now=0.0)
    np.testing.assert_allclose(bh.examination_probs(3), [1.0, 0.5, 1 / 3])
    assert bh.query_key("  Heat  Transfer ") == "heat transfer"


def test_compute_speed_benchmark_runs() -> None:
    from scripts.benchmark_features import benchmark_compute

    res = benchmark_compute(n=50, repeats=2)
    assert res["n"] == 50 and res["features"] == len(F.FEATURES)
    # a median of two calls lies between the fastest and the 90th percentile
    assert 0 < res["ms_per_call"] <= res["ms_p90"]


def test_bigram_and_prf_features() -> None:
    cs = make_cs()
    np.testing.assert_array_equal(col(cs, "bigram_title"), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(col(cs, "bigram_body"), [0.5, 0.0, 0.0])
    assert np.isnan(col(make_cs(query_terms=("heat",)), "bigram_title")).all()
    # feedback vocabulary = non-query title terms shared by >= 2 of the top RRF docs
    assert np.isnan(col(cs, "prf_title")).all()  # nothing shared beyond the query terms
    titles = (("heat", "transfer", "slab", "wing"), ("flow",), ("heat", "slab", "wing"))
    cs2 = make_cs(doc_terms={"title": titles, "body": cs.doc_terms["body"]})
    np.testing.assert_array_equal(col(cs2, "prf_title"), [1.0, 0.0, 1.0])
