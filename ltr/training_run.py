"""One training run: labelled rows in, a saved (and optionally promoted) model version out.

Whatever produced the rows (judged queries replayed through the serving code, or logged
impressions graded by a click model: search.training builds both), the run is the same:
hold out ``test_fraction`` of the queries (by query), continue from the promoted model when
the rows are served impressions, add cold copies, fit the recipe (ltr.train.fit_recipe),
report NDCG@10 of the model against the baseline on the held-out queries, save the version
(promote it on request). ltr.train owns how one booster is fit; this module owns the run
around it, and the two choices a source makes first: which features (``resolve_features``)
and which click model grades the log (``choose_click_model``). Nothing here needs search.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from ltr import click_models as cm
from ltr import features as F
from ltr.config import RegistryConfig, TrainConfig
from ltr.dataset import RankingData, split_by_query
from ltr.errors import LTRError, TrainingDataError
from ltr.fusion import RRF_MARGIN_SCALE, fit_linear_normed, linear_normed
from ltr.metrics import evaluate, rank_ids, summarize
from ltr.registry import ModelRegistry
from ltr.train import TrainedModel, add_cold_copies, fit_recipe
from ltr.types import BM25, DENSE

Log = Callable[[str], None]


def silent(_: str) -> None:
    """The default ``log``: progress lines go nowhere."""


def resolve_features(spec: str) -> tuple[str, ...]:
    """'text,static' / 'all' / explicit names -> ordered, de-duplicated feature names."""
    by_group = {
        "text": F.TEXT_FEATURES,
        "static": F.STATIC_FEATURES,
        "behavior": F.BEHAVIOR_FEATURES,
    }
    out: list[str] = []
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    if not tokens:
        raise TrainingDataError("--features is empty")
    for t in tokens:
        # "all": every registered feature, the opt-in text features included
        names = list(F.FEATURES) if t == "all" else by_group.get(t, (t,))
        F.resolve(names)  # unknown names -> UnknownNameError listing the valid ones
        out.extend(n for n in names if n not in out)
    return tuple(out)


def choose_click_model(
    sessions: Sequence[cm.Session], name: str, seed: int, log: Log = silent
) -> cm.ClickModel:
    """The click model that grades the log, fitted on every session. ``auto``: the lowest
    held-out perplexity on a seeded 80/20 split of the sessions; else the named one."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sessions))
    cut = max(1, round(len(sessions) * 0.8))
    if name == "auto":
        fit_s = [sessions[i] for i in order[:cut]]
        held = [sessions[i] for i in order[cut:]]
        if not held:
            raise TrainingDataError(
                "too few sessions to choose a click model by held-out perplexity"
            )
        best, table = cm.select_best(None, fit_s, held)
        for s in table:
            log(f"click model {s.name}: held-out perplexity {s.perplexity:.4f}")
        name = best.name
    else:
        cm.make_click_model(name)  # unknown names -> UnknownNameError
    return cm.make_click_model(name).fit(sessions)  # the chosen model, on every session


@dataclass(frozen=True, eq=False)
class TrainingSet:
    """Labelled rows from one source, and what the run needs to know about them."""

    data: RankingData
    qrels: dict[str, dict[str, float]]  # per group: the grades the report is measured on
    baseline: np.ndarray  # the RRF score of every row of ``data`` (the report's baseline)
    label_source: str  # "qrels" or "clicks:<click model>" (recorded in the manifest)
    featureset_id: str
    source: str  # the dataset directory or event store (recorded in the manifest)
    # the rows are served impressions (the log): continue from the promoted model, and keep
    # the training rows as the drift reference (replayed rows are whole candidate lists)
    served: bool = False
    units: Mapping[str, str] | None = None  # group -> split unit (a query's requests)
    # per retriever, the min-max normalized score of every row (ltr.fusion.minmax, float64):
    # what the linear-fusion base margin is fitted on and made of, on the training split only
    margin_inputs: Mapping[str, np.ndarray] | None = None
    # whole candidate lists as serving would score them now, given the saved base-margin
    # spec (the log's queries replayed, search.training.log_reference): the drift reference
    # is the NEW model's top-k of these, not the served rows above (the previous model's
    # pages, older click history)
    reference: Callable[[Mapping[str, Any] | None], RankingData] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)  # recorded in the manifest


@dataclass(frozen=True)
class TrainResult:
    """What a run saved; ``as_dict`` is the ``--json`` output of scripts/train.py."""

    version: str
    promoted: bool
    model_dir: str
    featureset_id: str
    label_source: str
    best_iteration: int
    metrics: dict[str, float]
    data_sizes: dict[str, dict[str, int]]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """The lines scripts/train.py prints."""
        m = self.metrics
        lines = [
            f"model {self.version} ({self.label_source}) saved to {self.model_dir}"
            f"{' and promoted' if self.promoted else ''}",
            f"  inner-CV NDCG@10 {m['cv_xgb_ndcg@10']:.4f} (XGBoost's metric: exp gain, "
            "judgment-less queries count 1; smoothed, at the chosen round)",
            f"  test  NDCG@10 {m['test_ndcg@10']:.4f} (RRF {m['test_rrf_ndcg@10']:.4f})",
        ]
        if "test_parent_ndcg@10" in m:
            lines.append(
                f"  previous model on the same test rows: NDCG@10 {m['test_parent_ndcg@10']:.4f}"
            )
        if self.label_source == "qrels":  # explicit 0 judgments (Cranfield: source papers)
            lines.append(
                f"  without 0-judged documents: test {m['test_ndcg@10_nozero']:.4f} "
                f"(RRF {m['test_rrf_ndcg@10_nozero']:.4f})"
            )
        return "\n".join(lines)


# --- evaluation on held-out queries ----------------------------------------------------


def _ndcg(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, float]],
    exclude_zero: bool = False,
) -> float:
    """Mean NDCG@10 over queries with a relevant judgment. ``exclude_zero`` drops documents
    judged 0 from the rankings (Cranfield: each query's own source paper, see its README)."""
    judged = {
        q: dict(r) for q, r in qrels.items() if q in rankings and any(g > 0 for g in r.values())
    }
    if not judged:
        return math.nan
    exclude = (
        {q: {d for d, g in r.items() if g <= 0} for q, r in judged.items()}
        if exclude_zero
        else None
    )
    return summarize(evaluate(rankings, judged, ["ndcg@10"], exclude=exclude))["ndcg@10"]


def _rank(ids: np.ndarray, scores: np.ndarray) -> list[str]:
    return rank_ids([str(i) for i in ids], scores)


def compare(
    model: TrainedModel,
    data: RankingData,
    baseline: np.ndarray | None,
    qrels: Mapping[str, Mapping[str, float]],
) -> dict[str, float]:
    """NDCG@10 of the model and of the baseline scores (NaN if none) on the same queries."""
    ids = data.doc_ids
    if ids is None:
        raise TrainingDataError("compare needs the document id of every row")
    scores = model.predict_data(data)
    ours: dict[str, list[str]] = {}
    base: dict[str, list[str]] = {}
    sizes = data.group_sizes()
    start = 0
    for q, n in zip(data.query_ids, sizes, strict=True):
        sl = slice(start, start + int(n))
        ours[q] = _rank(ids[sl], scores[sl])
        if baseline is not None:
            base[q] = _rank(ids[sl], baseline[sl])
        start += int(n)
    out = {}
    for suffix, ex in (("", False), ("_nozero", True)):
        out[f"ndcg@10{suffix}"] = _ndcg(ours, qrels, ex)
        out[f"rrf_ndcg@10{suffix}"] = _ndcg(base, qrels, ex) if baseline is not None else math.nan
    return out


def _rows_of(data: RankingData, part: RankingData) -> np.ndarray:
    """Row indices in ``data`` of the rows of ``part`` (parts are built by take_queries)."""
    sizes = data.group_sizes()
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    where = {q: i for i, q in enumerate(data.query_ids)}
    return np.concatenate(
        [np.arange(starts[where[q]], starts[where[q]] + sizes[where[q]]) for q in part.query_ids]
    )


# --- the run ---------------------------------------------------------------------------


def _promoted_booster(
    model_dir: Path, fid: str, log: Log
) -> tuple[xgb.Booster | None, str | None, Mapping[str, Any] | None]:
    """(booster, version, base margin spec) of the promoted model when it serves ``fid``."""
    if not model_dir.is_dir():
        return None, None, None
    registry = ModelRegistry(model_dir)
    version = registry.promoted()
    if version is None:
        return None, None, None
    try:
        model = registry.load(version, expected_featureset_id=fid)
    except LTRError as e:
        log(f"not continuing from {version}: {e}")
        return None, None, None
    booster = xgb.Booster()
    booster.load_model(bytearray(model.booster_bytes("ubj")))
    log(f"continuing from the promoted model {version} ({booster.num_boosted_rounds()} trees)")
    return booster, version, model.manifest.base_margin


@dataclass(frozen=True, eq=False)
class _Parent:
    """The promoted model a run on served rows continues from (the split adapted to it)."""

    booster: xgb.Booster | None
    version: str | None
    cfg: TrainConfig
    train: RankingData
    test: RankingData
    spec: Mapping[str, Any] | None = None  # the parent's base margin (the child keeps it)


def _continue_from(
    ts: TrainingSet, cfg: TrainConfig, model_dir: Path, split: Sequence[RankingData], log: Log
) -> _Parent:
    train, test = split
    if not (ts.served and cfg.continue_from_promoted):
        return _Parent(None, None, cfg, train, test)
    booster, parent, spec = _promoted_booster(model_dir, ts.featureset_id, log)
    if booster is None:
        return _Parent(None, None, cfg, train, test)
    cfg = dataclasses.replace(cfg, num_boost_round=cfg.continue_rounds)
    if spec is None:  # the parent was trained without a base margin: so is the child
        train = dataclasses.replace(train, base_margin=None)
        test = dataclasses.replace(test, base_margin=None)
    elif spec.get("name") == "linear":  # the parent's fitted fusion, on the logged inputs
        train, test = _parent_linear_margin(ts, spec, parent, train, test)
    elif train.base_margin is None:
        raise TrainingDataError(
            f"model {parent} boosts from a base margin the log does not hold; "
            "set ltr.continue_from_promoted = false to train from scratch"
        )
    return _Parent(booster, parent, cfg, train, test, spec)


def _parent_linear_margin(
    ts: TrainingSet,
    spec: Mapping[str, Any],
    parent: str | None,
    train: RankingData,
    test: RankingData,
) -> tuple[RankingData, RankingData]:
    """Train and test rows with the parent's linear-fusion margin (its saved weights and
    scale over the rows' bm25_minmax / dense_minmax), so the child's trees add to exactly
    what the parent served from."""
    inputs = _margin_inputs(ts)
    if inputs is None:
        raise TrainingDataError(
            f"model {parent} boosts from a linear fusion of bm25_minmax and dense_minmax, "
            "which the log does not hold; set ltr.continue_from_promoted = false to train "
            "from scratch"
        )
    params = dict(spec.get("params") or {})
    margin = linear_normed(inputs, params["weights"], float(params.get("scale", 1.0)))
    return _with_margin(ts, margin, train, test)


def _with_margin(
    ts: TrainingSet, margin: np.ndarray, train: RankingData, test: RankingData
) -> tuple[RankingData, RankingData]:
    """Train and test rows carrying their slice of ``margin`` (one value per row of
    ``ts.data``) as the base margin."""
    return (
        dataclasses.replace(train, base_margin=margin[_rows_of(ts.data, train)]),
        dataclasses.replace(test, base_margin=margin[_rows_of(ts.data, test)]),
    )


def _margin_inputs(ts: TrainingSet) -> Mapping[str, np.ndarray] | None:
    """The linear fusion's normalized inputs: kept by the source, else the feature columns
    that hold exactly them (ltr.features bm25_minmax / dense_minmax, e.g. a served log)."""
    if ts.margin_inputs is not None:
        return ts.margin_inputs
    cols = {BM25: "bm25_minmax", DENSE: "dense_minmax"}
    names = list(ts.data.feature_names)
    if not all(c in names for c in cols.values()):
        return None
    return {r: ts.data.X[:, names.index(c)].astype(np.float64) for r, c in cols.items()}


def _fusion_margin(
    ts: TrainingSet, cfg: TrainConfig, train: RankingData, test: RankingData, log: Log
) -> tuple[RankingData, RankingData, dict[str, Any] | None]:
    """Train and test rows with the recipe's base margin, and its manifest spec. The linear
    fusion's weights are fitted on the training queries only (ltr.fusion.fit_linear_normed)."""
    if not cfg.use_base_margin:
        return train, test, None
    if cfg.base_margin != "linear":
        if train.base_margin is None:
            return train, test, None
        return train, test, cfg.base_margin_spec()
    inputs = _margin_inputs(ts)
    if inputs is None and train.base_margin is not None and ts.info.get("margin_column") == "rrf":
        # a log without the linear fusion's inputs: boost from its logged RRF x scale
        log("no linear-fusion inputs (bm25_minmax, dense_minmax): boosting from the logged RRF")
        return train, test, {"name": "rrf", "params": {"scale": RRF_MARGIN_SCALE}}
    if inputs is None:
        log("no linear-fusion inputs (bm25_minmax, dense_minmax): training without a base margin")
        none = [dataclasses.replace(d, base_margin=None) for d in (train, test)]
        return none[0], none[1], None
    rows = _rows_of(ts.data, train)
    ids = ts.data.doc_ids if ts.data.doc_ids is not None else np.zeros(len(ts.data), dtype=str)
    groups = []
    start = 0
    for q, n in zip(train.query_ids, train.group_sizes(), strict=True):
        r = rows[start : start + int(n)]
        groups.append((ids[r].tolist(), inputs[BM25][r], inputs[DENSE][r], ts.qrels.get(q, {})))
        start += int(n)
    fitted = fit_linear_normed(groups)
    margin = linear_normed(inputs, fitted["weights"], cfg.base_margin_scale)
    log(f"base margin: linear fusion, weights {fitted['weights']} (training queries)")
    train, test = _with_margin(ts, margin, train, test)
    return train, test, cfg.base_margin_spec(fitted)


def _held_out_metrics(
    trained: TrainedModel, ts: TrainingSet, test: RankingData, parent: xgb.Booster | None
) -> dict[str, float]:
    """The model against the baseline (and the parent model) on the held-out queries."""
    metrics: dict[str, float] = {}
    base = ts.baseline[_rows_of(ts.data, test)]
    for key, value in compare(trained, test, base, ts.qrels).items():
        metrics[f"test_{key}"] = value
    if parent is not None:  # the parent on the same held-out rows: did the child improve?
        bm = test.base_margin if trained.uses_base_margin else None
        parent_scores = parent.inplace_predict(
            test.X, predict_type="margin", missing=np.nan, base_margin=bm
        )
        par = compare(trained, test, np.asarray(parent_scores, dtype=np.float64), ts.qrels)
        metrics["test_parent_ndcg@10"] = par["rrf_ndcg@10"]
    # XGBoost's own ndcg@10 (exp gain; a query without a positive label counts 1): the
    # round-choice criterion, not comparable with the test numbers (ltr.metrics)
    metrics["cv_xgb_ndcg@10"] = trained.best_score
    return metrics


def _save(
    reg: ModelRegistry,
    trained: TrainedModel,
    ts: TrainingSet,
    cfg: TrainConfig,
    spec: Mapping[str, Any] | None,
    train: RankingData,
    metrics: Mapping[str, float],
    sizes: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Any],
) -> str:
    """Save the version with its manifest facts and the drift reference rows."""
    return reg.save(
        trained,
        featureset_id=ts.featureset_id,
        base_margin=spec if trained.uses_base_margin else None,
        metrics=metrics,
        data_sizes=sizes,
        label_source=ts.label_source,
        extra={
            "source": ts.source,
            "train_seconds": run["train_seconds"],
            "rounds": trained.best_iteration + 1,
            "eta": float(trained.params["eta"]),  # chosen on the inner folds (cfg.eta_grid)
            "continued_from": run["continued_from"],
            **{k: v for k, v in ts.info.items() if isinstance(v, str | int | float | dict)},
        },
        # replayed candidate lists (judged queries, or the log's queries replayed): the
        # registry keeps what the model would serve (its top-k per query); logged rows
        # without a replay are served rows already (the previous model's pages).
        reference_rows=train
        if ts.reference is None
        else ts.reference(spec if trained.uses_base_margin else None),
        reference_top_k=0 if ts.served and ts.reference is None else cfg.reference_top_k,
        reference_max_rows=cfg.reference_rows,
        seed=cfg.seed,
    )


def run_training(
    ts: TrainingSet,
    cfg: TrainConfig,
    model_dir: Path,
    registry: RegistryConfig | None = None,
    *,
    promote: bool = False,
    log: Log = silent,
    verbose: bool | int = 25,
) -> TrainResult:
    """Split, fit, evaluate on the held-out queries, save (and promote) one model version.

    ``registry``: retention and file format of the registry at ``model_dir`` (defaults);
    ``verbose``: XGBoost progress every that many rounds (False: none).
    """
    registry = registry or RegistryConfig()
    n_units = ts.data.n_queries if ts.units is None else len(set(ts.units.values()))
    if n_units < 3:
        raise TrainingDataError(f"need at least 3 queries to split train/test, got {n_units}")
    split = split_by_query(
        ts.data, (1 - cfg.test_fraction, cfg.test_fraction), seed=cfg.seed, units=ts.units
    )
    p = _continue_from(ts, cfg, model_dir, split, log)
    cfg, train, test = p.cfg, p.train, p.test
    if p.booster is not None:
        spec = p.spec
    else:
        train, test, spec = _fusion_margin(ts, cfg, train, test, log)
    fit_data = add_cold_copies(train, F.BEHAVIOR_FEATURES, cfg.cold_share, cfg.seed)
    log(
        f"{len(ts.data.feature_names)} features; queries train/test = "
        f"{train.n_queries}/{test.n_queries} "
        f"(+{fit_data.n_queries - train.n_queries} cold copies), rows {len(ts.data)}"
    )
    t0 = time.perf_counter()
    trained = fit_recipe(fit_data, cfg, units=ts.units, verbose=verbose, init_model=p.booster)
    fit_s = time.perf_counter() - t0
    log(
        f"trained {trained.best_iteration + 1} trees at eta {trained.params['eta']:g} (rounds"
        f"{' and eta' if cfg.eta_grid else ''} chosen on {cfg.inner_folds} inner folds, "
        f"smoothed CV NDCG@{cfg.eval_at} {trained.best_score:.4f}) in {fit_s:.1f}s"
    )
    metrics = _held_out_metrics(trained, ts, test, p.booster)
    sizes = {
        "train": {"queries": train.n_queries, "rows": len(train)},
        "cold_copies": {
            "queries": fit_data.n_queries - train.n_queries,
            "rows": len(fit_data) - len(train),
        },
        "test": {"queries": test.n_queries, "rows": len(test)},
    }
    reg = ModelRegistry(
        model_dir, keep_versions=registry.keep_versions, model_format=registry.model_format
    )
    extra = {"train_seconds": round(fit_s, 2), "continued_from": p.version}
    version = _save(reg, trained, ts, cfg, spec, train, metrics, sizes, extra)
    if promote:
        reg.promote(version)
    return TrainResult(
        version=version,
        promoted=promote,
        model_dir=str(model_dir),
        featureset_id=ts.featureset_id,
        label_source=ts.label_source,
        best_iteration=trained.best_iteration,
        metrics=metrics,
        data_sizes=sizes,
    )
