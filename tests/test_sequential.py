"""The sequential sign-test gate: its boundaries, its false-positive rate under the null
over many simulated experiments, and its power against a known difference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltr.errors import RolloutError
from ltr.sequential import first_decisions, sign_llr, sign_test_gate, sprt_thresholds


def test_boundaries_and_llr_values() -> None:
    upper, lower = sprt_thresholds(0.05, 0.2)
    assert upper == pytest.approx(math.log(20))
    assert lower == pytest.approx(math.log(0.2 / 0.95))
    assert sign_llr(3, 1, 0.1) == pytest.approx(3 * math.log(1.2) + math.log(0.8))
    assert sign_llr(0, 0, 0.1) == 0.0


def test_decisions_on_hand_counts() -> None:
    # log(20) / log(1.2) = 16.4: 17 straight wins cross the upper boundary
    d = sign_test_gate(17, 0, 300, min_queries=200)
    assert (d.outcome, d.n, d.wins, d.losses, d.ties) == ("promote", 317, 17, 0, 300)
    assert d.statistic == pytest.approx(17 * math.log(1.2))
    assert d.statistic >= d.threshold_upper and "better" in d.reason
    assert sign_test_gate(16, 0, 300).outcome == "continue"
    # log(0.2/0.95) / log(0.8) = 6.98: 7 straight losses cross the lower boundary
    assert sign_test_gate(0, 7, 300).outcome == "reject"
    assert sign_test_gate(0, 6, 300).outcome == "continue"
    # balanced outcomes drift down: 0.6 vs 0.5 is the wrong story for a coin
    assert sign_test_gate(100, 100, 0).outcome == "reject"
    assert sign_test_gate(160, 100, 0).outcome == "promote"


def test_numpy_counts_are_accepted() -> None:
    d = sign_test_gate(np.int64(17), np.int32(0), np.int64(300))
    assert d.outcome == "promote" and type(d.wins) is int and d.n == 317


def test_nothing_is_decided_before_the_minimum_sample() -> None:
    d = sign_test_gate(150, 0, 0, min_queries=200)
    assert d.outcome == "continue" and "minimum" in d.reason
    assert sign_test_gate(150, 0, 50, min_queries=200).outcome == "promote"
    assert sign_test_gate(0, 50, 0, min_queries=0).outcome == "reject"


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((-1, 0, 0), {}, "wins"),
        ((0, 1.5, 0), {}, "losses"),
        ((0, 0, True), {}, "ties"),
        ((1, 1, 1), {"alpha": 0.0}, "alpha"),
        ((1, 1, 1), {"beta": 1.0}, "beta"),
        ((1, 1, 1), {"effect": 0.5}, "effect"),
        ((1, 1, 1), {"min_queries": -3}, "min_queries"),
    ],
)
def test_bad_arguments_are_refused(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(RolloutError, match=match):
        sign_test_gate(*args, **kwargs)


def _outcomes(rng: np.random.Generator, runs: int, queries: int, p_win: float, p_tie: float):
    u = rng.random((runs, queries))
    decided = rng.random((runs, queries)) >= p_tie
    return np.where(decided, np.where(u < p_win, 1, -1), 0).astype(np.int8)


def test_vectorized_runs_agree_with_the_gate_query_by_query() -> None:
    rng = np.random.default_rng(1)
    outcomes = _outcomes(rng, 40, 800, p_win=0.55, p_tie=0.4)
    decision, stopped = first_decisions(outcomes, min_queries=100)
    code = {"promote": 1, "reject": -1}
    for row, dec, stop in zip(outcomes, decision, stopped, strict=True):
        seen = None
        for i in range(len(row)):
            w, lo = int((row[: i + 1] > 0).sum()), int((row[: i + 1] < 0).sum())
            d = sign_test_gate(w, lo, i + 1 - w - lo, min_queries=100)
            if d.outcome != "continue":
                seen = (code[d.outcome], i + 1)
                break
        assert seen == ((int(dec), int(stop)) if dec else None)


RUNS, QUERIES, ALPHA = 4000, 3000, 0.05


def test_false_positive_rate_under_the_null_is_at_most_alpha() -> None:
    # equal rankers: win = loss given no tie; 60% ties like a page with few clicks
    rng = np.random.default_rng(2026)
    decision, _ = first_decisions(_outcomes(rng, RUNS, QUERIES, p_win=0.5, p_tie=0.6), alpha=ALPHA)
    fpr = float((decision == 1).mean())
    se = math.sqrt(ALPHA * (1 - ALPHA) / RUNS)
    assert fpr <= ALPHA + 2 * se, fpr
    assert (decision == 0).mean() < 0.01  # nearly every run ended within the horizon


def test_false_positives_stay_bounded_when_the_candidate_is_worse() -> None:
    rng = np.random.default_rng(7)
    decision, _ = first_decisions(_outcomes(rng, RUNS, QUERIES, p_win=0.45, p_tie=0.6))
    assert (decision == 1).mean() <= 0.01


def test_power_against_the_design_effect() -> None:
    # the candidate wins 60% of non-tied queries (effect 0.1): promoted in >= 1 - beta runs
    rng = np.random.default_rng(99)
    decision, stopped = first_decisions(_outcomes(rng, RUNS, QUERIES, p_win=0.6, p_tie=0.6))
    power = float((decision == 1).mean())
    assert power >= 0.8 - 2 * math.sqrt(0.16 / RUNS), power
    assert float(np.median(stopped[decision == 1])) < 1000
