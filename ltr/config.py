"""Typed settings sections owned by ltr: LambdaMART training and the model registry.

Composed into scripts.settings.Settings as ``ltr`` and ``registry``. Defaults are tuned for
small collections (hundreds of queries): shallow trees, strong regularisation and early
stopping, because a reranker boosted from the fusion score only has to learn corrections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class TrainConfig:
    """XGBoost LambdaMART hyper-parameters plus how the data is split."""

    # Defaults = the recipe ltr.evaluation proved on Cranfield (NDCG@10 0.429 vs 0.405 for the
    # best fusion, docs/evaluation.md): a booster that starts from the fusion ranking only has
    # to learn corrections, so it is shallow, slow and heavily regularized. ltr.evaluation's
    # DEFAULT_TRAIN is this config; scripts/train.py trains with it (ltr.train.fit_recipe).
    objective: Literal["rank:ndcg", "rank:pairwise", "rank:map"] = "rank:ndcg"
    eta: float = 0.03
    max_depth: int = 3
    min_child_weight: float = 5.0
    subsample: float = 0.7
    colsample_bytree: float = 0.7
    reg_lambda: float = 5.0
    reg_alpha: float = 0.0
    gamma: float = 0.0
    num_boost_round: int = 300  # recipe: the curve length the number of rounds is chosen from
    # train --events: continue boosting from the promoted model (same featureset) instead of
    # starting over, adding at most continue_rounds correction trees. Logged clicks cover only
    # the shown pages; a model trained on them alone misranks every candidate nobody saw.
    continue_from_promoted: bool = True
    continue_rounds: int = 100
    # Trainer.fit only (0 disables); the recipe picks rounds from the smoothed CV curve instead
    early_stopping_rounds: int = 0
    eval_at: int = 10  # NDCG@k of the validation curves (round choice, early stopping)
    # exp gain (2^rel - 1) needs integer grades; click-model relevances are fractions.
    ndcg_exp_gain: bool = True
    lambdarank_pair_method: Literal["topk", "mean"] = "topk"
    lambdarank_num_pair_per_sample: int = 8
    tree_method: Literal["hist", "approx", "exact"] = "hist"
    # 1: OpenMP threads spin-wait when cores are shared (measured 20x slower at load 4 on
    # 2 cores); raise it on a dedicated machine for large data.
    nthread: int = 1
    seed: int = 42
    valid_fraction: float = 0.2  # of the training queries, when no validation set is given
    test_fraction: float = 0.2  # the CLI holds out this share of queries for the final report
    use_base_margin: bool = True  # boost from the fusion score (architecture principle 12)
    # The fusion the booster starts from: "linear" (min-max scores, the BM25/dense weight
    # fitted on the training queries, ltr.fusion.fit_linear) is the strongest baseline on
    # every judged collection; the trees learn a residual on top of it. The fitted weights
    # and the scale are saved in the manifest (base_margin_spec), so serving applies exactly
    # the margin the model was trained from.
    base_margin: str = "linear"
    # the fusion's ``scale`` param: linear scores lie in [0, 1]; x 2 leaves the trees room
    # to reorder within the few hundred rounds the recipe allows (x 5 ran into the round cap
    # on Cranfield and the demo catalog and scored lower on Cranfield; docs/evaluation.md)
    base_margin_scale: float = 2.0
    # XGBoost monotone_constraints from ltr.features (retriever scores up, ranks down)
    monotone: bool = True
    # recipe (ltr.train.fit_recipe): number of rounds from ``inner_folds`` query-level inner
    # folds (1 = one valid_fraction split) whose validation NDCG curves are averaged and
    # smoothed over ``smooth_rounds``; then one booster on all training queries. Zero rounds
    # is a candidate too (the base margin alone): the model then IS the fusion it starts
    # from, so the trees cannot make it worse than the fusion on the inner folds' evidence.
    inner_folds: int = 3
    smooth_rounds: int = 25
    # recipe: the learning rates it chooses from on the same inner folds, each with 0 to
    # num_boost_round rounds (same smoothing and one-SE rule); the (eta, rounds) pair with
    # the best smoothed inner NDCG wins, ties to the smaller eta. () = ``eta`` alone (a
    # non-empty grid overrides ``eta`` in the recipe; Trainer.fit always uses ``eta``). One
    # grid for every collection: the rate (so the effective budget) is chosen per training
    # set, never on test queries. (0.03, 0.1): the under-fit demo catalog takes 0.1 (+0.0085
    # NDCG@10, 1.105 x BM25), CACM stays at zero trees, Cranfield -0.005 (p = 0.15);
    # docs/evaluation.md. Costs one inner CV per value (measured ~1.7x the fit time).
    eta_grid: tuple[float, ...] = (0.03, 0.1)
    # with behavior features: share of training queries added again with their click
    # history withheld (cold copies), so the trees learn the no-history branch too
    cold_share: float = 1.0
    reference_rows: int = 5000  # training feature rows kept as the drift-monitoring reference
    # the reference keeps, per training query, only the rows the model itself ranks in its
    # top-k: the API logs served pages, not whole candidate lists, so comparing served rows
    # with every candidate would flag drift on normal traffic (0 = keep every row)
    reference_top_k: int = 10
    # train --events with the serving index: per logged request, up to this many candidates
    # of its query the log never showed, added with grade 0 (search.training.with_unshown;
    # a model trained on the shown pages alone ranks never-shown candidates at random)
    log_unshown: int = 20
    # click model that labels logged sessions (train --events): "auto" = the lowest
    # held-out perplexity among ltr.click_models.CLICK_MODELS
    click_model: str = "auto"

    def validate(self) -> None:
        """Raise ValueError naming the first bad value (called by the settings loader)."""

        def positive(name: str, value: float) -> None:
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")

        def non_negative(name: str, value: float) -> None:
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")

        def fraction(name: str, value: float, *, allow_one: bool) -> None:
            hi_ok = value <= 1 if allow_one else value < 1
            if not (isinstance(value, int | float) and value > 0 and hi_ok):
                bound = "(0, 1]" if allow_one else "(0, 1)"
                raise ValueError(f"{name} must be in {bound}, got {value!r}")

        if self.objective not in ("rank:ndcg", "rank:pairwise", "rank:map"):
            raise ValueError(f"objective must be a rank:* objective, got {self.objective!r}")
        positive("eta", self.eta)
        if self.eta > 1:
            raise ValueError(f"eta must be <= 1, got {self.eta!r}")
        if not isinstance(self.max_depth, int) or not 1 <= self.max_depth <= 16:
            raise ValueError(f"max_depth must be an integer in [1, 16], got {self.max_depth!r}")
        non_negative("min_child_weight", self.min_child_weight)
        fraction("subsample", self.subsample, allow_one=True)
        fraction("colsample_bytree", self.colsample_bytree, allow_one=True)
        non_negative("reg_lambda", self.reg_lambda)
        non_negative("reg_alpha", self.reg_alpha)
        non_negative("gamma", self.gamma)
        if not isinstance(self.continue_rounds, int) or self.continue_rounds < 1:
            raise ValueError(f"continue_rounds must be >= 1, got {self.continue_rounds!r}")
        if not isinstance(self.num_boost_round, int) or self.num_boost_round < 0:
            # 0: no trees, the base margin alone (what the recipe picks when trees do not help)
            raise ValueError(f"num_boost_round must be >= 0, got {self.num_boost_round!r}")
        if not isinstance(self.early_stopping_rounds, int) or self.early_stopping_rounds < 0:
            raise ValueError(
                "early_stopping_rounds must be >= 0 (0 disables), "
                f"got {self.early_stopping_rounds!r}"
            )
        if not isinstance(self.eval_at, int) or self.eval_at < 1:
            raise ValueError(f"eval_at must be >= 1, got {self.eval_at!r}")
        if self.lambdarank_pair_method not in ("topk", "mean"):
            raise ValueError(
                "lambdarank_pair_method must be 'topk' or 'mean', "
                f"got {self.lambdarank_pair_method!r}"
            )
        if (
            not isinstance(self.lambdarank_num_pair_per_sample, int)
            or self.lambdarank_num_pair_per_sample < 1
        ):
            raise ValueError(
                "lambdarank_num_pair_per_sample must be >= 1, "
                f"got {self.lambdarank_num_pair_per_sample!r}"
            )
        if not isinstance(self.nthread, int) or self.nthread < 1:
            raise ValueError(f"nthread must be >= 1, got {self.nthread!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        fraction("valid_fraction", self.valid_fraction, allow_one=False)
        fraction("test_fraction", self.test_fraction, allow_one=False)
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(
                "valid_fraction + test_fraction must be < 1, "
                f"got {self.valid_fraction} + {self.test_fraction}"
            )
        if not isinstance(self.base_margin, str) or not self.base_margin:
            raise ValueError("base_margin must name a fusion (e.g. 'rrf')")
        positive("base_margin_scale", self.base_margin_scale)
        if not isinstance(self.inner_folds, int) or self.inner_folds < 1:
            raise ValueError(f"inner_folds must be an integer >= 1, got {self.inner_folds!r}")
        if not isinstance(self.smooth_rounds, int) or self.smooth_rounds < 1:
            raise ValueError(f"smooth_rounds must be an integer >= 1, got {self.smooth_rounds!r}")
        if not isinstance(self.eta_grid, tuple):
            raise ValueError(f"eta_grid must be a tuple of learning rates, got {self.eta_grid!r}")
        for e in self.eta_grid:
            if not (isinstance(e, int | float) and math.isfinite(e) and 0 < e <= 1):
                raise ValueError(f"eta_grid values must be in (0, 1], got {self.eta_grid!r}")
        if list(self.eta_grid) != sorted(set(self.eta_grid)):
            raise ValueError(
                f"eta_grid must be strictly increasing (no duplicates), got {self.eta_grid!r}"
            )
        if not (isinstance(self.cold_share, int | float) and 0 <= self.cold_share <= 1):
            raise ValueError(f"cold_share must be in [0, 1], got {self.cold_share!r}")
        if self.click_model != "auto":
            from ltr.click_models import CLICK_MODELS

            if self.click_model not in CLICK_MODELS:
                raise ValueError(
                    f"click_model must be 'auto' or one of {', '.join(sorted(CLICK_MODELS))}, "
                    f"got {self.click_model!r}"
                )
        if not isinstance(self.reference_top_k, int) or self.reference_top_k < 0:
            raise ValueError(f"reference_top_k must be >= 0, got {self.reference_top_k!r}")
        if not isinstance(self.log_unshown, int) or self.log_unshown < 0:
            raise ValueError(f"log_unshown must be >= 0, got {self.log_unshown!r}")
        if not isinstance(self.reference_rows, int) or self.reference_rows < 1:
            raise ValueError(f"reference_rows must be >= 1, got {self.reference_rows!r}")

    def base_margin_spec(self, fitted: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The manifest's base_margin: the fusion + params serving (search.pipeline) applies
        via ``ltr.fusion.fusion_score(cs, spec["name"], spec["params"])``; None without one.
        ``fitted``: the fusion's fitted params (linear: {"weights": {...}})."""
        if not self.use_base_margin:
            return None
        params = {**dict(fitted or {}), "scale": float(self.base_margin_scale)}
        return {"name": self.base_margin, "params": params}

    def xgb_params(self) -> dict[str, Any]:
        """The parameter dict handed to xgboost.train (also stored in the manifest)."""
        params: dict[str, Any] = {
            "objective": self.objective,
            "eval_metric": f"ndcg@{self.eval_at}",
            "eta": self.eta,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "alpha": self.reg_alpha,
            "gamma": self.gamma,
            "tree_method": self.tree_method,
            "nthread": self.nthread,
            "seed": self.seed,
            "lambdarank_pair_method": self.lambdarank_pair_method,
            "lambdarank_num_pair_per_sample": self.lambdarank_num_pair_per_sample,
        }
        if self.objective == "rank:ndcg":
            params["ndcg_exp_gain"] = self.ndcg_exp_gain
        return params


@dataclass(frozen=True)
class RegistryConfig:
    """Where models live and how many versions are kept (the promoted one is never deleted)."""

    dir: str = "var/models"
    keep_versions: int = 5
    model_format: Literal["ubj", "json"] = "ubj"

    def validate(self) -> None:
        if not isinstance(self.keep_versions, int) or self.keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {self.keep_versions!r}")
        if self.model_format not in ("ubj", "json"):
            raise ValueError(f"model_format must be 'ubj' or 'json', got {self.model_format!r}")
        if not self.dir:
            raise ValueError("dir must not be empty")
