"""Concept drift: did ranking quality drop, and is it explained by the inputs moving?

Quality of a window = click-labelled NDCG@10 and MRR@10 of the lists actually served (the
served positions ARE the ranking), labels = raw clicks or a click model's relevance
estimates (engineer D's ltr.click_models). The reference is the previous window of the log
(a two-sample comparison: relative drop AND a one-sided Welch t-test over requests) or the
training metric in the model manifest (a single number: relative drop only).

NDCG is computed here, vectorized over the log's (request, position) rows with numpy
(exponential gain 2^g - 1, log2 discount, the same definition as ltr.metrics), rather than
through Evidently 0.7's ranking metrics or a per-query dict API: it needs no re-sorting by
score (the log already holds the served order), it is ~10 ms for 50K rows, and
tests/test_drift.py checks it against ir-measures.

The decision: feature drift (from monitoring.drift) -> "covariate_drift" (the inputs moved;
the model is out of its training distribution); a quality drop without feature drift ->
"concept_drift" (same inputs, users now want other results); neither -> "no_drift". One
refinement: behavior features are computed from the users' own clicks, so changed click
behavior moves them too; when quality dropped and only click-derived groups drifted
(``click_feature_groups``), it is still "concept_drift".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from monitoring.config import MonitoringConfig
from monitoring.drift import _num, value_drift
from monitoring.errors import ReferenceNotFoundError

NO_DRIFT = "no_drift"
CONCEPT_DRIFT = "concept_drift"
COVARIATE_DRIFT = "covariate_drift"
DECISIONS: tuple[str, ...] = (NO_DRIFT, CONCEPT_DRIFT, COVARIATE_DRIFT)

# A click-model relevance estimate at or above this counts as "relevant" for MRR.
RELEVANT_AT = 0.5


@dataclass(frozen=True)
class QualityStats:
    """Click-labelled ranking quality of one window (first result pages only)."""

    requests: int  # first-page requests in the window
    labelled_requests: int  # of those, requests with at least one positive label
    click_rate: float  # share of requests with at least one click
    ndcg: np.ndarray = field(repr=False)  # per labelled request, NDCG@k
    rr: np.ndarray = field(repr=False)  # per labelled request, reciprocal rank @k
    k: int = 10

    @property
    def ndcg_mean(self) -> float:
        return float(self.ndcg.mean()) if len(self.ndcg) else math.nan

    @property
    def mrr_mean(self) -> float:
        return float(self.rr.mean()) if len(self.rr) else math.nan

    def values(self, metric: str) -> np.ndarray:
        return self.ndcg if metric.startswith("ndcg") else self.rr

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "labelled_requests": self.labelled_requests,
            "click_rate": _num(self.click_rate),
            f"ndcg@{self.k}": _num(self.ndcg_mean),
            f"mrr@{self.k}": _num(self.mrr_mean),
        }


@dataclass(frozen=True)
class ConceptDriftResult:
    reference_source: str  # "previous_window" | "manifest"
    metric: str
    current: QualityStats
    reference: QualityStats | None
    reference_value: float
    current_value: float
    relative_drop: float  # (reference - current) / reference; NaN when not comparable
    p_value: float  # one-sided Welch t-test; NaN for a manifest reference
    quality_dropped: bool
    quality_note: str  # why quality was not compared, if it was not
    score_drift: dict[str, dict[str, Any]]  # "score" and each retriever feature
    click_rate_by_decile: list[dict[str, Any]]
    features_drifted: bool
    inputs_drifted: bool | None = None  # features_drifted without click-derived groups
    # the position mix of the clicks moved (monitoring.ranking.click_curve): users behave
    # differently even where the quality test cannot tell yet
    clicks_changed: bool = False
    snapshot: Any = field(default=None, repr=False, compare=False)

    @property
    def decision(self) -> str:
        return decide(
            self.quality_dropped or self.clicks_changed, self.features_drifted, self.inputs_drifted
        )

    def interval(self, z: float = 1.96) -> tuple[float, float, float, float]:
        """95% normal intervals of the reference and current means (lo, hi, lo, hi)."""
        out: list[float] = []
        for q in (self.reference, self.current):
            v = q.values(self.metric) if q is not None else np.zeros(0)
            if len(v) < 2:
                out += [math.nan, math.nan]
                continue
            half = z * float(np.std(v, ddof=1)) / math.sqrt(len(v))
            out += [float(v.mean()) - half, float(v.mean()) + half]
        return out[0], out[1], out[2], out[3]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reference_source": self.reference_source,
            "metric": self.metric,
            "reference_value": _num(self.reference_value),
            "current_value": _num(self.current_value),
            "relative_drop": _num(self.relative_drop),
            "p_value": _num(self.p_value),
            "quality_dropped": self.quality_dropped,
            "clicks_changed": self.clicks_changed,
            "ndcg_interval": [_num(v) for v in self.interval()],
            "quality_note": self.quality_note,
            "features_drifted": self.features_drifted,
            "inputs_drifted": self.inputs_drifted,
            "current": self.current.to_dict(),
            "reference": self.reference.to_dict() if self.reference is not None else None,
            "score_drift": {
                k: {kk: _num(vv) for kk, vv in v.items()} for k, v in self.score_drift.items()
            },
            "click_rate_by_decile": [
                {k: _num(v) for k, v in row.items()} for row in self.click_rate_by_decile
            ],
        }


def decide(
    quality_dropped: bool, features_drifted: bool, inputs_drifted: bool | None = None
) -> str:
    """covariate_drift if the inputs moved, concept_drift if only quality fell, else no_drift.

    ``inputs_drifted``: the feature decision leaving out click-derived (behavior) features.
    When quality dropped and only those drifted, the clicks changed and dragged their own
    aggregates along: concept drift. None = same as ``features_drifted``.
    """
    inputs = features_drifted if inputs_drifted is None else inputs_drifted
    if features_drifted and (inputs or not quality_dropped):
        return COVARIATE_DRIFT
    if quality_dropped:
        return CONCEPT_DRIFT
    return NO_DRIFT


def first_pages(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of requests whose page starts at position 1 (page 2+ has no top to measure)."""
    if frame.empty:
        return frame
    start = frame.groupby("request_id", sort=False)["position"].transform("min")
    return frame[start == 1]


def click_labels(frame: pd.DataFrame, click_model: str = "") -> np.ndarray:
    """Per-row label: the raw click (0/1), or a click model's relevance estimate in [0, 1].

    The click model is fitted on this window's own sessions, so a change in click
    behavior changes the labels (that is what concept drift is about).
    """
    clicked = frame["clicked"].to_numpy(dtype="float64")
    if not click_model or frame.empty:
        return clicked
    from ltr.click_models import Session, make_click_model

    ordered = frame.sort_values(["request_id", "position"], kind="stable")
    rid = ordered["request_id"].astype(str).to_numpy()
    query = ordered["query"].astype(str).to_numpy()
    docs = ordered["doc_id"].astype(str).to_numpy()
    clicks = ordered["clicked"].to_numpy(dtype=bool)
    cuts = np.flatnonzero(rid[1:] != rid[:-1]) + 1  # one session per request, in rows order
    sessions = [
        Session(query=str(query[a]), docs=tuple(docs[a:b].tolist()),
                clicks=tuple(clicks[a:b].tolist()))
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rid)], strict=True)
    ]  # fmt: skip
    model = make_click_model(click_model).fit(sessions)
    rel = model.predict_relevance()
    keys = zip(frame["query"].astype(str), frame["doc_id"].astype(str), strict=True)
    return np.array([float(rel.get(k, math.nan)) for k in keys], dtype="float64")


def ranking_quality(
    frame: pd.DataFrame, labels: np.ndarray | None = None, k: int = 10
) -> QualityStats:
    """Per-request NDCG@k and reciprocal rank@k of the served order, vectorized.

    Gains are 2^label - 1 (labels NaN -> 0). A request without any positive label has no
    defined NDCG and is left out of both metrics (its absence shows in click_rate).
    """
    frame = first_pages(frame)
    if labels is None:
        lab = frame["clicked"].to_numpy(dtype="float64")
    else:
        lab = np.asarray(labels, dtype="float64")
        if lab.shape != (len(frame),):
            raise ValueError(f"labels shape {lab.shape} != ({len(frame)},)")
    if frame.empty:
        empty = np.zeros(0)
        return QualityStats(0, 0, math.nan, empty, empty, k)
    lab = np.where(np.isfinite(lab), lab, 0.0)
    rid, _ = pd.factorize(frame["request_id"], sort=False)
    n_req = int(rid.max()) + 1
    pos = frame["position"].to_numpy(dtype="int64")
    gain = np.exp2(lab) - 1.0
    top = pos <= k
    dcg = np.bincount(rid[top], weights=gain[top] / np.log2(pos[top] + 1.0), minlength=n_req)
    order = np.lexsort((-gain, rid))  # by request, best gain first
    rid_s = rid[order]
    starts = np.searchsorted(rid_s, np.arange(n_req))
    ideal_rank = np.arange(len(rid_s)) - starts[rid_s] + 1
    keep = ideal_rank <= k
    idcg = np.bincount(
        rid_s[keep], weights=gain[order][keep] / np.log2(ideal_rank[keep] + 1.0), minlength=n_req
    )
    relevant = lab >= (1.0 if labels is None else RELEVANT_AT)
    first = np.full(n_req, np.inf)
    hit = relevant & top
    np.minimum.at(first, rid[hit], pos[hit].astype("float64"))
    rr = np.where(np.isfinite(first), 1.0 / first, 0.0)
    labelled = idcg > 0
    clicks = np.bincount(rid, weights=frame["clicked"].to_numpy(dtype="float64"), minlength=n_req)
    return QualityStats(
        requests=n_req,
        labelled_requests=int(labelled.sum()),
        click_rate=float((clicks > 0).mean()),
        ndcg=dcg[labelled] / idcg[labelled],
        rr=rr[labelled],
        k=k,
    )


def click_rate_by_decile(
    current: pd.DataFrame, reference: pd.DataFrame | None, n_bins: int = 10
) -> list[dict[str, Any]]:
    """Click rate per model-score decile; edges from the reference window (else the current).

    A calibrated ranker clicks more in higher deciles; a flattened or inverted profile in the
    current window while scores look alike is a concept-drift symptom.
    """
    base = reference if reference is not None and len(reference) else current
    scores = base["score"].to_numpy(dtype="float64")
    scores = scores[np.isfinite(scores)]
    if len(scores) == 0:
        return []
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        edges = np.array([scores.min(), scores.max() + 1e-9])
    rows: list[dict[str, Any]] = []
    frames = {"current": current, "reference": reference}
    binned = {}
    for name, df in frames.items():
        if df is None or df.empty:
            continue
        s = df["score"].to_numpy(dtype="float64")
        b = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)
        ok = np.isfinite(s)
        c = df["clicked"].to_numpy(dtype="float64")
        nb = len(edges) - 1
        binned[name] = (
            np.bincount(b[ok], minlength=nb),
            np.bincount(b[ok], weights=c[ok], minlength=nb),
        )
    for i in range(len(edges) - 1):
        row: dict[str, Any] = {"decile": i + 1, "lo": float(edges[i]), "hi": float(edges[i + 1])}
        for name in ("reference", "current"):
            if name in binned:
                n, clicks = binned[name]
                row[f"{name}_rows"] = int(n[i])
                row[f"{name}_click_rate"] = float(clicks[i] / n[i]) if n[i] else math.nan
        rows.append(row)
    return rows


def _score_drift(
    current: pd.DataFrame, reference: pd.DataFrame, cfg: MonitoringConfig, render: bool
) -> tuple[dict[str, dict[str, Any]], Any]:
    """Prediction drift and each retriever's score distribution, previous vs current window."""
    specs: dict[str, tuple[str, float]] = {}
    out: dict[str, dict[str, Any]] = {}
    text_method, text_threshold = cfg.method_for("text")
    wanted = [("score", cfg.score_method, cfg.score_threshold)] + [
        (c, text_method, text_threshold) for c in cfg.retriever_features
    ]
    for col, method, threshold in wanted:
        if col not in current.columns or col not in reference.columns:
            out[col] = {"tested": False, "reason": "column absent"}
            continue
        n_c = int(np.isfinite(current[col].to_numpy(dtype="float64")).sum())
        n_r = int(np.isfinite(reference[col].to_numpy(dtype="float64")).sum())
        if min(n_c, n_r) < cfg.min_values:
            out[col] = {"tested": False, "reason": f"too few values ({n_r}, {n_c})"}
            continue
        specs[col] = cfg.sized(method, threshold, min(n_c, n_r))
    results, snapshot = value_drift(reference, current, specs, render=render)
    for col, (score, flag) in results.items():
        method, threshold = specs[col]
        out[col] = {
            "tested": True,
            "method": method,
            "threshold": threshold,
            "score": score,
            "drifted": flag,
            "reference_mean": float(np.nanmean(reference[col].to_numpy(dtype="float64"))),
            "current_mean": float(np.nanmean(current[col].to_numpy(dtype="float64"))),
        }
    return out, snapshot


def concept_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame | Mapping[str, float],
    cfg: MonitoringConfig,
    features_drifted: bool,
    render: bool = True,
    inputs_drifted: bool | None = None,
) -> ConceptDriftResult:
    """Quality, score and click-profile comparison of the current window to its reference.

    ``reference`` is the previous window's served rows, or the model manifest's metrics
    (a mapping holding ``cfg.manifest_metric``). ``render=False``: no Evidently Report/HTML.
    """
    metric = cfg.quality_metric
    k = int(metric.split("@")[1])
    cur_pages = first_pages(current)
    cur_q = ranking_quality(cur_pages, click_labels(cur_pages, cfg.click_model), k)
    cur_val = cur_q.ndcg_mean if metric.startswith("ndcg") else cur_q.mrr_mean
    ref_q: QualityStats | None = None
    p_value = math.nan
    note = ""
    score_drift: dict[str, dict[str, Any]] = {}
    snapshot = None
    if isinstance(reference, pd.DataFrame):
        source = "previous_window"
        ref_pages = first_pages(reference)
        ref_q = ranking_quality(ref_pages, click_labels(ref_pages, cfg.click_model), k)
        ref_val = ref_q.ndcg_mean if metric.startswith("ndcg") else ref_q.mrr_mean
        deciles = click_rate_by_decile(current, reference, cfg.score_deciles)
        if len(reference):
            score_drift, snapshot = _score_drift(current, reference, cfg, render)
        n_ref, n_cur = ref_q.labelled_requests, cur_q.labelled_requests
        if min(n_ref, n_cur) < cfg.min_queries:
            note = (
                f"too few clicked requests to compare quality (reference {n_ref}, current "
                f"{n_cur}; min_queries {cfg.min_queries})"
            )
        else:
            from scipy import stats

            a, b = ref_q.values(metric), cur_q.values(metric)
            if np.ptp(np.concatenate([a, b])) == 0:
                p_value = 1.0
            else:
                p_value = float(
                    stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
                )
    else:
        source = "manifest"
        if cfg.manifest_metric not in reference:
            raise ReferenceNotFoundError(
                f"the model manifest has no metric {cfg.manifest_metric!r}; it has: "
                f"{', '.join(sorted(map(str, reference))) or 'none'}"
            )
        ref_val = float(reference[cfg.manifest_metric])
        deciles = click_rate_by_decile(current, None, cfg.score_deciles)
        if cur_q.labelled_requests < cfg.min_queries:
            note = (
                f"too few clicked requests to compare quality (current "
                f"{cur_q.labelled_requests}; min_queries {cfg.min_queries})"
            )
    comparable = not note and math.isfinite(ref_val) and ref_val > 0 and math.isfinite(cur_val)
    rel_drop = (ref_val - cur_val) / ref_val if comparable else math.nan
    dropped = bool(
        comparable
        and rel_drop >= cfg.quality_drop
        and (source == "manifest" or (math.isfinite(p_value) and p_value < cfg.quality_alpha))
    )
    return ConceptDriftResult(
        reference_source=source,
        metric=metric,
        current=cur_q,
        reference=ref_q,
        reference_value=ref_val,
        current_value=cur_val,
        relative_drop=rel_drop,
        p_value=p_value,
        quality_dropped=dropped,
        quality_note=note,
        score_drift=score_drift,
        click_rate_by_decile=deciles,
        features_drifted=features_drifted,
        inputs_drifted=inputs_drifted,
        snapshot=snapshot,
    )
