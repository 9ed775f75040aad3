"""The one definition of click-history aggregates, for the online and offline paths.

The online store (search.aggregates, updated as impressions and clicks are logged) and the
offline aggregation (``aggregate_sessions``: simulated or logged sessions, ltr.evaluation
and replay) both count with the tally functions here -- ``exam_at`` (position ->
examination probability), ``decay_factor``, ``add_to_tally``, ``tally_values`` -- and the
behavior features smooth the rates with ``smoothed_rate``, so the behavior features a
model was trained on are computed exactly as they are served.

Aggregate keys (docs/contracts.md): ``qd_*`` are per (query, document), ``d_*`` per
document over all queries; for each level ``impressions, clicks, examinations,
decayed_clicks, decayed_impressions``. ``examinations`` sums the examination probability
of the position each impression was shown at, so ``clicks / examinations`` is a
position-debiased CTR (the PBM estimate of attractiveness).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from ltr.errors import LTRError

LEVELS = ("qd", "d")
STATS = ("impressions", "clicks", "examinations", "decayed_clicks", "decayed_impressions")
AGGREGATE_KEYS: tuple[str, ...] = tuple(f"{lvl}_{s}" for lvl in LEVELS for s in STATS)

# Default examination curve P(examine | position p) = 1 / p ** eta with eta = 1, the usual
# power-law propensity of web/e-commerce result lists (Joachims et al., WSDM 2017). A PBM
# fitted on logged sessions (ltr.click_models) should replace it once clicks exist.
DEFAULT_EXAM_ETA = 1.0
DEFAULT_HALF_LIFE_S = 14 * 24 * 3600.0  # clicks lose half their weight in two weeks

# Click caps (online, docs/contracts.md "Events: trust model"): of the clicks one client id
# makes on one (query, document), the aggregates count at most DEFAULT_CLICK_CAP per window
# of DEFAULT_CLICK_WINDOW_S seconds (fixed windows of the page's serve time, see
# click_window); a hit counts as clicked at most once per request in any case.
DEFAULT_CLICK_CAP = 1
DEFAULT_CLICK_WINDOW_S = 24 * 3600.0

# Beta(alpha, beta) prior for smoothed click-through rates: a prior mean of 0.1 with the
# weight of 10 impressions. CTR on a handful of impressions is mostly noise; the prior pulls
# it towards a typical CTR until evidence accumulates. Changing it changes the features'
# math, so it is part of the behavior features' version string.
CTR_PRIOR_ALPHA = 1.0
CTR_PRIOR_BETA = 9.0


class BehaviorError(LTRError):
    """Invalid input to the behavior aggregation (bad half-life, bad session shape...)."""


class SessionLike(Protocol):
    """What aggregation needs from a session: one served result list and its clicks.

    ltr.click_models.Session fits (``docs``); objects exposing ``doc_ids`` instead of
    ``docs`` are accepted too.
    """

    @property
    def query(self) -> str: ...

    @property
    def clicks(self) -> Sequence[bool] | Sequence[int] | np.ndarray: ...


def _session_docs(s: object) -> list[str]:
    docs = getattr(s, "docs", None)
    if docs is None:
        docs = getattr(s, "doc_ids", None)
    if docs is None:
        raise BehaviorError(f"session {s!r} has neither 'docs' nor 'doc_ids'")
    return [str(d) for d in docs]


_WS = re.compile(r"\s+")


def query_key(text: str) -> str:
    """Normalized query text used as the qd key (case and whitespace insensitive)."""
    return _WS.sub(" ", text.strip().lower())


def examination_probs(n: int, eta: float = DEFAULT_EXAM_ETA) -> np.ndarray:
    """P(examined) for positions 1..n under the power-law curve 1 / p**eta."""
    if n < 0:
        raise BehaviorError(f"n must be >= 0, got {n}")
    if not math.isfinite(eta) or eta < 0:
        raise BehaviorError(f"eta must be a finite number >= 0, got {eta!r}")
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** eta


def smoothed_rate(
    clicks: np.ndarray,
    trials: np.ndarray,
    alpha: float = CTR_PRIOR_ALPHA,
    beta: float = CTR_PRIOR_BETA,
) -> np.ndarray:
    """Posterior mean of a Beta(alpha, beta) prior after ``clicks`` out of ``trials``: the
    smoothed CTR (trials = impressions) and the position-debiased one (trials =
    examinations), plain or recency-decayed."""
    return (clicks + alpha) / (trials + alpha + beta)


def exam_at(exam_probs: np.ndarray, position: int) -> float:
    """Examination probability of a 1-based position (past the curve's end: its last value)."""
    if exam_probs.size == 0:
        raise BehaviorError("exam_probs must not be empty")
    return float(exam_probs[min(max(position, 1), exam_probs.size) - 1])


def click_window(ts: float, window_s: float) -> int:
    """The fixed click-cap window ``ts`` falls in (windows of ``window_s`` from the epoch):
    at most the cap counts per window, so at most twice the cap in any span of that length."""
    if not math.isfinite(window_s) or window_s <= 0:
        raise BehaviorError(f"window_s must be > 0, got {window_s!r}")
    return math.floor(ts / window_s)


def decay_factor(age_s: float, half_life_s: float) -> float:
    """Recency weight 0.5 ** (age / half_life); a future time counts as age 0."""
    return float(0.5 ** (max(age_s, 0.0) / half_life_s))


# A tally: the aggregates of one (level, query, doc) key as a mutable row
# [impressions, clicks, examinations, decayed_clicks, decayed_impressions, ref_ts]; the
# decayed sums are relative to ref_ts, the newest contributing time, and decayed to "now"
# when read: value(now) = value(ref) * 0.5 ** ((now - ref) / half_life).
Tally = list[float]


def new_tally(ref_ts: float = -math.inf) -> Tally:
    """An empty tally (``ref_ts``: the time its decayed sums start relative to)."""
    return [0.0, 0.0, 0.0, 0.0, 0.0, ref_ts]


def add_to_tally(
    row: Tally, ts: float, impressions: float, clicks: float, exam: float, half_life_s: float
) -> None:
    """Add a contribution made at ``ts`` (an impression, a click or both) to ``row``."""
    row[0] += impressions
    row[1] += clicks
    row[2] += exam
    if ts >= row[5]:
        f = 0.0 if row[5] == -math.inf else decay_factor(ts - row[5], half_life_s)
        row[3] = row[3] * f + clicks
        row[4] = row[4] * f + impressions
        row[5] = ts
    else:  # a contribution older than the reference time: decay it to ref
        f = decay_factor(row[5] - ts, half_life_s)
        row[3] += clicks * f
        row[4] += impressions * f


def tally_values(row: Tally, now: float, half_life_s: float) -> tuple[float, ...]:
    """The five aggregates of ``row`` (STATS order), the decayed ones decayed to ``now``."""
    f = decay_factor(now - row[5], half_life_s)
    return row[0], row[1], row[2], row[3] * f, row[4] * f


def aggregate_sessions(
    sessions: Iterable[SessionLike],
    now: float,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
    exam_probs: np.ndarray | Sequence[float] | None = None,
) -> dict[str, dict[tuple[str, ...], float]]:
    """Raw behavior aggregates of the contract keys from result-list sessions.

    ``sessions`` items need ``query`` (the key, e.g. query_key(text) or a query id),
    ``docs`` (served order, position 1 first), ``clicks`` (aligned 0/1) and optionally
    ``ts`` (epoch seconds; missing or later than ``now`` = ``now``). Returns key ->
    {(query, doc) or (doc,): value}. Every tally starts at ``now``, so each contribution
    is decayed once, from its own time to ``now``.
    """
    probs = examination_probs(100) if exam_probs is None else np.asarray(exam_probs, np.float64)
    if probs.ndim != 1 or not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise BehaviorError("exam_probs must be a 1-D array of finite probabilities >= 0")
    if not math.isfinite(half_life_s) or half_life_s <= 0:
        raise BehaviorError(f"half_life_s must be > 0, got {half_life_s!r}")
    rows: dict[tuple[str, tuple[str, ...]], Tally] = {}
    for s in sessions:
        ids = _session_docs(s)
        clicks = np.asarray(s.clicks, dtype=np.float64)
        if clicks.shape != (len(ids),):
            raise BehaviorError(
                f"session clicks have shape {clicks.shape}, expected ({len(ids)},) for its docs"
            )
        ts = getattr(s, "ts", None)
        at = now if ts is None else min(float(ts), now)
        q = str(s.query)
        for i, d in enumerate(ids):
            c, ex = float(clicks[i]), exam_at(probs, i + 1)
            for key in (("qd", (q, d)), ("d", (d,))):
                row = rows.get(key)
                if row is None:
                    row = rows[key] = new_tally(now)
                add_to_tally(row, at, 1.0, c, ex, half_life_s)
    out: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in AGGREGATE_KEYS}
    for (lvl, of), row in rows.items():
        for stat, v in zip(STATS, tally_values(row, now, half_life_s), strict=True):
            out[f"{lvl}_{stat}"][of] = v
    return out


def behavior_arrays(
    aggregates: Mapping[str, Mapping[tuple[str, ...], float]],
    query: str,
    ids: Sequence[str],
) -> dict[str, np.ndarray]:
    """Per-candidate arrays of every aggregate key for one query (NaN = no history)."""
    out: dict[str, np.ndarray] = {}
    for key in AGGREGATE_KEYS:
        table = aggregates.get(key, {})
        if key.startswith("qd_"):
            vals = [table.get((query, d), math.nan) for d in ids]
        else:
            vals = [table.get((d,), math.nan) for d in ids]
        out[key] = np.asarray(vals, dtype=np.float64)
    return out


def merge_aggregates(
    *parts: Mapping[str, Mapping[tuple[str, ...], float]],
) -> dict[str, dict[tuple[str, ...], float]]:
    """Sum several aggregate tables (e.g. shards or time windows) key by key."""
    out: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in AGGREGATE_KEYS}
    for p in parts:
        for key, table in p.items():
            dst = out.setdefault(key, {})
            for k, v in table.items():
                dst[k] = dst.get(k, 0.0) + v
    return out
