"""One drift report per window: compute, write (HTML + JSON), summarize, alert, prune.

``build_report`` is pure (DataFrames in, a DriftSummary out); ``write_report``,
``post_webhook`` and ``apply_retention`` are the I/O the scheduled command needs, kept apart
so the library can be used from a notebook or the demo without touching disk.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ltr.versions import write_atomic
from monitoring.concept import (
    CONCEPT_DRIFT,
    COVARIATE_DRIFT,
    NO_DRIFT,
    ConceptDriftResult,
    concept_drift,
    decide,
)
from monitoring.config import MonitoringConfig
from monitoring.drift import FeatureDriftResult, _num, feature_drift
from monitoring.errors import EmptyWindowError, WebhookError
from monitoring.html import header, inject
from monitoring.ranking import ranking_signals

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_DRIFT = 3

REPORT_PREFIX = "drift-"
SUMMARY_FILE = "summary.json"
FEATURES_HTML = "features.html"
CONCEPT_HTML = "concept.html"
ALERT_STATE_FILE = "alerts.json"
# ranking signals that are input shifts
INPUT_SIGNALS = ("segments", "single_retriever", "zero_results")
SIGNAL_WORDS = {
    "segments": "a query segment",
    "zero_results": "the zero-result rate",
    "single_retriever": "the share of one-retriever pages",
    "click_curve": "clicks by position",
    "click_labels": "click-model labels",
}
# features that only a retriever sets: their move points at the index, not the queries
RETRIEVER_FEATURES = frozenset({"bm25_rank", "dense", "dense_rank", "both_retrieved", "rrf",
                                "rrf_norm", "min_rank", "rank_agreement"})  # fmt: skip


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Window:
    """[since, until) in unix seconds."""

    since: float
    until: float

    def previous(self) -> Window:
        width = self.until - self.since
        return Window(self.since - width, self.since)

    def to_dict(self) -> dict[str, Any]:
        return {"since": iso(self.since), "until": iso(self.until)}


@dataclass(frozen=True)
class DriftSummary:
    window: Window
    model_version: str
    featureset_id: str
    features: FeatureDriftResult
    concept: ConceptDriftResult | None
    other_featureset_rows: int = 0  # current rows logged under another featureset (ignored)
    created_at: float = field(default_factory=time.time)
    report_dir: Path | None = None
    signals: dict[str, dict[str, Any]] = field(default_factory=dict)  # monitoring.ranking
    reference_info: dict[str, Any] = field(default_factory=dict)  # registry reference.json

    @property
    def decision(self) -> str:
        if self.concept is not None:
            return self.concept.decision
        return decide(False, self.features.drifted)

    @property
    def drifted(self) -> bool:
        return self.decision != NO_DRIFT

    @property
    def exit_code(self) -> int:
        return EXIT_DRIFT if self.drifted else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "drifted": self.drifted,
            "window": self.window.to_dict(),
            "model_version": self.model_version,
            "featureset_id": self.featureset_id,
            "created_at": iso(self.created_at),
            "report_dir": str(self.report_dir) if self.report_dir else None,
            "other_featureset_rows": self.other_featureset_rows,
            "verdict": self.verdict(),
            "action": self.action(),
            "top_drifted": self.features.to_dict()["top_drifted"],
            "cause": self.cause(),
            "reference_info": self.reference_info,
            "feature_drift": self.features.to_dict(),
            "concept_drift": self.concept.to_dict() if self.concept is not None else None,
            "signals": _json_safe(self.signals),
        }

    def _signal(self, name: str) -> bool:
        return bool(self.signals.get(name, {}).get("drifted", False))

    def cause(self) -> str:
        """What an alert is about: the decision and the groups of the top drifted features
        (the same cause in the next window is a repeat, grouped rather than resent)."""
        if not self.drifted:
            return NO_DRIFT
        groups = sorted({t["group"] for t in self.features.to_dict()["top_drifted"][:3]})
        return f"{self.decision}:{'+'.join(groups) or 'quality'}"

    def action(self) -> str:
        """The suggested first step, from what moved."""
        if not self.drifted:
            return "none"
        top = self.features.to_dict()["top_drifted"]
        group = top[0]["group"] if top else ""
        if self.decision == CONCEPT_DRIFT:
            c = self.concept
            if c is not None and c.clicks_changed and not c.quality_dropped:
                return "check the click logging (clicks moved between positions), then retrain"
            return "retrain on fresh clicks (users now prefer other results)"
        # more empty pages first: cheaper to check than a retrain, and removing requests at
        # random moves a small window's query_len by noise alone
        if self._signal("zero_results"):
            return "check the index and the catalog (more queries find nothing)"
        names = {t["name"] for t in top}
        if "query_len" in names or "query_len" in self.features.drifted_features:
            return "retrain (the query mix moved away from what the model learned)"
        if self._signal("single_retriever") or (top and top[0]["name"] in RETRIEVER_FEATURES):
            return "check the index (a retriever returns less than before)"
        if group == "static":
            return "check the index (the catalog changed), then retrain"
        if group == "behavior":
            return "check the click logging (click-history features moved)"
        return "retrain (the query mix moved away from what the model learned)"

    def verdict(self) -> str:
        """One sentence in plain words: what happened and the evidence."""
        f, c = self.features, self.concept
        top = ", ".join(
            f"{t['name']} ({t['group']}, effect {t['effect']:.2f})"
            for t in f.to_dict()["top_drifted"][:3]
        )
        if self.decision == NO_DRIFT:
            q = ""
            if c is not None and not c.quality_note:
                q = f"; {c.metric} {_fmt(c.reference_value)} -> {_fmt(c.current_value)}"
            moved = (
                f"{len(f.drifted_features)} of {len(f.tested)} features moved a little "
                f"(largest: {top}), below the alarm rules (more than {f.drift_share_threshold:.0%}"
                f" of the features, or one with effect >= {f.alarm_effect:g})"
                if f.drifted_features
                else f"none of {len(f.tested)} features moved enough to matter"
            )
            trend = (
                f"; click history moved with the traffic since training (reported, not "
                f"alarmed): {', '.join(f.trend_features[:4])}"
                + ("..." if len(f.trend_features) > 4 else "")
                if f.trend_features
                else ""
            )
            return f"No drift: {moved}{q}{trend}."
        if self.decision == COVARIATE_DRIFT:
            return (
                f"Covariate drift: the served inputs moved away from the reference; "
                f"{len(f.drifted_features)} of {len(f.tested)} features drifted"
                + (f", largest: {top}" if top else "")
                + "".join(f"; {SIGNAL_WORDS[k]} moved" for k in INPUT_SIGNALS if self._signal(k))
                + "."
            )
        assert c is not None
        why = []
        if c.quality_dropped:
            why.append(
                f"{c.metric} fell {_fmt(c.reference_value)} -> {_fmt(c.current_value)} "
                f"(drop {_fmt(c.relative_drop, pct=True)}, p={_fmt(c.p_value, 3)})"
            )
        if c.clicks_changed:
            why.append("clicks moved between positions")
        return f"Concept drift: same inputs, users now click other results: {'; '.join(why)}."

    def line(self) -> str:
        """The one-line summary printed on stdout (greppable key=value pairs)."""
        f = self.features
        share = "n/a" if math.isnan(f.share) else f"{f.share:.0%}"
        drifted = ",".join(f.drifted_features[:8]) + ("..." if len(f.drifted_features) > 8 else "")
        top = self.features.to_dict()["top_drifted"][:3]
        parts = [
            f"decision={self.decision}",
            f"window={iso(self.window.since)}..{iso(self.window.until)}",
            f"model={self.model_version}",
            f"rows={f.current_rows}",
            f"features_drifted={len(f.drifted_features)}/{len(f.tested)} ({share})"
            + (f" [{drifted}]" if drifted else ""),
        ]
        c = self.concept
        if c is not None:
            if c.quality_note:
                parts.append(f"{c.metric}=n/a ({c.quality_note})")
            else:
                parts.append(
                    f"{c.metric}={_fmt(c.reference_value)}->{_fmt(c.current_value)}"
                    f" (drop {_fmt(c.relative_drop, pct=True)}, p={_fmt(c.p_value, 3)})"
                )
            s = c.score_drift.get("score")
            if s and s.get("tested"):
                parts.append(f"score_drift={'yes' if s['drifted'] else 'no'}")
        if top:
            parts.append(
                "top=" + ",".join(f"{t['name']}({t['group']},{t['effect']:.2f})" for t in top)
            )
        moved = [k for k in self.signals if self._signal(k)]
        if moved:
            parts.append("signals=" + ",".join(moved))
        if self.drifted:
            parts.append(f'action="{self.action()}"')
        if self.report_dir is not None:
            parts.append(f"report={self.report_dir}")
        return "drift-report: " + " ".join(parts)


def _json_safe(v: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (JSON has no NaN)."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return _num(v)


def _fmt(v: float, digits: int = 3, pct: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.0%}" if pct else f"{v:.{digits}f}"


def select_featureset(frame: pd.DataFrame, featureset_id: str) -> tuple[pd.DataFrame, int]:
    """Rows served with the model's featureset, and how many other rows were dropped.

    Rows logged under another featureset carry other (or NaN) columns; comparing them to
    this model's reference would report drift that is only a model change.
    """
    if "featureset_id" not in frame.columns or frame.empty:
        return frame, 0
    mask = frame["featureset_id"] == featureset_id
    return frame[mask], int((~mask).sum())


def build_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    concept_reference: pd.DataFrame | Mapping[str, float] | None,
    cfg: MonitoringConfig,
    *,
    window: Window,
    model_version: str,
    featureset_id: str,
    feature_names: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    render: bool = True,
    reference_info: Mapping[str, Any] | None = None,
    first_pages: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> DriftSummary:
    """Feature drift vs the training sample, then concept drift vs ``concept_reference``.

    ``current`` (and a DataFrame ``concept_reference``) are impression-log rows; rows of
    other featuresets are ignored. ``concept_reference=None`` skips concept drift.
    ``render=False`` computes the same numbers without Evidently Reports (no HTML).
    ``first_pages``: (previous, current) window's (first pages, empty ones) for the
    zero-result signal (search.events ``first_pages``; empty pages have no rows).
    """
    cur, other = select_featureset(current, featureset_id)
    if cur.empty:
        extra = f" ({other} rows of other featuresets ignored)" if other else ""
        raise EmptyWindowError(
            f"no served rows for featureset {featureset_id[:12]} in "
            f"{iso(window.since)}..{iso(window.until)}{extra}"
        )
    # click history against a sample taken at training time grows with the traffic since
    trained = bool(reference_info) and (reference_info or {}).get("kind") != "previous_window"
    fd = feature_drift(
        reference, cur, cfg, features=feature_names, groups=groups, render=render,
        trend_groups=cfg.trend_groups if trained else (),
    )  # fmt: skip
    cd = None
    signals: dict[str, dict[str, Any]] = {}
    if concept_reference is not None:
        ref = concept_reference
        if isinstance(ref, pd.DataFrame):
            ref, _ = select_featureset(ref, featureset_id)
            names = list(feature_names) if feature_names is not None else list(reference.columns)
            signals = ranking_signals(cur, ref, names, cfg, first_pages)
        # the query mix moving between segments or a retriever dropping out are input shifts
        moved = any(signals.get(k, {}).get("drifted") for k in INPUT_SIGNALS)
        cd = concept_drift(
            cur, ref, cfg, features_drifted=fd.drifted or moved, render=render,
            inputs_drifted=fd.drifted_excluding(cfg.click_feature_groups) or moved,
        )  # fmt: skip
        if signals.get("click_curve", {}).get("drifted"):
            cd = dataclasses.replace(cd, clicks_changed=True)
    return DriftSummary(
        window=window,
        model_version=model_version,
        featureset_id=featureset_id,
        features=fd,
        concept=cd,
        other_featureset_rows=other,
        signals=signals,
        reference_info=dict(reference_info or {}),
    )


def write_report(summary: DriftSummary, out_dir: str | Path, html: bool = True) -> DriftSummary:
    """Write <out>/drift-<window end>/{summary.json, features.html, concept.html}.

    The directory is named after the window's end, so re-running a window replaces its
    report instead of piling up copies. Files are written to a temp name and renamed, so a
    reader never sees half a JSON file.
    """
    stamp = datetime.fromtimestamp(summary.window.until, UTC).strftime("%Y%m%dT%H%M%SZ")
    target = Path(out_dir) / f"{REPORT_PREFIX}{stamp}"
    target.mkdir(parents=True, exist_ok=True)
    done = dataclasses.replace(summary, report_dir=target)
    if html:
        for snap, name in (
            (summary.features.snapshot, FEATURES_HTML),
            (summary.concept.snapshot if summary.concept else None, CONCEPT_HTML),
        ):
            if snap is not None:
                tmp = target / f".{name}.tmp"
                snap.save_html(str(tmp))
                # the verdict, evidence and charts open the page, above Evidently's widgets
                inject(tmp, header(done, "concept" if name == CONCEPT_HTML else "features"))
                tmp.replace(target / name)
    tmp = target / f".{SUMMARY_FILE}.tmp"
    tmp.write_text(json.dumps(done.to_dict(), indent=2, allow_nan=False), encoding="utf-8")
    tmp.replace(target / SUMMARY_FILE)
    return done


@dataclass(frozen=True)
class Alert:
    """Whether to send this window's alarm, and how many of the same cause were grouped."""

    send: bool
    cause: str
    grouped: int  # alarms of this cause not sent since the last one that was
    first_seen: float  # window end of the first alarm of this cause in the current group

    def payload(self, summary: DriftSummary) -> dict[str, Any]:
        """The webhook body: the one-line summary and its parts first, then everything."""
        return {
            "line": summary.line(),
            "verdict": summary.verdict(),
            "action": summary.action(),
            "top_drifted": summary.features.to_dict()["top_drifted"][:3],
            "cause": self.cause,
            "grouped_since_last_alert": self.grouped,
            "first_seen": iso(self.first_seen),
            "summary": summary.to_dict(),
        }


def alert_for(summary: DriftSummary, out_dir: str | Path, group_s: float) -> Alert:
    """Decide whether this drifted window's alarm is sent, and record it in alerts.json.

    One alarm per cause is sent; the same cause again within ``group_s`` of the last one
    sent is counted, not resent (the next one sent says how many were grouped). The state
    lives next to the reports, so a cron job (a new process each run) groups too.
    """
    path = Path(out_dir) / ALERT_STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        state = {}
    cause, now = summary.cause(), summary.window.until
    entry = state.get(cause, {})
    last = float(entry.get("last_sent", -math.inf))
    if group_s > 0 and 0 <= now - last < group_s:
        entry["grouped"] = int(entry.get("grouped", 0)) + 1
        alert = Alert(False, cause, entry["grouped"], float(entry.get("first_seen", now)))
    else:
        alert = Alert(True, cause, int(entry.get("grouped", 0)), now)
        entry = {"last_sent": now, "first_seen": now, "grouped": 0}
    state[cause] = entry
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(state, indent=2))
    return alert


def apply_retention(
    out_dir: str | Path, keep: int, days: float = 0.0, now: float | None = None
) -> list[Path]:
    """Delete old report directories: beyond the newest ``keep`` and/or older than ``days``.

    Only directories named drift-<UTC stamp> (as write_report names them) are counted and
    touched. Returns the removed paths, newest first.
    """
    root = Path(out_dir)
    if not root.is_dir():
        return []
    stamped: list[tuple[float, Path]] = []
    for p in root.iterdir():
        if not (p.is_dir() and p.name.startswith(REPORT_PREFIX)):
            continue
        try:
            stamp = datetime.strptime(p.name[len(REPORT_PREFIX) :], "%Y%m%dT%H%M%SZ")
        except ValueError:
            continue  # not one of ours
        stamped.append((stamp.replace(tzinfo=UTC).timestamp(), p))
    stamped.sort(key=lambda t: t[0], reverse=True)
    now = time.time() if now is None else now
    doomed = [
        p
        for i, (ts, p) in enumerate(stamped)
        if (keep > 0 and i >= keep) or (days > 0 and ts < now - days * 86400)
    ]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def post_webhook(url: str, payload: Mapping[str, Any], timeout_s: float = 5.0) -> int:
    """POST the JSON summary; returns the HTTP status, raises WebhookError on failure."""
    body = json.dumps(payload, allow_nan=False).encode("utf-8")
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # http(s) only (validated)
            status = int(resp.status)
    except urllib.error.HTTPError as e:
        raise WebhookError(f"webhook {url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise WebhookError(f"webhook {url} unreachable: {reason}") from None
    return status
