"""Feature drift and concept drift on DataFrames, with real Evidently; NDCG checked externally."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from monitoring.concept import (
    CONCEPT_DRIFT,
    COVARIATE_DRIFT,
    NO_DRIFT,
    click_rate_by_decile,
    concept_drift,
    decide,
    ranking_quality,
)
from monitoring.config import DISTANCE_METHODS, DRIFT_METHODS, MonitoringConfig, parse_duration
from monitoring.drift import feature_drift
from monitoring.errors import (
    EmptyWindowError,
    MonitoringConfigError,
    NotEnoughDataError,
    ReferenceNotFoundError,
)

# Real feature names, so ltr.features decides each one's group (and so method/threshold).
FEATURES = [
    "bm25",  # text
    "dense_cosine",  # text
    "bm25_title",  # text, many zeros
    "cov_title",  # text, few distinct values
    "query_len",  # text, integer
    "dense_rank",  # text, NaN outside the kNN top-N
    "rating",  # static, all NaN (Cranfield has no attributes)
    "log_popularity",  # static
    "qd_ctr",  # behavior, NaN without history
    "d_log_impressions",  # behavior
]


def make_features(n: int, seed: int, shift: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Feature rows drawn from fixed distributions; ``shift`` moves the named ones."""
    rng = np.random.default_rng(seed)
    s = shift
    df = pd.DataFrame(
        {
            "bm25": rng.gamma(2.0, 3.0, n) + (3.0 if "bm25" in s else 0.0),
            "dense_cosine": np.clip(
                rng.normal(0.55 if "dense_cosine" in s else 0.4, 0.1, n), -1, 1
            ),
            "bm25_title": np.where(rng.random(n) < 0.6, 0.0, rng.gamma(2.0, 2.0, n)),
            "cov_title": rng.integers(0, 4, n) / 3.0,
            "query_len": rng.integers(2, 12 if "query_len" in s else 9, n).astype(float),
            "dense_rank": np.where(rng.random(n) < 0.3, np.nan, rng.integers(1, 101, n)),
            "rating": np.full(n, np.nan),
            "log_popularity": np.log1p(
                rng.pareto(2.0, n) * (30.0 if "log_popularity" in s else 10)
            ),
            "qd_ctr": np.where(
                rng.random(n) < (0.3 if "qd_ctr" in s else 0.8), np.nan, rng.beta(2, 8, n)
            ),
            "d_log_impressions": np.log1p(rng.poisson(20, n)).astype(float),
        }
    )
    return df[FEATURES]


CFG = MonitoringConfig()


def test_drift_methods_are_evidentlys_numerical_stat_tests() -> None:
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests
    from evidently.legacy.core import ColumnType

    numerical = {n for n, d in _registered_stat_tests.items() if ColumnType.Numerical in d}
    assert set(DRIFT_METHODS) == numerical


def test_no_drift_control_flags_nothing() -> None:
    res = feature_drift(make_features(3000, 1), make_features(3000, 2), CFG)
    assert res.drifted_features == []
    assert not res.drifted
    assert res.share == 0.0
    assert res.not_tested == ["rating"]  # all NaN on both sides: not tested, not a crash
    by = {f.name: f for f in res.features}
    assert by["bm25"].group == "text" and by["bm25"].method == CFG.text_method
    assert by["log_popularity"].method == CFG.static_method
    assert by["d_log_impressions"].method == CFG.behavior_method
    # ~600 values per side (80% NaN): a p-value test instead of a noise-prone distance
    assert (by["qd_ctr"].method, by["qd_ctr"].threshold) == ("ks", CFG.small_sample_threshold)
    assert all(math.isfinite(f.score) for f in res.tested)


def test_injected_drift_flags_exactly_the_shifted_subset() -> None:
    shifted = frozenset({"bm25", "dense_cosine", "query_len", "log_popularity", "qd_ctr"})
    res = feature_drift(make_features(3000, 1), make_features(3000, 3, shifted), CFG)
    assert set(res.drifted_features) == shifted
    assert res.drifted  # 5 of 9 tested > drift_share 0.25
    assert res.share == pytest.approx(5 / 9)
    qd = next(f for f in res.features if f.name == "qd_ctr")
    assert qd.reason.startswith("missing share moved 0.79 -> 0.30")
    # the summary is JSON-safe (NaN -> None) and names the drifted features
    d = res.to_dict()
    assert d["drifted_features"] == res.drifted_features
    rating = next(f for f in d["features"] if f["name"] == "rating")
    assert rating["score"] is None and rating["tested"] is False


def test_share_threshold_decides_overall() -> None:
    ref, cur = make_features(2000, 1), make_features(2000, 4, frozenset({"bm25"}))
    # bm25 + 3 moves it by ~0.7 standard deviations: one feature moving that much is an
    # alarm on its own (alarm_effect 0.25)...
    res = feature_drift(ref, cur, CFG)
    assert res.drifted_features == ["bm25"]
    bm25 = next(f for f in res.features if f.name == "bm25")
    assert 0.6 < bm25.effect < 0.8
    assert res.drifted
    # ...without that rule the share decides: 1/9 = 11% <= 25%
    share_only = MonitoringConfig(alarm_effect=math.inf)
    assert not feature_drift(ref, cur, share_only).drifted
    assert feature_drift(ref, cur, dataclasses.replace(share_only, drift_share=0.1)).drifted


def test_group_method_and_threshold_come_from_settings() -> None:
    ref, cur = make_features(2000, 1), make_features(2000, 4, frozenset({"bm25"}))
    cfg = MonitoringConfig(text_method="ks", text_threshold=0.01)
    res = feature_drift(ref, cur, cfg)
    bm25 = next(f for f in res.features if f.name == "bm25")
    assert (bm25.method, bm25.threshold, bm25.score_kind) == ("ks", 0.01, "p_value")
    assert bm25.drifted and bm25.score < 0.01
    # a huge distance threshold turns the same shift into "no drift"
    lax = feature_drift(ref, cur, MonitoringConfig(text_threshold=50.0))
    assert "bm25" not in lax.drifted_features


def test_nan_heavy_and_missing_columns() -> None:
    ref, cur = make_features(1000, 1), make_features(1000, 2)
    ref["qd_ctr"] = np.nan  # trained without click history (from judgments)...
    res = feature_drift(ref, cur, CFG)  # ...served with it: nothing to compare with
    assert "qd_ctr" in res.not_tested
    assert "no click history" in next(f.reason for f in res.features if f.name == "qd_ctr")
    # trained with click history, served without (click logging broke): drifted
    res_gone = feature_drift(make_features(1000, 1), cur.assign(qd_ctr=np.nan), CFG)
    assert "qd_ctr" in res_gone.drifted_features
    gone = next(f for f in res_gone.features if f.name == "qd_ctr")
    assert 0.15 < gone.effect < 0.25  # the missing share moved ~0.8 -> 1.0
    # a few values only: not enough for a distribution test, and the NaN share barely moves
    ref2, cur2 = make_features(1000, 1), make_features(1000, 2)
    ref2["qd_ctr"] = np.where(np.arange(1000) < 10, 0.1, np.nan)
    cur2["qd_ctr"] = np.where(np.arange(1000) < 12, 0.3, np.nan)
    res2 = feature_drift(ref2, cur2, CFG)
    assert "qd_ctr" in res2.not_tested
    assert "too few values" in next(f.reason for f in res2.features if f.name == "qd_ctr")
    # a model feature the log does not carry is drifted ("not served")
    res3 = feature_drift(ref, cur.drop(columns=["bm25"]), CFG)
    assert "bm25" in res3.drifted_features


def test_meta_columns_are_never_features() -> None:
    ref, cur = make_features(1000, 1), make_features(1000, 2)
    cur = cur.assign(request_id="r", ts=1.0, query="q", doc_id="d", position=1, score=0.5)
    res = feature_drift(ref, cur, CFG, features=[*FEATURES, "position", "score"])
    assert [f.name for f in res.features] == FEATURES


def test_bad_inputs_raise_typed_errors() -> None:
    ref = make_features(500, 1)
    with pytest.raises(EmptyWindowError):
        feature_drift(ref, ref.iloc[:0], CFG)
    with pytest.raises(NotEnoughDataError, match="min_rows is 200"):
        feature_drift(ref, ref.iloc[:50], CFG)
    with pytest.raises(NotEnoughDataError, match="min_reference_rows"):
        feature_drift(ref.iloc[:20], ref, CFG)
    with pytest.raises(ReferenceNotFoundError, match="lacks features: nosuch"):
        feature_drift(ref, ref, CFG, features=["bm25", "nosuch"])


def test_sampling_is_deterministic() -> None:
    ref, cur = make_features(3000, 1), make_features(3000, 3, frozenset({"bm25"}))
    cfg = MonitoringConfig(max_rows=1000)
    a, b = feature_drift(ref, cur, cfg), feature_drift(ref, cur, cfg)
    assert a.sampled and a.reference_rows == 3000
    assert [f.score for f in a.tested] == [f.score for f in b.tested]
    assert a.drifted_features == ["bm25"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"text_method": "nope"}, "text_method: unknown drift method 'nope'"),
        ({"drift_share": 0.0}, "drift_share: must be in (0, 1]"),
        ({"window": "soon"}, "window: 'soon' is not a duration"),
        ({"min_rows": 0}, "min_rows: must be >= 1"),
        ({"webhook_url": "ftp://x"}, "webhook_url"),
        ({"click_model": "ubm"}, "click_model: unknown click model 'ubm'; valid: coec, dbn, pbm"),
    ],
)
def test_config_validation_names_the_key(change: dict, message: str) -> None:
    with pytest.raises(MonitoringConfigError) as err:
        MonitoringConfig(**change).validate()
    assert message in str(err.value)


def test_parse_duration() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("15m") == 900
    assert parse_duration("90") == 90
    assert parse_duration("0.5s") == 0.5
    assert set(DISTANCE_METHODS) < set(DRIFT_METHODS)


# ---------------------------------------------------------------------------------------
# ranking quality and concept drift


def served_log(
    n_requests: int, seed: int, depth: int = 10, graded: bool = False, prefix: str = "r"
) -> tuple[pd.DataFrame, np.ndarray]:
    """Random served lists (positions 1..depth) with random clicks or graded labels."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_requests):
        d = int(rng.integers(3, depth + 4))  # some lists are deeper than k
        for p in range(1, d + 1):
            rows.append((f"{prefix}{r}", f"d{rng.integers(0, 10**6)}", p))
    df = pd.DataFrame(rows, columns=["request_id", "doc_id", "position"])
    if graded:
        labels = rng.choice([0, 0, 0, 1, 2, 3], len(df)).astype(float)
    else:
        labels = (rng.random(len(df)) < 0.15).astype(float)
    df["clicked"] = (labels > 0).astype(int)
    df["query"] = "q"
    return df, labels


def _external_metrics(df: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    import ir_measures
    from ir_measures import RR, nDCG

    qrels = [
        ir_measures.Qrel(r, d, int(g))
        for r, d, g in zip(df["request_id"], df["doc_id"], labels, strict=True)
    ]
    run = [
        ir_measures.ScoredDoc(r, d, float(-p))
        for r, d, p in zip(df["request_id"], df["doc_id"], df["position"], strict=True)
    ]
    ndcg = nDCG(gains={0: 0, 1: 1, 2: 3, 3: 7}) @ 10  # exponential gain 2^g - 1
    out: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc([ndcg, RR @ 10], qrels, run):
        out.setdefault(m.query_id, {})["ndcg" if m.measure == ndcg else "rr"] = m.value
    return pd.DataFrame.from_dict(out, orient="index")


@pytest.mark.parametrize("graded", [False, True])
def test_ranking_quality_matches_ir_measures(graded: bool) -> None:
    df, labels = served_log(300, 7, graded=graded)
    # graded: MRR's "relevant" = label >= 0.5, i.e. any positive grade, as in ir_measures
    q = ranking_quality(df, labels if graded else None, k=10)
    ext = _external_metrics(df, labels)
    ids = _labelled_ids(df, labels)
    assert q.labelled_requests == len(ids)
    np.testing.assert_allclose(q.ndcg, ext.loc[ids, "ndcg"].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(q.rr, ext.loc[ids, "rr"].to_numpy(), atol=1e-9)


def _labelled_ids(df: pd.DataFrame, labels: np.ndarray) -> list[str]:
    """Requests with a positive label anywhere in the list, in log order."""
    has_pos = df.assign(g=labels).groupby("request_id", sort=False)["g"].max() > 0
    return [str(r) for r in has_pos.index if has_pos[r]]


def test_page_two_requests_are_left_out() -> None:
    df, _ = served_log(50, 3)
    page2 = df.copy()
    page2["request_id"] = "p2-" + page2["request_id"]
    page2["position"] += 10
    q1 = ranking_quality(df)
    q2 = ranking_quality(pd.concat([df, page2], ignore_index=True))
    assert q2.requests == q1.requests
    np.testing.assert_array_equal(q1.ndcg, q2.ndcg)


def test_decision_table() -> None:
    assert decide(False, False) == NO_DRIFT
    assert decide(True, False) == CONCEPT_DRIFT
    assert decide(True, True) == COVARIATE_DRIFT
    assert decide(False, True) == COVARIATE_DRIFT
    # only click-derived (behavior) features drifted: with a quality drop that is the click
    # change feeding back into its own aggregates; without one, still an input shift
    assert decide(True, True, inputs_drifted=False) == CONCEPT_DRIFT
    assert decide(False, True, inputs_drifted=False) == COVARIATE_DRIFT
    assert decide(True, True, inputs_drifted=True) == COVARIATE_DRIFT


def test_drifted_excluding_click_derived_groups() -> None:
    shifted = frozenset({"qd_ctr", "bm25"})
    share_only = MonitoringConfig(alarm_effect=math.inf)  # the share rule alone
    res = feature_drift(make_features(2000, 1), make_features(2000, 3, shifted), share_only)
    assert set(res.drifted_features) == shifted and not res.drifted  # 2/9 <= 25%
    assert not res.drifted_excluding(("behavior",))  # bm25 alone: 1/7
    # with the effect rule, bm25 moving ~0.7 standard deviations is an input shift alone
    assert feature_drift(
        make_features(2000, 1), make_features(2000, 3, shifted), CFG
    ).drifted_excluding(("behavior",))
    only_behavior = feature_drift(
        make_features(2000, 1), make_features(2000, 3, frozenset({"qd_ctr"})),
        dataclasses.replace(share_only, drift_share=0.1),
    )  # fmt: skip
    assert only_behavior.drifted  # 1/9 > 10%
    assert not only_behavior.drifted_excluding(("behavior",))
    assert only_behavior.drifted_excluding(())


def clicks_window(n_requests: int, seed: int, follow_score: bool, prefix: str) -> pd.DataFrame:
    """Served lists ranked by score; clicks follow the score (good) or ignore it (drifted)."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_requests):
        scores = np.sort(rng.normal(0, 1, 10))[::-1]
        for p, s in enumerate(scores, start=1):
            exam = 1.0 / p**0.5
            attract = 1 / (1 + np.exp(-3 * s)) if follow_score else 0.35
            rows.append(
                {
                    "request_id": f"{prefix}{r}",
                    "doc_id": f"d{p}",
                    "position": p,
                    "query": "q",
                    "score": s,
                    "clicked": int(rng.random() < exam * attract),
                    "bm25": rng.gamma(2, 3),
                }
            )
    return pd.DataFrame(rows)


def test_concept_drift_detects_a_click_behavior_change() -> None:
    prev = clicks_window(400, 1, True, "a")
    same = clicks_window(400, 2, True, "b")
    changed = clicks_window(400, 3, False, "c")
    cfg = MonitoringConfig(retriever_features=("bm25", "dense"))
    ok = concept_drift(same, prev, cfg, features_drifted=False)
    assert not ok.quality_dropped and ok.decision == NO_DRIFT
    bad = concept_drift(changed, prev, cfg, features_drifted=False)
    assert bad.quality_dropped and bad.decision == CONCEPT_DRIFT
    assert bad.relative_drop >= cfg.quality_drop and bad.p_value < cfg.quality_alpha
    assert not bad.score_drift["score"]["drifted"]  # same score distribution
    assert bad.score_drift["bm25"]["tested"] and not bad.score_drift["bm25"]["drifted"]
    assert bad.score_drift["dense"] == {"tested": False, "reason": "column absent"}
    assert concept_drift(changed, prev, cfg, features_drifted=True).decision == COVARIATE_DRIFT
    # the click profile: rising with the score before, flat after
    deciles = bad.click_rate_by_decile
    assert len(deciles) == 10
    assert deciles[-1]["reference_click_rate"] > 2 * deciles[0]["reference_click_rate"]
    d = bad.to_dict()
    assert d["decision"] == CONCEPT_DRIFT and d["current"]["requests"] == 400


def test_concept_drift_with_too_few_clicked_requests_is_not_compared() -> None:
    prev = clicks_window(20, 1, True, "a")
    cur = clicks_window(20, 3, False, "c")
    res = concept_drift(cur, prev, MonitoringConfig(), features_drifted=False)
    assert not res.quality_dropped
    assert "too few clicked requests" in res.quality_note
    assert math.isnan(res.relative_drop)


def test_manifest_reference() -> None:
    cur = clicks_window(200, 3, False, "c")
    cfg = MonitoringConfig(concept_reference="manifest", manifest_metric="ndcg@10")
    res = concept_drift(cur, {"ndcg@10": 0.95}, cfg, features_drifted=False)
    assert res.reference_source == "manifest" and res.quality_dropped
    assert math.isnan(res.p_value)
    with pytest.raises(ReferenceNotFoundError, match="no metric 'ndcg@10'; it has: valid_ndcg"):
        concept_drift(cur, {"valid_ndcg": 0.5}, cfg, features_drifted=False)


def test_click_rate_by_decile_uses_reference_edges() -> None:
    ref = pd.DataFrame({"score": np.arange(100.0), "clicked": (np.arange(100) >= 90).astype(int)})
    cur = pd.DataFrame({"score": np.full(10, 95.0), "clicked": np.ones(10, dtype=int)})
    rows = click_rate_by_decile(cur, ref, 10)
    assert rows[-1]["reference_click_rate"] == 1.0 and rows[0]["reference_click_rate"] == 0.0
    assert rows[-1]["current_rows"] == 10 and sum(r["current_rows"] for r in rows) == 10


def test_json_only_path_gives_the_report_numbers() -> None:
    """render=False runs Evidently's stat tests without a Report: same scores and flags."""
    ref = make_features(2000, 1)
    cur = make_features(2000, 3, frozenset({"bm25", "qd_ctr", "log_popularity"}))
    cfg = MonitoringConfig(behavior_method="ks", behavior_threshold=0.05)
    full = feature_drift(ref, cur, cfg)
    fast = feature_drift(ref, cur, cfg, render=False)
    assert full.snapshot is not None and fast.snapshot is None
    assert fast.drifted_features == full.drifted_features
    np.testing.assert_allclose(
        [f.score for f in fast.features], [f.score for f in full.features], equal_nan=True
    )


def test_ranking_quality_matches_ltr_metrics_also_for_fractional_labels() -> None:
    """Same NDCG definition as ltr.metrics (exp gain), incl. click-model relevances in [0, 1]."""
    from ltr.metrics import mrr_at_k, ndcg_at_k

    df, grades = served_log(200, 5, graded=True)
    rng = np.random.default_rng(5)
    for labels in (grades, np.where(grades > 0, rng.random(len(grades)), 0.0)):
        q = ranking_quality(df, labels, k=10)
        ids = _labelled_ids(df, labels)
        by_req = df.assign(g=labels).groupby("request_id", sort=False)
        expected_ndcg, expected_rr = [], []
        for rid in ids:
            g = by_req.get_group(rid).sort_values("position")
            qrels = dict(zip(g["doc_id"], g["g"], strict=True))
            expected_ndcg.append(ndcg_at_k(list(g["doc_id"]), qrels, 10))
            if labels is grades:
                expected_rr.append(mrr_at_k(list(g["doc_id"]), qrels, 10))
        np.testing.assert_allclose(q.ndcg, expected_ndcg, atol=1e-9)
        if expected_rr:
            np.testing.assert_allclose(q.rr, expected_rr, atol=1e-9)


def pool_window(n_requests: int, seed: int, reverse: bool, prefix: str) -> pd.DataFrame:
    """Each request shows 10 of a query's 30 docs, ranked by a fixed model score; users click
    by attractiveness rising with the score (or, ``reverse``, falling: concept drift)."""
    rng = np.random.default_rng(seed)
    pool_scores = np.linspace(2.0, -2.0, 30)
    rows = []
    for r in range(n_requests):
        shown = np.sort(rng.choice(30, 10, replace=False))  # best score first
        for p, d in enumerate(shown, start=1):
            s = pool_scores[d]
            attract = 1 / (1 + np.exp(3 * s if reverse else -3 * s))
            clicked = rng.random() < attract / p**0.5
            rows.append((f"{prefix}{r}", f"q{r % 5}", f"d{d}", p, s, int(clicked)))
    return pd.DataFrame(
        rows, columns=["request_id", "query", "doc_id", "position", "score", "clicked"]
    )


def test_concept_drift_with_click_model_labels() -> None:
    cfg = MonitoringConfig(click_model="pbm", retriever_features=())
    prev = pool_window(600, 1, False, "a")
    same = concept_drift(pool_window(600, 2, False, "b"), prev, cfg, features_drifted=False)
    assert same.decision == NO_DRIFT
    changed = concept_drift(pool_window(600, 3, True, "c"), prev, cfg, features_drifted=False)
    assert changed.decision == CONCEPT_DRIFT
    assert changed.current_value < 0.8 * changed.reference_value


def test_unknown_click_model_is_a_clear_error() -> None:
    from ltr.errors import UnknownNameError

    prev = pool_window(50, 1, False, "a")
    with pytest.raises(UnknownNameError, match="unknown click model 'nope'; valid: coec, dbn"):
        concept_drift(prev, prev, MonitoringConfig(click_model="nope"), features_drifted=False)


def test_rows_of_other_featuresets_are_ignored_and_counted() -> None:
    from monitoring.report import Window, build_report

    ref = make_features(1000, 1)
    cur = make_features(1000, 2).assign(featureset_id="mine", request_id="r", position=1)
    other = make_features(300, 3, frozenset({"bm25"})).assign(featureset_id="old")
    mixed = pd.concat([cur, other.assign(request_id="o", position=1)], ignore_index=True)
    s = build_report(
        ref, mixed, None, CFG, window=Window(0, 3600), model_version="v1",
        featureset_id="mine", feature_names=FEATURES,
    )  # fmt: skip
    assert s.other_featureset_rows == 300 and s.features.current_rows == 1000
    assert s.features.drifted_features == [] and s.decision == NO_DRIFT
    assert s.to_dict()["concept_drift"] is None
    with pytest.raises(EmptyWindowError, match="300 rows of other featuresets ignored"):
        build_report(
            ref, other, None, CFG, window=Window(0, 3600), model_version="v1",
            featureset_id="mine", feature_names=FEATURES,
        )  # fmt: skip


def test_small_samples_use_a_p_value_test() -> None:
    """~200 values per side of the SAME distribution: a distance reads noise as drift."""
    ref, cur = make_features(1000, 1), make_features(1000, 2)  # qd_ctr: 80% NaN
    plain = feature_drift(ref, cur, MonitoringConfig(small_sample_values=1))
    qd = next(f for f in plain.features if f.name == "qd_ctr")
    assert qd.method == "jensenshannon" and qd.score > 0.1 and qd.drifted  # false alarm
    sized = feature_drift(ref, cur, CFG)
    qd = next(f for f in sized.features if f.name == "qd_ctr")
    assert qd.method == "ks" and not qd.drifted
    assert sized.drifted_features == []
