"""One drift report per window: compute, write (HTML + JSON), summarize, alert, prune.

``build_report`` is pure (DataFrames in, a DriftSummary out); ``write_report``,
``post_webhook`` and ``apply_retention`` are the I/O the scheduled command needs, kept apart
so the library can be used from a notebook or the demo without touching disk.
"""

from __future__ import annotations

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

from monitoring.concept import NO_DRIFT, ConceptDriftResult, concept_drift, decide
from monitoring.config import MonitoringConfig
from monitoring.drift import FeatureDriftResult, feature_drift
from monitoring.errors import EmptyWindowError, WebhookError

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_DRIFT = 3

REPORT_PREFIX = "drift-"
SUMMARY_FILE = "summary.json"
FEATURES_HTML = "features.html"
CONCEPT_HTML = "concept.html"


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
            "feature_drift": self.features.to_dict(),
            "concept_drift": self.concept.to_dict() if self.concept is not None else None,
        }

    def line(self) -> str:
        """The one-line summary printed on stdout (greppable key=value pairs)."""
        f = self.features
        share = "n/a" if math.isnan(f.share) else f"{f.share:.0%}"
        drifted = ",".join(f.drifted_features[:8]) + ("..." if len(f.drifted_features) > 8 else "")
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
        if self.report_dir is not None:
            parts.append(f"report={self.report_dir}")
        return "drift-report: " + " ".join(parts)


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
) -> DriftSummary:
    """Feature drift vs the training sample, then concept drift vs ``concept_reference``.

    ``current`` (and a DataFrame ``concept_reference``) are impression-log rows; rows of
    other featuresets are ignored. ``concept_reference=None`` skips concept drift.
    ``render=False`` computes the same numbers without Evidently Reports (no HTML).
    """
    cur, other = select_featureset(current, featureset_id)
    if cur.empty:
        extra = f" ({other} rows of other featuresets ignored)" if other else ""
        raise EmptyWindowError(
            f"no served rows for featureset {featureset_id[:12]} in "
            f"{iso(window.since)}..{iso(window.until)}{extra}"
        )
    fd = feature_drift(reference, cur, cfg, features=feature_names, groups=groups, render=render)
    cd = None
    if concept_reference is not None:
        ref = concept_reference
        if isinstance(ref, pd.DataFrame):
            ref, _ = select_featureset(ref, featureset_id)
        cd = concept_drift(
            cur, ref, cfg, features_drifted=fd.drifted, render=render,
            inputs_drifted=fd.drifted_excluding(cfg.click_feature_groups),
        )  # fmt: skip
    return DriftSummary(
        window=window,
        model_version=model_version,
        featureset_id=featureset_id,
        features=fd,
        concept=cd,
        other_featureset_rows=other,
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
    done = DriftSummary(
        window=summary.window,
        model_version=summary.model_version,
        featureset_id=summary.featureset_id,
        features=summary.features,
        concept=summary.concept,
        other_featureset_rows=summary.other_featureset_rows,
        created_at=summary.created_at,
        report_dir=target,
    )
    if html:
        for snap, name in (
            (summary.features.snapshot, FEATURES_HTML),
            (summary.concept.snapshot if summary.concept else None, CONCEPT_HTML),
        ):
            if snap is not None:
                tmp = target / f".{name}.tmp"
                snap.save_html(str(tmp))
                tmp.replace(target / name)
    tmp = target / f".{SUMMARY_FILE}.tmp"
    tmp.write_text(json.dumps(done.to_dict(), indent=2, allow_nan=False), encoding="utf-8")
    tmp.replace(target / SUMMARY_FILE)
    return done


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
