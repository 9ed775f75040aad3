"""Versioned model registry on the local filesystem.

Layout under ``root``::

    v0001/ model.ubj  manifest.json  reference.parquet
    v0002/ ...
    PROMOTED            # the served version's name (swapped atomically with os.replace)
    PROMOTIONS.json     # promotion history, newest last (rollback = the one before)
    .tmp-*/ .trash-*/   # in-flight saves / deletions: never listed, never loaded

A save writes everything into a hidden temp directory and renames it into place, so a
killed save never leaves a half-written version visible; the manifest records the booster
file's SHA-256, which every load verifies (ltr.model) (the mechanism is
ltr.versions.VersionedDir, shared with the index). Nothing is pickled: the booster is
XGBoost's own UBJ/JSON, the manifest JSON, the reference sample Parquet.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xgboost as xgb

from ltr.dataset import RankingData
from ltr.errors import FeaturesetMismatchError, LTRError, ModelNotFoundError
from ltr.model import MANIFEST_FILE, Manifest, RankModel, read_manifest, sha256_hex
from ltr.train import TrainedModel
from ltr.versions import VersionedDir, write_atomic

PROMOTED_FILE = "PROMOTED"
HISTORY_FILE = "PROMOTIONS.json"
REFERENCE_FILE = "reference.parquet"
REFERENCE_INFO_FILE = "reference.json"
VERSION_PREFIX = "v"  # versions are v0001, v0002, ...
_STALE_TMP_SECONDS = 3600.0


class ModelRegistry:
    """Save, list, promote, roll back and load model versions under one directory."""

    def __init__(
        self,
        root: str | Path,
        keep_versions: int = 5,
        model_format: Literal["ubj", "json"] = "ubj",
    ) -> None:
        if not isinstance(keep_versions, int) or keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions!r}")
        if model_format not in ("ubj", "json"):
            raise ValueError(f"model_format must be 'ubj' or 'json', got {model_format!r}")
        self.root = Path(root)
        self.keep_versions = keep_versions
        self.model_format = model_format
        self.dirs = VersionedDir(
            self.root,
            pointer=PROMOTED_FILE,
            staging_prefix=".tmp-",
            marker=MANIFEST_FILE,
            numbered=VERSION_PREFIX,
        )

    # --- listing -----------------------------------------------------------------------
    def list_versions(self) -> list[str]:
        """Complete versions, oldest first (temp and trash directories are invisible)."""
        return self.dirs.names()

    def promoted(self) -> str | None:
        """The promoted (served) version, or None."""
        return self.dirs.current()

    def history(self) -> list[str]:
        """Promotion history, oldest first (the last entry is the promoted version)."""
        try:
            data = json.loads((self.root / HISTORY_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except json.JSONDecodeError as e:
            raise LTRError(f"{self.root / HISTORY_FILE}: corrupt promotion history: {e}") from None
        return [str(v) for v in data]

    def path(self, version: str) -> Path:
        """Directory of an existing version; ModelNotFoundError lists the known ones."""
        if not self.dirs.is_name(str(version)):
            raise ModelNotFoundError(self._missing_msg(version))
        p = self.dirs.path(version)
        if not (p / MANIFEST_FILE).is_file():
            raise ModelNotFoundError(self._missing_msg(version))
        return p

    def _missing_msg(self, version: str) -> str:
        known = self.list_versions()
        return (
            f"no model version {version!r} in {self.root}; "
            f"versions: {', '.join(known) if known else '(none)'}"
        )

    def _resolve(self, version: str | None) -> str:
        if version is not None:
            return version
        promoted = self.promoted()
        if promoted is None:
            known = self.list_versions()
            raise ModelNotFoundError(
                f"no promoted model in {self.root}; "
                f"versions: {', '.join(known) if known else '(none)'} "
                "(promote one, e.g. scripts/train.py --promote)"
            )
        return promoted

    def manifest(self, version: str | None = None) -> Manifest:
        p = self.path(self._resolve(version))
        return read_manifest(p / MANIFEST_FILE)

    # --- saving ------------------------------------------------------------------------
    def save(
        self,
        trained: TrainedModel,
        *,
        featureset_id: str,
        base_margin: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        data_sizes: Mapping[str, Mapping[str, int]] | None = None,
        label_source: str = "qrels",
        extra: Mapping[str, Any] | None = None,
        reference_rows: RankingData | pd.DataFrame | np.ndarray | None = None,
        reference_max_rows: int = 5000,
        reference_top_k: int = 0,
        seed: int = 0,
    ) -> str:
        """Write a new version (atomically) and apply retention; returns its name.

        ``base_margin`` is the fusion spec ``{"name": ..., "params": {...}}`` the model was
        boosted from; required exactly when the model was trained with a base margin.
        ``reference_rows`` (training feature rows) become the drift-monitoring reference,
        sampled to at most ``reference_max_rows`` rows. The reference must look like what the
        API logs (served pages), not like whole candidate lists: with ``reference_top_k`` > 0
        and ``RankingData`` rows, only each query's top-k rows by this model's own score are
        kept (judged queries replayed through the serving code); pass 0 for rows that were
        served already (the impression log). What was kept is recorded in reference.json.
        """
        if trained.uses_base_margin and base_margin is None:
            raise ValueError(
                "the model was trained from a base margin; pass its spec "
                "base_margin={'name': <fusion>, 'params': {...}}"
            )
        if not trained.uses_base_margin and base_margin is not None:
            raise ValueError("the model was trained without a base margin; pass base_margin=None")
        if base_margin is not None and "name" not in base_margin:
            raise ValueError("base_margin spec needs a 'name' (a fusion in ltr.fusion.FUSIONS)")
        if not featureset_id:
            raise ValueError("featureset_id is required (ltr.features.featureset_id(names))")
        names = trained.feature_names
        if reference_top_k > 0 and isinstance(reference_rows, RankingData):
            reference_rows = reference_rows.top_k_rows(
                trained.predict_data(reference_rows), reference_top_k
            )
        ref = self._reference_frame(reference_rows, names, reference_max_rows, seed)

        model_file = f"model.{self.model_format}"
        tmp = self.dirs.stage()
        try:
            trained.booster.save_model(str(tmp / model_file))
            if ref is not None:
                ref.to_parquet(tmp / REFERENCE_FILE, index=False)
                info = reference_info_of(ref, reference_rows, reference_top_k)
                (tmp / REFERENCE_INFO_FILE).write_text(json.dumps(info, indent=2), "utf-8")
            with self.dirs.lock():
                self.dirs.clear_stale(_STALE_TMP_SECONDS)
                version = self.dirs.new_name()
                manifest = Manifest(
                    version=version,
                    feature_names=tuple(names),
                    featureset_id=featureset_id,
                    base_margin=(
                        None
                        if base_margin is None
                        else {
                            "name": str(base_margin["name"]),
                            "params": dict(base_margin.get("params") or {}),
                        }
                    ),
                    params=dict(trained.params),
                    metrics={k: float(v) for k, v in (metrics or {}).items()},
                    data_sizes={k: dict(v) for k, v in (data_sizes or trained.data_sizes).items()},
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    xgboost_version=xgb.__version__,
                    best_iteration=trained.best_iteration,
                    model_file=model_file,
                    label_source=label_source,
                    extra=dict(extra or {}),
                    model_sha256=sha256_hex((tmp / model_file).read_bytes()),
                )
                text = json.dumps(manifest.to_json(), indent=2, sort_keys=True, allow_nan=False)
                (tmp / MANIFEST_FILE).write_text(text, encoding="utf-8")
                self.dirs.publish(tmp, version)  # appears complete or not at all
                self._apply_retention(keep={version})
            return version
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _reference_frame(
        rows: RankingData | pd.DataFrame | np.ndarray | None,
        names: Sequence[str],
        max_rows: int,
        seed: int,
    ) -> pd.DataFrame | None:
        if rows is None:
            return None
        if isinstance(rows, RankingData):
            if rows.feature_names != tuple(names):
                raise ValueError("reference rows have other features than the model")
            frame = pd.DataFrame(rows.X, columns=list(names))
        elif isinstance(rows, pd.DataFrame):
            missing = [n for n in names if n not in rows.columns]
            if missing:
                raise ValueError(f"reference rows lack feature column(s): {', '.join(missing)}")
            frame = rows[list(names)].astype(np.float32).reset_index(drop=True)
        else:
            arr = np.asarray(rows, dtype=np.float32)
            if arr.ndim != 2 or arr.shape[1] != len(names):
                raise ValueError(f"reference rows must be [n, {len(names)}], got {arr.shape}")
            frame = pd.DataFrame(arr, columns=list(names))
        if len(frame) > max_rows:
            idx = np.sort(np.random.default_rng(seed).choice(len(frame), max_rows, replace=False))
            frame = frame.iloc[idx].reset_index(drop=True)
        return frame

    def _apply_retention(self, keep: set[str]) -> list[str]:
        """Delete the oldest versions beyond keep_versions; never the promoted one or the
        rollback target (previous promotion). Caller holds the lock."""
        versions = self.list_versions()
        protected = set(keep)
        hist = self.history()
        promoted = self.promoted()
        if promoted:
            protected.add(promoted)
        if len(hist) >= 2:
            protected.add(hist[-2])
        excess = len(versions) - self.keep_versions
        removed = []
        for v in versions:  # oldest first
            if excess <= 0:
                break
            if v in protected:
                continue
            self.dirs.discard(v)  # disappears atomically, then is deleted
            removed.append(v)
            excess -= 1
        return removed

    # --- promotion ---------------------------------------------------------------------
    def promote(self, version: str) -> None:
        """Make ``version`` the served one (atomic pointer swap) and record the history."""
        with self.dirs.lock():
            self.path(version)
            hist = self.history()
            if not hist or hist[-1] != version:
                hist.append(version)
            write_atomic(self.root / HISTORY_FILE, json.dumps(hist))
            self.dirs.point_to(version)

    def rollback(self) -> str:
        """Re-promote the previously promoted version; returns it."""
        with self.dirs.lock():
            hist = self.history()
            current = self.promoted()
            if current is not None and hist and hist[-1] == current:
                hist = hist[:-1]
            # skip versions deleted since (by hand)
            while hist and not (self.dirs.path(hist[-1]) / MANIFEST_FILE).is_file():
                hist.pop()
            if not hist:
                raise ModelNotFoundError(
                    f"nothing to roll back to in {self.root}: no earlier promoted version"
                )
            target = hist[-1]
            write_atomic(self.root / HISTORY_FILE, json.dumps(hist))
            self.dirs.point_to(target)
            return target

    # --- loading -----------------------------------------------------------------------
    def load(
        self,
        version: str | None = None,
        expected_featureset_id: str | None = None,
        nthread: int = 1,
    ) -> RankModel:
        """The promoted model (or ``version``); refuses a featureset other than expected."""
        name = self._resolve(version)
        model = RankModel.load(self.path(name), nthread=nthread)
        if expected_featureset_id is not None and model.featureset_id != expected_featureset_id:
            raise FeaturesetMismatchError(
                f"model {name} in {self.root} was trained on featureset "
                f"{model.featureset_id} but the serving code expects "
                f"{expected_featureset_id}; retrain or configure the matching features"
            )
        return model

    def reference_sample(self, version: str | None = None) -> pd.DataFrame:
        """Training feature rows of a version (default: promoted), columns = feature names."""
        name = self._resolve(version)
        p = self.path(name)
        ref = p / REFERENCE_FILE
        if not ref.is_file():
            raise ModelNotFoundError(f"model {name} in {self.root} has no reference sample")
        frame = pd.read_parquet(ref)
        names = list(self.manifest(name).feature_names)
        return frame[names]

    def reference_info(self, version: str | None = None) -> dict[str, Any]:
        """What the reference sample holds (reference.json): ``kind`` ("served_top_k": each
        training query's top-k as the model ranks it; "rows": rows as given), ``top_k``,
        ``rows``, ``queries`` and ``click_history`` (any behavior value present). {} for
        versions saved before reference.json existed."""
        p = self.path(self._resolve(version)) / REFERENCE_INFO_FILE
        try:
            return dict(json.loads(p.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as e:
            raise LTRError(f"{p}: corrupt reference info: {e}") from None


def reference_info_of(
    frame: pd.DataFrame, rows: RankingData | pd.DataFrame | np.ndarray | None, top_k: int
) -> dict[str, Any]:
    """reference.json: how the drift reference was drawn, for the report to say so."""
    from ltr.features import FEATURES

    behavior = [c for c in frame.columns if c in FEATURES and FEATURES[c].group == "behavior"]
    queries = len(np.unique(rows.qids)) if isinstance(rows, RankingData) else None
    return {
        "kind": "served_top_k" if top_k > 0 and isinstance(rows, RankingData) else "rows",
        "top_k": int(top_k),
        "rows": len(frame),
        "queries": queries,
        "click_history": bool(behavior) and bool(np.isfinite(frame[behavior].to_numpy()).any()),
    }
