"""How often the drift report is wrong, on seeded simulated traffic (monitoring.simulate).

The full curves (alarm rate vs shift size, 1,000-request windows) are measured by
scripts/calibrate_drift.py and recorded in docs/monitoring.md; these tests hold the
default settings to them on smaller windows (300 requests = 3,000 served rows), real
Evidently stat tests, the JSON-only path the scheduled report uses with html = false.
"""

from __future__ import annotations

from typing import Any

import pytest

from monitoring.config import MonitoringConfig
from monitoring.report import DriftSummary
from monitoring.simulate import SHIFT_KINDS, Shift, World
from scripts.calibrate_drift import alarm_rate, make_world, report

REQUESTS = 300  # per window
REFERENCE = 500  # requests in the served-like reference sample
FALSE_ALARM_BOUND = 0.05  # docs/monitoring.md: <= 5% of stable windows
# the documented detection sizes at 300-request windows (docs/monitoring.md), the decision
# and the first words of the suggested action each shift must produce
DOCUMENTED: dict[str, tuple[float, str, str]] = {
    "query_mix": (0.2, "covariate_drift", "retrain"),
    "retriever": (0.2, "covariate_drift", "check the index"),
    "catalog": (0.2, "covariate_drift", "check the index"),
    "clicks": (0.6, "concept_drift", "retrain"),
    # a share of the requests that found something now finding nothing (base rate 5%)
    "zero_results": (0.15, "covariate_drift", "check the index and the catalog"),
}
BELOW = 0.05  # far below every documented size: a number in the report, no alarm
CFG = MonitoringConfig()


@pytest.fixture(scope="module")
def world() -> tuple[World, Any]:
    return make_world(reference_requests=REFERENCE)


def test_documented_sizes_cover_every_shift_kind() -> None:
    assert set(DOCUMENTED) == set(SHIFT_KINDS)


def test_stable_windows_rarely_alarm(world: tuple[World, Any]) -> None:
    """A quick check in the fast tier: 5 stable windows, none alarms."""
    rate, counts = alarm_rate(*world, REQUESTS, Shift(), 5, CFG, first_seed=500)
    assert rate == 0.0, counts


@pytest.mark.slow  # 50 windows: ~1 s each on 2 shared cores (several under load)
def test_stable_windows_alarm_rate_within_bound(world: tuple[World, Any]) -> None:
    """Same query mix and users, 50 seeds: false alarms within the documented 5%."""
    rate, counts = alarm_rate(*world, REQUESTS, Shift(), 50, CFG, first_seed=1000)
    assert rate <= FALSE_ALARM_BOUND, counts


@pytest.mark.parametrize("kind", SHIFT_KINDS)
def test_each_shift_is_caught_at_its_documented_size(world: tuple[World, Any], kind: str) -> None:
    size, decision, action = DOCUMENTED[kind]
    for seed in (7, 8):
        s: DriftSummary = report(*world, REQUESTS, seed, Shift(kind, size), CFG)
        assert s.decision == decision, s.line()
        assert s.action().startswith(action), s.action()
        line = s.line()
        assert f"decision={decision}" in line and f'action="{s.action()}"' in line
        if decision == "covariate_drift":  # names the top features with group and effect
            top = s.to_dict()["top_drifted"]
            assert top and all(t["effect"] >= CFG.min_effect for t in top)
            assert f"top={top[0]['name']}({top[0]['group']}," in line


def _number(s: DriftSummary, kind: str) -> float:
    """The number in summary.json that shows each shift kind most directly."""
    d = s.to_dict()
    if kind == "query_mix":  # requests for queries the previous window did not have
        return float(d["signals"]["segments"]["new_query_share"])
    if kind == "retriever":  # requests whose page comes from one retriever
        return float(d["signals"]["single_retriever"]["current_share"])
    if kind == "zero_results":  # first pages with no hit
        return float(d["signals"]["zero_results"]["current_rate"])
    rating = next(f for f in d["feature_drift"]["features"] if f["name"] == "rating")
    return float(rating["current_nan_share"])  # catalog: new documents have no rating


@pytest.mark.parametrize("kind", ["query_mix", "retriever", "catalog"])
def test_a_shift_below_its_size_is_a_number_not_an_alarm(
    world: tuple[World, Any], kind: str
) -> None:
    stable = report(*world, REQUESTS, 3, Shift(), CFG)
    small = report(*world, REQUESTS, 3, Shift(kind, BELOW), CFG)
    assert small.decision == "no_drift", small.line()
    # the same window with 5% of it shifted: the move is in the summary's numbers...
    assert 0.01 < _number(small, kind) - _number(stable, kind) < 0.1
    # ...every feature's effect is reported, and none reaches what the settings act on
    effects = [f["effect"] for f in small.to_dict()["feature_drift"]["features"] if f["tested"]]
    assert effects and all(e is not None and 0 <= e < CFG.alarm_effect for e in effects)


def test_fewer_results_below_size_are_a_number_not_an_alarm(world: tuple[World, Any]) -> None:
    """2% of the requests losing their results (the documented size is 15% at 300
    requests): the rate in summary.json rises by about that, without an alarm."""
    stable = report(*world, REQUESTS, 3, Shift(), CFG)
    small = report(*world, REQUESTS, 3, Shift("zero_results", 0.02), CFG)
    assert small.decision == "no_drift", small.line()
    assert 0.005 < _number(small, "zero_results") - _number(stable, "zero_results") < 0.05


def test_the_simulated_log_has_empty_pages_at_its_base_rate(world: tuple[World, Any]) -> None:
    """Empty pages are counted, never rows; a zero_results shift removes the rows of the
    requests that lost their results and counts them as empty."""
    w, _ = world
    rates = []
    for seed in range(40):
        frame, (pages, empty) = w.window_pages(REQUESTS, seed)
        assert frame["request_id"].nunique() == REQUESTS == pages - empty
        rates.append(empty / pages)
    assert 0.04 < sum(rates) / len(rates) < 0.06  # ZERO_RATE = 0.05
    frame, (pages, empty) = w.window_pages(REQUESTS, 0, Shift("zero_results", 0.3))
    _, (same_pages, base_empty) = w.window_pages(REQUESTS, 0)
    assert pages == same_pages and empty - base_empty == REQUESTS - frame["request_id"].nunique()
    assert 0.2 < (empty - base_empty) / REQUESTS < 0.4


def test_clicks_below_size_are_a_number_not_an_alarm(world: tuple[World, Any]) -> None:
    stable = report(*world, REQUESTS, 4, Shift(), CFG)
    small = report(*world, REQUESTS, 4, Shift("clicks", BELOW), CFG)
    assert small.decision == "no_drift", small.line()
    assert small.concept is not None and stable.concept is not None
    # the same window but 5% of users clicking the worst results: quality a little lower
    assert small.concept.current_value < stable.concept.current_value
    drop = small.to_dict()["concept_drift"]["relative_drop"]
    assert drop == pytest.approx(small.concept.relative_drop) and drop < CFG.quality_drop
