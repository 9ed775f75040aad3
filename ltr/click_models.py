"""Click models: implicit relevance judgments from click logs, behind one interface.

Clicks are biased by position (lower results are looked at less) and by the cascade of
earlier clicks, so raw CTR is a poor label. Each model here explains the clicks of a
``Session`` with a few parameters per (query, doc) pair and turns them into a relevance
estimate:

- ``coec``: clicks over expected clicks (position CTR priors), one pass; a ratio, 1 = average.
- ``pbm``:  position-based model, EM; relevance = attractiveness.
- ``sdbn``: simplified DBN (gamma = 1), counting; relevance = attractiveness x satisfaction.
- ``dbn``:  dynamic Bayesian network, exact EM with a learned (or fixed) continuation
  probability gamma; relevance = attractiveness x satisfaction.

All share the ``ClickModel`` Protocol (fit, relevance with a documented prior for unseen
pairs, predict_relevance, impressions, click_probs, log_likelihood, perplexity), the
registry ``CLICK_MODELS`` / ``make_click_model``, ``select_best`` (lowest held-out
perplexity) and ``labels`` (graded ``Judgment`` objects). Sessions are encoded once into
integer arrays; fitting is vectorized numpy (100K sessions: about a second of CPU, see
docs/benchmarks.md). ``Session``, the encoding and the simulators live in
``click_models_data`` and ``click_models_sim`` and are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self, cast, runtime_checkable

import numpy as np

from ltr.click_models_data import (
    ClickModelError,
    EncodedSessions,
    Pair,
    Session,
    check_probability,
    encode_sessions,
)
from ltr.click_models_sim import (
    SIMULATORS,
    attractiveness_from_grades,
    attractiveness_from_judgments,
    simulate,
    simulate_cascade,
    simulate_dbn,
    simulate_pbm,
    simulate_sdbn,
)
from ltr.errors import TrainingDataError, unknown_name
from ltr.types import Judgment

__all__ = [
    "CLICK_MODELS",
    "COEC",
    "DBN",
    "PBM",
    "SDBN",
    "SIMULATORS",
    "ClickModel",
    "ClickModelError",
    "EncodedSessions",
    "ModelScore",
    "Pair",
    "Perplexity",
    "Session",
    "attractiveness_from_grades",
    "attractiveness_from_judgments",
    "encode_sessions",
    "labels",
    "make_click_model",
    "select_best",
    "simulate",
    "simulate_cascade",
    "simulate_dbn",
    "simulate_pbm",
    "simulate_sdbn",
]


# ----------------------------------------------------------------------------- interface

EPS = 1e-6  # click probabilities are clipped to [EPS, 1 - EPS] so a log-likelihood stays finite


@dataclass(frozen=True)
class Perplexity:
    """Click perplexity 2^(-mean log2 P(observed click)), per position (1 first) and overall.

    ``overall`` is the mean of the per-position values (Chuklin et al. 2015); 1 is a perfect
    model, 2 a coin flip. A position holds the sessions that show a document there.
    """

    overall: float
    by_position: np.ndarray


@runtime_checkable
class ClickModel(Protocol):
    """What every click model offers (the estimators are listed in the module docstring).

    ``relevance`` of an unseen pair is the model's ``prior``; ``click_probs`` gives, per
    position, P(click | the session's clicks above), which only the cascade models (sdbn,
    dbn) condition on; ``log_likelihood`` is the mean per session in nats.
    """

    name: str

    def fit(self, sessions: Iterable[Session]) -> Self: ...

    def relevance(self, query: str, doc: str) -> float: ...

    def predict_relevance(self) -> dict[Pair, float]: ...

    def impressions(self) -> dict[Pair, int]: ...

    def click_probs(self, session: Session) -> np.ndarray: ...

    def log_likelihood(self, sessions: Iterable[Session]) -> float: ...

    def perplexity(self, sessions: Iterable[Session]) -> Perplexity: ...


def _check_prior(a: float, b: float, what: str) -> tuple[float, float]:
    a, b = float(a), float(b)
    if not (np.isfinite(a) and np.isfinite(b) and a >= 0 and b >= 0 and a + b > 0):
        raise ClickModelError(f"{what} prior pseudo-counts must be >= 0 and not both 0")
    return a, b


def _check_iter(max_iter: int, tol: float) -> None:
    if int(max_iter) < 1:
        raise ClickModelError(f"max_iter must be >= 1, got {max_iter!r}")
    if not (float(tol) >= 0):
        raise ClickModelError(f"tol must be >= 0, got {tol!r}")


class _Base:
    """Shared machinery: the pair index, held-out encoding, likelihood and perplexity.

    Subclasses implement ``_fit(enc)`` (fit on encoded sessions whose pair ids are this
    model's ids), ``_cond_probs(ids, enc)`` (P(click at r | clicks before r) for every cell,
    with id ``n_pairs`` meaning an unseen pair) and ``_relevance_array()`` / ``prior``.
    """

    name = ""

    def __init__(self) -> None:
        self._index: dict[Pair, int] = {}
        self._pairs: tuple[Pair, ...] = ()
        self._impr = np.zeros(0, dtype=np.int64)
        self._rel = np.zeros(0)  # relevance per pair, computed once at fit time
        self._fitted = False

    # -- to implement
    def _fit(self, enc: EncodedSessions) -> None:
        raise NotImplementedError

    def _cond_probs(self, ids: np.ndarray, enc: EncodedSessions) -> np.ndarray:
        raise NotImplementedError

    def _relevance_array(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def prior(self) -> float:
        """Relevance returned for a (query, doc) pair the model has never seen."""
        raise NotImplementedError

    # -- shared
    def fit(self, sessions: Iterable[Session]) -> Self:
        """Fit on click sessions; raises TrainingDataError when there are none."""
        enc = encode_sessions(sessions)
        self._fitted = False  # a refit that fails must not leave old parameters half-replaced
        self._pairs = enc.pairs
        self._index = {p: i for i, p in enumerate(enc.pairs)}
        self._impr = enc.impressions()
        self._fit(enc)
        self._rel = self._relevance_array()
        self._fitted = True
        return self

    @property
    def pairs(self) -> tuple[Pair, ...]:
        """The training (query, doc) pairs; parameter arrays are aligned with this order."""
        return self._pairs

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise ClickModelError(f"{self.name} click model is not fitted; call fit(sessions)")

    def _model_ids(self, enc: EncodedSessions) -> np.ndarray:
        """Encoded pair ids -> this model's ids; unseen pairs get ``len(pairs)`` (prior)."""
        get = self._index.get
        unseen = len(self._pairs)
        lut = np.fromiter((get(p, unseen) for p in enc.pairs), np.int64, len(enc.pairs))
        return lut[enc.pair_ids]

    def relevance(self, query: str, doc: str) -> float:
        """Relevance estimate of ``doc`` for ``query``; ``prior`` for an unseen pair."""
        self._require_fitted()
        i = self._index.get((query, doc))
        return self.prior if i is None else float(self._rel[i])

    def predict_relevance(self) -> dict[Pair, float]:
        """Relevance of every (query, doc) pair seen in training."""
        self._require_fitted()
        return dict(zip(self._pairs, self._rel.tolist(), strict=True))

    def impressions(self) -> dict[Pair, int]:
        """Training impressions per pair (how much data stands behind each estimate)."""
        self._require_fitted()
        return dict(zip(self._pairs, self._impr.tolist(), strict=True))

    def _probs(self, sessions: Iterable[Session]) -> tuple[np.ndarray, EncodedSessions]:
        self._require_fitted()
        enc = encode_sessions(sessions)
        p = self._cond_probs(self._model_ids(enc), enc)
        return np.clip(p, EPS, 1.0 - EPS), enc

    def click_probs(self, session: Session) -> np.ndarray:
        """P(click at each position | the session's clicks above it), position 1 first."""
        p, _ = self._probs([session])
        return p[0, : len(session.docs)]

    def _log_probs(self, sessions: Iterable[Session]) -> tuple[np.ndarray, np.ndarray]:
        p, enc = self._probs(sessions)
        lp = np.where(enc.clicks, np.log(p), np.log1p(-p))
        return np.where(enc.mask, lp, 0.0), enc.mask

    def log_likelihood(self, sessions: Iterable[Session]) -> float:
        """Mean over sessions of the natural-log probability of the session's clicks."""
        lp, _ = self._log_probs(sessions)
        return float(lp.sum(axis=1).mean())

    def perplexity(self, sessions: Iterable[Session]) -> Perplexity:
        """Click perplexity per position and overall (see ``Perplexity``)."""
        lp, mask = self._log_probs(sessions)
        n = mask.sum(axis=0)
        mean_log2 = lp.sum(axis=0) / np.maximum(n, 1) / np.log(2.0)
        by_pos = np.where(n > 0, np.exp2(-mean_log2), np.nan)
        return Perplexity(float(np.nanmean(by_pos)), by_pos)

    def __repr__(self) -> str:
        state = f"{len(self._pairs)} pairs" if self._fitted else "unfitted"
        return f"<{type(self).__name__} {state}>"


def _position_ids(enc: EncodedSessions, n_positions: int) -> np.ndarray:
    """Column index per cell, capped at the last fitted position (longer held-out lists)."""
    pos = np.broadcast_to(np.arange(enc.max_len), enc.pair_ids.shape)
    return np.minimum(pos, n_positions - 1)


# ----------------------------------------------------------------------------- COEC


class COEC(_Base):
    """Clicks over expected clicks (Zhang & Jones 2007).

    Position priors ``ctr[r]`` = clicks / impressions at position r over all pairs; a pair's
    expected clicks E = sum of ``ctr`` over its impressions; relevance =
    (clicks + m) / (E + m) with ``m = prior_strength`` pseudo expected clicks, so the prior
    for an unseen pair is 1.0 (clicked as often as its positions predict). It is a ratio,
    not a probability. As a click model: P(click at r) = min(ctr[r] * relevance, 1).
    """

    name = "coec"

    def __init__(self, prior_strength: float = 1.0) -> None:
        super().__init__()
        if not (float(prior_strength) > 0 and np.isfinite(prior_strength)):
            raise ClickModelError(f"prior_strength must be > 0, got {prior_strength!r}")
        self.prior_strength = float(prior_strength)
        self.position_ctr = np.zeros(0)
        self.coec = np.zeros(0)

    @property
    def prior(self) -> float:
        return 1.0

    def _fit(self, enc: EncodedSessions) -> None:
        shown = enc.mask.sum(axis=0)
        self.position_ctr = (enc.clicks & enc.mask).sum(axis=0) / np.maximum(shown, 1)
        m = enc.mask
        expected = np.bincount(
            enc.pair_ids[m],
            weights=np.broadcast_to(self.position_ctr, m.shape)[m],
            minlength=len(enc.pairs),
        )
        m0 = self.prior_strength
        self.coec = (enc.click_counts() + m0) / (expected + m0)

    def _relevance_array(self) -> np.ndarray:
        return self.coec

    def _cond_probs(self, ids: np.ndarray, enc: EncodedSessions) -> np.ndarray:
        rel = np.append(self.coec, self.prior)[ids]
        ctr = self.position_ctr[_position_ids(enc, len(self.position_ctr))]
        return np.minimum(ctr * rel, 1.0)


# ----------------------------------------------------------------------------- PBM


class PBM(_Base):
    """Position-based model, fitted by EM (Chuklin, Markov & de Rijke 2015, ch. 4).

    P(click at r) = examination[r] * attractiveness[query, doc], independently per position.
    The likelihood only sees the products, so the scale is fixed by the usual convention
    examination[0] = 1 (the top result is always looked at); the fit needs each pair shown
    at more than one position (randomized or varying rankings) to separate the two.
    ``prior_a`` / ``prior_b`` are pseudo-clicks / pseudo-skips added in every M-step (the
    MAP estimate under a Beta(prior_a + 1, prior_b + 1) prior), so rare pairs shrink to
    the prior mean; relevance = attractiveness; an unseen pair gets prior_a / (prior_a +
    prior_b). ``attractiveness`` is aligned with ``pairs``.
    """

    name = "pbm"

    def __init__(
        self,
        max_iter: int = 100,
        tol: float = 1e-5,
        prior_a: float = 1.0,
        prior_b: float = 1.0,
    ) -> None:
        super().__init__()
        _check_iter(max_iter, tol)
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.prior_a, self.prior_b = _check_prior(prior_a, prior_b, "attractiveness")
        self.attractiveness = np.zeros(0)
        self.examination = np.zeros(0)
        self.n_iter = 0
        self.converged = False

    @property
    def prior(self) -> float:
        return self.prior_a / (self.prior_a + self.prior_b)

    def _fit(self, enc: EncodedSessions) -> None:
        # The E-step posterior of a skip depends only on (pair, position), so the EM runs on
        # the distinct (pair, position) cells with their impression and click counts:
        # each iteration costs O(distinct cells), not O(sessions x positions).
        m = enc.mask
        n_pairs, n_pos = len(enc.pairs), enc.max_len
        key = (enc.pair_ids * n_pos + np.arange(n_pos)[None, :])[m]
        cells, inverse = np.unique(key, return_inverse=True)
        shown = np.bincount(inverse, minlength=len(cells)).astype(np.float64)
        clicked = np.bincount(inverse, weights=enc.clicks[m], minlength=len(cells))
        skipped = shown - clicked
        ids, pos = cells // n_pos, cells % n_pos
        impr = np.bincount(ids, weights=shown, minlength=n_pairs)
        clicks_pair = np.bincount(ids, weights=clicked, minlength=n_pairs)
        shown_pos = np.bincount(pos, weights=shown, minlength=n_pos)
        clicks_pos = np.bincount(pos, weights=clicked, minlength=n_pos)
        alpha = np.full(n_pairs, 0.5)
        ctr = clicks_pos / np.maximum(shown_pos, 1)
        gamma = np.clip(ctr / max(ctr[0], EPS), 0.05, 1.0)  # CTR decay is a decent start
        a0, b0 = self.prior_a, self.prior_b
        for it in range(1, self.max_iter + 1):
            a, g = alpha[ids], gamma[pos]
            denom = np.maximum(1.0 - a * g, EPS)
            post_a = skipped * a * (1.0 - g) / denom  # expected attracted-but-unexamined
            post_e = skipped * g * (1.0 - a) / denom  # expected examined-but-unattracted
            new_alpha = (clicks_pair + np.bincount(ids, post_a, n_pairs) + a0) / (impr + a0 + b0)
            new_gamma = (clicks_pos + np.bincount(pos, post_e, n_pos)) / np.maximum(shown_pos, 1)
            scale = max(new_gamma[0], EPS)  # identifiability: examination[0] = 1
            new_gamma = np.clip(new_gamma / scale, EPS, 1.0)
            new_alpha = np.clip(new_alpha * scale, EPS, 1.0 - EPS)
            delta = max(np.abs(new_alpha - alpha).max(), np.abs(new_gamma - gamma).max())
            alpha, gamma = new_alpha, new_gamma
            self.n_iter = it
            if delta < self.tol:
                break
        self.converged = bool(delta < self.tol)  # False: stopped at max_iter
        self.attractiveness, self.examination = alpha, gamma

    def _relevance_array(self) -> np.ndarray:
        return self.attractiveness

    def _cond_probs(self, ids: np.ndarray, enc: EncodedSessions) -> np.ndarray:
        a = np.append(self.attractiveness, self.prior)[ids]
        return a * self.examination[_position_ids(enc, len(self.examination))]


# ----------------------------------------------------------------------------- DBN / SDBN


class DBN(_Base):
    """Dynamic Bayesian network (Chapelle & Zhang 2009), fitted by exact EM.

    Cascade: position 1 is examined; an examined doc is clicked with attractiveness a; after
    a click the user is satisfied with probability s and stops, else continues to the next
    position with probability ``gamma`` (also continues with ``gamma`` after a non-click).
    The E-step computes, per session, the exact posteriors of examination (backward
    probabilities of "no click below" + a forward pass), attraction and satisfaction of the
    last click, vectorized over sessions with a loop over positions only.
    ``gamma=None`` learns the continuation probability; a number fixes it.
    a and s get (pseudo-successes, pseudo-failures) ``prior_a`` / ``prior_s`` in every
    M-step (MAP under Beta(x + 1, y + 1) priors); the arrays ``attractiveness`` and
    ``satisfaction`` are aligned with ``pairs``. Relevance = a * s (the
    probability that the doc satisfies a user who examines it); an unseen pair gets the
    product of the prior means.
    """

    name = "dbn"

    def __init__(
        self,
        gamma: float | None = None,
        max_iter: int = 100,
        tol: float = 1e-5,
        prior_a: tuple[float, float] = (1.0, 1.0),
        prior_s: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        super().__init__()
        _check_iter(max_iter, tol)
        self.fixed_gamma = None if gamma is None else check_probability(gamma, "gamma")
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.prior_a = _check_prior(*prior_a, "attractiveness")
        self.prior_s = _check_prior(*prior_s, "satisfaction")
        self.attractiveness = np.zeros(0)
        self.satisfaction = np.zeros(0)
        self.gamma = 0.9 if gamma is None else float(gamma)
        self.n_iter = 0
        self.converged = False

    @property
    def prior(self) -> float:
        (a0, b0), (s0, t0) = self.prior_a, self.prior_s
        return a0 / (a0 + b0) * s0 / (s0 + t0)

    def _relevance_array(self) -> np.ndarray:
        return self.attractiveness * self.satisfaction

    def _e_step(
        self, st: _DBNStatic, a: np.ndarray, s: np.ndarray, g: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact posteriors, position-major (L, n): P(A=1) and P(E=1) per cell, and P(S=1)
        of each session's last click (every earlier click was followed by more clicks, so
        it did not satisfy)."""
        L, n = st.ids.shape
        a_m = np.where(st.mask, np.clip(a[st.ids], EPS, 1 - EPS), 0.0)  # padding: no click
        # z[r] = P(no clicks at r..end | examined at r); padding leaves z = 1.
        z = np.ones((L + 1, n))
        for r in range(L - 1, -1, -1):
            z[r] = (1.0 - a_m[r]) * ((1.0 - g) + g * z[r + 1])
        s_l = np.where(st.has, s[st.last_ids], 0.0)
        z_next = z[st.li + 1, st.cols]
        stop_unsat = (1.0 - g) + g * z_next  # P(no click below | not satisfied at last click)
        denom = np.maximum(s_l + (1.0 - s_l) * stop_unsat, EPS)
        p_sat = np.where(st.has, s_l / denom, 0.0)
        e_after_last = (1.0 - s_l) * g * z_next / denom
        e = np.ones((L, n))
        for r in range(L - 1):
            tail = e[r] * (1.0 - a_m[r]) * g * z[r + 1] / np.maximum(z[r], EPS)
            e[r + 1] = np.where(st.before[r], 1.0, np.where(st.at[r], e_after_last, tail))
        post_a = np.where(st.clicks, 1.0, (1.0 - e) * a_m)
        return post_a, e, p_sat

    def _m_step(
        self, st: _DBNStatic, post_a: np.ndarray, e: np.ndarray, p_sat: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        (a0, b0), (s0, t0) = self.prior_a, self.prior_s
        n_pairs = len(st.impr)
        a_sum = np.bincount(st.flat_ids, weights=post_a.ravel()[st.flat_mask], minlength=n_pairs)
        s_sum = np.bincount(st.last_ids[st.has], weights=p_sat[st.has], minlength=n_pairs)
        a = (a_sum + a0) / (st.impr + a0 + b0)
        s = (s_sum + s0) / (st.n_clicks + s0 + t0)
        if self.fixed_gamma is not None:
            return a, s, self.fixed_gamma
        # Continuations r -> r+1 (only where position r+1 was shown): expected successes
        # P(E[r+1]) over expected chances P(E[r]) - P(S[r]); S is nonzero at the last click.
        nxt = st.mask[1:]
        num = (e[1:] * nxt).sum()
        den = (e[:-1] * nxt).sum() - p_sat[st.last_has_next].sum()
        g = float(np.clip(num / den, EPS, 1.0)) if den > 0 else self.gamma
        return a, s, g

    def _fit(self, enc: EncodedSessions) -> None:
        st = _DBNStatic.build(enc)
        n_pairs = len(enc.pairs)
        a, s = np.full(n_pairs, 0.5), np.full(n_pairs, 0.5)
        g = self.gamma if self.fixed_gamma is None else self.fixed_gamma
        for it in range(1, self.max_iter + 1):
            post_a, e, p_sat = self._e_step(st, a, s, g)
            new_a, new_s, new_g = self._m_step(st, post_a, e, p_sat)
            delta = max(np.abs(new_a - a).max(), np.abs(new_s - s).max(), abs(new_g - g))
            a, s, g = new_a, new_s, new_g
            self.n_iter = it
            if delta < self.tol:
                break
        self.converged = bool(delta < self.tol)  # False: stopped at max_iter
        self.attractiveness, self.satisfaction, self.gamma = a, s, g

    def attractiveness_of(self, query: str, doc: str) -> float:
        """Attractiveness of a pair (prior mean when unseen)."""
        self._require_fitted()
        i = self._index.get((query, doc))
        a0, b0 = self.prior_a
        return a0 / (a0 + b0) if i is None else float(self.attractiveness[i])

    def satisfaction_of(self, query: str, doc: str) -> float:
        """Satisfaction of a pair (prior mean when unseen)."""
        self._require_fitted()
        i = self._index.get((query, doc))
        s0, t0 = self.prior_s
        return s0 / (s0 + t0) if i is None else float(self.satisfaction[i])

    def _cond_probs(self, ids: np.ndarray, enc: EncodedSessions) -> np.ndarray:
        (a0, b0), (s0, t0) = self.prior_a, self.prior_s
        a = np.append(self.attractiveness, a0 / (a0 + b0))[ids]
        s = np.append(self.satisfaction, s0 / (s0 + t0))[ids]
        g = self.gamma
        n, L = ids.shape
        p = np.zeros((n, L))
        pe = np.ones(n)  # P(examined at r | clicks above r)
        for r in range(L):
            ar = np.clip(a[:, r], EPS, 1 - EPS)
            p[:, r] = pe * ar
            c = enc.clicks[:, r]
            after_skip = pe * (1.0 - ar) / np.maximum(1.0 - pe * ar, EPS)
            pe = g * np.where(c, 1.0 - s[:, r], after_skip)
        return p


@dataclass(frozen=True)
class _DBNStatic:
    """What the DBN E-step reuses every iteration, position-major (L, n) for contiguity."""

    ids: np.ndarray  # pair id per cell
    mask: np.ndarray
    clicks: np.ndarray  # clicks & mask
    cols: np.ndarray  # arange(n)
    has: np.ndarray  # session has a click
    li: np.ndarray  # last-click position (0 when none)
    last_ids: np.ndarray  # pair id at the last click
    before: np.ndarray  # (L, n) position < last click
    at: np.ndarray  # (L, n) position == last click
    last_has_next: np.ndarray  # has a click and a position after the last click was shown
    flat_mask: np.ndarray  # mask.ravel()
    flat_ids: np.ndarray  # ids.ravel()[flat_mask]
    impr: np.ndarray
    n_clicks: np.ndarray

    @staticmethod
    def build(enc: EncodedSessions) -> _DBNStatic:
        ids = np.ascontiguousarray(enc.pair_ids.T)
        mask = np.ascontiguousarray(enc.mask.T)
        clicks = np.ascontiguousarray((enc.clicks & enc.mask).T)
        L, n = ids.shape
        cols = np.arange(n)
        has = np.asarray(clicks.any(axis=0))
        last = np.where(has, L - 1 - np.argmax(clicks[::-1], axis=0), -1)
        li = np.maximum(last, 0)
        pos = np.arange(L)[:, None]
        flat_mask = mask.ravel()
        return _DBNStatic(
            ids=ids,
            mask=mask,
            clicks=clicks,
            cols=cols,
            has=has,
            li=li,
            last_ids=ids[li, cols],
            before=pos < last[None, :],
            at=pos == last[None, :],
            last_has_next=has & (li + 1 < enc.lengths),
            flat_mask=flat_mask,
            flat_ids=ids.ravel()[flat_mask],
            impr=enc.impressions(),
            n_clicks=enc.click_counts(),
        )


class SDBN(DBN):
    """Simplified DBN: gamma = 1, fitted by counting (Chuklin et al. 2015, sec. 4.2).

    With gamma = 1 a user leaves only when satisfied, so the last click is taken as the
    satisfied one and every document down to it as examined (all of them in a session
    without clicks). a = clicks / examinations, s = last clicks / clicks, both with Beta
    pseudo-counts. Exact when the last click really is satisfying; on DBN data with
    unsatisfied last clicks it overestimates s and, a little, a (see docs/evaluation.md).
    """

    name = "sdbn"

    def __init__(
        self,
        prior_a: tuple[float, float] = (1.0, 1.0),
        prior_s: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        super().__init__(gamma=1.0, max_iter=1, prior_a=prior_a, prior_s=prior_s)

    def _fit(self, enc: EncodedSessions) -> None:
        m, clk = enc.mask, enc.clicks & enc.mask
        L = enc.max_len
        n_pairs = len(enc.pairs)
        last = np.where(clk.any(axis=1), L - 1 - np.argmax(clk[:, ::-1], axis=1), L - 1)
        examined = m & (np.arange(L)[None, :] <= last[:, None])
        is_last = np.zeros_like(clk)
        rows = np.flatnonzero(clk.any(axis=1))
        is_last[rows, last[rows]] = True
        ex = np.bincount(enc.pair_ids[examined], minlength=n_pairs)
        clicks = enc.click_counts()
        lasts = np.bincount(enc.pair_ids[is_last], minlength=n_pairs)
        (a0, b0), (s0, t0) = self.prior_a, self.prior_s
        self.attractiveness = (clicks + a0) / (ex + a0 + b0)
        self.satisfaction = (lasts + s0) / (clicks + s0 + t0)
        self.gamma = 1.0
        self.n_iter = 1
        self.converged = True  # closed form


# ----------------------------------------------------------------------------- registry

CLICK_MODELS: dict[str, type[_Base]] = {"coec": COEC, "pbm": PBM, "sdbn": SDBN, "dbn": DBN}


def make_click_model(name: str, **params: Any) -> ClickModel:
    """A new, unfitted click model by registry name; unknown names list the valid ones."""
    if name not in CLICK_MODELS:
        raise unknown_name("click model", name, list(CLICK_MODELS))
    try:
        return CLICK_MODELS[name](**params)
    except TypeError as e:  # an unknown keyword: say which model refused it
        raise ClickModelError(f"click model {name!r}: {e}") from None


@dataclass(frozen=True)
class ModelScore:
    """One row of ``select_best``'s table."""

    name: str
    perplexity: float
    log_likelihood: float
    perplexity_by_position: tuple[float, ...]
    fit_seconds: float


def select_best(
    models: Iterable[str | ClickModel] | None,
    train: Sequence[Session],
    heldout: Sequence[Session],
) -> tuple[ClickModel, list[ModelScore]]:
    """Fit each model on ``train``; return the lowest held-out perplexity one and the table.

    ``models`` are registry names or unfitted instances (None = every registered model).
    The table is sorted best first. Raises TrainingDataError when either split is empty.
    """
    train, heldout = list(train), list(heldout)
    if not heldout:
        raise TrainingDataError("select_best needs held-out sessions to score the models")
    chosen = list(CLICK_MODELS) if models is None else list(models)
    if not chosen:
        raise ClickModelError("select_best got no models to compare")
    fitted: list[tuple[ClickModel, ModelScore]] = []
    for spec in chosen:
        model = make_click_model(spec) if isinstance(spec, str) else spec
        t0 = time.perf_counter()
        model.fit(train)
        secs = time.perf_counter() - t0
        pp = model.perplexity(heldout)
        score = ModelScore(
            model.name,
            pp.overall,
            model.log_likelihood(heldout),
            tuple(pp.by_position.tolist()),
            secs,
        )
        fitted.append((model, score))
    fitted.sort(key=lambda ms: ms[1].perplexity)
    return fitted[0][0], [s for _, s in fitted]


# ----------------------------------------------------------------------------- labels


def labels(
    source: ClickModel | Iterable[Session],
    *,
    grades: int = 4,
    method: Literal["quantile", "threshold"] = "quantile",
    thresholds: Sequence[float] | None = None,
    model: str = "dbn",
    min_impressions: int = 1,
    **model_params: Any,
) -> list[Judgment]:
    """Graded judgments 0..grades-1 from click-model relevance estimates.

    ``source`` is a fitted click model, or sessions to fit ``make_click_model(model,
    **model_params)`` on. Pairs with fewer than ``min_impressions`` training impressions are
    left out (no label rather than a noisy one).
    - ``quantile``: cut points at the 1/grades, 2/grades, ... quantiles of the relevance
      of the kept pairs over all queries (equal-sized grade bins; the grade scale is global,
      so a query with only weak documents gets only low grades). Ties share a grade: a
      value equal to a cut point goes to the upper bin, so heavily tied estimates (few
      impressions, counting models) can leave bins unequal.
    - ``threshold``: grade = number of ``thresholds`` (ascending, grades-1 of them) that the
      relevance reaches; the default splits [0, 1] evenly, which suits probability-valued
      relevance (pbm, sdbn, dbn), not COEC's ratio.
    The query of a session becomes ``Judgment.query_id``.
    """
    if int(grades) < 2:
        raise ClickModelError(f"grades must be >= 2, got {grades!r}")
    grades = int(grades)
    fitted: ClickModel
    if hasattr(source, "predict_relevance"):  # a fitted model, ours or any ClickModel
        fitted = cast(ClickModel, source)
    else:
        fitted = make_click_model(model, **model_params).fit(cast(Iterable[Session], source))
    rel = fitted.predict_relevance()
    impr = fitted.impressions()
    pairs = [p for p in rel if impr.get(p, 0) >= min_impressions]
    if not pairs:
        raise TrainingDataError(f"no (query, doc) pair has >= {min_impressions} impressions")
    values = np.array([rel[p] for p in pairs], dtype=np.float64)
    if method == "quantile":
        cuts = np.quantile(values, np.arange(1, grades) / grades)
    elif method == "threshold":
        cuts = (
            np.arange(1, grades) / grades
            if thresholds is None
            else np.asarray(thresholds, dtype=np.float64)
        )
        if cuts.shape != (grades - 1,) or np.any(np.diff(cuts) < 0) or np.isnan(cuts).any():
            raise ClickModelError(f"thresholds must be {grades - 1} ascending numbers")
    else:
        raise unknown_name("label method", method, ["quantile", "threshold"])
    g = np.searchsorted(cuts, values, side="right")
    return [Judgment(q, d, float(k)) for (q, d), k in zip(pairs, g.tolist(), strict=True)]
