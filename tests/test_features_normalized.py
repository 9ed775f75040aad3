"""Per-query normalized retriever features and their monotone constraints (issue 13).

The normalized columns are what the linear-fusion base margin is made of, so a model's
splits mean the same on any collection; checked on hand-made candidate sets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ltr import features as F
from ltr.fusion import fusion_score, linear_normed, minmax, retriever_scores
from ltr.types import BM25, DENSE, EXTRA_RETRIEVERS
from tests.test_features import col, make_cs


def test_minmax_features_are_the_linear_fusion_inputs() -> None:
    cs = make_cs()
    # BM25 10 / 5 / not retrieved -> 1, 0, 0; cosine 0.8 / 0.5 / 0.9 -> 0.75, 0, 1
    np.testing.assert_allclose(col(cs, "bm25_minmax"), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(col(cs, "dense_minmax"), [0.75, 0.0, 1.0])
    w = {BM25: 0.3, DENSE: 0.7}
    by_features = linear_normed(
        {BM25: col(cs, "bm25_minmax"), DENSE: col(cs, "dense_minmax")}, w, 5.0
    )
    exact = fusion_score(cs, "linear", {"weights": w, "scale": 5.0})
    np.testing.assert_allclose(by_features, exact, rtol=1e-6)
    # from the float64 inputs the fusion itself uses: bit for bit
    normed = {r: minmax(retriever_scores(cs, r)) for r in w}
    assert linear_normed(normed, w, 5.0).tobytes() == exact.tobytes()


def test_bm25_z_is_a_within_query_z_score() -> None:
    z = col(make_cs(), "bm25_z")
    np.testing.assert_allclose(z[:2], [1.0, -1.0])  # two retrieved: +-1 std
    assert np.isnan(z[2])  # not retrieved by BM25: missing
    # scale invariance: the same list times 7 gives the same features
    cs7 = make_cs(
        scores={BM25: np.array([70.0, 35.0, np.nan]), DENSE: np.array([0.8, np.nan, 0.9])}
    )
    for name in ("bm25_z", "bm25_minmax", "bm25_norm"):
        np.testing.assert_allclose(col(cs7, name), col(make_cs(), name), equal_nan=True)
    # one retrieved candidate: no spread, z is missing; minmax is 1 where finite
    one = make_cs(
        scores={BM25: np.array([3.0, np.nan, np.nan]), DENSE: np.array([0.8, np.nan, 0.9])}
    )
    assert np.isnan(col(one, "bm25_z")).all()
    np.testing.assert_allclose(col(one, "bm25_minmax"), [1.0, 0.0, 0.0])


def test_monotone_constraints_follow_the_registry() -> None:
    names = ("bm25", "bm25_rank", "dense_minmax", "cov_title", "min_rank", "rating")
    assert F.monotone_constraints(names) == (1, -1, 1, 0, -1, 0)
    # every retriever score goes up, every rank down; nothing else is constrained
    for f in F.FEATURES.values():
        if f.monotone:
            assert f.group == "text" and (
                f.name.endswith("rank")
                or f.name.startswith(("bm25", "dense", "rrf", *EXTRA_RETRIEVERS))
            ), f.name
    # the constraint does not enter the featureset id (a training choice, not an input)
    assert F.featureset_id(names) == F.featureset_id(list(names))


def test_trees_respect_the_monotone_constraints() -> None:
    from ltr.config import TrainConfig
    from ltr.dataset import RankingData
    from ltr.train import Trainer

    rng = np.random.default_rng(0)
    groups = []
    for q in range(40):
        s = rng.random(30)
        # relevance falls for the very top scores: an unconstrained tree learns the dip
        y = np.where((s > 0.5) & (s < 0.9), 2.0, 0.0)
        groups.append((f"q{q}", np.c_[s, rng.random(30)], y, None, None))
    data = RankingData.from_groups(groups, ("bm25_minmax", "cov_title"))
    grid = np.c_[np.linspace(0, 1, 101), np.full(101, 0.5)].astype(np.float32)
    cfg = TrainConfig(num_boost_round=40, eta=0.3, use_base_margin=False)
    free = Trainer(dataclasses.replace(cfg, monotone=False)).fit(data)
    mono = Trainer(cfg).fit(data)
    assert mono.params["monotone_constraints"] == "(1,0)"
    assert "monotone_constraints" not in free.params
    assert np.all(np.diff(mono.predict(grid)) >= 0)
    assert np.any(np.diff(free.predict(grid)) < -1e-3)


@pytest.mark.parametrize("name", ["bm25_minmax", "dense_minmax", "bm25_z"])
def test_normalized_features_are_text_features(name: str) -> None:
    assert name in F.TEXT_FEATURES and F.FEATURES[name].monotone == 1
