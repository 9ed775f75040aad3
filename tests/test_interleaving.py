"""Team-draft interleaving: the merge rules, the credit, and fairness with simulated users.

The simulated users follow a position-based model: position i is examined with
probability ``1 / (i + 1)`` and an examined document is clicked with a probability set by
its relevance grade, independently of the team that placed it. Their preferences are
known, so the tests know which ranker should win.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from ltr.errors import RolloutError
from ltr.interleaving import credit, team_draft


def test_identical_rankings_keep_the_order_and_split_every_pair() -> None:
    ranking = [f"d{i}" for i in range(10)]
    for seed in range(20):
        docs, teams = team_draft(ranking, ranking, 10, random.Random(seed))
        assert docs == ranking
        for i in range(0, 10, 2):
            assert sorted(teams[i : i + 2]) == [0, 1]


def test_overlap_is_placed_once_and_each_team_keeps_its_own_order() -> None:
    a = ["x", "y", "z", "w"]
    b = ["y", "q", "x", "r"]
    for seed in range(50):
        docs, teams = team_draft(a, b, 8, random.Random(seed))
        assert sorted(docs) == sorted({*a, *b})
        assert len(docs) == len(set(docs)) == len(teams)
        for team, ranking in ((0, a), (1, b)):
            mine = [d for d, t in zip(docs, teams, strict=True) if t == team]
            assert mine == sorted(mine, key=ranking.index)


def test_known_draft_for_a_fixed_coin() -> None:
    # coin: randrange(2) of Random(0) is 1 first, so the candidate picks first in round 1
    rng = random.Random(0)
    first = random.Random(0).randrange(2)
    docs, teams = team_draft(["a1", "a2", "a3"], ["b1", "b2", "b3"], 4, rng)
    assert teams[0] == first and teams[1] == 1 - first
    assert docs[:2] == (["b1", "a1"] if first == 1 else ["a1", "b1"])
    assert len(docs) == 4


def test_short_lists_k_beyond_the_union_and_empty_input() -> None:
    docs, teams = team_draft(["a", "b", "c", "d"], ["a"], 10, random.Random(1))
    assert sorted(docs) == ["a", "b", "c", "d"] and len(teams) == 4
    # once the candidate has nothing new, production fills the page alone
    assert teams[-2:] == [0, 0]
    assert team_draft([], [], 5, random.Random(0)) == ([], [])
    docs, teams = team_draft([], ["p", "q"], 5, random.Random(0))
    assert docs == ["p", "q"] and teams == [1, 1]
    assert team_draft(["a", "b"], ["b", "a"], 0, random.Random(0)) == ([], [])
    docs, _ = team_draft(["a", "a", "b"], ["b", "b"], 5, random.Random(0))
    assert sorted(docs) == ["a", "b"]
    with pytest.raises(RolloutError, match="k must be"):
        team_draft(["a"], ["a"], -1, random.Random(0))


def test_credit_counts_clicked_documents_per_team() -> None:
    teams = [0, 1, 1, 0, 1]
    assert credit(teams, []) == 0
    assert credit(teams, [1]) == 1
    assert credit(teams, [0]) == -1
    assert credit(teams, [0, 1]) == 0
    assert credit(teams, [0, 1, 4]) == 1
    assert credit(teams, [0, 0, 0, 1, 2]) == 1  # a repeated click counts once
    with pytest.raises(RolloutError, match="outside"):
        credit(teams, [5])
    with pytest.raises(RolloutError, match="outside"):
        credit(teams, [-1])
    with pytest.raises(RolloutError, match="team must be"):
        credit([0, 2], [1])


N_DOCS, K = 20, 10
EXAMINE = 1.0 / np.arange(1, K + 1)


def _rank(name: str, grades: np.ndarray, rng: np.random.Generator) -> list[str]:
    """'good': relevance order with noise (a fresh draw each call); 'random': a shuffle."""
    if name == "good":
        order = np.argsort(-(grades + rng.normal(0, 0.5, len(grades))), kind="stable")
    else:
        order = rng.permutation(len(grades))
    return [f"d{i}" for i in order]


def _simulate(n_queries: int, seed: int, ranker_a: str, ranker_b: str) -> tuple[int, int, int]:
    """(wins, losses, ties) of ranker b over ranker a on simulated queries and users."""
    rng = np.random.default_rng(seed)
    coin = random.Random(seed)
    wins = losses = ties = 0
    for _ in range(n_queries):
        grades = rng.integers(0, 5, N_DOCS)
        attract = 0.05 + 0.95 * (2.0**grades - 1) / 15.0
        docs, teams = team_draft(
            _rank(ranker_a, grades, rng), _rank(ranker_b, grades, rng), K, coin
        )
        shown = np.array([int(d[1:]) for d in docs])
        clicked = rng.random(len(shown)) < EXAMINE[: len(shown)] * attract[shown]
        outcome = credit(teams, np.flatnonzero(clicked).tolist())
        wins += outcome > 0
        losses += outcome < 0
        ties += outcome == 0
    return wins, losses, ties


def _win_rate_ci(wins: int, losses: int) -> tuple[float, float, float]:
    n = wins + losses
    rate = wins / n
    half = 1.96 * math.sqrt(0.25 / n)  # the null's standard error
    return rate, rate - half, rate + half


@pytest.mark.parametrize("ranker", ["good", "random"])
def test_equal_rankers_win_half_the_decided_queries(ranker: str) -> None:
    wins, losses, ties = _simulate(4000, seed=11, ranker_a=ranker, ranker_b=ranker)
    _, lo, hi = _win_rate_ci(wins, losses)
    assert wins + losses > 800
    assert lo <= 0.5 <= hi, (wins, losses, ties)


def test_identical_ranker_is_exactly_a_coin() -> None:
    # the very same list on both sides: the teams differ only by the coin
    rng = np.random.default_rng(3)
    coin = random.Random(3)
    ranking = [f"d{i}" for i in range(K)]
    outcomes = []
    for _ in range(4000):
        _, teams = team_draft(ranking, ranking, K, coin)
        clicked = np.flatnonzero(rng.random(K) < EXAMINE * 0.5)
        outcomes.append(credit(teams, clicked.tolist()))
    wins, losses = outcomes.count(1), outcomes.count(-1)
    _, lo, hi = _win_rate_ci(wins, losses)
    assert lo <= 0.5 <= hi


def test_the_better_ranker_wins_in_either_seat() -> None:
    wins, losses, _ = _simulate(1500, seed=5, ranker_a="random", ranker_b="good")
    rate, lo, _ = _win_rate_ci(wins, losses)
    assert lo > 0.5 and rate > 0.6, (wins, losses)
    wins, losses, _ = _simulate(1500, seed=6, ranker_a="good", ranker_b="random")
    rate, _, hi = _win_rate_ci(wins, losses)
    assert hi < 0.5 and rate < 0.4, (wins, losses)
