"""Counterfactual estimates on simulated logs whose examination curve and attractiveness are
known: the PBM fits recover the curve; IPS / SNIPS cover the true candidate metric."""

from __future__ import annotations

import numpy as np
import pytest

from ltr.counterfactual import (
    estimate,
    examination_from_randomization,
    fit_pbm_regression_em,
    pages_from_rows,
    pbm_truth,
    simulate_log,
)
from ltr.errors import RolloutError

M, F = 10, 3
THETA = 1.0 / np.arange(1, M + 1) ** 0.8  # true examination, theta[0] = 1
W_TRUE = np.array([1.2, -0.6, 0.4])  # attractiveness = sigmoid(X @ W_TRUE - 1)


def _log(seed: int, pages: int, shuffle: bool = False):
    """Logged pages (production ranks by a noisy, partly wrong score) with PBM clicks."""
    X, gamma, clicks = simulate_log(seed, pages, THETA, W_TRUE, shuffle=shuffle)
    return X, gamma, clicks, np.repeat(np.arange(pages), M), np.tile(np.arange(M), pages)


def test_regression_em_recovers_the_examination_curve() -> None:
    X, _, clicks, _, positions = _log(0, 3000)
    fit = fit_pbm_regression_em(X.reshape(-1, F), positions, clicks.ravel())
    assert fit.method == "regression-em" and fit.converged
    assert fit.examination[0] == 1.0
    assert np.abs(fit.examination - THETA).max() < 0.04, fit.examination.round(3)
    assert fit.relevance is not None and fit.relevance.shape == (3000 * M,)


def test_randomized_pages_recover_the_examination_curve() -> None:
    _, _, clicks, _, positions = _log(1, 4000, shuffle=True)
    fit = examination_from_randomization(positions, clicks.ravel())
    assert fit.method == "randomization"
    assert np.abs(fit.examination - THETA).max() < 0.05, fit.examination.round(3)


def test_the_logged_ranking_estimates_its_own_observed_clicks() -> None:
    _, gamma, clicks, page_ids, positions = _log(2, 500)
    pages = pages_from_rows(page_ids, positions, clicks.ravel())
    logged_order = -np.tile(np.arange(M, dtype=float), (500, 1))
    est = {(e.metric, e.estimator): e for e in estimate(pages, logged_order, THETA, 5, gamma)}
    assert est["clicks@k", "ips"].value == pytest.approx(clicks[:, :5].sum(1).mean())
    first = np.where(clicks[:, :5].any(1), 1.0 / (clicks[:, :5].argmax(1) + 1), 0.0)
    assert est["rr", "ips"].value == pytest.approx(first.mean())
    assert est["clicks@k", "snips"].value == pytest.approx(est["clicks@k", "ips"].value)


def test_ips_and_snips_cover_the_truth_in_most_seeded_runs() -> None:
    runs, covered = 40, {}
    for seed in range(runs):
        X, gamma, clicks, page_ids, positions = _log(100 + seed, 1500)
        pages = pages_from_rows(page_ids, positions, clicks.ravel())
        candidate = X @ W_TRUE  # the ideal ranker: a different order than production's
        truth = dict(
            zip(("clicks@k", "rr"), pbm_truth(pages, candidate, THETA, gamma, 5), strict=True)
        )
        for e in estimate(pages, candidate, THETA, 5, relevance=gamma):
            hit = e.low <= truth[e.metric] <= e.high
            covered[e.metric, e.estimator] = covered.get((e.metric, e.estimator), 0) + hit
    assert set(covered) == {(m, s) for m in ("clicks@k", "rr") for s in ("ips", "snips")}
    for key, n in covered.items():
        assert n / runs >= 0.9, (key, n)


def test_the_better_ranker_is_estimated_better_than_production() -> None:
    X, gamma, clicks, page_ids, positions = _log(3, 3000)
    fit = fit_pbm_regression_em(X.reshape(-1, F), positions, clicks.ravel())
    pages = pages_from_rows(page_ids, positions, clicks.ravel())
    rel = pages.to_matrix(fit.relevance)
    prod = -np.tile(np.arange(M, dtype=float), (3000, 1))
    cand = {
        (e.metric, e.estimator): e for e in estimate(pages, X @ W_TRUE, fit.examination, 5, rel)
    }
    base = {(e.metric, e.estimator): e for e in estimate(pages, prod, fit.examination, 5, rel)}
    truth_cand = pbm_truth(pages, X @ W_TRUE, THETA, gamma, 5)
    for key in cand:
        assert cand[key].low > base[key].high, key
    assert cand["clicks@k", "snips"].low <= truth_cand[0] <= cand["clicks@k", "snips"].high


def test_bad_logs_are_refused() -> None:
    with pytest.raises(RolloutError, match="same position"):
        pages_from_rows(np.array([0, 0]), np.array([0, 0]), np.array([0, 1]))
    with pytest.raises(RolloutError, match="gap"):
        pages_from_rows(np.array([0, 0]), np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(RolloutError, match="no logged rows"):
        pages_from_rows(np.array([]), np.array([], dtype=int), np.array([]))
    pages = pages_from_rows(np.array([0, 0]), np.array([0, 1]), np.array([1, 0]))
    with pytest.raises(RolloutError, match="k must be"):
        estimate(pages, np.zeros((1, 2)), THETA, 0)
    with pytest.raises(RolloutError, match="examination must be > 0"):
        estimate(pages, np.zeros((1, 2)), np.array([1.0, 0.0]), 2)
    with pytest.raises(RolloutError, match="no clicks"):
        fit_pbm_regression_em(np.zeros((2, 1)), np.array([0, 1]), np.zeros(2))
    with pytest.raises(RolloutError, match="cover every position"):
        examination_from_randomization(np.array([0, 0]), np.array([1.0, 0.0]), 2)
