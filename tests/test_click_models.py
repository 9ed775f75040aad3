"""Click models and simulators: parameter recovery on simulated logs, model selection, errors.

Everything is real numpy at small scale (a few thousand to ~50K sessions); tolerances are
stated per test and the measured errors are recorded in docs/evaluation.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from ltr.click_models import (
    ClickModelError,
    Session,
    attractiveness_from_grades,
    attractiveness_from_judgments,
    encode_sessions,
    simulate,
    simulate_cascade,
    simulate_dbn,
    simulate_pbm,
)
from ltr.errors import TrainingDataError, UnknownNameError
from ltr.types import Judgment

N_QUERIES = 20
N_DOCS = 8
EXAM = np.array([1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.25, 0.2])


def _rankings(n_queries: int = N_QUERIES, n_docs: int = N_DOCS) -> dict[str, list[str]]:
    return {f"q{i}": [f"q{i}d{j}" for j in range(n_docs)] for i in range(n_queries)}


def _random_params(rankings: dict[str, list[str]], seed: int, lo: float, hi: float):
    gen = np.random.default_rng(seed)
    return {(q, d): float(gen.uniform(lo, hi)) for q, ds in rankings.items() for d in ds}


# ----------------------------------------------------------------------------- simulators


def test_session_validates_and_normalises() -> None:
    s = Session("q", ["a", "b"], [1, 0])  # type: ignore[arg-type]
    assert s.docs == ("a", "b") and s.clicks == (True, False)
    with pytest.raises(TrainingDataError, match="2 docs but 1 click"):
        Session("q", ("a", "b"), (True,))
    with pytest.raises(TrainingDataError, match="no documents"):
        Session("q", (), ())


def test_encode_sessions_pads_and_counts() -> None:
    enc = encode_sessions(
        [Session("q", ("a", "b", "c"), (True, False, False)), Session("q", ("b",), (True,))]
    )
    assert enc.pairs == (("q", "a"), ("q", "b"), ("q", "c"))
    assert enc.mask.tolist() == [[True, True, True], [True, False, False]]
    assert enc.impressions().tolist() == [1, 2, 1]
    assert enc.click_counts().tolist() == [1, 1, 0]
    with pytest.raises(TrainingDataError):
        encode_sessions([])


def test_attractiveness_from_grades() -> None:
    a = attractiveness_from_grades([0, 1, 2, 3, np.nan], 3, noise=0.1)
    assert a[0] == pytest.approx(0.1) and a[3] == pytest.approx(1.0)
    assert np.all(np.diff(a[:4]) > 0) and np.isnan(a[4])
    assert isinstance(attractiveness_from_grades(2, 4), float)
    j = attractiveness_from_grades(np.full(1000, 1.0), 3, jitter=0.05, rng=0)
    assert 0 < j.std() < 0.05 and np.all((j >= 0) & (j <= 1))
    with pytest.raises(ClickModelError, match="outside"):
        attractiveness_from_grades(5, 4)
    with pytest.raises(ClickModelError, match="noise"):
        attractiveness_from_grades(1, 4, noise=1.5)
    m = attractiveness_from_judgments([Judgment("q", "d", 4.0), Judgment("q", "e", 0.0)], 4)
    assert m == {("q", "d"): pytest.approx(1.0), ("q", "e"): pytest.approx(0.1)}


def test_simulate_pbm_matches_its_parameters_and_is_seeded() -> None:
    rk = _rankings(2, 4)
    attr = {(q, d): 0.2 + 0.2 * j for q, ds in rk.items() for j, d in enumerate(ds)}
    exam = [1.0, 0.7, 0.5, 0.3]
    s1 = simulate_pbm(rk, attr, exam, 20_000, 7)
    assert s1 == simulate_pbm(rk, attr, exam, 20_000, np.random.default_rng(7))
    assert len(s1) == 20_000 and {s.query for s in s1} == {"q0", "q1"}
    ctr = np.mean([s.clicks for s in s1], axis=0)  # unshuffled: doc j always at position j
    expected = np.array(exam) * np.array([0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(ctr, expected, atol=0.015)
    shuffled = simulate_pbm(rk, attr, exam, 2_000, 1, shuffle=1.0)
    assert len({s.docs for s in shuffled}) > 20


def test_simulate_dbn_and_cascade_follow_the_cascade() -> None:
    rk = _rankings(3, 5)
    attr = {p: 0.5 for p in _random_params(rk, 0, 0, 1)}
    cas = simulate_cascade(rk, attr, 5_000, 3)
    assert max(sum(s.clicks) for s in cas) == 1  # the cascade model stops at the first click
    first = np.mean([s.clicks[0] for s in cas])
    assert first == pytest.approx(0.5, abs=0.03)
    # gamma = 0: only position 1 is ever examined.
    dbn0 = simulate_dbn(rk, attr, attr, 0.0, 2_000, 4)
    assert not any(any(s.clicks[1:]) for s in dbn0)
    assert simulate("sdbn", rk, attr, attr, 10, 5)[0].query in rk


def test_simulator_errors() -> None:
    rk = _rankings(1, 3)
    attr = _random_params(rk, 0, 0, 1)
    with pytest.raises(ClickModelError, match="examination covers 2"):
        simulate_pbm(rk, attr, [1.0, 0.5], 10, 0)
    with pytest.raises(ClickModelError, match="no attractiveness"):
        simulate_pbm(rk, {}, [1.0, 0.5, 0.3], 10, 0)
    with pytest.raises(ClickModelError, match="examination"):
        simulate_pbm(rk, attr, [1.0, 0.5, 1.3], 10, 0)
    with pytest.raises(ClickModelError, match="gamma"):
        simulate_dbn(rk, attr, attr, float("nan"), 10, 0)
    with pytest.raises(UnknownNameError, match="cascade, dbn, pbm, sdbn"):
        simulate("ubm", rk, attr, 10, 0)
