"""The served model: an XGBoost booster from its own JSON/UBJ file plus a JSON manifest.

Separate from the trainer (architecture principle 9) so the API loads only what it needs,
and never a pickle. The manifest ties the booster to the exact ordered feature list
(featureset id), says which fusion score it was boosted from (base margin) and carries the
booster file's SHA-256, verified on the very bytes XGBoost parses: a truncated, emptied or
overwritten model file is a CorruptModelError at load, never a model that serves.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from ltr.errors import CorruptModelError, FeaturesetMismatchError, LTRError, ModelNotFoundError
from ltr.fusion import fusion_score
from ltr.types import CandidateSet

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MODEL_FILES = ("model.ubj", "model.json")
MANIFEST_SCHEMA = 1


@dataclass(frozen=True)
class Manifest:
    """Everything needed to serve, audit and monitor one model version."""

    version: str
    feature_names: tuple[str, ...]
    featureset_id: str
    # {"name": fusion name in ltr.fusion.FUSIONS, "params": {...}} or None (boosted from 0)
    base_margin: Mapping[str, Any] | None
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    # split -> {"queries": n, "rows": n}
    data_sizes: Mapping[str, Mapping[str, int]]
    created_at: str  # ISO 8601 UTC
    xgboost_version: str
    best_iteration: int = -1
    model_file: str = "model.ubj"
    label_source: str = "qrels"  # "qrels" or "clicks:<click model>"
    extra: Mapping[str, Any] = field(default_factory=dict)
    schema: int = MANIFEST_SCHEMA
    # hex SHA-256 of the booster file; None in manifests written before checksums (such a
    # model loads with a warning: refusing it would take down every existing registry)
    model_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Strict-JSON dict: NaN metrics (e.g. no validation set) become null."""
        out = dataclasses.asdict(self)
        out["feature_names"] = list(self.feature_names)
        out["metrics"] = {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in out["metrics"].items()
        }
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Manifest:
        """Tolerates keys added by later versions (kept under ``extra``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in obj.items() if k in names}
        unknown = {k: v for k, v in obj.items() if k not in names}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in known
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise LTRError(f"manifest lacks required key(s): {', '.join(missing)}")
        known["feature_names"] = tuple(known["feature_names"])
        known["metrics"] = {
            k: (math.nan if v is None else float(v)) for k, v in dict(known["metrics"]).items()
        }
        if unknown:
            known["extra"] = {**dict(known.get("extra") or {}), **unknown}
        return cls(**known)

    @property
    def base_margin_name(self) -> str | None:
        return None if self.base_margin is None else str(self.base_margin["name"])


def sha256_hex(data: bytes) -> str:
    """The checksum a manifest records for its booster file (hex SHA-256)."""
    return hashlib.sha256(data).hexdigest()


def read_manifest(path: Path) -> Manifest:
    """Parse one version's manifest; CorruptModelError when it is not a valid manifest."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
        if not isinstance(obj, dict):
            raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
        return Manifest.from_json(obj)
    except (ValueError, TypeError, KeyError, LTRError, RecursionError) as e:
        # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise CorruptModelError(f"{path}: unreadable manifest: {e}") from None


def _array_interface(a: np.ndarray) -> bytes:
    """The __array_interface__ JSON XGBoost's C API reads (what xgboost's wrapper sends)."""
    return json.dumps(a.__array_interface__).encode()


class _DensePredictor:
    """``Booster.inplace_predict(X, predict_type="margin", missing=NaN, base_margin=bm)``
    for C-contiguous float32 X, calling the same C entry point (XGBoosterPredictFromDense)
    with the same arguments, minus the Python wrapper's per-call work (~0.2 ms of ~0.9 ms
    for 165 x 52 and 244 depth-3 trees: a proxy DMatrix object, meta-data dispatch, a class
    built per call for the output). The margins are those of inplace_predict by
    construction; ``RankModel`` also checks them bit for bit on a probe matrix at load and
    keeps inplace_predict if they differ or xgboost's internals are not what this expects.
    """

    # inplace_predict's arguments: margin, not training, every tree, NaN = missing
    _ARGS = json.dumps(
        {
            "type": 1,
            "training": False,
            "iteration_begin": 0,
            "iteration_end": 0,
            "missing": float("nan"),
            "strict_shape": False,
            "cache_id": 0,
        }
    ).encode()

    def __init__(self, booster: xgb.Booster) -> None:
        from xgboost import core  # private names; a missing one raises here, at load

        self._lib = core._LIB
        self._check = core._check_call
        self._ulong = core.c_bst_ulong
        self._booster = booster
        for fn in (
            "XGProxyDMatrixCreate",
            "XGDMatrixSetInfoFromInterface",
            "XGBoosterPredictFromDense",
            "XGDMatrixFree",
        ):
            getattr(self._lib, fn)

    def __call__(self, X: np.ndarray, base_margin: np.ndarray | None) -> np.ndarray:
        lib, check = self._lib, self._check
        n = X.shape[0]
        shape = ctypes.POINTER(self._ulong)()
        dims = self._ulong()
        preds = ctypes.POINTER(ctypes.c_float)()
        proxy = ctypes.c_void_p()
        if base_margin is not None:
            check(lib.XGProxyDMatrixCreate(ctypes.byref(proxy)))
        try:
            if base_margin is not None:
                bm_inf = _array_interface(base_margin)
                check(lib.XGDMatrixSetInfoFromInterface(proxy, b"base_margin", bm_inf))
            check(
                lib.XGBoosterPredictFromDense(
                    self._booster.handle,
                    _array_interface(X),
                    self._ARGS,
                    proxy,
                    ctypes.byref(shape),
                    ctypes.byref(dims),
                    ctypes.byref(preds),
                )
            )
        finally:
            if base_margin is not None:
                lib.XGDMatrixFree(proxy)
        size = 1
        for i in range(dims.value):
            size *= int(shape[i])
        if size != n:
            raise LTRError(f"booster returned {size} predictions for {n} rows")
        out = np.empty(n, dtype=np.float32)  # a copy: the booster reuses its buffer
        ctypes.memmove(out.ctypes.data, preds, 4 * n)
        return out


class RankModel:
    """Scores feature matrices for serving; immutable after construction.

    ``predict`` uses XGBoost's inplace prediction (no DMatrix, thread safe, fast for a
    few hundred rows), called through its C entry point (see _DensePredictor);
    ``contributions`` gives per-feature SHAP values for explanations.
    """

    def __init__(self, booster: xgb.Booster, manifest: Manifest, nthread: int = 1) -> None:
        n_booster = booster.num_features()
        if n_booster != len(manifest.feature_names):
            raise LTRError(
                f"booster expects {n_booster} features but the manifest lists "
                f"{len(manifest.feature_names)}"
            )
        booster.set_param({"nthread": nthread})
        self._nthread = nthread
        self._booster = booster
        self.manifest = manifest
        self.trees = booster.num_boosted_rounds()  # a LambdaMART round is one tree
        self._fast = self._fast_predictor()

    def _fast_predictor(self) -> _DensePredictor | None:
        """A _DensePredictor if it gives inplace_predict's margins bit for bit on a probe
        matrix (NaNs, zeros, negatives, large values; with a base margin if the model
        uses one); None otherwise (predict then calls inplace_predict)."""
        F = len(self.manifest.feature_names)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((67, F)).astype(np.float32)
        X *= rng.choice(np.array([0.01, 1.0, 30.0, 1e4], np.float32), size=X.shape)
        X[rng.random(X.shape) < 0.2] = np.nan
        X[rng.random(X.shape) < 0.1] = 0.0
        bm = rng.standard_normal(67).astype(np.float32) if self.needs_base_margin else None
        try:
            fast = _DensePredictor(self._booster)
            got = fast(X, bm)
            want = self._inplace(X, bm)
        except Exception as e:  # xgboost internals changed: keep the public API
            log.warning("direct XGBoost prediction unavailable (%s); using inplace_predict", e)
            return None
        if got.tobytes() != want.tobytes():
            log.warning("direct XGBoost prediction differs from inplace_predict; not used")
            return None
        return fast

    def _inplace(self, X: np.ndarray, bm: np.ndarray | None) -> np.ndarray:
        out = self._booster.inplace_predict(
            X, predict_type="margin", missing=np.nan, base_margin=bm
        )
        return np.array(out, dtype=np.float32)

    # --- identity ----------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.manifest.feature_names

    @property
    def featureset_id(self) -> str:
        return self.manifest.featureset_id

    @property
    def needs_base_margin(self) -> bool:
        return self.manifest.base_margin is not None

    def margin(self, cs: CandidateSet) -> np.ndarray | None:
        """The base margin this model was boosted from, for one candidate set: the manifest's
        fusion with its saved params (linear: the fitted weights and the scale), float64.
        The one definition serving (search.pipeline) and offline scoring both call; None for
        a model trained without a base margin."""
        spec = self.manifest.base_margin
        if spec is None:
            return None
        return fusion_score(cs, str(spec["name"]), dict(spec.get("params") or {}))

    def check_featureset(self, expected_featureset_id: str) -> None:
        """Refuse to serve with a feature list other than the one trained on."""
        if expected_featureset_id != self.featureset_id:
            raise FeaturesetMismatchError(
                f"model {self.version} was trained on featureset {self.featureset_id} "
                f"but the serving code computes featureset {expected_featureset_id}; "
                "retrain the model or serve the matching feature list"
            )

    # --- files -------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, nthread: int = 1) -> RankModel:
        """Load ``manifest.json`` and the booster file it names from one version directory.

        ModelNotFoundError without a manifest; CorruptModelError (naming the file and the
        reason) for a broken manifest, a missing booster file, a checksum mismatch or a
        booster XGBoost cannot parse. The checksum is verified on the bytes XGBoost reads.
        """
        d = Path(directory)
        mpath = d / MANIFEST_FILE
        if not mpath.is_file():
            raise ModelNotFoundError(f"no model at {d} (missing {MANIFEST_FILE})")
        manifest = read_manifest(mpath)
        if manifest.model_file not in MODEL_FILES:
            raise CorruptModelError(f"{mpath}: model_file must be one of {MODEL_FILES}")
        booster_path = d / manifest.model_file
        try:
            data = booster_path.read_bytes()
        except FileNotFoundError:
            raise CorruptModelError(f"{booster_path}: the booster file is missing") from None
        if manifest.model_sha256 is None:
            log.warning(
                "model %s: its manifest has no model_sha256 (saved before checksums); "
                "loading %s unverified",
                manifest.version,
                booster_path,
            )
        elif sha256_hex(data) != manifest.model_sha256:
            raise CorruptModelError(
                f"{booster_path}: checksum mismatch ({len(data)} bytes with sha256 "
                f"{sha256_hex(data)[:12]}..., the manifest says {manifest.model_sha256[:12]}...): "
                "the file is truncated or was changed"
            )
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(data))
            return cls(booster, manifest, nthread=nthread)
        except (xgb.core.XGBoostError, ValueError, LTRError) as e:
            # UnicodeDecodeError (random bytes) is a ValueError
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CorruptModelError(f"{booster_path}: not a loadable booster: {reason}") from None

    def save_booster(self, path: str | Path) -> None:
        """Write the booster in XGBoost's own format (.ubj or .json by suffix)."""
        self._booster.save_model(str(path))

    def booster_bytes(self, fmt: str = "ubj") -> bytes:
        return bytes(self._booster.save_raw(raw_format=fmt))

    # --- scoring -----------------------------------------------------------------------
    def _inputs(
        self, X: np.ndarray, base_margin: np.ndarray | Sequence[float] | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        X = np.asarray(X, dtype=np.float32)
        F = len(self.feature_names)
        if X.ndim != 2 or X.shape[1] != F:
            raise FeaturesetMismatchError(
                f"model {self.version} expects [n, {F}] features "
                f"({self.featureset_id}), got shape {X.shape}"
            )
        bm = None
        if self.needs_base_margin:
            if base_margin is None:
                raise ValueError(
                    f"model {self.version} was boosted from the "
                    f"{self.manifest.base_margin_name!r} fusion score; pass base_margin"
                )
            bm = np.asarray(base_margin, dtype=np.float32)
            if bm.shape != (X.shape[0],):
                raise ValueError(f"base_margin must have shape ({X.shape[0]},), got {bm.shape}")
            if not np.all(np.isfinite(bm)):
                raise ValueError("base_margin must be finite")
        elif base_margin is not None:
            raise ValueError(f"model {self.version} was trained without a base margin; pass None")
        return X, bm

    def predict(
        self, X: np.ndarray, base_margin: np.ndarray | Sequence[float] | None = None
    ) -> np.ndarray:
        """Ranking scores (margins; higher = better), float32 [n]. NaN features = missing."""
        X, bm = self._inputs(X, base_margin)
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if self._fast is not None:
            if not X.flags.c_contiguous:
                X = np.ascontiguousarray(X)
            if bm is not None and not bm.flags.c_contiguous:
                bm = np.ascontiguousarray(bm)
            return self._fast(X, bm)
        return self._inplace(X, bm)

    def feature_importance(self, kind: str = "total_gain") -> dict[str, float]:
        """Each feature's share of the booster's ``kind`` importance (XGBoost's
        ``get_score``; sums to 1, features never split on are 0), for the model card."""
        raw = self._booster.get_score(importance_type=kind)
        names = self.feature_names
        by_name: dict[str, float] = {}
        for k, v in raw.items():  # a score per feature (lists only for vector leaves)
            name = names[int(k[1:])] if k not in names and k[1:].isdigit() else k
            by_name[name] = float(v) if isinstance(v, int | float) else float(sum(v))
        total = sum(by_name.values())
        return {n: (by_name.get(n, 0.0) / total if total > 0 else 0.0) for n in names}

    def contributions(
        self,
        X: np.ndarray,
        base_margin: np.ndarray | Sequence[float] | None = None,
        approximate: bool = False,
    ) -> np.ndarray:
        """Per-feature SHAP contributions [n, F + 1]; the last column is the bias.

        Each row sums to ``predict`` for that row (the base margin is part of the bias).
        Exact TreeSHAP costs ~1 ms per row for a few hundred trees, so explain a page, not
        every candidate; ``approximate`` (Saabas path attribution, also additive) is ~25x
        faster when that is too slow.
        """
        X, bm = self._inputs(X, base_margin)
        if X.shape[0] == 0:
            return np.zeros((0, X.shape[1] + 1), dtype=np.float32)
        # nthread matters: OpenMP workers spin-wait on a busy machine (DMatrix defaults to
        # every core; measured 0.5 ms -> 30+ ms per call at load 10 on 2 cores).
        dm = xgb.DMatrix(X, base_margin=bm, missing=np.nan, nthread=self._nthread)
        out = self._booster.predict(
            dm, pred_contribs=True, approx_contribs=approximate, validate_features=False
        )
        return np.asarray(out, dtype=np.float32)

    def explain(
        self,
        X: np.ndarray,
        base_margin: np.ndarray | Sequence[float] | None = None,
        top: int | None = 5,
        approximate: bool = False,
    ) -> list[dict[str, Any]]:
        """Per-row explanation: bias, and the features with the largest |contribution|.

        Returned rows are JSON-ready: ``{"bias": float, "contributions": [{"feature",
        "value" (None if missing), "contribution"}...]}`` sorted by |contribution|.
        """
        X = np.asarray(X, dtype=np.float32)
        contribs = self.contributions(X, base_margin, approximate)
        out: list[dict[str, Any]] = []
        names = self.feature_names
        for i in range(contribs.shape[0]):
            row = contribs[i, :-1]
            order = np.argsort(-np.abs(row), kind="stable")
            if top is not None:
                order = order[:top]
            out.append(
                {
                    "bias": float(contribs[i, -1]),
                    "contributions": [
                        {
                            "feature": names[j],
                            "value": None if np.isnan(X[i, j]) else float(X[i, j]),
                            "contribution": float(row[j]),
                        }
                        for j in order
                    ],
                }
            )
        return out
