"""LambdaMART training (XGBoost rank:ndcg) with query groups, base margin and early stopping.

``fit_recipe`` is THE training recipe (rounds from smoothed inner-fold validation curves,
then one booster on every training query); ltr.evaluation measures it and scripts/train.py
ships it, so the served model is trained the way the evaluation proved works.

The trainer is separate from the served type (ltr.model.RankModel, architecture principle 9):
``Trainer.fit`` returns a ``TrainedModel`` (booster cut at the best iteration + training
facts); the registry turns it into files and ``RankModel`` serves them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import xgboost as xgb

from ltr.config import TrainConfig
from ltr.dataset import RankingData, concat, split_by_query
from ltr.errors import TrainingDataError
from ltr.features import monotone_constraints


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """What ``Trainer.fit`` produces: the booster (best iteration only) and how it was made."""

    booster: xgb.Booster
    feature_names: tuple[str, ...]
    params: dict[str, Any]
    best_iteration: int  # 0-based round kept as the last tree
    best_score: float  # validation NDCG@k at best_iteration (NaN without validation)
    num_rounds_run: int
    uses_base_margin: bool
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    data_sizes: dict[str, dict[str, int]] = field(default_factory=dict)

    def predict(self, X: np.ndarray, base_margin: np.ndarray | None = None) -> np.ndarray:
        """Margin scores (for evaluation right after training; serving uses RankModel)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"X must have shape [n, {len(self.feature_names)}], got {X.shape}")
        if self.uses_base_margin and base_margin is None:
            raise ValueError("this model was trained from a base margin; pass base_margin")
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        bm = None if base_margin is None else np.asarray(base_margin, dtype=np.float32)
        out = self.booster.inplace_predict(X, predict_type="margin", missing=np.nan, base_margin=bm)
        return np.asarray(out, dtype=np.float32)

    def predict_data(self, data: RankingData) -> np.ndarray:
        return self.predict(data.X, data.base_margin if self.uses_base_margin else None)

    def model_bytes(self, fmt: str = "ubj") -> bytes:
        """XGBoost's own serialisation (used for the registry and determinism checks)."""
        return bytes(self.booster.save_raw(raw_format=fmt))


class _Progress(xgb.callback.TrainingCallback):
    """One line every ``every`` rounds to ``stream`` (the CLI turns it on)."""

    def __init__(self, every: int, stream: TextIO) -> None:
        super().__init__()
        self.every = max(1, every)
        self.stream = stream

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        if epoch % self.every == 0:
            parts = [
                f"{d}-{m}={vals[-1]:.4f}" for d, ms in evals_log.items() for m, vals in ms.items()
            ]
            print(f"[round {epoch}] " + " ".join(parts), file=self.stream, flush=True)
        return False


def _check(data: RankingData, what: str, *, need_positive: bool) -> None:
    if len(data) == 0 or data.n_queries == 0:
        raise TrainingDataError(f"{what} data has no rows (no queries)")
    if data.n_features == 0:
        raise TrainingDataError(f"{what} data has no feature columns")
    if need_positive and not np.any(data.y > 0):
        raise TrainingDataError(
            f"{what} data has no positive label: every grade is 0, nothing to learn"
        )


class Trainer:
    """Fits a LambdaMART booster from ``RankingData`` with the settings of ``TrainConfig``."""

    def __init__(self, cfg: TrainConfig | None = None) -> None:
        self.cfg = cfg or TrainConfig()
        self.cfg.validate()

    def _dmatrix(self, data: RankingData) -> xgb.DMatrix:
        bm = data.base_margin if self.cfg.use_base_margin else None
        return xgb.DMatrix(
            data.X,
            label=data.y,
            qid=data.qid_codes(),
            base_margin=bm,
            missing=np.nan,
            feature_names=list(data.feature_names),
            nthread=self.cfg.nthread,
        )

    def fit(
        self,
        train: RankingData,
        valid: RankingData | None = None,
        *,
        verbose: bool | int = False,
        stream: TextIO | None = None,
        callbacks: list[xgb.callback.TrainingCallback] | None = None,
        init_model: xgb.Booster | None = None,
    ) -> TrainedModel:
        """Train; early-stop on validation NDCG@k. ``verbose``: print every N rounds.

        ``init_model``: continue boosting from this booster (its trees stay, new trees fit
        what it gets wrong on ``train``); the result holds both. Used to learn from logged
        clicks, which cover only the pages that were shown: the old trees keep ranking the
        candidates nobody saw, the new ones correct the shown ones.

        Without ``valid`` (and with early stopping on), ``valid_fraction`` of the training
        queries is held out by query. Raises TrainingDataError for degenerate data.
        """
        cfg = self.cfg
        _check(train, "training", need_positive=True)
        if valid is None and cfg.early_stopping_rounds > 0:
            if train.n_queries < 2:
                raise TrainingDataError(
                    "early stopping needs validation queries but training data has one query"
                )
            train, valid = split_by_query(
                train, (1 - cfg.valid_fraction, cfg.valid_fraction), seed=cfg.seed
            )
        if valid is not None:
            _check(valid, "validation", need_positive=False)
            if valid.feature_names != train.feature_names:
                raise TrainingDataError(
                    "validation features differ from training features: "
                    f"{valid.feature_names} vs {train.feature_names}"
                )
            overlap = set(train.query_ids) & set(valid.query_ids)
            if overlap:
                raise TrainingDataError(
                    f"{len(overlap)} query id(s) are in both training and validation, "
                    f"e.g. {sorted(overlap)[:3]}; split by query"
                )
        use_bm = cfg.use_base_margin and train.base_margin is not None
        if use_bm and valid is not None and valid.base_margin is None:
            raise TrainingDataError("training data has a base margin but validation data has none")
        if cfg.objective == "rank:ndcg" and cfg.ndcg_exp_gain:
            for d, what in ((train, "training"), (valid, "validation")):
                if d is None:
                    continue
                if not np.all(d.y == np.round(d.y)) or np.max(d.y) > 31:
                    raise TrainingDataError(
                        f"{what} labels are fractional or > 31 (e.g. click-model relevances) but "
                        "ndcg_exp_gain is on; set ndcg_exp_gain=false or grade the labels 0..31"
                    )

        params = cfg.xgb_params()
        if cfg.monotone:
            mono = monotone_constraints(train.feature_names)
            if any(mono):
                params["monotone_constraints"] = "(" + ",".join(map(str, mono)) + ")"
        dtrain = self._dmatrix(train)
        evals = [(dtrain, "train")]
        if valid is not None:
            evals.append((self._dmatrix(valid), "valid"))
        history: dict[str, dict[str, list[float]]] = {}
        cbs: list[xgb.callback.TrainingCallback] = list(callbacks or [])
        if verbose:
            every = 10 if verbose is True else int(verbose)
            cbs.append(_Progress(every, stream or sys.stderr))
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=cfg.num_boost_round,
            evals=evals,
            evals_result=history,
            early_stopping_rounds=(
                cfg.early_stopping_rounds
                if valid is not None and cfg.early_stopping_rounds
                else None
            ),
            verbose_eval=False,
            callbacks=cbs or None,
            xgb_model=init_model,
        )
        n_init = 0 if init_model is None else init_model.num_boosted_rounds()
        rounds_run = booster.num_boosted_rounds()
        metric = params["eval_metric"]
        if valid is not None and cfg.early_stopping_rounds:
            best = int(booster.best_iteration)
        else:  # early stopping off: every round is kept
            best = rounds_run - 1
        if best + 1 < rounds_run:  # keep exactly the trees that were best on validation
            booster = booster[: best + 1]
        best_score = (
            float(history["valid"][metric][best - n_init]) if valid is not None else math.nan
        )
        sizes = {"train": {"queries": train.n_queries, "rows": len(train)}}
        if valid is not None:
            sizes["valid"] = {"queries": valid.n_queries, "rows": len(valid)}
        return TrainedModel(
            booster=booster,
            feature_names=train.feature_names,
            params=params,
            best_iteration=best,
            best_score=best_score,
            num_rounds_run=rounds_run,
            uses_base_margin=bool(use_bm),
            history=history,
            data_sizes=sizes,
        )

    def start_score(
        self, train: RankingData, valid: RankingData, init_model: xgb.Booster | None = None
    ) -> float:
        """Validation NDCG@k (XGBoost's metric) of the starting scores alone: the base
        margin, or ``init_model``'s trees, before any new round."""
        params = self.cfg.xgb_params()
        booster = xgb.train(params, self._dmatrix(train), num_boost_round=0, xgb_model=init_model)
        text = booster.eval(self._dmatrix(valid), "valid")
        return float(text.rsplit(":", 1)[1])


def with_overrides(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A validated copy of ``cfg`` with some fields changed (CLI flags, click-label runs)."""
    out = dataclasses.replace(cfg, **changes)
    out.validate()
    return out


# --- the recipe: one definition for ltr.evaluation and scripts/train.py -------------------

COLD_COPY = "#cold"  # query-id suffix of a training copy with its click history withheld


def base_qid(qid: str) -> str:
    """The query a (possibly cold-copy) group id belongs to."""
    return qid.split(COLD_COPY, 1)[0]


def query_folds(qids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """k disjoint query folds, sizes within 1; depends only on the id set and the seed."""
    qs = sorted(qids)
    if k < 1 or len(qs) < k:
        raise TrainingDataError(f"cannot make {k} folds from {len(qs)} queries")
    order = np.random.default_rng(seed).permutation(len(qs))
    shuffled = [qs[i] for i in order]
    return [shuffled[i::k] for i in range(k)]


def inner_splits(
    data: RankingData,
    k: int,
    valid_fraction: float,
    seed: int,
    units: Mapping[str, str] | None = None,
) -> list[tuple[RankingData, RankingData]]:
    """Query-level (train, validation) splits of ``data``: k >= 2 = k folds, 1 = one
    ``valid_fraction`` split. A query and its cold copy stay together (validation never sees
    a query whose twin was trained on); ``units`` (group id -> split unit, e.g. request ->
    query text) keeps every group of a unit together too."""
    qids = data.query_ids

    def unit(q: str) -> str:
        b = base_qid(q)
        return b if units is None else str(units.get(b, b))

    base = sorted({unit(q) for q in qids})
    if len(base) < 2:
        raise TrainingDataError(
            f"too few training queries for a validation split ({len(base)} query unit)"
        )
    if k >= 2:
        groups = query_folds(base, min(k, len(base)), seed)
    else:
        order = np.random.default_rng(seed).permutation(len(base))
        n_va = min(max(1, round(valid_fraction * len(base))), len(base) - 1)
        groups = [[base[i] for i in order[:n_va]]]
    out = []
    for g in groups:
        held = set(g)
        tr = [q for q in qids if unit(q) not in held]
        va = [q for q in qids if unit(q) in held]
        if not tr or not va:
            raise TrainingDataError("too few training queries for a validation split")
        out.append((data.take_queries(tr), data.take_queries(va)))
    return out


def smoothed_best_round(
    curves: Sequence[np.ndarray | Sequence[float]], window: int
) -> tuple[int, float]:
    """(number of rounds, smoothed mean NDCG there): the validation curves averaged, then a
    centered moving average of ``window`` rounds (edges padded), argmax."""
    curve = np.mean(np.stack([np.asarray(c, dtype=np.float64) for c in curves]), axis=0)
    smooth = _smooth(curve, window)
    best = int(np.argmax(smooth))
    return best + 1, float(smooth[best])


def _smooth(curve: np.ndarray | Sequence[float], window: int) -> np.ndarray:
    """Centered moving average of ``window`` rounds, edges padded (same length)."""
    c = np.asarray(curve, dtype=np.float64)
    w = max(1, min(window, c.size))
    return np.convolve(np.pad(c, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, "valid")


def fit_recipe(
    data: RankingData,
    cfg: TrainConfig | None = None,
    *,
    units: Mapping[str, str] | None = None,
    verbose: bool | int = False,
    stream: TextIO | None = None,
    init_model: xgb.Booster | None = None,
) -> TrainedModel:
    """The evaluated training recipe: one booster for all of ``data``'s queries.

    ``init_model``: continue from that booster (see Trainer.fit); the round count is then
    the number of correction rounds added to it.

    ``cfg.inner_folds`` query-level inner splits are trained for ``num_boost_round`` rounds;
    their validation NDCG curves are averaged and smoothed (``smooth_rounds``) and the best
    round count is kept; the final booster is trained on ALL queries for that many rounds.
    A single small validation split's raw argmax is noisy (on 180 Cranfield training
    queries it picked anything from 3 to 120 rounds) and wastes a fifth of the queries; the
    smoothed curve does neither. The returned model's ``best_score`` is the smoothed mean
    validation NDCG@k at the chosen round; ``history["cv"]`` holds the mean curve.

    With a base margin (or ``init_model``) zero rounds is a candidate as well: the inner
    folds' NDCG of the starting scores alone. Unless the trees' gain over it at the chosen
    round exceeds one standard error across the inner folds, the model has no trees and
    scores exactly the base margin (the fusion it was boosted from): the trees are kept only
    where the inner folds say they add to the fusion.

    ``cfg.eta_grid``: each learning rate gets the whole procedure above on the same inner
    folds (its own curves, rounds and floor); the rate whose (rounds, score) is best wins,
    ties to the smaller rate, and the final booster is trained at it (``params["eta"]``;
    ``history["cv_eta_grid"]`` holds every rate's [rounds, score]). An under-fit collection
    can then take a larger step without the rate being chosen on test queries.
    """
    cfg = cfg or TrainConfig()
    cfg.validate()
    _check(data, "training", need_positive=True)
    splits = inner_splits(data, cfg.inner_folds, cfg.valid_fraction, cfg.seed, units)
    use_start = init_model is not None or (cfg.use_base_margin and data.base_margin is not None)
    metric = f"ndcg@{cfg.eval_at}"
    starts: np.ndarray | None = None
    if use_start:
        probe = Trainer(dataclasses.replace(cfg, early_stopping_rounds=0))
        starts = np.array([probe.start_score(tr, va, init_model) for tr, va in splits])
    # one (rounds, score) per learning rate on the same inner folds; the grid is ascending
    # and a later rate must score strictly higher, so ties go to the smaller rate
    chosen: tuple[float, int, float, list[np.ndarray]] | None = None
    grid: dict[str, list[float]] = {}
    for eta in cfg.eta_grid or (cfg.eta,):
        full = Trainer(dataclasses.replace(cfg, eta=eta, eta_grid=(), early_stopping_rounds=0))
        curves = [
            np.asarray(full.fit(tr, va, init_model=init_model).history["valid"][metric])
            for tr, va in splits
        ]
        rounds, cv_score = _rounds_with_floor(curves, starts, cfg.smooth_rounds, init_model)
        grid[f"{eta:g}"] = [float(rounds), cv_score]
        if chosen is None or cv_score > chosen[2]:
            chosen = (eta, rounds, cv_score, curves)
    assert chosen is not None  # the grid has at least one rate
    eta, rounds, cv_score, curves = chosen
    final = dataclasses.replace(
        cfg, eta=eta, eta_grid=(), num_boost_round=rounds, early_stopping_rounds=0
    )
    model = Trainer(final).fit(data, verbose=verbose, stream=stream, init_model=init_model)
    mean_curve = [float(v) for v in np.mean(np.stack(curves), axis=0)]
    history = {**model.history, "cv": {metric: mean_curve}}
    if len(cfg.eta_grid) > 1:  # what each rate scored: {eta: [rounds, smoothed inner NDCG]}
        history["cv_eta_grid"] = grid
    return dataclasses.replace(
        model,
        best_score=cv_score,
        history=history,
        data_sizes={**model.data_sizes, "cv": {"folds": len(splits)}},
    )


def _rounds_with_floor(
    curves: Sequence[np.ndarray],
    starts: np.ndarray | None,
    window: int,
    init_model: xgb.Booster | None,
) -> tuple[int, float]:
    """(rounds, smoothed inner NDCG) for one learning rate's inner-fold curves.

    ``starts``: the inner folds' NDCG of the starting scores alone (the base margin /
    init_model; None without one). The trees are kept only when their gain over it at the
    chosen round is larger than its standard error across the folds (the one-standard-error
    rule): the best of 300 smoothed round counts is an optimistic estimate, the start is
    not. Otherwise zero rounds, scored as the start."""
    rounds, cv_score = smoothed_best_round(curves, window)
    if starts is None:
        return rounds, cv_score
    gains = np.array([_smooth(c, window)[rounds - 1] for c in curves]) - starts
    se = float(gains.std(ddof=1) / np.sqrt(gains.size)) if gains.size > 1 else 0.0
    if init_model is not None:  # corrections to a model already chosen this way
        se = 0.0
    if not float(gains.mean()) > se:
        return 0, float(starts.mean())
    return rounds, cv_score


def add_cold_copies(
    data: RankingData, behavior: Sequence[str], share: float, seed: int
) -> RankingData:
    """``data`` plus, for ``share`` of its queries, a copy (id + COLD_COPY) whose query-level
    click history (``qd_*`` behavior features) is withheld (NaN), so the trees also learn to
    rank a query nobody has searched yet from the other features.

    Only the query-level aggregates can be withheld from logged vectors: the document totals
    (``d_*``) still include the query's own sessions (ltr.evaluation removes them, because it
    has the per-query click history). Unchanged when no qd_* column has a finite value.
    """
    cols = [i for i, n in enumerate(data.feature_names) if n in behavior and n.startswith("qd_")]
    if not cols or share <= 0 or len(data) == 0 or not np.isfinite(data.X[:, cols]).any():
        return data
    qids = sorted(data.query_ids)
    n = round(share * len(qids))
    picked = np.random.default_rng([seed, 17]).choice(qids, size=n, replace=False).tolist()
    cold = data.take_queries(picked)
    X = cold.X.copy()
    X[:, cols] = np.nan
    cold = dataclasses.replace(cold, qids=np.char.add(cold.qids.astype(str), COLD_COPY), X=X)
    return concat([data, cold])
