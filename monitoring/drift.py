"""Feature drift: the served feature vectors of a window against the model's training sample.

Evidently 0.7 does the per-column statistics (one ``ValueDrift`` metric per tested feature,
with its built-in pass/fail test giving the flag). We do not use ``DataDriftPreset``: it
computes every column twice (once for the count, once per column), which doubled the run time
at 50K rows; the share of drifted features is a plain count over the per-column flags.

Only feature columns ever reach Evidently, every one declared numerical in the
DataDefinition, so ids, query text and timestamps can never be tested as features.
NaN is data here, not an error: a feature that is all-NaN in both windows is "not tested"; a
feature whose missing share moves by more than ``nan_share_delta`` is drifted even if its
non-missing values look alike (Evidently drops NaN before testing).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ltr.types import SERVED_LOG_COLUMNS
from monitoring.config import PVALUE_METHODS, MonitoringConfig
from monitoring.errors import EmptyWindowError, NotEnoughDataError, ReferenceNotFoundError


@dataclass(frozen=True)
class FeatureDrift:
    """The drift verdict of one feature. ``score`` is NaN when no distribution test ran."""

    name: str
    group: str
    method: str
    threshold: float
    score: float
    drifted: bool
    tested: bool
    reason: str  # why it is drifted / not tested; "" for a plain distribution test
    reference_nan_share: float
    current_nan_share: float
    # how far it moved, comparable across features and methods: the larger of the
    # Wasserstein distance of the non-NaN values in reference standard deviations and the
    # move of the missing share (0.1 = a tenth of a standard deviation, or 10 points)
    effect: float = math.nan
    # its values moved, but it is a click-history feature compared with the training
    # reference: such features grow with cumulative traffic, so the move is reported, not
    # alarmed (``trend_groups``); a moved missing share still drifts
    trend: bool = False

    @property
    def score_kind(self) -> str:
        return "p_value" if self.method in PVALUE_METHODS else "distance"


@dataclass(frozen=True)
class FeatureDriftResult:
    """Per-feature verdicts plus the overall decision of one window."""

    features: tuple[FeatureDrift, ...]
    drift_share_threshold: float
    reference_rows: int
    current_rows: int
    sampled: bool
    alarm_effect: float = math.inf  # one drifted feature moving this much drifts the window
    snapshot: Any = field(default=None, repr=False, compare=False)  # evidently Snapshot

    @property
    def tested(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.tested]

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def trend_features(self) -> list[str]:
        """Click-history features that moved with the traffic (reported, not alarmed)."""
        return [f.name for f in self.features if f.trend]

    @property
    def not_tested(self) -> list[str]:
        return [f.name for f in self.features if not f.tested]

    @property
    def share(self) -> float:
        """Share of drifted features among the tested ones (NaN when none was tested)."""
        n = len(self.tested)
        return len(self.drifted_features) / n if n else math.nan

    @property
    def drifted(self) -> bool:
        return self._decide(self.tested)

    def _decide(self, tested: Sequence[FeatureDrift]) -> bool:
        """Many features moved (share above drift_share), or one moved a lot (alarm_effect)."""
        if not tested:
            return False
        if sum(f.drifted for f in tested) / len(tested) > self.drift_share_threshold:
            return True
        return any(f.drifted and f.effect >= self.alarm_effect for f in tested)

    def drifted_excluding(self, groups: Sequence[str]) -> bool:
        """The overall decision over the tested features outside ``groups`` only."""
        return self._decide([f for f in self.tested if f.group not in groups])

    def ranked(self) -> list[FeatureDrift]:
        """Drifted features first, by effect size (largest first), then the rest likewise."""

        def key(f: FeatureDrift) -> tuple[bool, float]:
            return (not f.drifted, -(f.effect if math.isfinite(f.effect) else -1.0))

        return sorted(self.features, key=key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "share": _num(self.share),
            "drift_share_threshold": self.drift_share_threshold,
            "alarm_effect": _num(self.alarm_effect),
            "n_features": len(self.features),
            "n_tested": len(self.tested),
            "n_drifted": len(self.drifted_features),
            "drifted_features": self.drifted_features,
            "top_drifted": [
                {"name": f.name, "group": f.group, "effect": _num(f.effect)}
                for f in self.ranked()
                if f.drifted
            ][:5],
            "not_tested": self.not_tested,
            "trend_features": self.trend_features,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "sampled": self.sampled,
            "features": [
                {**{k: _num(v) for k, v in asdict(f).items()}, "score_kind": f.score_kind}
                for f in self.ranked()
            ],
        }


def _num(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def effect_size(reference: np.ndarray, current: np.ndarray, points: int = 256) -> float:
    """Wasserstein-1 distance of the finite values, in reference standard deviations.

    Computed on ``points`` quantiles (exact enough for ranking and thresholds, O(n log n)
    and ~50x faster than scipy's exact distance at 50K rows). The scale is the reference
    spread, so 0.1 means the same on a BM25 score and on a click rate; a constant reference
    uses the mean absolute value (or 1) instead. NaN when a side has no finite value.
    """
    r = reference[np.isfinite(reference)]
    c = current[np.isfinite(current)]
    if len(r) == 0 or len(c) == 0:
        return math.nan
    u = (np.arange(points) + 0.5) / points

    def quantiles(x: np.ndarray) -> np.ndarray:  # linear interpolation, as np.quantile
        x = np.sort(x)
        return np.interp(u * (len(x) - 1), np.arange(len(x)), x)

    w1 = float(np.mean(np.abs(quantiles(r) - quantiles(c))))
    scale = float(np.std(r))
    if scale <= 1e-12:
        scale = float(np.mean(np.abs(r))) or 1.0
    return w1 / scale


def feature_groups(names: Sequence[str]) -> dict[str, str]:
    """Feature -> group from ltr.features.FEATURES; names it does not know -> "other"."""
    try:
        from ltr.features import FEATURES
    except ImportError:  # pragma: no cover - ltr.features is part of the product
        return {n: "other" for n in names}
    return {n: FEATURES[n].group if n in FEATURES else "other" for n in names}


def sample_rows(df: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """The same rows for the same input and seed, so a re-run reproduces its report."""
    if len(df) <= max_rows:
        return df
    return df.sample(n=max_rows, random_state=seed).sort_index()


def value_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    specs: Mapping[str, tuple[str, float]],
    render: bool = True,
) -> tuple[dict[str, tuple[float, bool]], Any]:
    """Run Evidently ValueDrift on the given numeric columns: column -> (score, drifted).

    ``specs`` maps column -> (method, threshold). The columns must hold at least one finite
    value on each side (the callers check this; Evidently raises on an empty column).
    Returns the results and the Evidently Snapshot (for the HTML report).

    ``render=False`` calls the same Evidently stat tests directly, without a Report: ~80% of
    a Report's time is building plotly widgets for the HTML, which a JSON-only run does not
    need. Same scores and flags (tests/test_drift.py checks); the snapshot is then None.
    """
    cols = list(specs)
    if not cols:
        return {}, None
    if not render:
        return _stat_tests(reference, current, specs), None
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    definition = DataDefinition(numerical_columns=cols)
    ref = Dataset.from_pandas(reference[cols].astype("float64"), data_definition=definition)
    cur = Dataset.from_pandas(current[cols].astype("float64"), data_definition=definition)
    metrics = [ValueDrift(column=c, method=m, threshold=t) for c, (m, t) in specs.items()]
    snapshot = Report(metrics, include_tests=True).run(cur, ref)
    data = snapshot.dict()
    by_id: dict[str, str] = {}
    scores: dict[str, float] = {}
    for m in data["metrics"]:
        col = m["config"].get("column")
        if col in specs:
            by_id[m["id"]] = col
            scores[col] = float(m["value"])
    flags: dict[str, bool] = {}
    for t in data["tests"]:
        col = by_id.get(t.get("metric_config", {}).get("metric_id", ""))
        if col is not None:
            flags[col] = str(getattr(t["status"], "value", t["status"])) == "FAIL"
    missing = [c for c in cols if c not in scores or c not in flags]
    if missing:  # an Evidently upgrade changed its output layout
        raise RuntimeError(f"Evidently returned no drift result for {missing}")
    return {c: (scores[c], flags[c]) for c in cols}, snapshot


def _stat_tests(
    reference: pd.DataFrame, current: pd.DataFrame, specs: Mapping[str, tuple[str, float]]
) -> dict[str, tuple[float, bool]]:
    """Evidently's registered stat tests on NaN/inf-free columns, as ValueDrift runs them."""
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    out: dict[str, tuple[float, bool]] = {}
    for col, (method, threshold) in specs.items():
        r = reference[col].astype("float64").replace([np.inf, -np.inf], np.nan).dropna()
        c = current[col].astype("float64").replace([np.inf, -np.inf], np.nan).dropna()
        test = get_stattest(r, c, ColumnType.Numerical, method)
        res = test(r, c, ColumnType.Numerical, threshold)
        out[col] = (float(res.drift_score), bool(res.drifted))
    return out


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    cfg: MonitoringConfig,
    features: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    render: bool = True,
    trend_groups: Sequence[str] = (),
) -> FeatureDriftResult:
    """Compare each feature's distribution in ``current`` against ``reference``.

    ``trend_groups``: groups whose value moves are reported (``trend``), not drifted: click
    history compared with a sample taken at training time grows with the traffic since
    (measured in docs/monitoring.md); the missing-share rule still applies to them.

    ``features`` defaults to the reference's columns (the model's feature names); a feature
    absent from the current window is drifted ("not served"), since the model then scores
    NaN for it. ``groups`` defaults to ltr.features' groups and picks method and threshold.
    ``render=False`` skips the Evidently Report (no HTML; same numbers, several times faster).
    """
    names = list(features) if features is not None else list(reference.columns)
    names = [n for n in names if n not in SERVED_LOG_COLUMNS]
    if not names:
        raise ReferenceNotFoundError("the reference has no feature columns")
    absent_ref = [n for n in names if n not in reference.columns]
    if absent_ref:
        raise ReferenceNotFoundError(f"reference sample lacks features: {', '.join(absent_ref)}")
    if len(current) == 0:
        raise EmptyWindowError("the current window has no served rows")
    if len(current) < cfg.min_rows:
        raise NotEnoughDataError(
            f"the current window has {len(current)} served rows; min_rows is {cfg.min_rows}"
        )
    if len(reference) < cfg.min_reference_rows:
        raise NotEnoughDataError(
            f"the reference has {len(reference)} rows; min_reference_rows is "
            f"{cfg.min_reference_rows}"
        )
    groups = dict(groups) if groups is not None else feature_groups(names)
    ref = sample_rows(reference, cfg.max_rows, cfg.sample_seed)
    cur = sample_rows(current, cfg.max_rows, cfg.sample_seed)
    sampled = len(ref) < len(reference) or len(cur) < len(current)

    pre: dict[str, dict[str, Any]] = {}
    specs: dict[str, tuple[str, float]] = {}
    for n in names:
        group = groups.get(n, "other")
        method, threshold = cfg.method_for(group)
        r = pd.to_numeric(ref[n], errors="coerce").to_numpy(dtype="float64")
        r_ok = np.isfinite(r)
        r_nan = 1.0 - float(r_ok.mean()) if len(r) else math.nan
        info: dict[str, Any] = {
            "group": group,
            "method": method,
            "threshold": threshold,
            "ref_nan": r_nan,
            "cur_nan": math.nan,
            "drifted": False,
            "tested": False,
            "reason": "",
        }
        pre[n] = info
        if n not in cur.columns:
            info.update(tested=True, drifted=True, reason="not served in the current window")
            continue
        c = pd.to_numeric(cur[n], errors="coerce").to_numpy(dtype="float64")
        c_ok = np.isfinite(c)
        info["cur_nan"] = 1.0 - float(c_ok.mean())
        n_r, n_c = int(r_ok.sum()), int(c_ok.sum())
        if n_r == 0 and n_c == 0:
            info["reason"] = "all NaN in both windows"
            continue
        if n_r == 0 and group in cfg.click_feature_groups:
            # a model trained from judgments had no click history; serving has one as soon
            # as users click. No reference to compare with: the previous window is.
            info["reason"] = "the reference has no click history (model trained from judgments)"
            continue
        delta = abs(info["cur_nan"] - r_nan)
        info["effect"] = max(delta, np.nan_to_num(effect_size(r, c), nan=0.0))
        if delta > cfg.nan_share_delta and group in trend_groups and info["cur_nan"] < r_nan:
            # more history than at training time: documents the new model shows gain it
            # on their first impression (history vanishing is the other direction: drift)
            info.update(
                trend=True,
                reason=f"click history grew since training: missing share {r_nan:.2f} -> "
                f"{info['cur_nan']:.2f}, reported, not alarmed",
            )
        elif delta > cfg.nan_share_delta:
            info.update(
                tested=True,
                drifted=True,
                reason=f"missing share moved {r_nan:.2f} -> {info['cur_nan']:.2f}",
            )
        if n_r >= cfg.min_values and n_c >= cfg.min_values:
            method, threshold = cfg.sized(method, threshold, min(n_r, n_c))
            info.update(method=method, threshold=threshold)
            specs[n] = (method, threshold)
        elif not info["tested"]:
            info["reason"] = (
                f"too few values (reference {n_r}, current {n_c}; min_values {cfg.min_values})"
            )
    results, _ = value_drift(ref, cur, specs, render=False)

    out = []
    for n in names:
        info = pre[n]
        score = math.nan
        if n in results:
            score, flag = results[n]
            info["tested"] = True
            # the test says "different", the effect size says "by enough to matter": large
            # samples make p-values and distances flag moves nobody would act on
            big = info.get("effect", math.nan) >= cfg.min_effect
            if flag and big and info["group"] in trend_groups and not info["drifted"]:
                info["trend"] = True
                info["reason"] = info["reason"] or (
                    "click history grows with the traffic since training: reported, not "
                    "alarmed (click changes: clicks by position, click labels, quality)"
                )
            else:
                info["drifted"] = bool(info["drifted"] or (flag and big))
            if flag and not big and not info["reason"]:
                info["reason"] = f"below min_effect {cfg.min_effect:g}"
        out.append(
            FeatureDrift(
                name=n,
                group=info["group"],
                method=info["method"],
                threshold=float(info["threshold"]),
                score=score,
                drifted=bool(info["drifted"]),
                tested=bool(info["tested"]),
                reason=info["reason"],
                reference_nan_share=info["ref_nan"],
                current_nan_share=info["cur_nan"],
                effect=float(info.get("effect", math.nan)),
                trend=bool(info.get("trend", False)),
            )
        )
    result = FeatureDriftResult(
        features=tuple(out),
        drift_share_threshold=cfg.drift_share,
        reference_rows=len(reference),
        current_rows=len(current),
        sampled=sampled,
        alarm_effect=cfg.alarm_effect,
    )
    if not render:
        return result
    # the HTML lists one widget per feature in this order: drifted first, by effect size
    ordered = {f.name: specs[f.name] for f in result.ranked() if f.name in specs}
    _, snapshot = value_drift(ref, cur, ordered, render=True)
    return dataclasses.replace(result, snapshot=snapshot)
