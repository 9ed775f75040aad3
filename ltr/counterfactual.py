"""Counterfactual estimate of a candidate ranker's online click metrics from the impression log.

Before a candidate sees any traffic we ask: had it ranked the pages production served,
how many clicks would its top k have got, and how high would the first click have been?
Clicks are biased by position, so the log's clicks cannot be re-used as they are. Under
the position-based model (PBM) a document d at position j is clicked with probability
``theta[j] * gamma[d]`` (examined, and attractive), independently across positions.

Examination ``theta`` comes from one of two sources (both tested in
tests/test_counterfactual.py):

- ``examination_from_randomization``: pages whose order was shuffled uniformly at random
  (RandTop-n). There the document at a position is independent of the position, so the
  click-through rate per position is proportional to ``theta``. Unbiased and model-free,
  but costs users a random page; the project's log has no such pages today.
- ``fit_pbm_regression_em``: regression-EM (Wang et al., WSDM 2018) on ordinary logged
  pages. EM alternates the posterior of (examined, attractive) for every non-clicked row
  with an M-step where ``theta[j]`` is the mean posterior examination at ``j`` and
  ``gamma`` is a logistic regression of the posterior attractiveness on the served
  features (the paper uses boosted trees). Because ``gamma`` is a function of features,
  not of position, the two are separable without randomization, provided rankings vary
  enough that similar documents appear at several positions.

Estimators over logged pages (the candidate only re-orders what was shown; documents that
were not on the page have no clicks and cannot be estimated, which the docs say):

- IPS: each click's document gets the unbiased attractiveness ``c / theta[old]``; the
  candidate's expected click at new position j is ``theta[j] * c / theta[old]``. clicks@k
  sums these over the new top k; reciprocal rank of the first click is the polynomial
  ``sum_j 1/(j+1) * g_j * prod_{i<j}(1 - g_i)``. Both are unbiased under the PBM with the
  true ``theta`` because clicks on one page are independent, so the expectation of a
  product of per-document estimates is the product of their expectations.
- SNIPS (Swaminathan & Joachims 2015): IPS divided by the mean importance weight, which has
  a known expectation. A document's examination weight is ``theta_new / theta_old`` if
  examined and ``(1 - theta_new) / (1 - theta_old)`` if not (mean 1; mean ``theta_new``
  at a position examined for sure); examination is unobserved, so we use its posterior
  mean given the click and the fitted ``gamma`` (a Rao-Blackwellized control variate).
  Consistent, not unbiased; needs a relevance estimate per row.

Confidence intervals: normal approximation over pages (independent pages): IPS by the
CLT, SNIPS by the delta method for a ratio of means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ltr.errors import RolloutError
from ltr.fusion import linear_normed
from ltr.types import BM25, DENSE

if TYPE_CHECKING:
    import pandas as pd

    from ltr.model import RankModel

Z95 = 1.959963984540054
EPS = 1e-9


@dataclass(frozen=True)
class ExaminationFit:
    """Examination probability per 0-based position (``examination[0] == 1`` by convention:
    the PBM only identifies the product theta * gamma), and for regression-EM the fitted
    attractiveness of every logged row on the same scale."""

    examination: np.ndarray
    method: Literal["randomization", "regression-em"]
    relevance: np.ndarray | None = None
    n_iter: int = 0
    converged: bool = True


@dataclass(frozen=True)
class Estimate:
    """One metric of one ranker by one estimator, per page, with a 95% interval."""

    metric: Literal["clicks@k", "rr"]
    estimator: Literal["ips", "snips"]
    value: float
    low: float
    high: float
    n_pages: int


@dataclass(frozen=True)
class Pages:
    """Logged result pages as padded [pages, slots] arrays; slot j = logged position j.

    ``row_page`` / ``row_slot`` map the flat log rows into the matrix (``to_matrix``).
    """

    clicks: np.ndarray  # float64 [P, m], 0 where padded
    valid: np.ndarray  # bool [P, m]
    row_page: np.ndarray
    row_slot: np.ndarray

    def to_matrix(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Flat per-row values -> [P, m] in page/slot layout, ``fill`` where padded."""
        out = np.full(self.valid.shape, fill, dtype=np.float64)
        out[self.row_page, self.row_slot] = np.asarray(values, dtype=np.float64)
        return out


def pages_from_rows(page_ids: np.ndarray, positions: np.ndarray, clicks: np.ndarray) -> Pages:
    """Group flat log rows (page key, 0-based position, clicked) into ``Pages``.

    Positions must be 0..n-1 within a page (a first result page as served), unique.
    """
    page_ids, positions = np.asarray(page_ids), np.asarray(positions)
    clicks = np.asarray(clicks, dtype=np.float64)
    if not (len(page_ids) == len(positions) == len(clicks)):
        raise RolloutError("page_ids, positions and clicks must have the same length")
    if len(positions) == 0:
        raise RolloutError("no logged rows")
    if positions.min() < 0:
        raise RolloutError("positions must be 0-based and >= 0")
    _, row_page = np.unique(page_ids, return_inverse=True)
    n_pages, m = int(row_page.max()) + 1, int(positions.max()) + 1
    valid = np.zeros((n_pages, m), dtype=bool)
    if np.any(np.bincount(row_page * m + positions, minlength=n_pages * m) > 1):
        raise RolloutError("a page has two rows at the same position")
    valid[row_page, positions] = True
    if np.any(valid[:, 1:] & ~valid[:, :-1]):
        raise RolloutError("a page has a gap in its positions (only full first pages count)")
    out = np.zeros((n_pages, m))
    out[row_page, positions] = clicks
    return Pages(out, valid, row_page, positions.astype(np.int64))


def examination_from_randomization(
    positions: np.ndarray, clicks: np.ndarray, n_positions: int | None = None
) -> ExaminationFit:
    """theta[j] = CTR[j] / CTR[0] on uniformly shuffled pages (pass only those rows)."""
    positions = np.asarray(positions, dtype=np.int64)
    clicks = np.asarray(clicks, dtype=np.float64)
    m = int(positions.max()) + 1 if n_positions is None else n_positions
    shown = np.bincount(positions, minlength=m)[:m].astype(np.float64)
    clicked = np.bincount(positions, weights=clicks, minlength=m)[:m]
    if np.any(shown == 0) or clicked[0] == 0:
        raise RolloutError("randomized pages must cover every position and have top clicks")
    ctr = clicked / shown
    return ExaminationFit(np.clip(ctr / ctr[0], EPS, 1.0), "randomization")


def _design(X: np.ndarray) -> np.ndarray:
    """Standardized features, NaN -> 0 plus a missing indicator per column with NaNs, and
    an intercept (logistic regression has no native missing values)."""
    X = np.asarray(X, dtype=np.float64)
    nan = np.isnan(X)
    mean = np.where(nan.all(0), 0.0, np.nanmean(np.where(nan.all(0), 0.0, X), axis=0))
    std = np.nanstd(np.where(nan, mean, X), axis=0)
    Z = np.where(nan, 0.0, (X - mean) / np.where(std > 0, std, 1.0))
    cols = [np.ones((len(X), 1)), Z]
    has_nan = nan.any(0) & ~nan.all(0)
    if has_nan.any():
        cols.append(nan[:, has_nan].astype(np.float64))
    return np.hstack(cols)


def _logistic_step(
    D: np.ndarray, y: np.ndarray, w: np.ndarray, bound: np.ndarray, ridge: np.ndarray
) -> np.ndarray:
    """One step of soft-label ridge logistic regression (the soft labels are the E-step's
    posterior attractiveness) with Boehning's fixed curvature bound ``D'D / 4 + ridge``:
    never overshoots, so every EM iteration still raises the likelihood (generalized EM),
    and costs two matrix-vector products instead of a Hessian per step."""
    p = 1.0 / (1.0 + np.exp(-np.clip(D @ w, -30, 30)))
    return w - np.linalg.solve(bound, D.T @ (p - y) + ridge * w)


def fit_pbm_regression_em(
    features: np.ndarray,
    positions: np.ndarray,
    clicks: np.ndarray,
    n_positions: int | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    l2: float = 1.0,
) -> ExaminationFit:
    """Regression-EM PBM fit on logged rows (features [n, F], 0-based position, clicked)."""
    positions = np.asarray(positions, dtype=np.int64)
    c = np.asarray(clicks, dtype=np.float64)
    if len(positions) != len(c) or len(c) != len(features):
        raise RolloutError("features, positions and clicks must have the same length")
    if len(c) == 0 or c.sum() == 0:
        raise RolloutError("the log has no clicks to fit a position-based model on")
    m = int(positions.max()) + 1 if n_positions is None else n_positions
    shown = np.bincount(positions, minlength=m).astype(np.float64)
    D = _design(features)
    ctr = np.bincount(positions, weights=c, minlength=m) / np.maximum(shown, 1)
    theta = np.clip(ctr / max(ctr[0], EPS), 0.05, 1.0)  # CTR decay: a decent start
    w = np.zeros(D.shape[1])
    w[0] = np.log(max(c.mean(), EPS) / max(1 - c.mean(), EPS))
    ridge = np.full(D.shape[1], l2)
    ridge[0] = 0.0  # the intercept is not shrunk
    bound = D.T @ D / 4.0 + np.diag(ridge + 1e-9)
    gamma = np.full(len(c), c.mean())
    it, converged = 0, False
    for it in range(1, max_iter + 1):  # noqa: B007 (it is reported)
        t = theta[positions]
        denom = np.maximum(1.0 - t * gamma, EPS)
        examined = c + (1 - c) * t * (1 - gamma) / denom  # P(E=1 | click)
        attractive = c + (1 - c) * (1 - t) * gamma / denom  # P(R=1 | click)
        new_theta = np.clip(np.bincount(positions, examined, m) / np.maximum(shown, 1), EPS, 1)
        for _ in range(3):
            w = _logistic_step(D, attractive, w, bound, ridge)
        gamma = 1.0 / (1.0 + np.exp(-np.clip(D @ w, -30, 30)))
        delta = float(np.abs(new_theta - theta).max())
        theta = new_theta
        if delta < tol:
            converged = True
            break
    scale = theta[0]  # report theta[0] = 1; gamma absorbs the scale so products are kept
    return ExaminationFit(theta / scale, "regression-em", gamma * scale, it, converged)


def _new_order(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per page, the slots in the candidate's order (ties keep the logged order)."""
    key = np.where(valid, -np.nan_to_num(scores, nan=np.inf), np.inf)
    return np.argsort(key, axis=1, kind="stable")


def _ci(per_page: np.ndarray) -> tuple[float, float, float]:
    mean = float(per_page.mean())
    half = Z95 * float(per_page.std(ddof=1)) / np.sqrt(len(per_page)) if len(per_page) > 1 else 0
    return mean, mean - half, mean + half


def _ratio_ci(a: np.ndarray, b: np.ndarray, n: np.ndarray) -> tuple[float, float, float]:
    """mean(a) * sum(n) / sum(b) with a delta-method interval (pages independent)."""
    abar, bbar, nbar = a.mean(), b.mean(), n.mean()
    value = float(abar * nbar / bbar)
    infl = (a - abar) * nbar / bbar + abar * (n - nbar) / bbar - abar * nbar * (b - bbar) / bbar**2
    half = Z95 * float(infl.std(ddof=1)) / np.sqrt(len(a)) if len(a) > 1 else 0.0
    return value, value - half, value + half


def estimate(
    pages: Pages,
    scores: np.ndarray,
    examination: np.ndarray,
    k: int = 10,
    relevance: np.ndarray | None = None,
) -> list[Estimate]:
    """IPS (and with ``relevance``, SNIPS) of clicks@k and first-click reciprocal rank for
    the ranker whose ``scores`` ([P, m] in ``pages`` layout, higher first) re-order the
    logged pages. ``examination`` covers every logged position; ``relevance`` is the
    fitted attractiveness per slot ([P, m], the PBM scale of ``examination``)."""
    if k < 1:
        raise RolloutError(f"k must be >= 1, got {k}")
    theta = np.asarray(examination, dtype=np.float64)
    P, m = pages.valid.shape
    if len(theta) < m or np.any(theta[:m] <= 0):
        raise RolloutError(f"examination must be > 0 at all {m} logged positions")
    theta = theta[:m]
    order = _new_order(np.asarray(scores, dtype=np.float64), pages.valid)
    rows = np.arange(P)[:, None]
    valid_new = pages.valid[rows, order]  # padded slots sort last
    old_theta = theta[order]  # theta of each document's logged position, in the new order
    new_theta = np.broadcast_to(theta, (P, m))
    c = pages.clicks[rows, order]
    g = np.where(valid_new, new_theta * c / old_theta, 0.0)  # unbiased P(click) at new pos
    topk = np.arange(m) < k
    clicks_k = (g * topk).sum(1)
    survive = np.cumprod(np.hstack([np.ones((P, 1)), 1.0 - g[:, :-1]]), axis=1)
    rr = (g * survive * topk / np.arange(1, m + 1)).sum(1)
    out = [
        Estimate("clicks@k", "ips", *_ci(clicks_k), P),
        Estimate("rr", "ips", *_ci(rr), P),
    ]
    if relevance is not None:
        gam = np.clip(np.asarray(relevance, dtype=np.float64)[rows, order], 0.0, 1.0)
        p_exam = np.where(c > 0, 1.0, old_theta * (1 - gam) / np.maximum(1 - old_theta * gam, EPS))
        stay = np.where(old_theta < 1, (1 - new_theta) / np.maximum(1 - old_theta, EPS), 0.0)
        weight = np.where(valid_new, p_exam * new_theta / old_theta + (1 - p_exam) * stay, 0.0)
        # expected weight: 1, except at a logged position examined for sure (theta 1) where
        # "not examined" never happens and the weight's mean is theta_new
        expected = np.where(valid_new, new_theta + (1 - old_theta) * stay, 0.0)
        b, n = weight.sum(1), expected.sum(1)
        out += [
            Estimate("clicks@k", "snips", *_ratio_ci(clicks_k, b, n), P),
            Estimate("rr", "snips", *_ratio_ci(rr, b, n), P),
        ]
    return out


def pbm_truth(
    pages: Pages, scores: np.ndarray, examination: np.ndarray, gamma: np.ndarray, k: int = 10
) -> tuple[float, float]:
    """The exact expected clicks@k and first-click RR per page under a KNOWN PBM (simulations
    and tests): what the estimators above estimate."""
    P, m = pages.valid.shape
    order = _new_order(np.asarray(scores, dtype=np.float64), pages.valid)
    rows = np.arange(P)[:, None]
    p = np.where(pages.valid[rows, order], examination[:m] * gamma[rows, order], 0.0)
    topk = np.arange(m) < k
    survive = np.cumprod(np.hstack([np.ones((P, 1)), 1.0 - p[:, :-1]]), axis=1)
    return float((p * topk).sum(1).mean()), float(
        (p * survive * topk / np.arange(1, m + 1)).sum(1).mean()
    )


def model_margin(model: RankModel, frame: pd.DataFrame) -> np.ndarray | None:
    """The base margin ``model`` was boosted from, rebuilt from the logged features.

    The log keeps the raw RRF (k = 60) as the ``rrf`` feature; serving's margin is that
    times the manifest's scale. A linear-fusion margin is rebuilt from its logged inputs
    (the ``bm25_minmax`` / ``dense_minmax`` features, float32 in the log) with the
    manifest's weights and scale. Any other fusion is not in the log: refused, not guessed.
    """
    spec = model.manifest.base_margin
    if spec is None:
        return None
    params = dict(spec.get("params") or {})
    cols = {BM25: "bm25_minmax", DENSE: "dense_minmax"}
    if spec.get("name") == "linear" and all(c in frame for c in cols.values()):
        inputs = {r: frame[c].to_numpy(np.float64) for r, c in cols.items()}
        weights = dict(params.get("weights") or {r: 1.0 / len(cols) for r in cols})
        margin = linear_normed(inputs, weights, float(params.get("scale", 1.0)))
        if not np.all(np.isfinite(margin)):
            raise RolloutError(
                f"the logged linear-fusion inputs have missing values ({model.version})"
            )
        return margin
    if spec.get("name") != "rrf" or float(params.get("k", 60)) != 60 or "rrf" not in frame:
        raise RolloutError(
            f"model {model.version} starts from the {spec.get('name')!r} fusion score "
            f"{params}, which the impression log does not hold (it keeps rrf with k=60)"
        )
    margin = frame["rrf"].to_numpy(np.float64) * float(params.get("scale", 1.0))
    if not np.all(np.isfinite(margin)):
        raise RolloutError(
            f"the logged rrf feature has missing values; cannot score {model.version}"
        )
    return margin


def offline_report(
    frame: pd.DataFrame, models: Mapping[str, RankModel], k: int = 10
) -> dict[str, Any]:
    """Estimate every ranker in ``models`` (label -> model) on the logged first pages of
    ``frame`` (``EventStore.served_features()``), beside the ranking actually served.

    Only rows served with the models' featureset are used (the served vectors are scored
    as they are: no recomputation); examination comes from regression-EM on those rows,
    since the log has no randomized pages. Returns a JSON-ready dict.
    """
    if not models:
        raise RolloutError("no model to estimate")
    fids = {m.featureset_id for m in models.values()}
    if len(fids) != 1:
        raise RolloutError(f"the models were trained on different featuresets: {sorted(fids)}")
    fid = fids.pop()
    names = list(next(iter(models.values())).feature_names)
    rows = frame[frame["featureset_id"] == fid] if "featureset_id" in frame else frame
    missing = [n for n in names if n not in rows.columns]
    if missing:
        raise RolloutError(f"the log lacks feature column(s): {', '.join(missing)}")
    first = rows.groupby("request_id")["position"].transform("min") == 1
    rows = rows[first].sort_values(["request_id", "position"], kind="stable")
    if rows.empty:
        raise RolloutError(f"no first result pages were served with featureset {fid}")
    clicks = rows["clicked"].to_numpy(np.float64)
    positions = rows["position"].to_numpy(np.int64) - 1
    pages = pages_from_rows(rows["request_id"].to_numpy(), positions, clicks)
    X = rows[names].to_numpy(np.float32)
    fit = fit_pbm_regression_em(X, positions, clicks)
    relevance = pages.to_matrix(fit.relevance if fit.relevance is not None else clicks)
    rankers: dict[str, Any] = {}
    served = pages.to_matrix(-positions.astype(np.float64))
    for label, scores in [("logged", served)] + [
        (label, pages.to_matrix(m.predict(X, model_margin(m, rows)))) for label, m in models.items()
    ]:
        version = models[label].version if label in models else None
        rankers[label] = {
            "version": version,
            "estimates": [
                asdict(e) for e in estimate(pages, scores, fit.examination, k, relevance)
            ],
        }
    return {
        "featureset_id": fid,
        "k": k,
        "pages": int(pages.valid.shape[0]),
        "rows": len(rows),
        "clicks": int(clicks.sum()),
        "examination": {
            "method": fit.method,
            "theta": [round(float(t), 4) for t in fit.examination],
            "em_iterations": fit.n_iter,
            "converged": fit.converged,
        },
        "rankers": rankers,
    }


def simulate_log(
    seed: int,
    n_pages: int,
    examination: np.ndarray,
    weights: np.ndarray,
    *,
    bias: float = -1.0,
    shuffle: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A logged-pages world with known truth, for the tests and the benchmark.

    Every page shows ``len(examination)`` documents with standard-normal features
    (``len(weights)`` of them) and attractiveness ``sigmoid(X @ weights + bias)``;
    production orders them by a noisy, partly wrong score (or uniformly at random with
    ``shuffle``); clicks follow the PBM. Returns ``(X [P, m, F], gamma [P, m], clicks
    [P, m])`` in logged order (slot j = position j).
    """
    rng = np.random.default_rng(seed)
    m, f = len(examination), len(weights)
    X = rng.normal(size=(n_pages, m, f))
    served = X @ (0.5 * np.asarray(weights)[::-1]) + rng.normal(0, 1.0, (n_pages, m))
    order = np.argsort(rng.random((n_pages, m)) if shuffle else -served, axis=1)
    X = X[np.arange(n_pages)[:, None], order]
    gamma = 1 / (1 + np.exp(-(X @ weights + bias)))
    clicks = (rng.random((n_pages, m)) < examination * gamma).astype(np.float64)
    return X, gamma, clicks
