"""Simulate click sessions from known click-model parameters (seeded, vectorized per query).

Used to test that the click models recover the parameters they were given, and by the
behavior-feature evaluation to turn graded judgments into plausible click logs
(``attractiveness_from_grades`` + ``simulate_pbm``).

Common arguments:
- ``rankings``: query -> ranked doc ids (the list shown, position 1 first).
- ``n_sessions``: total number of sessions; each picks its query at random with
  probability proportional to ``query_weights`` (uniform by default).
- ``rng``: a numpy Generator or an int seed; the same seed gives the same sessions.
- ``shuffle``: probability that a session shows a uniformly random permutation of the
  query's list instead of its given order. PBM cannot separate a document's
  attractiveness from its position's examination probability when every document is
  always shown at the same position, so recovery experiments need some shuffling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ltr.click_models_data import (
    ClickModelError,
    Pair,
    Session,
    check_probabilities,
    check_probability,
    lookup_pairs,
)
from ltr.errors import unknown_name
from ltr.types import Judgment

Rankings = Mapping[str, Sequence[str]]


def attractiveness_from_grades(
    grade: float | np.ndarray | Sequence[float],
    max_grade: float,
    noise: float = 0.1,
    *,
    jitter: float = 0.0,
    rng: np.random.Generator | int | None = None,
) -> Any:
    """Click probability of an examined document with relevance ``grade`` (0..max_grade).

    ``noise + (1 - noise) * (2**grade - 1) / (2**max_grade - 1)``: the exponential gain of
    NDCG, so a perfect document is clicked whenever examined and an irrelevant one with the
    ``noise`` probability (the click-noise model of the unbiased-LTR literature, e.g. Ai et
    al. 2018). ``jitter`` > 0 adds uniform noise in [-jitter, jitter] (clipped to [0, 1]) so
    that equal grades do not give identical attractiveness. NaN grades give NaN. Returns a
    float for a scalar grade, else a float64 array.
    """
    noise = check_probability(noise, "noise")
    if not np.isfinite(max_grade) or max_grade <= 0:
        raise ClickModelError(f"max_grade must be a positive number, got {max_grade!r}")
    if jitter < 0 or not np.isfinite(jitter):
        raise ClickModelError(f"jitter must be >= 0, got {jitter!r}")
    scalar = np.ndim(grade) == 0
    g = np.atleast_1d(np.asarray(grade, dtype=np.float64))
    bad = np.isfinite(g) & ((g < 0) | (g > max_grade)) | np.isinf(g)
    if bad.any():
        raise ClickModelError(f"grade {g[bad][0]!r} is outside [0, {max_grade}]")
    gain = (np.exp2(g) - 1.0) / (np.exp2(float(max_grade)) - 1.0)
    out = noise + (1.0 - noise) * gain
    if jitter > 0:
        gen = np.random.default_rng(rng)
        out = np.clip(out + gen.uniform(-jitter, jitter, size=out.shape), 0.0, 1.0)
        out[np.isnan(g)] = np.nan
    return float(out[0]) if scalar else out


def attractiveness_from_judgments(
    judgments: Sequence[Judgment], max_grade: float, noise: float = 0.1
) -> dict[Pair, float]:
    """(query_id, doc_id) -> attractiveness for a list of judgments (see above)."""
    grades = np.array([j.grade for j in judgments], dtype=np.float64)
    attr = attractiveness_from_grades(grades, max_grade, noise) if len(grades) else grades
    return {(j.query_id, j.doc_id): float(a) for j, a in zip(judgments, attr, strict=True)}


def _plan(
    rankings: Rankings,
    n_sessions: int,
    rng: np.random.Generator | int,
    query_weights: Mapping[str, float] | None,
    shuffle: float,
) -> tuple[np.random.Generator, list[str], np.ndarray]:
    """Validate the common arguments; draw each session's query index."""
    if not isinstance(n_sessions, int | np.integer) or n_sessions < 0:
        raise ClickModelError(f"n_sessions must be a non-negative int, got {n_sessions!r}")
    check_probability(shuffle, "shuffle")
    queries = list(rankings)
    if not queries:
        raise ClickModelError("rankings is empty: no queries to simulate")
    for q in queries:
        if len(rankings[q]) == 0:
            raise ClickModelError(f"ranking for query {q!r} is empty")
        if len(set(rankings[q])) != len(rankings[q]):
            raise ClickModelError(f"ranking for query {q!r} repeats a document")
    gen = np.random.default_rng(rng)
    if query_weights is None:
        p = np.full(len(queries), 1.0 / len(queries))
    else:
        w = np.array([float(query_weights.get(q, 0.0)) for q in queries])
        if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ClickModelError("query_weights must be finite, >= 0 and not all 0")
        p = w / w.sum()
    which = gen.choice(len(queries), size=int(n_sessions), p=p)
    return gen, queries, which


def _shown(gen: np.random.Generator, n: int, length: int, shuffle: float) -> np.ndarray:
    """Per session, the indices into the query's ranking shown at positions 1..length."""
    order = np.broadcast_to(np.arange(length), (n, length)).copy()
    if shuffle > 0:
        mixed = gen.random(n) < shuffle
        k = int(mixed.sum())
        if k:
            order[mixed] = np.argsort(gen.random((k, length)), axis=1)
    return order


def _sessions(
    queries: list[str],
    which: np.ndarray,
    rankings: Rankings,
    per_query: dict[int, tuple[np.ndarray, np.ndarray]],
) -> list[Session]:
    """Assemble Session objects in draw order from per-query (shown order, clicks) arrays."""
    out: list[Session | None] = [None] * len(which)
    for qi, (order, clicks) in per_query.items():
        q = queries[qi]
        docs = np.asarray(list(rankings[q]), dtype=object)
        rows = np.flatnonzero(which == qi)
        for row, o, c in zip(rows, order, clicks, strict=True):
            out[row] = Session(q, tuple(docs[o]), tuple(c.tolist()))
    return [s for s in out if s is not None]


def simulate_pbm(
    rankings: Rankings,
    attractiveness: Mapping[Pair, float],
    examination: Sequence[float] | np.ndarray,
    n_sessions: int,
    rng: np.random.Generator | int,
    *,
    query_weights: Mapping[str, float] | None = None,
    shuffle: float = 0.0,
) -> list[Session]:
    """Position-based model: click at position r iff examined (prob ``examination[r-1]``)
    and attracted (prob ``attractiveness[(query, doc)]``), independently per position.

    ``examination`` must cover the longest ranking. Returns ``n_sessions`` sessions.
    """
    gamma = check_probabilities(examination, "examination")
    gen, queries, which = _plan(rankings, n_sessions, rng, query_weights, shuffle)
    per_query: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for qi, q in enumerate(queries):
        docs = list(rankings[q])
        if len(docs) > len(gamma):
            raise ClickModelError(
                f"ranking for {q!r} has {len(docs)} docs but examination covers {len(gamma)}"
            )
        alpha = lookup_pairs([(q, d) for d in docs], attractiveness, "attractiveness")
        n = int((which == qi).sum())
        if n == 0:
            continue
        order = _shown(gen, n, len(docs), shuffle)
        p = gamma[: len(docs)][None, :] * alpha[order]
        per_query[qi] = (order, gen.random(p.shape) < p)
    return _sessions(queries, which, rankings, per_query)


def simulate_dbn(
    rankings: Rankings,
    attractiveness: Mapping[Pair, float],
    satisfaction: Mapping[Pair, float],
    gamma: float,
    n_sessions: int,
    rng: np.random.Generator | int,
    *,
    query_weights: Mapping[str, float] | None = None,
    shuffle: float = 0.0,
) -> list[Session]:
    """Dynamic Bayesian network (Chapelle & Zhang 2009) cascade.

    The user examines position 1; an examined document is clicked with its attractiveness;
    after a click the user is satisfied with the document's satisfaction probability and
    stops; otherwise the user goes on to the next position with probability ``gamma``.
    ``gamma = 1`` is the simplified DBN; ``gamma = 1`` with all satisfaction 1 is the
    cascade model (``simulate_cascade``).
    """
    g = check_probability(gamma, "gamma")
    gen, queries, which = _plan(rankings, n_sessions, rng, query_weights, shuffle)
    per_query: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for qi, q in enumerate(queries):
        docs = list(rankings[q])
        pairs = [(q, d) for d in docs]
        a = lookup_pairs(pairs, attractiveness, "attractiveness")
        s = lookup_pairs(pairs, satisfaction, "satisfaction")
        n = int((which == qi).sum())
        if n == 0:
            continue
        order = _shown(gen, n, len(docs), shuffle)
        a_m, s_m = a[order], s[order]
        u = gen.random((3, n, len(docs)))  # attraction, satisfaction, continuation draws
        clicks = np.zeros((n, len(docs)), dtype=bool)
        examined = np.ones(n, dtype=bool)
        for r in range(len(docs)):
            click = examined & (u[0, :, r] < a_m[:, r])
            clicks[:, r] = click
            satisfied = click & (u[1, :, r] < s_m[:, r])
            examined = examined & ~satisfied & (u[2, :, r] < g)
        per_query[qi] = (order, clicks)
    return _sessions(queries, which, rankings, per_query)


def simulate_cascade(
    rankings: Rankings,
    attractiveness: Mapping[Pair, float],
    n_sessions: int,
    rng: np.random.Generator | int,
    *,
    query_weights: Mapping[str, float] | None = None,
    shuffle: float = 0.0,
) -> list[Session]:
    """Cascade model (Craswell et al. 2008): scan down, click the first attractive doc, stop."""
    ones = _AllOnes()
    return simulate_dbn(
        rankings,
        attractiveness,
        ones,
        1.0,
        n_sessions,
        rng,
        query_weights=query_weights,
        shuffle=shuffle,
    )


def simulate_sdbn(
    rankings: Rankings,
    attractiveness: Mapping[Pair, float],
    satisfaction: Mapping[Pair, float],
    n_sessions: int,
    rng: np.random.Generator | int,
    *,
    query_weights: Mapping[str, float] | None = None,
    shuffle: float = 0.0,
) -> list[Session]:
    """Simplified DBN: the DBN with gamma = 1 (users never abandon unless satisfied)."""
    return simulate_dbn(
        rankings,
        attractiveness,
        satisfaction,
        1.0,
        n_sessions,
        rng,
        query_weights=query_weights,
        shuffle=shuffle,
    )


class _AllOnes(Mapping[Pair, float]):
    """Satisfaction 1 for every pair (the cascade model's certain stop after a click)."""

    def __getitem__(self, key: Pair) -> float:
        return 1.0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(())

    def __len__(self) -> int:
        return 0


SIMULATORS: dict[str, Any] = {
    "pbm": simulate_pbm,
    "dbn": simulate_dbn,
    "sdbn": simulate_sdbn,
    "cascade": simulate_cascade,
}


def simulate(name: str, *args: Any, **kwargs: Any) -> list[Session]:
    """Dispatch to ``simulate_<name>`` (pbm, dbn, sdbn, cascade) with the same arguments."""
    if name not in SIMULATORS:
        raise unknown_name("click simulator", name, list(SIMULATORS))
    return SIMULATORS[name](*args, **kwargs)  # type: ignore[no-any-return]
