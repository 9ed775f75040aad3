"""LambdaMART training (XGBoost rank:ndcg) with query groups, base margin and early stopping.

The trainer is separate from the served type (ltr.model.RankModel, architecture principle 9):
``Trainer.fit`` returns a ``TrainedModel`` (booster cut at the best iteration + training
facts); the registry turns it into files and ``RankModel`` serves them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import xgboost as xgb

from ltr.config import TrainConfig
from ltr.dataset import RankingData, split_by_query
from ltr.errors import TrainingDataError


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
    ) -> TrainedModel:
        """Train; early-stop on validation NDCG@k. ``verbose``: print every N rounds.

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
        )
        rounds_run = booster.num_boosted_rounds()
        metric = params["eval_metric"]
        if valid is not None and cfg.early_stopping_rounds:
            best = int(booster.best_iteration)
        else:  # early stopping off: every round is kept
            best = rounds_run - 1
        booster = booster[: best + 1]  # keep exactly the trees that were best on validation
        best_score = float(history["valid"][metric][best]) if valid is not None else math.nan
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


def with_overrides(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A validated copy of ``cfg`` with some fields changed (CLI flags, click-label runs)."""
    out = dataclasses.replace(cfg, **changes)
    out.validate()
    return out
