"""`ltrsearch-rollout estimate` on a real SQLite impression log and a real model registry.

The log is simulated with known users (position-based clicks on a latent attractiveness
that the feature ``f_good`` reveals); production served a noisy order. Two real XGBoost
models are saved: v0001 (promoted) learned the INVERTED preference, v0002 the right one
and is boosted from the logged RRF like the served models. The estimate must rank them
accordingly, reproduce the served ranking's observed clicks, and leave the log untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ltr.dataset import RankingData
from ltr.registry import ModelRegistry
from ltr.train import Trainer, with_overrides
from scripts.rollout import main
from search.events import Event, Impression, SqliteEventStore
from tests.test_train import FAST

NAMES = ("f_good", "f_noise", "rrf")
FID = "fs-rollout-test"
PAGES, M, K = 400, 8, 5
THETA = 1.0 / np.arange(1, M + 1) ** 0.8
T0 = 1_800_000_000.0


def _page(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    good = rng.normal(size=M)
    X = np.c_[good, rng.normal(size=M), 1.0 / (60 + rng.permutation(M) + 1)]
    return X, 1 / (1 + np.exp(-(2.0 * good - 1.0)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("rollout")
    rng = np.random.default_rng(0)
    store = SqliteEventStore(root / "events.db")
    imps, events, top_clicks = [], [], []
    for p in range(PAGES):
        X, attract = _page(rng)
        served = np.argsort(-(0.4 * X[:, 0] + X[:, 1]))  # production: mostly noise
        X, attract = X[served], attract[served]
        docs = tuple(f"p{p}d{i}" for i in range(M))
        imps.append(
            Impression(
                f"r{p}",
                T0 + p,
                f"q{p % 50}",
                None,
                "v0001",
                FID,
                NAMES,
                0,
                docs,
                tuple(range(1, M + 1)),
                np.arange(M, 0, -1.0),
                X.astype(np.float32),
            )
        )
        clicked = rng.random(M) < THETA * attract
        top_clicks.append(clicked[:K].sum())
        events += [Event("click", f"r{p}", docs[i], T0 + p + 1) for i in np.flatnonzero(clicked)]
    # a second result page: never part of the estimate (its position 9 is not a top)
    X, _ = _page(rng)
    imps.append(
        Impression(
            "r-page2",
            T0,
            "q0",
            None,
            "v0001",
            FID,
            NAMES,
            M,
            tuple(f"x{i}" for i in range(M)),
            tuple(range(M + 1, 2 * M + 1)),
            np.zeros(M),
            X.astype(np.float32),
        )
    )
    store.add_impressions(imps)
    store.add_events(events)
    store.close()

    groups_good, groups_bad = [], []
    for q in range(80):
        X, attract = _page(rng)
        grade = np.round(attract * 3)
        groups_good.append((f"t{q}", X, grade, None, X[:, 2] * 20))
        groups_bad.append((f"t{q}", X, 3 - grade, None, None))
    reg = ModelRegistry(root / "models")
    bad = Trainer(with_overrides(FAST, use_base_margin=False)).fit(
        RankingData.from_groups(groups_bad, NAMES)
    )
    good = Trainer(FAST).fit(RankingData.from_groups(groups_good, NAMES))
    v1 = reg.save(bad, featureset_id=FID)
    v2 = reg.save(good, featureset_id=FID, base_margin={"name": "rrf", "params": {"scale": 20}})
    # the same booster claiming a fusion the log does not keep: must be refused, not guessed
    v3 = reg.save(good, featureset_id=FID, base_margin={"name": "linear", "params": {"w": 0.5}})
    reg.promote(v1)
    return {"root": root, "v1": v1, "v2": v2, "v3": v3, "observed": float(np.mean(top_clicks))}


def _run(setup: dict, *extra: str) -> list[str]:
    root = setup["root"]
    return [
        "estimate",
        "--events",
        str(root / "events.db"),
        "--model-dir",
        str(root / "models"),
        "--k",
        str(K),
        *extra,
    ]


def test_estimate_ranks_the_candidate_over_production(
    setup: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = setup["root"] / "events.db"
    before = db.read_bytes()
    out_json = tmp_path / "report.json"
    assert main(_run(setup, "--candidate", setup["v2"], "--json", str(out_json))) == 0
    printed = capsys.readouterr().out
    assert f"candidate {setup['v2']}" in printed and f"production {setup['v1']}" in printed
    report = json.loads(out_json.read_text())
    assert report["pages"] == PAGES and report["rows"] == PAGES * M
    theta = report["examination"]["theta"]
    assert report["examination"]["method"] == "regression-em"
    assert theta[0] == 1.0 and theta[-1] < theta[1] < 1.0
    est = {
        (label, e["metric"], e["estimator"]): e
        for label, r in report["rankers"].items()
        for e in r["estimates"]
    }
    # the served order through the estimator is exactly what users clicked
    assert est["logged", "clicks@k", "ips"]["value"] == pytest.approx(setup["observed"])
    for metric in ("clicks@k", "rr"):
        for estimator in ("ips", "snips"):
            cand = est["candidate", metric, estimator]
            prod = est["production", metric, estimator]
            logged = est["logged", metric, estimator]
            assert cand["low"] > logged["high"] and logged["low"] > prod["high"], metric
    assert db.read_bytes() == before  # read-only


def test_bad_input_is_one_line_and_exit_2(
    setup: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = [
        (["--candidate", "v0099"], "v0099"),
        (["--candidate", setup["v2"], "--k", "0"], "--k"),
        (["--candidate", setup["v2"], "--since", str(T0 + 10 * PAGES)], "no impressions"),
        (["--candidate", setup["v3"]], "does not hold"),
    ]
    for extra, needle in cases:
        assert main(_run(setup, *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and "\n" not in err
    missing = [
        "estimate",
        "--events",
        str(tmp_path / "none.db"),
        "--model-dir",
        str(setup["root"] / "models"),
        "--candidate",
        setup["v2"],
    ]
    assert main(missing) == 2
    assert "no such file" in capsys.readouterr().err
