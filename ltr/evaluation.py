"""Offline evaluation: does the reranker beat every retriever and fusion it starts from?

Input is replayed judged queries (search.replay: candidate sets, feature matrices and
labels built through the serving code path). Methods compared on the SAME candidates:

- ``bm25`` / ``dense``: each retriever's own result list;
- ``rrf``: reciprocal rank fusion (k = 60); ``linear``: min-max score fusion, weight fitted
  by grid search on the training folds;
- ``ltr``: LambdaMART (ltr.train.fit_recipe) on text + static features, boosted from the
  training fold's linear fusion (base margin, architecture principle 12); zero trees when
  the inner folds show no gain, so it is then exactly that fold's ``linear``;
- with simulated clicks: ``ltr_behavior`` (text + static + behavior features) and
  ``ltr_behavior_cold`` (the same model on test queries that have no click history).

Query-level k-fold cross-validation: no query is in two folds; inside each training fold
ltr.train.fit_recipe (the recipe scripts/train.py ships) picks the number of rounds on
inner query-level folds. Every number is a mean over held-out queries only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ltr import behavior as bh
from ltr.config import TrainConfig
from ltr.dataset import RankingData
from ltr.errors import LTRError, TrainingDataError
from ltr.features import (
    BEHAVIOR_FEATURES,
    DEFAULT_TEXT_FEATURES,
    STATIC_FEATURES,
    compute,
)
from ltr.fusion import fit_linear, fusion_score
from ltr.metrics import evaluate, parse_metric, rank_ids, summarize
from ltr.train import COLD_COPY, query_folds
from ltr.types import BM25, DENSE, EXTRA_RETRIEVERS, CandidateSet

DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "ndcg@5", "mrr@10", "map@100", "recall@100")
BASELINES: tuple[str, ...] = ("bm25", "dense", "rrf", "linear")

# The reranker recipe is defined once, in ltr.config.TrainConfig's defaults and
# ltr.train.fit_recipe; scripts/train.py ships the same (a booster that starts from the
# fusion ranking only has to learn corrections: shallow, slow, heavily regularized;
# architecture principle 12). Nothing here is tuned to one collection. nthread 1: on a
# shared, oversubscribed CPU OpenMP's spinning made 2 threads ~9x slower than 1.
DEFAULT_TRAIN = TrainConfig()


class EvaluationError(LTRError):
    """The evaluation cannot run on this input (too few queries, no judgments...)."""


@dataclass(frozen=True)
class QueryData:
    """One judged query as the evaluation needs it (built by search.replay)."""

    qid: str
    cs: CandidateSet
    X: np.ndarray  # float32 [n, F] over ``feature_names`` of the EvalData
    labels: np.ndarray
    qrels: Mapping[str, float]


@dataclass(frozen=True)
class EvalData:
    feature_names: tuple[str, ...]
    queries: list[QueryData]

    @classmethod
    def from_replay(cls, replay: Any) -> EvalData:
        """From a search.replay.Replay (duck-typed: ltr must not import search)."""
        qs = [
            QueryData(rq.query.id, rq.cs, rq.X, rq.labels, rq.qrels)
            for rq in replay.queries
            if any(g > 0 for g in rq.qrels.values())
        ]
        return cls(tuple(replay.feature_names), qs)

    def columns(self, names: Sequence[str], q: QueryData) -> np.ndarray:
        pos = {n: i for i, n in enumerate(self.feature_names)}
        missing = [n for n in names if n not in pos]
        if missing:
            # not replayed: compute from the candidate set (same feature definitions)
            return compute(q.cs, names)
        return q.X[:, [pos[n] for n in names]]


@dataclass(frozen=True)
class EvalConfig:
    """Everything an evaluation run depends on (recorded in the report)."""

    folds: int = 5
    seed: int = 0
    metrics: tuple[str, ...] = DEFAULT_METRICS
    features: tuple[str, ...] = DEFAULT_TEXT_FEATURES + STATIC_FEATURES
    # fusion the booster starts from ("" = none); "linear" uses each training fold's fitted
    # weights (the same fusion the "linear" baseline ranks by), so the trees learn a residual
    margin: str = DEFAULT_TRAIN.base_margin
    margin_scale: float = DEFAULT_TRAIN.base_margin_scale
    train: TrainConfig = DEFAULT_TRAIN
    # simulated clicks (0 = off): sessions per query, PBM on the fusion ranking
    clicks: int = 0
    shown: int = 20  # result-list length shown in a simulated session
    click_noise: float = 0.1  # click probability of an examined irrelevant document
    exam_eta: float = bh.DEFAULT_EXAM_ETA
    history_days: float = 30.0  # simulated sessions spread uniformly over this window
    # share of training queries added again without click history
    cold_share: float = DEFAULT_TRAIN.cold_share
    permutations: int = 10_000  # randomization test draws
    # validation: k >= 2 = inner query-level k-fold, 1 = one split (ltr.train.fit_recipe)
    inner_folds: int = DEFAULT_TRAIN.inner_folds
    smooth_rounds: int = DEFAULT_TRAIN.smooth_rounds  # moving average over the NDCG curve

    def validate(self) -> None:
        if not isinstance(self.folds, int) or self.folds < 2:
            raise EvaluationError(f"folds must be an integer >= 2, got {self.folds!r}")
        if self.clicks < 0:
            raise EvaluationError(f"clicks must be >= 0, got {self.clicks}")
        if not 0 <= self.cold_share <= 1:
            raise EvaluationError(f"cold_share must be in [0, 1], got {self.cold_share}")
        if self.shown < 1:
            raise EvaluationError(f"shown must be >= 1, got {self.shown}")
        for m in self.metrics:
            parse_metric(m)
        if "ndcg@10" not in self.metrics:
            raise EvaluationError("metrics must include ndcg@10 (the headline metric)")


# ------------------------------------------------------------------------------------
# helpers


def _margin(
    cfg: EvalConfig, cs: CandidateSet, params: Mapping[str, Any] | None = None
) -> np.ndarray | None:
    if not cfg.margin:
        return None
    return fusion_score(cs, cfg.margin, {**dict(params or {}), "scale": cfg.margin_scale})


def folds_of(qids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """k disjoint query folds, sizes within 1; depends only on the id set and the seed."""
    if len(set(qids)) < k:
        raise EvaluationError(f"cannot make {k} folds from {len(set(qids))} judged queries")
    return query_folds(qids, k, seed)


def paired_tests(
    a: Mapping[str, float], b: Mapping[str, float], permutations: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Paired comparison of per-query values a vs b: mean difference, paired t-test p-value
    and a two-sided sign-flip randomization test p-value (Smucker et al. 2007)."""
    from scipy import stats

    qs = [q for q in a if q in b and not math.isnan(a[q]) and not math.isnan(b[q])]
    d = np.array([a[q] - b[q] for q in qs], dtype=np.float64)
    if d.size < 2:
        return {"n": float(d.size), "mean_diff": math.nan, "t_p": math.nan, "rand_p": math.nan}
    obs = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    done = 0
    while done < permutations:
        m = min(2000, permutations - done)
        signs = rng.choice((-1.0, 1.0), size=(m, d.size))
        hits += int(np.sum(np.abs((signs * d).mean(axis=1)) >= obs - 1e-15))
        done += m
    t = stats.ttest_rel([a[q] for q in qs], [b[q] for q in qs])
    return {
        "n": float(d.size),
        "mean_diff": float(d.mean()),
        "t_p": float(t.pvalue) if np.isfinite(t.pvalue) else (1.0 if obs == 0 else 0.0),
        "rand_p": (hits + 1) / (permutations + 1),
    }


def _ranking_data(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[str], np.ndarray | None]],
    names: Sequence[str],
) -> RankingData:
    return RankingData.from_groups(list(rows), names)


def _fit(cfg: EvalConfig, train_rows: Sequence[Any], names: Sequence[str], seed: int) -> Any:
    """One booster for the training queries: ltr.train.fit_recipe (rounds chosen from
    smoothed inner-fold validation curves, then trained on all training queries)."""
    from ltr.train import fit_recipe

    tcfg = dataclasses.replace(
        cfg.train,
        seed=seed,
        use_base_margin=bool(cfg.margin),
        inner_folds=cfg.inner_folds,
        smooth_rounds=cfg.smooth_rounds,
    )
    return fit_recipe(_ranking_data(train_rows, names), tcfg)


# ------------------------------------------------------------------------------------
# behavior: simulated sessions -> aggregates -> per-query arrays (warm or cold)


@dataclass
class ClickHistory:
    """Simulated click logs and their aggregates, overall and per query."""

    total: dict[str, dict[tuple[str, ...], float]]
    per_query: dict[str, dict[str, dict[tuple[str, ...], float]]]
    sessions: int = 0
    clicks: int = 0
    now: float = 0.0

    def arrays(self, qid: str, ids: Sequence[str], cold: bool) -> dict[str, np.ndarray]:
        """Aggregates for the candidates; ``cold``: as if this query had never been
        searched (no qd history, and its sessions removed from the document totals)."""
        warm = bh.behavior_arrays(self.total, qid, ids)
        if not cold:
            return warm
        own = bh.behavior_arrays(self.per_query.get(qid, {}), qid, ids)
        out: dict[str, np.ndarray] = {}
        n = len(ids)
        for key in bh.AGGREGATE_KEYS:
            if key.startswith("qd_"):
                out[key] = np.full(n, np.nan)
            else:
                out[key] = warm[key] - np.nan_to_num(own[key], nan=0.0)
        none = ~(out["d_impressions"] > 0.5)  # only this query's sessions showed the doc
        for key in bh.AGGREGATE_KEYS:
            if key.startswith("d_"):
                out[key][none] = np.nan
        return out


def simulate_history(data: EvalData, cfg: EvalConfig) -> ClickHistory:
    """``cfg.clicks`` PBM sessions per judged query on its fusion ranking (top ``shown``).

    Attractiveness comes from the graded judgments (ltr.click_models: noise + (1 - noise)
    * (2^g - 1) / (2^max - 1)); unjudged documents count as grade 0. Each query's clicks are
    drawn from its own seeded stream (seed, query id), so they do not depend on the fold
    assignment or on anything trained. Examination follows ltr.behavior's 1/p**eta curve,
    the same curve the aggregation divides by.
    """
    import zlib

    from ltr.click_models import attractiveness_from_grades, simulate_pbm

    max_grade = max((g for q in data.queries for g in q.qrels.values()), default=1.0)
    max_grade = max(float(max_grade), 1.0)
    now = 1.0e9
    exam = bh.examination_probs(cfg.shown, cfg.exam_eta)
    total_parts = []
    per_query: dict[str, dict[str, dict[tuple[str, ...], float]]] = {}
    n_sessions = n_clicks = 0
    for q in data.queries:
        order = rank_ids(q.cs.ids, fusion_score(q.cs, "rrf"))[: cfg.shown]
        grades = np.array([q.qrels.get(d, 0.0) for d in order], dtype=np.float64)
        attr = attractiveness_from_grades(np.clip(grades, 0, max_grade), max_grade, cfg.click_noise)
        seed = (cfg.seed * 1_000_003 + zlib.crc32(q.qid.encode())) % (2**32)
        rng = np.random.default_rng(seed)
        sessions = simulate_pbm(
            {q.qid: order},
            {(q.qid, d): float(a) for d, a in zip(order, attr, strict=True)},
            exam,
            cfg.clicks,
            rng,
        )
        ages = rng.uniform(0, cfg.history_days * 86400.0, size=len(sessions))
        sessions = [
            dataclasses.replace(s, ts=now - age) for s, age in zip(sessions, ages, strict=True)
        ]
        n_sessions += len(sessions)
        n_clicks += sum(sum(s.clicks) for s in sessions)
        agg = bh.aggregate_sessions(sessions, now=now, exam_probs=exam)
        per_query[q.qid] = agg
        total_parts.append(agg)
    return ClickHistory(bh.merge_aggregates(*total_parts), per_query, n_sessions, n_clicks, now)


def _behavior_X(q: QueryData, history: ClickHistory, cold: bool) -> np.ndarray:
    cs = q.cs.with_behavior(history.arrays(q.qid, q.cs.ids, cold))
    return compute(cs, BEHAVIOR_FEATURES)


# ------------------------------------------------------------------------------------
# the evaluation


@dataclass
class EvalResult:
    report: dict[str, Any]
    runs: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def run_evaluation(data: EvalData, cfg: EvalConfig | None = None) -> EvalResult:
    """Cross-validated comparison of the baselines and the rerankers; returns the report."""
    cfg = cfg or EvalConfig()
    cfg.validate()
    queries = data.queries
    if len(queries) < cfg.folds:
        raise EvaluationError(
            f"{len(queries)} judged queries with a relevant document; need >= {cfg.folds}"
        )
    by_id = {q.qid: q for q in queries}
    qrels = {q.qid: dict(q.qrels) for q in queries}
    names = tuple(cfg.features)
    runs: dict[str, dict[str, list[str]]] = {m: {} for m in BASELINES}
    runs["ltr"] = {}
    # the extra retrievers the replay ran (ltr.types.EXTRA_RETRIEVERS): single retrievers too
    extra = [r for r in EXTRA_RETRIEVERS if any(r in q.cs.ranks for q in queries)]
    for r in extra:
        runs[r] = {}
    for one in queries:
        runs["bm25"][one.qid] = _retriever_list(one.cs, BM25)
        runs["dense"][one.qid] = _retriever_list(one.cs, DENSE)
        runs["rrf"][one.qid] = rank_ids(one.cs.ids, fusion_score(one.cs, "rrf"))
        for r in extra:
            runs[r][one.qid] = _retriever_list(one.cs, r)

    history = simulate_history(data, cfg) if cfg.clicks > 0 else None
    if history is not None:
        runs["ltr_behavior"] = {}
        runs["ltr_behavior_cold"] = {}
    beh_names = names + BEHAVIOR_FEATURES
    folds = folds_of(list(by_id), cfg.folds, cfg.seed)
    fold_info: list[dict[str, Any]] = []
    linear_weights: list[dict[str, float]] = []
    for i, test_ids in enumerate(folds):
        train_ids = [q for j, f in enumerate(folds) if j != i for q in f]
        lin = fit_linear([(by_id[q].cs, by_id[q].qrels) for q in train_ids])
        linear_weights.append(dict(lin["weights"]))
        for q in test_ids:
            runs["linear"][q] = rank_ids(by_id[q].cs.ids, fusion_score(by_id[q].cs, "linear", lin))

        mparams = lin if cfg.margin == "linear" else None

        def margin_of(
            qd: QueryData, mparams: Mapping[str, Any] | None = mparams
        ) -> np.ndarray | None:
            return _margin(cfg, qd.cs, mparams)

        rows = [
            (
                q,
                data.columns(names, by_id[q]),
                by_id[q].labels,
                by_id[q].cs.ids,
                margin_of(by_id[q]),
            )
            for q in train_ids
        ]
        model = _fit(cfg, rows, names, cfg.train.seed + i)
        info = {
            "fold": i,
            "train_queries": len(train_ids),
            "test_queries": len(test_ids),
            "ltr_rounds": model.best_iteration + 1,
            "ltr_eta": float(model.params["eta"]),  # the rate chosen on the inner folds
        }
        for q in test_ids:
            qd = by_id[q]
            s = model.predict(data.columns(names, qd), margin_of(qd))
            runs["ltr"][q] = rank_ids(qd.cs.ids, s)

        if history is not None:
            # every training query once with its click history; a share of them again as
            # a "cold" copy with the history withheld (qd unseen, its sessions removed from
            # the document totals), so the trees also learn the no-history branch from the
            # text features instead of leaving it to a remnant of the data
            rng = np.random.default_rng([cfg.seed, i, 17])
            n_cold = round(cfg.cold_share * len(train_ids))
            cold_train = set(rng.choice(sorted(train_ids), size=n_cold, replace=False).tolist())
            brows = []
            for q in train_ids:
                qd = by_id[q]
                base_x, margin = data.columns(names, qd), margin_of(qd)
                brows.append(
                    (
                        q,
                        np.hstack([base_x, _behavior_X(qd, history, False)]),
                        qd.labels,
                        qd.cs.ids,
                        margin,
                    )
                )
                if q in cold_train:
                    brows.append(
                        (
                            q + COLD_COPY,
                            np.hstack([base_x, _behavior_X(qd, history, True)]),
                            qd.labels,
                            qd.cs.ids,
                            margin,
                        )
                    )
            bmodel = _fit(cfg, brows, beh_names, cfg.train.seed + 100 + i)
            info["ltr_behavior_rounds"] = bmodel.best_iteration + 1
            info["ltr_behavior_eta"] = float(bmodel.params["eta"])
            for q in test_ids:
                qd = by_id[q]
                base = data.columns(names, qd)
                margin = margin_of(qd)
                for cold, method in ((False, "ltr_behavior"), (True, "ltr_behavior_cold")):
                    Xb = np.hstack([base, _behavior_X(qd, history, cold)])
                    runs[method][q] = rank_ids(qd.cs.ids, bmodel.predict(Xb, margin))
        fold_info.append(info)

    report = _report(cfg, data, runs, qrels, fold_info, linear_weights, history)
    return EvalResult(report=report, runs=runs)


def _retriever_list(cs: CandidateSet, retriever: str) -> list[str]:
    r = np.asarray(cs.ranks.get(retriever, np.full(len(cs.ids), np.nan)), dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(r))
    idx = idx[np.argsort(r[idx], kind="stable")]
    return [cs.ids[i] for i in idx]


def _report(
    cfg: EvalConfig,
    data: EvalData,
    runs: Mapping[str, Mapping[str, list[str]]],
    qrels: Mapping[str, Mapping[str, float]],
    fold_info: list[dict[str, Any]],
    linear_weights: list[dict[str, float]],
    history: ClickHistory | None,
) -> dict[str, Any]:
    # Judged-nonrelevant documents (grade <= 0) removed from the rankings: on Cranfield these
    # are exactly the queries' own source papers (see docs/evaluation.md).
    exclude = {q: {d for d, g in r.items() if g <= 0} for q, r in qrels.items()}
    per: dict[str, dict[str, dict[str, float]]] = {}
    methods: dict[str, dict[str, float]] = {}
    filtered: dict[str, dict[str, float]] = {}
    for m, run in runs.items():
        per[m] = evaluate(run, qrels, cfg.metrics)
        methods[m] = summarize(per[m])
        filtered[m] = summarize(evaluate(run, qrels, ["ndcg@10", "mrr@10"], exclude=exclude))
    best_baseline = max(BASELINES, key=lambda b: methods[b]["ndcg@10"])
    singles = ("bm25", "dense", *(r for r in EXTRA_RETRIEVERS if r in runs))
    best_single = max(singles, key=lambda b: methods[b]["ndcg@10"])
    sig: dict[str, Any] = {}
    for m in [x for x in runs if x.startswith("ltr")]:
        sig[m] = {
            "against": best_baseline,
            **paired_tests(
                per[m]["ndcg@10"], per[best_baseline]["ndcg@10"], cfg.permutations, cfg.seed
            ),
        }
    # the floor the recipe promises (issue 13): never significantly below linear fusion
    vs_linear = {
        m: paired_tests(per[m]["ndcg@10"], per["linear"]["ndcg@10"], cfg.permutations, cfg.seed)
        for m in runs
        if m.startswith("ltr")
    }
    per_query = {q: {m: per[m]["ndcg@10"][q] for m in runs} for q in sorted(qrels, key=_natural)}
    out: dict[str, Any] = {
        "queries": len(data.queries),
        "folds": cfg.folds,
        "seed": cfg.seed,
        "metrics": list(cfg.metrics),
        "methods": methods,
        "filtered": {
            "description": "judged-nonrelevant (grade 0) documents removed from "
            "every ranking before scoring",
            "methods": filtered,
        },
        "best_baseline": best_baseline,
        "best_single_retriever": best_single,
        "ltr_over_best_single": methods["ltr"]["ndcg@10"] / methods[best_single]["ndcg@10"],
        "significance": sig,
        "vs_linear": vs_linear,
        "goal": {
            # ltr >= max(RRF, linear) and >= 1.10 x the best single retriever
            "ltr_ge_fusion": methods["ltr"]["ndcg@10"]
            >= max(methods["rrf"]["ndcg@10"], methods["linear"]["ndcg@10"]),
            "ltr_ge_1.10x_single": methods["ltr"]["ndcg@10"]
            >= 1.10 * methods[best_single]["ndcg@10"],
        },
        "per_query_ndcg@10": per_query,
        "folds_detail": fold_info,
        "linear_weights": linear_weights,
        "config": {
            "features": list(cfg.features),
            "margin": cfg.margin,
            "margin_scale": cfg.margin_scale,
            # what a served model's manifest needs to reproduce this base margin
            "base_margin_spec": {"name": cfg.margin, "params": {"scale": cfg.margin_scale}},
            "train": dataclasses.asdict(cfg.train),
        },
    }
    if history is not None:
        out["clicks"] = {
            "sessions_per_query": cfg.clicks,
            "sessions": history.sessions,
            "clicks": history.clicks,
            "shown": cfg.shown,
            "click_noise": cfg.click_noise,
            "exam_eta": cfg.exam_eta,
            "cold_share": cfg.cold_share,
            "ltr_behavior_over_rrf": methods["ltr_behavior"]["ndcg@10"] / methods["rrf"]["ndcg@10"],
        }
    return out


def _natural(q: str) -> tuple[int, Any]:
    return (0, int(q)) if q.isdigit() else (1, q)


def markdown_table(report: Mapping[str, Any]) -> str:
    """The methods x metrics table (plus filtered NDCG@10) as GitHub markdown."""
    metrics = list(report["metrics"])
    head = "| method | " + " | ".join(metrics) + " | ndcg@10 filtered |"
    sep = "|---" * (len(metrics) + 2) + "|"
    lines = [head, sep]
    filt = report.get("filtered", {}).get("methods", {})
    for m, vals in report["methods"].items():
        f = filt.get(m, {}).get("ndcg@10", math.nan)
        lines.append(f"| {m} | " + " | ".join(f"{vals[k]:.4f}" for k in metrics) + f" | {f:.4f} |")
    return "\n".join(lines)


def check_min_queries(data: EvalData, folds: int) -> None:
    if len(data.queries) < folds:
        raise TrainingDataError(f"need at least {folds} judged queries, got {len(data.queries)}")
