"""The demo's sizing (scripts/demo_size.py): given measured rates, the sizes it picks stay
within the floor and the default, grow with the rates, and fit the budget whenever the
floor does. Pure arithmetic on given rates; the calibration itself runs in the slow demo
test and in `make demo`."""

from __future__ import annotations

import itertools
from dataclasses import astuple

import pytest

from scripts.demo_size import (
    COSTS,
    DEFAULT,
    FLOOR,
    PLAN_FRACTION,
    RATE_SCALE_ENV,
    PhaseClock,
    Rates,
    Sizes,
    choose_sizes,
    predict,
    rate_scale,
)

# from an AVX2-only CPU's 17 products/s to a fast one's 400; 1 ms to 400 ms per query
DOCS_PER_S = (2.0, 5.0, 10.0, 17.0, 40.0, 100.0, 225.0, 400.0)
QUERY_S = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4)


def rates(docs_per_s: float, query_s: float) -> Rates:
    return Rates("test CPU", docs_per_s, query_s)


def total(s: Sizes, r: Rates, spent: float = 0.0) -> float:
    return spent + sum(predict(s, r).values())


def within(s: Sizes) -> bool:
    return all(
        lo <= v <= hi
        for lo, v, hi in zip(astuple(FLOOR), astuple(s), astuple(DEFAULT), strict=True)
    )


def non_decreasing(seq: list[Sizes]) -> bool:
    """Every size of each element <= the next element's."""
    return all(
        all(a <= b for a, b in zip(astuple(x), astuple(y), strict=True))
        for x, y in itertools.pairwise(seq)
    )


@pytest.mark.parametrize("budget", [60.0, 300.0, 900.0])
def test_sizes_stay_between_floor_and_default_and_fit_the_budget(budget: float) -> None:
    for d, q in itertools.product(DOCS_PER_S, QUERY_S):
        r = rates(d, q)
        sizes, predicted = choose_sizes(r, budget, spent_s=5.0)
        assert within(sizes), (d, q, sizes)
        assert predicted == pytest.approx(total(sizes, r, 5.0))
        if total(FLOOR, r, 5.0) <= PLAN_FRACTION * budget:
            assert predicted <= PLAN_FRACTION * budget + 1e-6, (d, q, sizes, predicted)
        else:
            assert sizes == FLOOR  # nothing fits: the smallest demo that still tells the story
        if sizes not in (FLOOR, DEFAULT):  # in between: the budget is what stopped it
            bigger = Sizes(sizes.products + 50, sizes.queries + 10, sizes.sessions + 40)
            assert total(bigger, r, 5.0) > PLAN_FRACTION * budget - 1.0


def test_sizes_grow_with_the_rates_and_the_budget() -> None:
    for q in QUERY_S:
        got = [choose_sizes(rates(d, q), 300.0)[0] for d in DOCS_PER_S]
        assert non_decreasing(got), got
    for d in DOCS_PER_S:
        got = [choose_sizes(rates(d, q), 300.0)[0] for q in reversed(QUERY_S)]
        assert non_decreasing(got), got
    r = rates(17.0, 0.01)
    got = [choose_sizes(r, b)[0] for b in (30.0, 200.0, 250.0, 300.0, 600.0, 3600.0)]
    assert non_decreasing(got), got
    assert got[0] == FLOOR and got[-1] == DEFAULT
    assert len(set(got)) >= 4  # the budget moved the sizes, not only the two ends


def test_the_embedding_rate_alone_shrinks_the_catalog_on_a_slow_int8_cpu() -> None:
    """Same per-query speed, 13x slower embedding (AVX2-only vs VNNI in docs/benchmarks.md):
    a smaller demo within the budget, and only the reindex step's prediction moved."""
    fast, slow = rates(225.0, 0.01), rates(17.0, 0.01)
    big, _ = choose_sizes(fast, 300.0)
    small, predicted = choose_sizes(slow, 300.0)
    assert small.products < big.products
    assert predicted <= PLAN_FRACTION * 300.0
    a, b = predict(big, fast), predict(big, slow)
    assert b["reindex"] - a["reindex"] == pytest.approx(big.products / 17.0 - big.products / 225.0)
    assert {k: v for k, v in a.items() if k != "reindex"} == {
        k: v for k, v in b.items() if k != "reindex"
    }


def test_each_extra_product_costs_its_embedding_and_its_indexing() -> None:
    r = rates(10.0, 0.05)
    a, b = Sizes(1000, 200, 800), Sizes(2000, 200, 800)
    extra = total(b, r) - total(a, r)
    per_product_units = sum(c[1] for c in COSTS.values())
    assert extra == pytest.approx(1000 / 10.0 + 1000 * per_product_units * 0.05, rel=1e-9)


def test_rate_scale_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RATE_SCALE_ENV, raising=False)
    assert rate_scale() == 1.0
    monkeypatch.setenv(RATE_SCALE_ENV, "0.1")
    assert rate_scale() == 0.1
    for bad in ("0", "-1", "fast", "inf", "nan"):
        monkeypatch.setenv(RATE_SCALE_ENV, bad)
        with pytest.raises(ValueError, match=RATE_SCALE_ENV):
            rate_scale()


def test_phase_clock_table_lists_predicted_and_actual() -> None:
    clock = PhaseClock()
    with clock.phase("catalog"):
        pass
    with pytest.raises(RuntimeError), clock.phase("reindex"):
        raise RuntimeError("a failing phase is still timed")
    table = clock.table({"catalog": 1.5, "reindex": 20.0, "drift": 3.0})
    lines = table.splitlines()
    assert lines[0].split() == ["phase", "predicted", "s", "actual", "s", "CPU", "s"]
    assert lines[1].split()[:2] == ["catalog", "1.5"]
    assert lines[2].split()[:2] == ["reindex", "20.0"]
    assert lines[3].split() == ["drift", "3.0", "-", "-"]
    assert lines[4].split()[:2] == ["total", "24.5"]
    assert set(clock.seconds) == {"catalog", "reindex"}


@pytest.mark.parametrize(
    "argv", [["--budget", "0"], ["--budget", "nan"], ["--products", "0"], ["--sessions", "-5"]]
)
def test_demo_refuses_bad_sizes_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts.demo import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ltrsearch-demo: error: ")
