"""The rollout gate's sequential test on interleaving outcomes.

Every interleaved query ends as a win (+1, the candidate got more clicks), a loss (-1) or
a tie (0, most often no click at all). Ties say nothing about which ranking is better and
are left out: over the non-tied queries a win is a coin flip with ``p = P(win | not tie)``.
Equal rankers give ``p = 0.5`` (team draft is fair, see ltr/interleaving.py).

We run Wald's sequential probability ratio test (SPRT) of the sign test,
H0: ``p = 0.5`` against H1: ``p = 0.5 + effect``, because the experiment is looked at after
every query and a fixed-sample test checked that often would promote far more often
than its alpha. The log likelihood ratio after ``w`` wins and ``l`` losses is

    LLR = w * log(2 p1) + l * log(2 (1 - p1)),     p1 = 0.5 + effect.

- promote when ``LLR >= log(1 / alpha)``. Under H0 the likelihood ratio is a non-negative
  martingale with mean 1, so by Ville's inequality it EVER reaches ``1 / alpha`` with
  probability at most alpha, however often it is looked at, with or without a minimum
  sample. Under a worse candidate (``p < 0.5``) it is a supermartingale, so the bound
  holds too. (Wald's own boundary ``(1 - beta) / alpha`` only approximates alpha; this
  one is a guarantee, for a few more queries.)
- reject when ``LLR <= log(beta / (1 - alpha))`` (Wald's lower boundary): the data favour
  "no better than 0.5" over "better by ``effect``"; a candidate truly ``effect`` better is
  rejected with probability about beta.
- otherwise continue. No decision before ``min_queries`` interleaved queries (ties
  included), so the guardrails (latency, errors, zero results) see enough traffic first.

Assumptions (docs/rollout.md): query outcomes are independent given the rankers (one user
issuing the same query many times breaks this), the click behaviour does not drift during
the experiment, and ``effect`` is the smallest improvement worth shipping: a candidate
better by less than ``effect`` may be rejected.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ltr.errors import RolloutError

Outcome = Literal["promote", "reject", "continue"]


@dataclass(frozen=True)
class GateDecision:
    """One evaluation of the gate with the numbers it was made on (logged as is).

    ``n`` counts every interleaved query (ties included); ``statistic`` is the LLR and
    the thresholds are on the same log scale.
    """

    outcome: Outcome
    wins: int
    losses: int
    ties: int
    n: int
    statistic: float
    threshold_upper: float
    threshold_lower: float
    reason: str


def sprt_thresholds(alpha: float, beta: float) -> tuple[float, float]:
    """(upper, lower) LLR boundaries: ``log(1/alpha)`` (Ville) and ``log(beta/(1-alpha))``."""
    _check_open_unit(alpha, "alpha")
    _check_open_unit(beta, "beta")
    return math.log(1.0 / alpha), math.log(beta / (1.0 - alpha))


def sign_llr(wins: int, losses: int, effect: float) -> float:
    """Log likelihood ratio of ``p = 0.5 + effect`` against ``p = 0.5`` after the counts."""
    if not 0.0 < effect < 0.5:
        raise RolloutError(f"effect must be in (0, 0.5), got {effect!r}")
    p1 = 0.5 + effect
    return wins * math.log(2.0 * p1) + losses * math.log(2.0 * (1.0 - p1))


def sign_test_gate(
    wins: int,
    losses: int,
    ties: int,
    *,
    alpha: float = 0.05,
    beta: float = 0.2,
    effect: float = 0.1,
    min_queries: int = 200,
) -> GateDecision:
    """Decide promote / reject / continue from the interleaving counts so far.

    ``alpha`` bounds the chance of promoting a candidate that is not better (at any number
    of looks); ``beta`` is the chance of rejecting one that is ``effect`` better (wins
    ``0.5 + effect`` of the non-tied queries). Pure and cheap: call it after every query.
    """
    wins, losses, ties = (_count(wins, "wins"), _count(losses, "losses"), _count(ties, "ties"))
    min_queries = _count(min_queries, "min_queries")
    upper, lower = sprt_thresholds(alpha, beta)
    llr = sign_llr(wins, losses, effect)
    n = wins + losses + ties
    outcome: Outcome
    if n < min_queries:
        outcome, reason = "continue", f"{n} of the minimum {min_queries} queries"
    elif llr >= upper:
        outcome = "promote"
        reason = f"LLR {llr:.3f} >= {upper:.3f}: candidate better (alpha={alpha})"
    elif llr <= lower:
        outcome = "reject"
        reason = f"LLR {llr:.3f} <= {lower:.3f}: candidate not better by {effect} (beta={beta})"
    else:
        outcome, reason = "continue", f"LLR {llr:.3f} between {lower:.3f} and {upper:.3f}"
    return GateDecision(outcome, wins, losses, ties, n, llr, upper, lower, reason)


def _count(value: int, name: str) -> int:
    """A non-negative integer (numpy integers too, as counts from arrays come); bools and
    floats are refused rather than truncated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise RolloutError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_open_unit(value: float, name: str) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise RolloutError(f"{name} must be in (0, 1), got {value!r}")


def first_decisions(
    outcomes: np.ndarray,
    *,
    alpha: float = 0.05,
    beta: float = 0.2,
    effect: float = 0.1,
    min_queries: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the gate after every query of many simulated experiments at once.

    ``outcomes`` is (runs, queries) of -1 / 0 / +1 (``credit`` of each query, in order).
    Returns ``(decision, stopped_at)`` per run: +1 promote, -1 reject, 0 still running at
    the end of the row; ``stopped_at`` is the number of queries seen at the decision (the
    row length when none). Same rule as ``sign_test_gate`` (the tests check they agree),
    vectorized so the false-positive and power simulations take milliseconds.
    """
    out = np.asarray(outcomes)
    if out.ndim != 2:
        raise RolloutError(f"outcomes must be 2-D (runs, queries), got shape {out.shape}")
    upper, lower = sprt_thresholds(alpha, beta)
    step_win, step_loss = sign_llr(1, 0, effect), sign_llr(0, 1, effect)
    llr = np.cumsum(np.where(out > 0, step_win, np.where(out < 0, step_loss, 0.0)), axis=1)
    n = np.arange(1, out.shape[1] + 1)
    eligible = n >= min_queries
    hit_up = eligible & (llr >= upper)
    hit_low = eligible & (llr <= lower)
    hit = hit_up | hit_low
    any_hit = hit.any(axis=1)
    first = np.where(any_hit, hit.argmax(axis=1), out.shape[1] - 1)
    rows = np.arange(out.shape[0])
    decision = np.where(any_hit, np.where(hit_up[rows, first], 1, -1), 0)
    return decision.astype(np.int8), np.where(any_hit, first + 1, out.shape[1])
