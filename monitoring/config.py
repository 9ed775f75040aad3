"""Typed settings of the monitoring package (composed into scripts.settings.Settings).

Flat fields on purpose: every one can be overridden from the environment
(``LTRSEARCH_MONITORING__TEXT_METHOD=ks``), which nested tables could not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from monitoring.errors import MonitoringConfigError

# Evidently 0.7 stat tests that accept numerical columns (tests/test_drift.py checks this list
# against Evidently's own registry). For the p-value tests a LOW score means drift; for the
# distance tests a HIGH score means drift.
PVALUE_METHODS: tuple[str, ...] = (
    "anderson",
    "cramer_von_mises",
    "empirical_mmd",
    "es",
    "ks",
    "mannw",
    "t_test",
)
DISTANCE_METHODS: tuple[str, ...] = (
    "ed",
    "hellinger",
    "jensenshannon",
    "kl_div",
    "psi",
    "wasserstein",
)
DRIFT_METHODS: tuple[str, ...] = PVALUE_METHODS + DISTANCE_METHODS

# Feature groups of ltr.features; features of any other group use default_method.
FEATURE_GROUPS: tuple[str, ...] = ("text", "static", "behavior")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str, what: str = "duration") -> float:
    """'90s', '15m', '24h', '7d', '1w' or plain seconds -> seconds (> 0)."""
    m = _DURATION.match(str(text))
    if m is None:
        raise MonitoringConfigError(
            f"{what}: {text!r} is not a duration (e.g. 30m, 24h, 7d or seconds)"
        )
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds <= 0:
        raise MonitoringConfigError(f"{what}: {text!r} must be longer than zero")
    return seconds


@dataclass(frozen=True)
class MonitoringConfig:
    """Drift-report settings: methods and thresholds per feature group, data minimums, schedule.

    Thresholds follow Evidently's meaning for the method: a p-value cut-off for the p-value
    tests (drift when score < threshold), a distance cut-off for the others (drift when
    score >= threshold). Defaults: normed Wasserstein for continuous text-match features
    (stable at 50K rows where KS flags negligible shifts), PSI for static attributes
    (the usual 0.2 "major shift" cut-off), Jensen-Shannon for behavior features (heavy ties
    and NaN; binned methods cope better).
    """

    # feature drift (monitoring.drift). The reference: the model's training sample (the
    # contract), or the previous window of the served log. Training rows are ALL candidates
    # of a query while the log holds the served top-k only, so on real traffic a training
    # reference also measures that selection; previous_window compares like with like.
    feature_reference: Literal["training", "previous_window"] = "training"
    text_method: str = "wasserstein"
    text_threshold: float = 0.1
    static_method: str = "psi"
    static_threshold: float = 0.2
    behavior_method: str = "jensenshannon"
    behavior_threshold: float = 0.1
    default_method: str = "wasserstein"  # features of an unknown group
    default_threshold: float = 0.1
    # overall decision: drift when the share of drifted tested features is above this, or
    # when one drifted feature moved by alarm_effect or more (a retriever or a catalog field
    # can break alone). A feature only counts as drifted when its test fails AND its effect
    # size (monitoring.drift.effect_size: Wasserstein in reference standard deviations, or
    # the move of its missing share) reaches min_effect. Calibrated on simulated traffic
    # (scripts/calibrate_drift.py, docs/monitoring.md).
    drift_share: float = 0.25
    min_effect: float = 0.1
    alarm_effect: float = 0.25
    # a feature whose missing (NaN) share moves by more than this is drifted, whatever its
    # value distribution does (e.g. behavior history vanished at serving time)
    nan_share_delta: float = 0.2
    min_values: int = 30  # non-NaN values needed on both sides to run a distribution test
    # Distances do not shrink to 0 on small samples: with ~200 values per side, two draws
    # of the SAME distribution score 0.11-0.13 (Wasserstein, PSI, Jensen-Shannon; measured,
    # docs/monitoring.md), above the 0.1 thresholds. Below small_sample_values values on a
    # side, a p-value test (calibrated at any size) is used instead -- the same rule as
    # Evidently's own defaults (KS up to 1,000 rows, Wasserstein above).
    small_sample_values: int = 1000
    small_sample_method: str = "ks"
    small_sample_threshold: float = 0.01
    min_rows: int = 200  # served rows needed in the current window
    min_reference_rows: int = 100  # rows needed in the reference sample
    max_rows: int = 50_000  # deterministic sample of each side above this (speed)
    sample_seed: int = 0

    # concept drift (monitoring.concept)
    # Feature groups computed from the users' clicks: when quality dropped and only these
    # drifted, the drift is the click change feeding back into the features (concept drift),
    # not an input shift.
    click_feature_groups: tuple[str, ...] = ("behavior",)
    # against the training reference, these groups' value moves are reported, not alarmed:
    # click history grows with cumulative traffic (counts, and smoothed rates while counts
    # are small), so it moves under stable traffic (docs/monitoring.md, "Click history");
    # a changed missing share still alarms. () = alarm on them like any feature.
    trend_groups: tuple[str, ...] = ("behavior",)
    concept_reference: Literal["previous_window", "manifest"] = "previous_window"
    manifest_metric: str = "ndcg@10"  # key in the model manifest's metrics (manifest reference)
    click_model: str = ""  # "" = raw clicks as labels; else a name of ltr.click_models
    quality_metric: Literal["ndcg@10", "mrr@10"] = "ndcg@10"
    quality_drop: float = 0.1  # relative drop of quality_metric that counts as a quality drop
    quality_alpha: float = 0.01  # one-sided Welch t-test p-value the drop must also pass
    min_queries: int = 30  # clicked requests needed per window for a quality comparison
    score_method: str = "wasserstein"  # model-score (prediction) drift
    score_threshold: float = 0.1
    retriever_features: tuple[str, ...] = ("bm25", "dense")
    score_deciles: int = 10
    # ranking-aware signals (monitoring.ranking), previous window vs current: a segment's (or
    # short pages', or one-retriever requests') share of traffic moving by this much; the
    # position mix of the clicks moving by this total variation (with p < quality_alpha),
    # which is click behaviour changing and so counts as concept drift
    segment_share_delta: float = 0.1
    segment_effect: float = 0.5  # a feature moving this much within one query segment
    click_curve_delta: float = 0.05
    # the zero-result rate (first pages with no hit) rising by this much (absolute), with a
    # one-sided two-proportion z-test p < quality_alpha, is an input shift (check the index)
    zero_result_delta: float = 0.03

    # schedule and output (scripts/drift_report.py)
    window: str = "24h"
    every: str = ""  # "" = run once (cron); e.g. "1h" to loop
    out_dir: str = "var/drift"
    keep_reports: int = 30  # newest report directories kept; 0 = keep all
    keep_days: float = 0.0  # also delete reports older than this; 0 = no age limit
    html: bool = True
    webhook_url: str = ""
    webhook_timeout_s: float = 5.0
    # repeated alarms of the same cause (decision + groups of the top drifted features)
    # within this long after the last one sent are grouped (counted, not resent); "" = send
    # every alarm. State: <out_dir>/alerts.json
    alert_group: str = "24h"

    def validate(self) -> None:
        """Raise MonitoringConfigError (a ValueError) naming the bad key."""
        for key in (
            "text_method",
            "static_method",
            "behavior_method",
            "default_method",
            "score_method",
            "small_sample_method",
        ):
            value = getattr(self, key)
            if value not in DRIFT_METHODS:
                raise MonitoringConfigError(
                    f"{key}: unknown drift method {value!r}; valid: {', '.join(DRIFT_METHODS)}"
                )
        for key in (
            "text_threshold",
            "static_threshold",
            "behavior_threshold",
            "default_threshold",
            "score_threshold",
            "small_sample_threshold",
        ):
            if not getattr(self, key) > 0:
                raise MonitoringConfigError(f"{key}: must be > 0, got {getattr(self, key)!r}")
        for key in ("drift_share", "nan_share_delta", "quality_drop", "quality_alpha"):
            if not 0 < getattr(self, key) <= 1:
                raise MonitoringConfigError(f"{key}: must be in (0, 1], got {getattr(self, key)!r}")
        for key in (
            "min_values",
            "min_rows",
            "min_reference_rows",
            "max_rows",
            "min_queries",
            "small_sample_values",
        ):
            if getattr(self, key) < 1:
                raise MonitoringConfigError(f"{key}: must be >= 1, got {getattr(self, key)!r}")
        for key in ("min_effect", "alarm_effect", "segment_share_delta", "click_curve_delta",
                    "zero_result_delta", "segment_effect"):  # fmt: skip
            if not getattr(self, key) >= 0:
                raise MonitoringConfigError(f"{key}: must be >= 0, got {getattr(self, key)!r}")
        if self.score_deciles < 2:
            raise MonitoringConfigError(f"score_deciles: must be >= 2, got {self.score_deciles}")
        if self.keep_reports < 0 or self.keep_days < 0:
            raise MonitoringConfigError("keep_reports/keep_days: must be >= 0")
        if self.webhook_timeout_s <= 0:
            raise MonitoringConfigError("webhook_timeout_s: must be > 0")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise MonitoringConfigError(f"webhook_url: {self.webhook_url!r} is not an http(s) URL")
        if self.click_model:
            from ltr.click_models import CLICK_MODELS

            if self.click_model not in CLICK_MODELS:
                raise MonitoringConfigError(
                    f"click_model: unknown click model {self.click_model!r}; valid: "
                    f'{", ".join(sorted(CLICK_MODELS))} (or "" for raw clicks)'
                )
        parse_duration(self.window, "window")
        if self.alert_group:
            parse_duration(self.alert_group, "alert_group")
        if self.every:
            parse_duration(self.every, "every")

    def method_for(self, group: str) -> tuple[str, float]:
        """(drift method, threshold) of a feature group."""
        if group in FEATURE_GROUPS:
            return getattr(self, f"{group}_method"), getattr(self, f"{group}_threshold")
        return self.default_method, self.default_threshold

    def sized(self, method: str, threshold: float, n_values: int) -> tuple[str, float]:
        """The method to run when the smaller side has ``n_values`` non-NaN values."""
        if n_values < self.small_sample_values and method not in PVALUE_METHODS:
            return self.small_sample_method, self.small_sample_threshold
        return method, threshold

    @property
    def window_s(self) -> float:
        return parse_duration(self.window, "window")

    @property
    def alert_group_s(self) -> float:
        return parse_duration(self.alert_group, "alert_group") if self.alert_group else 0.0

    @property
    def every_s(self) -> float | None:
        return parse_duration(self.every, "every") if self.every else None
