"""Ranking-aware drift signals, current window vs the previous one (both impression-log rows).

Generic drift tools compare columns; a ranker also breaks when the traffic moves between
query segments, when users examine the page differently, when the click model's labels move,
or when one retriever quietly stops contributing. Each signal here is a small dict with the
numbers, a ``drifted`` flag and a ``line`` in plain words for the summary and the HTML:

- ``segments``: head / torso / tail queries (by each window's own traffic: the queries
  making the first 50%, the next 30%, the rest), the largest feature move and the click
  rate within each; the share of requests for queries the previous window did not have;
  short pages (fewer than 10 results);
- ``zero_results``: the share of first pages with no hit (the log keeps an empty page as a
  request without impressions, search.events ``first_pages``); an alarm when it rose by
  ``zero_result_delta`` and a one-sided two-proportion z-test gives p < ``quality_alpha``;
- ``click_curve``: click-through rate by position; the share of clicks per position compared
  with a chi-square test and its total-variation distance;
- ``click_labels``: the click model's relevance labels of the served rows;
- ``single_retriever``: share of requests whose page comes from one retriever only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from monitoring.config import MonitoringConfig
from monitoring.drift import _num, effect_size

HEAD_SHARE, TORSO_SHARE = 0.5, 0.8  # cumulative traffic of the head, head + torso
SEGMENTS: tuple[str, ...] = ("head", "torso", "tail")


def _pct(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.1%}"


def query_segments(frame: pd.DataFrame) -> dict[str, str]:
    """query -> head / torso / tail by its share of this window's requests (the queries
    making the first 50% of the traffic, the next 30%, the rest)."""
    per_query = frame.groupby("query", sort=False)["request_id"].nunique()
    per_query = per_query.sort_values(ascending=False, kind="stable")
    cum = per_query.cumsum() / max(int(per_query.sum()), 1)
    prev = cum.shift(1, fill_value=0.0)
    seg = np.where(prev < HEAD_SHARE, "head", np.where(prev < TORSO_SHARE, "torso", "tail"))
    return dict(zip(per_query.index.astype(str), seg, strict=True))


def segment_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    features: Sequence[str],
    cfg: MonitoringConfig,
) -> dict[str, Any]:
    """Per segment (each window's own head / torso / tail): click rate and the feature that
    moved most, so a shift confined to the tail is not averaged away by the head."""
    out: dict[str, Any] = {}
    lab = {
        n: df["query"].astype(str).map(query_segments(df)).to_numpy()
        for n, df in (("reference", reference), ("current", current))
    }
    moved = []
    for seg in SEGMENTS:
        r = reference[lab["reference"] == seg]
        c = current[lab["current"] == seg]
        top, top_effect = "", 0.0
        if len(r) >= cfg.min_values and len(c) >= cfg.min_values:
            for n in features:
                if n in r.columns and n in c.columns:
                    e = effect_size(r[n].to_numpy("float64"), c[n].to_numpy("float64"))
                    if math.isfinite(e) and e > top_effect:
                        top, top_effect = n, e
        drifted = top_effect >= cfg.segment_effect
        if drifted:
            moved.append(seg)
        out[seg] = {
            "reference_queries": int(r["query"].nunique()),
            "current_queries": int(c["query"].nunique()),
            "reference_click_rate": float(r["clicked"].mean()) if len(r) else math.nan,
            "current_click_rate": float(c["clicked"].mean()) if len(c) else math.nan,
            "top_feature": top,
            "top_effect": top_effect,
            "drifted": drifted,
        }
    seen = set(reference["query"].astype(str))
    new = current.drop_duplicates("request_id")["query"].astype(str)
    out["new_query_share"] = float((~new.isin(seen)).mean()) if len(new) else math.nan
    short = {n: _short_pages(df) for n, df in (("reference", reference), ("current", current))}
    short_drifted = short["current"] - short["reference"] >= cfg.segment_share_delta
    out["short_pages"] = {**short, "drifted": bool(short_drifted)}
    parts = [
        f"{s}: {out[s]['top_feature'] or 'n/a'} moved {out[s]['top_effect']:.2f}, click rate "
        f"{_pct(out[s]['reference_click_rate'])} -> {_pct(out[s]['current_click_rate'])}"
        for s in SEGMENTS
    ]
    verdict = f"moved: {', '.join(moved)}" if moved else "no segment moved"
    out["drifted"] = bool(moved) or bool(short_drifted)
    out["line"] = (
        f"Query segments ({verdict}; alarm at effect {cfg.segment_effect:g}): "
        f"{'; '.join(parts)}. Queries not seen in the previous window: "
        f"{_pct(out['new_query_share'])} of requests. Pages with fewer than 10 results "
        f"{_pct(short['reference'])} -> {_pct(short['current'])}."
    )
    return out


def _short_pages(frame: pd.DataFrame) -> float:
    sizes = frame.groupby("request_id", sort=False)["position"].size()
    return float((sizes < 10).mean()) if len(sizes) else math.nan


def click_curve(current: pd.DataFrame, reference: pd.DataFrame, cfg: MonitoringConfig,
                k: int = 10) -> dict[str, Any]:  # fmt: skip
    """CTR by position 1..k; drifted when the position mix of the clicks moved (chi-square
    p < quality_alpha and total variation >= click_curve_delta)."""
    from scipy import stats

    rows = []
    clicks = np.zeros((2, k))
    for i, df in enumerate((reference, current)):
        top = df[df["position"] <= k]
        g = top.groupby("position")["clicked"].agg(["sum", "size"]).reindex(range(1, k + 1))
        clicks[i] = g["sum"].fillna(0).to_numpy()
        rows.append((g["sum"] / g["size"]).to_numpy("float64"))
    total = clicks.sum(axis=1)
    tv, p = math.nan, math.nan
    if total.min() > 0:
        share = clicks / total[:, None]
        tv = 0.5 * float(np.abs(share[0] - share[1]).sum())
        keep = clicks.sum(axis=0) > 0
        p = float(stats.chi2_contingency(clicks[:, keep])[1]) if keep.sum() > 1 else 1.0
    drifted = bool(
        total.min() >= cfg.min_queries and p < cfg.quality_alpha and tv >= cfg.click_curve_delta
    )
    line = (
        "Clicks by position moved (users examine the page differently; the click models' "
        "position assumptions no longer hold)"
        if drifted
        else "Clicks by position look the same"
    )
    return {
        "positions": [
            {"position": i + 1, "reference_ctr": _num(rows[0][i]), "current_ctr": _num(rows[1][i])}
            for i in range(k)
        ],
        "reference_clicks": int(total[0]),
        "current_clicks": int(total[1]),
        "total_variation": tv,
        "p_value": p,
        "drifted": drifted,
        "line": f"{line}: share of clicks shifted by {_pct(tv)} between positions "
        f"(p={p:.3g}); CTR at position 1 {_pct(rows[0][0])} -> {_pct(rows[1][0])}.",
    }


def click_label_drift(
    current: pd.DataFrame, reference: pd.DataFrame, cfg: MonitoringConfig
) -> dict[str, Any]:
    """The click model's relevance labels (fitted per window) of the served rows."""
    from monitoring.concept import click_labels, first_pages

    name = cfg.click_model or "pbm"
    r, c = first_pages(reference), first_pages(current)
    lab_r, lab_c = click_labels(r, name), click_labels(c, name)
    e = effect_size(lab_r, lab_c)
    drifted = bool(math.isfinite(e) and e >= cfg.alarm_effect)
    mean_r, mean_c = float(np.nanmean(lab_r)), float(np.nanmean(lab_c))
    return {
        "click_model": name,
        "reference_mean": mean_r,
        "current_mean": mean_c,
        "effect": e,
        "drifted": drifted,
        "line": f"Click-model ({name}) labels {'moved' if drifted else 'are stable'}: mean "
        f"relevance {mean_r:.3f} -> {mean_c:.3f}, effect {e:.2f} (alarm at "
        f"{cfg.alarm_effect:g}).",
    }


def single_retriever_share(frame: pd.DataFrame) -> float:
    """Share of requests whose served rows all come from one retriever (NaN if unknown)."""
    cols = [c for c in ("bm25_rank", "dense_rank") if c in frame.columns]
    if len(cols) < 2 or frame.empty:
        return math.nan
    got = frame[cols].notna().groupby(frame["request_id"], sort=False).any()
    return float((got.sum(axis=1) < 2).mean())


def retriever_drift(
    current: pd.DataFrame, reference: pd.DataFrame, cfg: MonitoringConfig
) -> dict[str, Any]:
    r, c = single_retriever_share(reference), single_retriever_share(current)
    drifted = bool(math.isfinite(r) and math.isfinite(c) and c - r >= cfg.segment_share_delta)
    return {
        "reference_share": r,
        "current_share": c,
        "drifted": drifted,
        "line": (
            f"Requests served from one retriever only: {_pct(r)} -> {_pct(c)}"
            + (" (a retriever stopped contributing: check the index)" if drifted else ".")
            if math.isfinite(r)
            else "Retriever share not measured (the model has no bm25_rank/dense_rank)."
        ),
    }


def zero_results(
    current: tuple[int, int], reference: tuple[int, int], cfg: MonitoringConfig
) -> dict[str, Any]:
    """Zero-result rate of each window from (first pages, empty ones); drifted when it rose
    by ``zero_result_delta`` and the rise is significant (one-sided two-proportion z-test,
    p < ``quality_alpha``): a catalog or index change, or a query mix the index cannot
    serve. A fall is reported, never an alarm."""
    (nr, zr), (nc, zc) = reference, current
    r = zr / nr if nr else math.nan
    c = zc / nc if nc else math.nan
    p = math.nan
    if nr and nc:
        pooled = (zr + zc) / (nr + nc)
        se = math.sqrt(pooled * (1 - pooled) * (1 / nr + 1 / nc))
        p = 0.5 * math.erfc((c - r) / se / math.sqrt(2)) if se > 0 else 1.0
    drifted = bool(math.isfinite(p) and c - r >= cfg.zero_result_delta and p < cfg.quality_alpha)
    line = (
        f"Zero-result queries: {_pct(r)} -> {_pct(c)} of first pages ({zr}/{nr} -> {zc}/{nc}"
        + (f", p={p:.3g})" if math.isfinite(p) else ")")
        + (
            f": rose by {c - r:.1%} (alarm at +{cfg.zero_result_delta:.0%}), check the index"
            " and the catalog"
            if drifted
            else "."
        )
    )
    return {
        "reference_pages": nr,
        "reference_zero": zr,
        "current_pages": nc,
        "current_zero": zc,
        "reference_rate": r,
        "current_rate": c,
        "p_value": p,
        "drifted": drifted,
        "line": line,
    }


def ranking_signals(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    features: Sequence[str],
    cfg: MonitoringConfig,
    first_pages: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every ranking-aware signal; the reference is the previous window's served rows.
    ``first_pages``: (previous, current) window's (first pages, empty ones), from
    search.events ``first_pages``; without it the zero-result signal is left out."""
    if reference.empty or current.empty:
        return {}
    from monitoring.drift import feature_groups

    groups = feature_groups(features)
    inputs = [n for n in features if groups[n] not in cfg.click_feature_groups]
    out = {
        # inputs only: click-derived features moving is the click signals' business
        "segments": segment_drift(current, reference, inputs, cfg),
        "click_curve": click_curve(current, reference, cfg),
        "click_labels": click_label_drift(current, reference, cfg),
        "single_retriever": retriever_drift(current, reference, cfg),
    }
    if first_pages is not None:
        out["zero_results"] = zero_results(first_pages[1], first_pages[0], cfg)
    return out
