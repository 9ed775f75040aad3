"""Learning-to-rank data: feature rows grouped by query, query-level splits, served-log join.

Rows of one query are contiguous (XGBoost's qid/group contract). Splits are always by
query: a query's candidates never straddle train and validation, otherwise validation
NDCG leaks. ``from_served_log`` takes the EXACT feature vectors that were served (the
impression log) and only attaches labels, so training sees what serving saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from ltr.errors import TrainingDataError
from ltr.types import SERVED_META_COLUMNS


@dataclass(frozen=True, eq=False)
class RankingData:
    """Feature rows of many queries, each query's rows contiguous.

    qids: str [n]; X: float32 [n, F] (NaN = missing); y: float64 [n] graded relevance;
    base_margin: float64 [n] (the fusion score the booster starts from) or None;
    doc_ids: str [n].
    """

    qids: np.ndarray
    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    base_margin: np.ndarray | None = None
    doc_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        qids = np.asarray(self.qids).astype(str)
        X = np.asarray(self.X, dtype=np.float32)
        y = np.asarray(self.y, dtype=np.float64)
        names = tuple(str(n) for n in self.feature_names)
        if X.ndim != 2:
            raise TrainingDataError(f"X must be 2-D [rows, features], got shape {X.shape}")
        n = X.shape[0]
        if X.shape[1] != len(names):
            raise TrainingDataError(
                f"X has {X.shape[1]} columns but {len(names)} feature names were given"
            )
        if len(set(names)) != len(names):
            raise TrainingDataError(f"duplicate feature names: {names}")
        if qids.shape != (n,) or y.shape != (n,):
            raise TrainingDataError(
                f"qids {qids.shape} and y {y.shape} must both have one entry per row ({n})"
            )
        if n and not np.all(np.isfinite(y)):
            raise TrainingDataError("labels must be finite numbers (no NaN/inf)")
        if n and np.any(y < 0):
            raise TrainingDataError("labels must be >= 0")
        bm = None
        if self.base_margin is not None:
            bm = np.asarray(self.base_margin, dtype=np.float64)
            if bm.shape != (n,):
                raise TrainingDataError(f"base_margin has shape {bm.shape}, expected ({n},)")
            if n and not np.all(np.isfinite(bm)):
                raise TrainingDataError("base_margin must be finite (fusion scores never NaN)")
        docs = None
        if self.doc_ids is not None:
            docs = np.asarray(self.doc_ids).astype(str)
            if docs.shape != (n,):
                raise TrainingDataError(f"doc_ids has shape {docs.shape}, expected ({n},)")
        if n:
            starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
            if len(starts) != len(np.unique(qids)):
                raise TrainingDataError(
                    "rows of each query must be contiguous; sort by query first "
                    "(RankingData.from_groups does it)"
                )
        object.__setattr__(self, "qids", qids)
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "feature_names", names)
        object.__setattr__(self, "base_margin", bm)
        object.__setattr__(self, "doc_ids", docs)

    # --- shape -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def query_ids(self) -> tuple[str, ...]:
        """Distinct queries in row order."""
        if not len(self):
            return ()
        starts = np.flatnonzero(np.r_[True, self.qids[1:] != self.qids[:-1]])
        return tuple(self.qids[starts].tolist())

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

    def group_sizes(self) -> np.ndarray:
        """Rows per query, in row order (XGBoost's set_group form)."""
        if not len(self):
            return np.zeros(0, dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, self.qids[1:] != self.qids[:-1]])
        return np.diff(np.r_[starts, len(self)]).astype(np.int64)

    def qid_codes(self) -> np.ndarray:
        """Non-decreasing integer query ids (XGBoost's qid form)."""
        return np.repeat(np.arange(self.n_queries, dtype=np.uint32), self.group_sizes())

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_groups(
        cls,
        groups: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[str] | None, Any]],
        feature_names: Sequence[str],
    ) -> RankingData:
        """Concatenate per-query blocks ``(qid, X, y, doc_ids|None, base_margin|None)``.

        Base margins must be given for every group or for none (a partial margin would
        train some queries from fusion and others from zero).
        """
        if not groups:
            return cls.empty(feature_names)
        with_bm = [g[4] is not None for g in groups]
        if any(with_bm) and not all(with_bm):
            raise TrainingDataError("base_margin given for some query groups but not all")
        F = len(feature_names)
        qids, Xs, ys, docs, bms = [], [], [], [], []
        for qid, X, y, doc_ids, bm in groups:
            X = np.asarray(X, dtype=np.float32).reshape(-1, F)
            qids.append(np.full(X.shape[0], str(qid), dtype=object))
            Xs.append(X)
            ys.append(np.asarray(y, dtype=np.float64))
            docs.append(
                np.asarray(list(doc_ids), dtype=object)
                if doc_ids is not None
                else np.full(X.shape[0], "", dtype=object)
            )
            if bm is not None:
                bms.append(np.asarray(bm, dtype=np.float64))
        q = np.concatenate(qids)
        if len(set(map(str, (g[0] for g in groups)))) != len(groups):
            raise TrainingDataError("the same query id appears in two groups")
        return cls(
            qids=q,
            X=np.concatenate(Xs, axis=0),
            y=np.concatenate(ys),
            feature_names=tuple(feature_names),
            base_margin=np.concatenate(bms) if all(with_bm) else None,
            doc_ids=np.concatenate(docs),
        )

    @classmethod
    def empty(cls, feature_names: Sequence[str]) -> RankingData:
        return cls(
            qids=np.zeros(0, dtype=str),
            X=np.zeros((0, len(feature_names)), dtype=np.float32),
            y=np.zeros(0),
            feature_names=tuple(feature_names),
        )

    def take_queries(self, query_ids: Sequence[str]) -> RankingData:
        """The rows of these queries, in the order given."""
        if not len(query_ids):
            return RankingData.empty(self.feature_names)
        sizes = self.group_sizes()
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        where = {q: i for i, q in enumerate(self.query_ids)}
        missing = [q for q in query_ids if q not in where]
        if missing:
            raise TrainingDataError(f"unknown query ids: {missing[:5]}")
        idx = np.concatenate(
            [np.arange(starts[where[q]], starts[where[q]] + sizes[where[q]]) for q in query_ids]
        )
        return self._take_rows(idx)

    def _take_rows(self, idx: np.ndarray) -> RankingData:
        return RankingData(
            qids=self.qids[idx],
            X=self.X[idx],
            y=self.y[idx],
            feature_names=self.feature_names,
            base_margin=None if self.base_margin is None else self.base_margin[idx],
            doc_ids=None if self.doc_ids is None else self.doc_ids[idx],
        )

    def top_k_rows(self, scores: np.ndarray, k: int) -> RankingData:
        """Per query, the ``k`` rows with the highest ``scores`` (query order kept).

        Why: the drift reference must look like what the API logs (served pages, i.e. the
        model's top-k), not like whole candidate lists.
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(self),):
            raise TrainingDataError(f"scores have shape {scores.shape}, expected ({len(self)},)")
        if k <= 0 or not len(self):
            return self
        keep: list[np.ndarray] = []
        start = 0
        for size in self.group_sizes():
            block = np.arange(start, start + size)
            order = np.argsort(-scores[block], kind="stable")[:k]
            keep.append(np.sort(block[order]))
            start += size
        return self._take_rows(np.concatenate(keep))

    def select_features(self, names: Sequence[str]) -> RankingData:
        """Same rows, only these feature columns in this order (ablations, --features)."""
        pos = {n: i for i, n in enumerate(self.feature_names)}
        unknown = [n for n in names if n not in pos]
        if unknown:
            raise TrainingDataError(
                f"unknown feature(s) {unknown}; available: {', '.join(self.feature_names)}"
            )
        cols = [pos[n] for n in names]
        return RankingData(
            qids=self.qids,
            X=self.X[:, cols],
            y=self.y,
            feature_names=tuple(names),
            base_margin=self.base_margin,
            doc_ids=self.doc_ids,
        )

    def to_frame(self) -> pd.DataFrame:
        """qid, doc_id, label, base_margin, then one column per feature (inspection, CSV)."""
        df = pd.DataFrame(self.X, columns=list(self.feature_names))
        df.insert(0, "qid", self.qids)
        df.insert(1, "doc_id", self.doc_ids if self.doc_ids is not None else "")
        df.insert(2, "label", self.y)
        df.insert(3, "base_margin", self.base_margin if self.base_margin is not None else np.nan)
        return df


def concat(parts: Sequence[RankingData]) -> RankingData:
    """Stack datasets with the same features (query ids must be distinct across parts)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise TrainingDataError("nothing to concatenate")
    names = parts[0].feature_names
    for p in parts[1:]:
        if p.feature_names != names:
            raise TrainingDataError("cannot concatenate datasets with different feature lists")
    with_bm = [p.base_margin is not None for p in parts]
    if any(with_bm) and not all(with_bm):
        raise TrainingDataError("base_margin present in some parts but not all")
    return RankingData(
        qids=np.concatenate([p.qids for p in parts]),
        X=np.concatenate([p.X for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        feature_names=names,
        base_margin=(
            np.concatenate([p.base_margin for p in parts])  # type: ignore[misc]
            if all(with_bm)
            else None
        ),
        doc_ids=(
            np.concatenate([p.doc_ids for p in parts])  # type: ignore[misc]
            if all(p.doc_ids is not None for p in parts)
            else None
        ),
    )


def _shuffled_units(
    data: RankingData, seed: int, units: Mapping[str, str] | None
) -> list[list[str]]:
    """Split units (lists of group ids) in a seeded order.

    A unit is a query by default; ``units`` maps group id -> unit id when several groups
    belong to one query (served-log groups are requests: every request of a query text
    must land in the same part, or the test split sees training queries).
    """
    groups = data.query_ids
    if units is None:
        by_unit = {g: [g] for g in groups}
    else:
        missing = [g for g in groups if g not in units]
        if missing:
            raise TrainingDataError(f"no split unit for group(s) {missing[:5]}")
        by_unit = {}
        for g in groups:
            by_unit.setdefault(str(units[g]), []).append(g)
    # sort first so the split depends only on the set of unit ids and the seed
    keys = sorted(by_unit)
    order = np.random.default_rng(seed).permutation(len(keys))
    return [by_unit[keys[i]] for i in order]


def split_by_query(
    data: RankingData,
    fractions: Sequence[float] = (0.8, 0.2),
    seed: int = 0,
    units: Mapping[str, str] | None = None,
) -> tuple[RankingData, ...]:
    """Split into parts by query (no query in two parts), sizes proportional to ``fractions``.

    Every part gets at least one query; the split depends only on the query ids and seed.
    ``units`` (group id -> query) keeps groups of one query together (see _shuffled_units).
    """
    fr = [float(f) for f in fractions]
    if len(fr) < 2 or any(not np.isfinite(f) or f <= 0 for f in fr):
        raise ValueError(f"fractions must be >= 2 positive numbers, got {list(fractions)}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {sum(fr)}")
    qs = _shuffled_units(data, seed, units)
    if len(qs) < len(fr):
        raise TrainingDataError(
            f"cannot split {len(qs)} queries into {len(fr)} parts; need more judged queries"
        )
    bounds = np.round(np.cumsum(fr) * len(qs)).astype(int)
    bounds[-1] = len(qs)
    # every part non-empty: push boundaries apart where rounding collapsed them
    for i in range(len(bounds) - 1):
        lo = (bounds[i - 1] if i else 0) + 1
        hi = len(qs) - (len(bounds) - 1 - i)
        bounds[i] = min(max(bounds[i], lo), hi)
    parts, start = [], 0
    for b in bounds:
        parts.append(data.take_queries([g for u in qs[start:b] for g in u]))
        start = int(b)
    return tuple(parts)


def kfold_by_query(
    data: RankingData,
    k: int = 5,
    seed: int = 0,
    units: Mapping[str, str] | None = None,
) -> list[tuple[RankingData, RankingData]]:
    """k (train, held-out) pairs; each query is held out exactly once."""
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    qs = _shuffled_units(data, seed, units)
    if len(qs) < k:
        raise TrainingDataError(f"cannot make {k} folds from {len(qs)} queries")
    folds = [[g for u in qs[i::k] for g in u] for i in range(k)]
    out = []
    for i in range(k):
        held = folds[i]
        rest = [q for j, f in enumerate(folds) if j != i for q in f]
        out.append((data.take_queries(rest), data.take_queries(held)))
    return out


def from_served_log(
    rows: pd.DataFrame,
    labels: Mapping[Any, float],
    *,
    key: Literal["auto", "query", "request"] = "auto",
    feature_names: Sequence[str] | None = None,
    missing_label: Literal["drop", "zero", "error"] = "drop",
    group_by: Literal["request", "query"] = "request",
    margin_column: str | None = "base_margin",
    featureset_id: str | None = None,
) -> RankingData:
    """Training rows from the impression log: the served vectors, unchanged, plus labels.

    ``rows`` is ``EventStore.served_features()`` (request_id, query, doc_id, position,
    featureset_id, <features...>). ``labels`` maps (query, doc_id) — click models label
    query-document pairs — or (request_id, doc_id) to a grade. Each served list
    (request) is one ranking group by default, because the features (behavior
    aggregates) belong to that moment. The base margin is the ``margin_column`` of the
    log when it has one (a dedicated column, or a logged fusion feature such as "rrf"),
    else None. ``featureset_id`` keeps only the rows served with that featureset (a log
    spanning a model change holds several; the frame is then a column union, so pass
    that featureset's ``feature_names`` too). Never recomputes a feature.
    """
    if not isinstance(rows, pd.DataFrame):
        raise TrainingDataError("rows must be a pandas DataFrame of served features")
    need = {"request_id", "doc_id", "position"}
    miss = sorted(need - set(rows.columns))
    if miss:
        raise TrainingDataError(f"served log is missing column(s): {', '.join(miss)}")
    if featureset_id is not None:
        if "featureset_id" not in rows.columns:
            raise TrainingDataError("served log has no featureset_id column to filter on")
        rows = rows[rows["featureset_id"] == featureset_id]
    if feature_names is None:
        feature_names = [c for c in rows.columns if c not in SERVED_META_COLUMNS]
    names = list(feature_names)
    absent = [n for n in names if n not in rows.columns]
    if absent:
        raise TrainingDataError(f"served log lacks feature column(s): {', '.join(absent)}")
    if not names:
        raise TrainingDataError("served log has no feature columns")
    if len(rows) == 0:
        raise TrainingDataError("served log is empty: no impressions in the window")
    if "featureset_id" in rows.columns:
        fsets = rows["featureset_id"].dropna().unique()
        if len(fsets) > 1:
            raise TrainingDataError(
                f"served log mixes featuresets {sorted(map(str, fsets))}; "
                "filter to one featureset (one model's feature list) before training"
            )
    if key == "auto":
        sample = next(iter(labels), None)
        if sample is None:
            raise TrainingDataError("no labels given")
        req_ids = set(rows["request_id"].astype(str))
        key = "request" if str(sample[0]) in req_ids else "query"
    if key == "query" and "query" not in rows.columns:
        raise TrainingDataError("labels keyed by query but the log has no 'query' column")
    left = rows["request_id" if key == "request" else "query"].astype(str).to_numpy()
    docs = rows["doc_id"].astype(str).to_numpy()
    str_labels = {(str(a), str(b)): float(v) for (a, b), v in labels.items()}
    y = np.array([str_labels.get((a, d), np.nan) for a, d in zip(left, docs, strict=True)])
    have = ~np.isnan(y)
    if missing_label == "error" and not have.all():
        i = int(np.flatnonzero(~have)[0])
        raise TrainingDataError(f"no label for ({left[i]!r}, {docs[i]!r})")
    frame = rows.assign(_label=np.where(have, y, 0.0))
    if missing_label == "drop":
        frame = frame[have]
    if len(frame) == 0:
        raise TrainingDataError(
            "no served row has a label; do labels and the log cover the same window?"
        )
    gcol = "request_id" if group_by == "request" else "query"
    frame = frame.assign(_g=frame[gcol].astype(str))
    # contiguous groups in first-served order, served position order inside a group
    first = frame.groupby("_g", sort=False).ngroup()
    frame = frame.assign(_first=first.to_numpy()).sort_values(["_first", "position"], kind="stable")
    X = frame[names].to_numpy(dtype=np.float32, na_value=np.nan)
    bm = (
        frame[margin_column].to_numpy(dtype=np.float64)
        if margin_column is not None
        and margin_column in frame.columns
        and frame[margin_column].notna().all()
        else None
    )
    return RankingData(
        qids=frame["_g"].to_numpy(),
        X=X,
        y=frame["_label"].to_numpy(dtype=np.float64),
        feature_names=tuple(names),
        base_margin=bm,
        doc_ids=frame["doc_id"].astype(str).to_numpy(),
    )
