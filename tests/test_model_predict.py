"""RankModel.predict (direct XGBoosterPredictFromDense call) == Booster.inplace_predict
margins, bit for bit: with and without a base margin, NaN features, odd layouts, threads,
and with the fallback to inplace_predict."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import xgboost as xgb

from ltr import model as M
from ltr.model import Manifest, RankModel

F = 12


def _manifest(base_margin: bool) -> Manifest:
    return Manifest(
        version="t",
        feature_names=tuple(f"f{j}" for j in range(F)),
        featureset_id="0" * 64,
        base_margin={"name": "rrf", "params": {}} if base_margin else None,
        params={},
        metrics={},
        data_sizes={},
        created_at="2026-01-01T00:00:00Z",
        xgboost_version=xgb.__version__,
    )


def _data(rng: np.random.Generator, n: int) -> np.ndarray:
    X = rng.standard_normal((n, F)).astype(np.float32)
    X[rng.random(X.shape) < 0.25] = np.nan
    return X


def _booster(base_margin: bool, depth: int = 4, seed: int = 0) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    X = _data(rng, 600)
    y = rng.integers(0, 4, 600).astype(np.float32)
    d = xgb.DMatrix(X, label=y, missing=np.nan)
    d.set_group([20] * 30)
    if base_margin:
        d.set_base_margin(rng.standard_normal(600).astype(np.float32))
    params = {"objective": "rank:ndcg", "max_depth": depth, "eta": 0.1, "nthread": 1}
    return xgb.train(params, d, num_boost_round=60)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("base_margin", [False, True])
@pytest.mark.parametrize("depth", [1, 3, 6])
def test_predict_equals_inplace_predict(base_margin: bool, depth: int) -> None:
    booster = _booster(base_margin, depth)
    model = RankModel(booster, _manifest(base_margin))
    assert model._fast is not None
    rng = np.random.default_rng(1)
    for n in (1, 2, 63, 64, 65, 165, 400):
        X = _data(rng, n)
        bm = rng.standard_normal(n).astype(np.float32) if base_margin else None
        want = booster.inplace_predict(X, predict_type="margin", missing=np.nan, base_margin=bm)
        assert _same(model.predict(X, bm), np.asarray(want, dtype=np.float32)), n
        # other layouts and dtypes of the same values
        Xf = np.asfortranarray(X)
        bm64 = None if bm is None else bm.astype(np.float64)
        assert _same(model.predict(Xf, bm64), np.asarray(want, dtype=np.float32))
        assert _same(model.predict(X.astype(np.float64), bm), np.asarray(want, np.float32))
    assert model.predict(
        np.zeros((0, F), np.float32), np.zeros(0) if base_margin else None
    ).shape == (0,)


def test_predictions_are_copies() -> None:
    """The booster reuses its output buffer per thread: results must not alias it."""
    model = RankModel(_booster(False), _manifest(False))
    rng = np.random.default_rng(2)
    a_in, b_in = _data(rng, 50), _data(rng, 50)
    a = model.predict(a_in)
    a_copy = a.copy()
    model.predict(b_in)
    assert _same(a, a_copy)


def test_threads_get_their_own_results() -> None:
    booster = _booster(True)
    model = RankModel(booster, _manifest(True), nthread=1)
    rng = np.random.default_rng(3)
    inputs = [
        (_data(rng, int(n)), rng.standard_normal(int(n)).astype(np.float32))
        for n in rng.integers(1, 200, 64)
    ]
    want = [
        np.asarray(
            booster.inplace_predict(X, predict_type="margin", missing=np.nan, base_margin=bm),
            dtype=np.float32,
        ).copy()
        for X, bm in inputs
    ]
    with ThreadPoolExecutor(4) as ex:
        for _ in range(3):
            got = list(ex.map(lambda xb: model.predict(*xb), inputs))
            assert all(_same(g, w) for g, w in zip(got, want, strict=True))


def test_fallback_to_inplace_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the direct call is unavailable or differs, predict uses inplace_predict."""
    booster = _booster(True)

    class Broken:
        def __init__(self, booster: xgb.Booster) -> None:
            raise AttributeError("no such symbol")

    class Wrong(M._DensePredictor):
        def __call__(self, X: np.ndarray, base_margin: np.ndarray | None) -> np.ndarray:
            return super().__call__(X, base_margin) + np.float32(1.0)

    rng = np.random.default_rng(4)
    X, bm = _data(rng, 30), rng.standard_normal(30).astype(np.float32)
    want = np.asarray(
        booster.inplace_predict(X, predict_type="margin", missing=np.nan, base_margin=bm),
        dtype=np.float32,
    ).copy()
    for cls in (Broken, Wrong):
        monkeypatch.setattr(M, "_DensePredictor", cls)
        model = RankModel(booster, _manifest(True))
        assert model._fast is None
        assert _same(model.predict(X, bm), want)


def test_wrong_inputs_still_refused() -> None:
    model = RankModel(_booster(True), _manifest(True))
    with pytest.raises(ValueError, match="base_margin"):
        model.predict(np.zeros((3, F), np.float32))
    with pytest.raises(ValueError, match="finite"):
        model.predict(np.zeros((2, F), np.float32), np.array([0.0, np.nan]))


# --- served == offline with the linear-fusion base margin (issue 13) ----------------------


def _random_sets(n_queries: int, seed: int) -> list:  # type: ignore[type-arg]
    """Candidate sets of two retrievers with a latent relevance both see through noise."""
    from ltr.types import BM25, DENSE, CandidateSet

    rng = np.random.default_rng(seed)
    out = []
    for q in range(n_queries):
        n = 30
        latent = rng.normal(size=n)
        bm25 = 8 + 3 * latent + rng.normal(scale=2, size=n)
        bm25[rng.random(n) < 0.3] = np.nan  # not in BM25's list
        cos = 0.5 + 0.1 * latent + rng.normal(scale=0.1, size=n)
        ranks = {}
        for r, s in ((BM25, bm25), (DENSE, cos)):
            order = np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")
            rk = np.empty(n)
            rk[order] = np.arange(1, n + 1)
            ranks[r] = np.where(np.isfinite(s), rk, np.nan)
        cs = CandidateSet(
            query_text=f"q{q}",
            query_terms=("a",),
            ids=tuple(f"q{q}d{i}" for i in range(n)),
            scores={BM25: bm25, DENSE: cos},
            ranks=ranks,
            field_bm25={},
            dense_cosine=cos,
            doc_terms={},
            idf={},
            static={},
        )
        grades = np.clip(np.round(latent + 0.5), 0, 3)
        out.append((f"q{q}", cs, {cs.ids[i]: float(g) for i, g in enumerate(grades)}))
    return out


def test_served_score_equals_offline_score_with_the_linear_margin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A training run fits the linear weights on its training split and saves them with the
    scale in the manifest; the served model (RankModel.margin, what search.pipeline calls)
    rebuilds the same margin from a candidate set, bit for bit, and ltr.evaluation's margin
    (fusion_score with the fold's fitted params) is that same number too."""
    from ltr.config import TrainConfig
    from ltr.dataset import RankingData
    from ltr.evaluation import EvalConfig, _margin
    from ltr.features import compute, featureset_id
    from ltr.fusion import fusion_score, linear_normed, minmax, retriever_scores
    from ltr.registry import ModelRegistry
    from ltr.training_run import TrainingSet, run_training
    from ltr.types import RETRIEVERS

    names = ("bm25_minmax", "dense_minmax", "bm25_z", "dense_z", "bm25_rank")
    sets = _random_sets(40, 3)
    groups = []
    for qid, cs, qrels in sets:
        y = np.array([qrels[d] for d in cs.ids])
        groups.append((qid, compute(cs, names), y, cs.ids, None))
    inputs = {
        r: np.concatenate([minmax(retriever_scores(cs, r)) for _, cs, _ in sets])
        for r in RETRIEVERS
    }
    data = RankingData.from_groups(groups, names)
    ts = TrainingSet(
        data=data,
        qrels={qid: q for qid, _, q in sets},
        baseline=np.concatenate([fusion_score(cs, "rrf") for _, cs, _ in sets]),
        label_source="qrels",
        featureset_id=featureset_id(names),
        source="synthetic",
        margin_inputs=inputs,
    )
    cfg = TrainConfig(num_boost_round=30, smooth_rounds=5)
    result = run_training(ts, cfg, tmp_path / "models", promote=True, verbose=False)
    model = ModelRegistry(tmp_path / "models").load(result.version)
    spec = dict(model.manifest.base_margin or {})
    assert spec["name"] == "linear" and spec["params"]["scale"] == cfg.base_margin_scale
    w = spec["params"]["weights"]
    assert set(w) == set(RETRIEVERS) and sum(w.values()) == pytest.approx(1.0)
    trained_margin = linear_normed(inputs, w, spec["params"]["scale"])  # what the run used
    ev_cfg = EvalConfig()
    start = 0
    for _, cs, _ in sets:
        n = len(cs.ids)
        served_margin = model.margin(cs)
        assert served_margin is not None
        assert served_margin.tobytes() == trained_margin[start : start + n].tobytes()
        offline = _margin(ev_cfg, cs, {"weights": w})
        assert offline is not None and offline.tobytes() == served_margin.tobytes()
        X = compute(cs, names)
        served = model.predict(X, served_margin)
        assert _same(
            served, model.predict(data.X[start : start + n], trained_margin[start : start + n])
        )
        start += n


def test_counterfactual_rebuilds_the_linear_margin_from_the_log() -> None:
    """A linear-margin model is estimated on logged pages from the logged min-max inputs."""
    import pandas as pd

    from ltr.counterfactual import model_margin
    from ltr.errors import RolloutError
    from ltr.fusion import linear_normed

    names = ("bm25_minmax", "dense_minmax")
    spec = {"name": "linear", "params": {"weights": {"bm25": 0.3, "dense": 0.7}, "scale": 2.0}}
    manifest = dataclasses.replace(_manifest(False), feature_names=names, base_margin=spec)
    model = RankModel(_booster_on(names), manifest)
    frame = pd.DataFrame({"bm25_minmax": [1.0, 0.5, 0.0], "dense_minmax": [0.2, 1.0, 0.0]})
    want = linear_normed(
        {"bm25": frame["bm25_minmax"].to_numpy(), "dense": frame["dense_minmax"].to_numpy()},
        spec["params"]["weights"],
        2.0,
    )
    got = model_margin(model, frame)
    assert got is not None and got.tobytes() == want.tobytes()
    with pytest.raises(RolloutError, match="linear"):
        model_margin(model, frame.drop(columns=["dense_minmax"]))


def _booster_on(names: tuple[str, ...]) -> xgb.Booster:
    rng = np.random.default_rng(0)
    d = xgb.DMatrix(rng.random((40, len(names))), label=rng.integers(0, 2, 40))
    d.set_group([10] * 4)
    return xgb.train({"objective": "rank:ndcg", "nthread": 1}, d, num_boost_round=2)
