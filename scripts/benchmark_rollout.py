"""Sensitivity of team-draft interleaving vs an A/B split, in simulated queries to detect a
known ranker difference at the same error rates (alpha 0.05 two-sided, power 0.8).

World: each query has 20 candidate documents with graded relevance 0-4; the share of
relevant documents varies a lot between queries (Beta(0.6, 2)), which is what makes
per-query click counts noisy in an A/B split. Users follow a position-based model on the
top 10: examination 1/rank, attractiveness from the grade (ltr.click_models_sim). Two kinds
of candidate (their true NDCG@10 is printed, so the difference can be compared with e.g. the
+0.024 NDCG@10 of the reranker over linear fusion in docs/evaluation.md):
- ``sigma=S``: rankers of known quality score ``grade + N(0, S^2)``; production has 1.5;
- ``clicks=N``: the judgment-trained vs click-trained difference of the issue: production
  ranks by ``grade + N(0, 1)`` (trained on judgments), the candidate re-orders production's
  top 10 by the debiased click-through rate of N logged pages per query (retrained on the
  clicks production's own pages got), like ``ltrsearch-train --events`` does.

For each candidate: per-query outcomes are simulated for a large population (``--queries``
per arm). Interleaving: the win/loss/tie of the candidate on one interleaved page, tested
with a one-sample z-test of mean(outcome) = 0 (the sign test with ties). A/B: clicks@10 per
query, half of the queries on each arm, Welch's t-test. The queries needed follow from the
simulated means and variances (normal approximation), and are then CHECKED by Monte Carlo:
``--runs`` experiments of that size resampled from the population give the power and, on
a population with the candidate's sides swapped at random, the false-positive rate.
The sequential gate (ltr.sequential, effect 0.1) is run on the same interleaving streams.

    .venv/bin/python -m scripts.benchmark_rollout [--queries 100000] [--runs 400] [--seed 0]
        [--parts gate,offline,sensitivity] [--candidates sigma=1.3,clicks=10,...]
        [--spreads 0,0.9] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import numpy as np

from ltr.click_models_sim import attractiveness_from_grades
from ltr.counterfactual import (
    estimate,
    fit_pbm_regression_em,
    pages_from_rows,
    pbm_truth,
    simulate_log,
)
from ltr.interleaving import credit, team_draft
from ltr.sequential import first_decisions

N_DOCS, K = 20, 10
EXAMINE = 1.0 / np.arange(1, K + 1)
Z_ALPHA, Z_BETA = 1.959963984540054, 0.8416212335729143  # alpha 0.05 two-sided, power 0.8
IDS = [str(i) for i in range(N_DOCS)]
PRODUCTION_SIGMA = 1.5
JUDGMENT_SIGMA = 1.0  # the judgment-trained production of the clicks=N scenarios
GATE_EFFECTS = (0.1, 0.03)


def _queries(n: int, rng: np.random.Generator, user_spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Grades [n, N_DOCS] and attractiveness [n, N_DOCS] of ``n`` simulated queries; the
    user behind each query clicks ``1 - user_spread * U(0, 1)`` times as readily."""
    share = rng.beta(0.6, 2.0, size=(n, 1))
    grades = np.where(rng.random((n, N_DOCS)) < share, rng.integers(1, 5, (n, N_DOCS)), 0)
    attract = np.asarray(attractiveness_from_grades(grades, 4, noise=0.05))
    return grades, attract * (1 - user_spread * rng.random((n, 1)))


def _rank(grades: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(-(grades + rng.normal(0, sigma, grades.shape)), axis=1, kind="stable")


def _ndcg10(grades: np.ndarray, order: np.ndarray) -> float:
    gain = 2.0 ** np.take_along_axis(grades, order[:, :K], 1) - 1
    disc = 1 / np.log2(np.arange(2, K + 2))
    best = -np.sort(-grades, axis=1)[:, :K]  # the grades in descending order
    ideal = ((2.0**best - 1) * disc).sum(1)
    ok = ideal > 0
    return float(((gain * disc).sum(1)[ok] / ideal[ok]).mean())


def _click_probs(attract: np.ndarray, order: np.ndarray) -> np.ndarray:
    """P(click) per query and top-10 position of the ranking ``order`` (PBM users)."""
    return EXAMINE * np.take_along_axis(attract, order[:, :K], 1)


def _interleave(
    attract: np.ndarray, prod: np.ndarray, cand: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per query: +1 candidate wins, -1 production wins, 0 tie, on one interleaved page."""
    coin = random.Random(int(rng.integers(2**31)))
    out = np.zeros(len(attract), dtype=np.int8)
    u = rng.random((len(attract), K))
    for q in range(len(attract)):
        docs, teams = team_draft([IDS[i] for i in prod[q]], [IDS[i] for i in cand[q]], K, coin)
        shown = np.array([int(d) for d in docs])
        clicked = np.flatnonzero(u[q, : len(shown)] < EXAMINE[: len(shown)] * attract[q, shown])
        out[q] = credit(teams, clicked.tolist())
    return out


def _power_check(
    stat_fn: Any, pools: tuple[np.ndarray, ...], n: int, runs: int, rng: np.random.Generator
) -> float:
    """Share of ``runs`` resampled experiments of size ``n`` where |z| > Z_ALPHA."""
    hits = 0
    for _ in range(runs):
        draws = [pool[rng.integers(0, len(pool), n)] for pool in pools]
        hits += abs(stat_fn(*draws)) > Z_ALPHA
    return hits / runs


def _z_il(o: np.ndarray) -> float:
    sd = o.std(ddof=1)
    return float(o.mean() / sd * np.sqrt(len(o))) if sd > 0 else 0.0


def _z_ab(a: np.ndarray, b: np.ndarray) -> float:
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return float((b.mean() - a.mean()) / se) if se > 0 else 0.0


def _click_trained(
    attract: np.ndarray, prod: np.ndarray, sessions: int, rng: np.random.Generator
) -> np.ndarray:
    """A ranker learned from production's own clicks: ``sessions`` past pages per query,
    production's top 10 re-ordered by the PBM-debiased click-through rate (clicks /
    (shown x examination)); documents never shown keep production's order below them,
    since the log says nothing about them."""
    top = prod[:, :K]
    clicks = rng.binomial(sessions, EXAMINE * np.take_along_axis(attract, top, 1))
    score = np.empty(prod.shape)
    np.put_along_axis(score, top, clicks / (sessions * EXAMINE), 1)
    np.put_along_axis(score, prod[:, K:], -np.arange(1.0, prod.shape[1] - K + 1), 1)
    return np.argsort(-score, axis=1, kind="stable")


def _rankers(
    candidate: str, grades: np.ndarray, attract: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(production, candidate) orders. ``sigma=S``: production grade + N(0, 1.5^2) vs a
    candidate with noise S. ``clicks=N``: a judgment-trained production (noise 1.0) vs the
    model retrained from N of its logged pages per query (``_click_trained``)."""
    kind, _, value = candidate.partition("=")
    if kind == "sigma":
        return _rank(grades, PRODUCTION_SIGMA, rng), _rank(grades, float(value), rng)
    if kind == "clicks":
        prod = _rank(grades, JUDGMENT_SIGMA, rng)
        return prod, _click_trained(attract, prod, int(value), rng)
    raise SystemExit(f"unknown candidate {candidate!r}: use sigma=S or clicks=N")


def scenario(
    candidate: str, n: int, runs: int, rng: np.random.Generator, user_spread: float = 0.0
) -> dict[str, Any]:
    """Measure one candidate (see ``_rankers``) against its production ranker."""
    t0 = time.perf_counter()
    grades, attract = _queries(n, rng, user_spread)
    prod, cand = _rankers(candidate, grades, attract, rng)
    outcomes = _interleave(attract, prod, cand, rng)
    # A/B pools: both arms on the same query population with common random numbers, so the
    # pools differ by the rankers only; each simulated experiment then draws its arms'
    # queries independently from them (different users per arm, as in a real split)
    p_a, p_b = _click_probs(attract, prod), _click_probs(attract, cand)
    u = rng.random(p_a.shape)
    clicks_a, clicks_b = (u < p_a).sum(1), (u < p_b).sum(1)
    mu_o, sd_o = float(outcomes.mean()), float(outcomes.std(ddof=1))
    delta = float(clicks_b.mean() - clicks_a.mean())
    var_ab = float(clicks_a.var(ddof=1) + clicks_b.var(ddof=1))
    n_il = int(np.ceil(((Z_ALPHA + Z_BETA) * sd_o / mu_o) ** 2))
    n_ab_arm = int(np.ceil((Z_ALPHA + Z_BETA) ** 2 * var_ab / delta**2))
    signs = np.where(rng.random(n) < 0.5, 1, -1)  # the null: sides swapped at random
    horizon = min(4 * max(n_il, 300), 20_000)  # bounded memory: runs x horizon float64
    stream = outcomes[rng.integers(0, n, (min(runs, 200), horizon))]
    gate = {}
    for effect in GATE_EFFECTS:
        decision, stopped = first_decisions(stream, effect=effect)
        decided = decision != 0
        gate[f"effect={effect}"] = {
            "promoted": float((decision == 1).mean()),
            "rejected": float((decision == -1).mean()),
            "undecided": float((~decided).mean()),
            "median_queries_to_decision": float(np.median(stopped[decided]))
            if decided.any()
            else None,
        }
    wins, losses = int((outcomes > 0).sum()), int((outcomes < 0).sum())
    return {
        "candidate": candidate,
        "ndcg10": {"production": _ndcg10(grades, prod), "candidate": _ndcg10(grades, cand)},
        "expected_clicks10_per_query": {
            "production": float(p_a.sum(1).mean()),
            "candidate": float(p_b.sum(1).mean()),
        },
        # what an A/B split fights: the spread of clicks@10 between queries and users
        # (the expected clicks differ) plus the click noise of each page
        "ab_variance_production": {
            "total": float(clicks_a.var(ddof=1)),
            "between_queries": float(p_a.sum(1).var(ddof=1)),
            "click_noise": float((p_a * (1 - p_a)).sum(1).mean()),
        },
        "clicks10_per_query": {
            "production": float(clicks_a.mean()),
            "candidate": float(clicks_b.mean()),
        },
        "interleaving": {
            "win_rate_of_decided": wins / max(wins + losses, 1),
            "tie_share": float((outcomes == 0).mean()),
            "queries_needed": n_il,
            "power_at_that_n": _power_check(_z_il, (outcomes,), n_il, runs, rng),
            "false_positive_rate_at_that_n": _power_check(
                _z_il, (outcomes * signs,), n_il, runs, rng
            ),
        },
        "ab_split": {
            "queries_needed_total": 2 * n_ab_arm,
            "power_at_that_n": _power_check(_z_ab, (clicks_a, clicks_b), n_ab_arm, runs, rng),
            "false_positive_rate_at_that_n": _power_check(
                _z_ab, (clicks_a, clicks_a), n_ab_arm, runs, rng
            ),
        },
        "ratio_ab_over_interleaving": 2 * n_ab_arm / n_il,
        "user_spread": user_spread,
        "sequential_gate": gate,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def gate_characteristics(runs: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The gate (defaults: alpha 0.05, beta 0.2, effect 0.1, 200 queries minimum) on
    simulated win/loss/tie streams with 60% ties: promote / reject shares and queries."""
    out = []
    for p_win in (0.45, 0.5, 0.55, 0.6, 0.65):
        decided = rng.random((runs, 5000)) >= 0.6
        stream = np.where(decided, np.where(rng.random((runs, 5000)) < p_win, 1, -1), 0)
        decision, stopped = first_decisions(stream)
        out.append(
            {
                "win_rate_of_decided": p_win,
                "promoted": float((decision == 1).mean()),
                "rejected": float((decision == -1).mean()),
                "undecided": float((decision == 0).mean()),
                "median_queries": float(np.median(stopped)),
                "p90_queries": float(np.quantile(stopped, 0.9)),
            }
        )
    return out


def offline_accuracy(seeds: int, pages: int) -> dict[str, Any]:
    """ltr.counterfactual on simulated logs with known truth, examination FITTED by
    regression-EM (the CLI's path): curve error, interval coverage and width."""
    theta = 1.0 / np.arange(1, 11) ** 0.8
    weights = np.array([1.2, -0.6, 0.4])
    errors: list[float] = []
    covered: dict[str, int] = {}
    widths: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for seed in range(seeds):
        X, gamma, clicks = simulate_log(1000 + seed, pages, theta, weights)
        page_ids, positions = np.repeat(np.arange(pages), 10), np.tile(np.arange(10), pages)
        fit = fit_pbm_regression_em(X.reshape(-1, 3), positions, clicks.ravel())
        errors.append(float(np.abs(fit.examination - theta).max()))
        logged = pages_from_rows(page_ids, positions, clicks.ravel())
        cand = X @ weights
        truth = dict(zip(("clicks@k", "rr"), pbm_truth(logged, cand, theta, gamma, 5), strict=True))
        rel = logged.to_matrix(fit.relevance if fit.relevance is not None else clicks.ravel())
        for e in estimate(logged, cand, fit.examination, 5, rel):
            key = f"{e.metric} {e.estimator}"
            covered[key] = covered.get(key, 0) + int(e.low <= truth[e.metric] <= e.high)
            widths.setdefault(key, []).append(e.high - e.low)
    return {
        "seeds": seeds,
        "pages": pages,
        "theta_max_abs_error_median": float(np.median(errors)),
        "theta_max_abs_error_max": float(np.max(errors)),
        "coverage": {k: v / seeds for k, v in covered.items()},
        "mean_ci_width": {k: float(np.mean(v)) for k, v in widths.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--queries", type=int, default=100_000, help="population per arm")
    p.add_argument("--runs", type=int, default=400, help="Monte Carlo experiments per check")
    p.add_argument(
        "--candidates",
        default="sigma=1.3,sigma=1.0,sigma=0.5,clicks=10,clicks=100",
        help="sigma=S (noisy relevance order) or clicks=N (retrained from N logged pages)",
    )
    p.add_argument("--spreads", default="0,0.9", help="user click-propensity spreads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", default="gate,offline,sensitivity", help="what to measure")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {"args": vars(args)}
    if "gate" in parts:
        report["gate"] = gate_characteristics(2000, rng)
        for row in report["gate"]:
            print("gate", json.dumps(row), flush=True)
    if "offline" in parts:
        report["offline"] = offline_accuracy(20, 3000)
        print("offline", json.dumps(report["offline"]), flush=True)
    results: list[dict[str, Any]] = []
    report["sensitivity"] = results
    grid = [(float(u), c) for u in args.spreads.split(",") for c in args.candidates.split(",")]
    for spread, candidate in grid if "sensitivity" in parts else []:
        r = scenario(candidate, args.queries, args.runs, rng, spread)
        results.append(r)
        il, ab = r["interleaving"], r["ab_split"]
        nd = r["ndcg10"]
        print(
            f"spread {spread} {candidate}: NDCG@10 {nd['production']:.4f} -> "
            f"{nd['candidate']:.4f} "
            f"({nd['candidate'] - nd['production']:+.4f}); interleaving win rate "
            f"{il['win_rate_of_decided']:.3f} ({il['tie_share']:.0%} ties) needs "
            f"{il['queries_needed']} queries (power {il['power_at_that_n']:.2f}, FPR "
            f"{il['false_positive_rate_at_that_n']:.3f}); A/B needs "
            f"{ab['queries_needed_total']} (power {ab['power_at_that_n']:.2f}, FPR "
            f"{ab['false_positive_rate_at_that_n']:.3f}); ratio "
            f"{r['ratio_ab_over_interleaving']:.1f}x; gate: {r['sequential_gate']} "
            f"[{r['seconds']} s]",
            flush=True,
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
