"""Model registry and the served RankModel: files, promotion, featureset guard, explanations."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from ltr.dataset import RankingData, split_by_query
from ltr.errors import FeaturesetMismatchError, ModelNotFoundError
from ltr.model import Manifest, RankModel
from ltr.registry import ModelRegistry
from ltr.train import TrainedModel, Trainer, with_overrides
from tests.test_train import FAST, synthetic

RRF = {"name": "rrf", "params": {"k": 60}}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts() -> tuple[RankingData, RankingData, RankingData]:
    tr, va, te = split_by_query(synthetic(n_queries=60, seed=1), (0.6, 0.2, 0.2), seed=0)
    return tr, va, te


@pytest.fixture(scope="module")
def trained(parts: tuple[RankingData, RankingData, RankingData]) -> TrainedModel:
    tr, va, _ = parts
    return Trainer(FAST).fit(tr, va)


def _save(reg: ModelRegistry, trained: TrainedModel, fid: str = "fs-A", **kw: object) -> str:
    return reg.save(trained, featureset_id=fid, base_margin=RRF, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["ubj", "json"])
def test_save_load_roundtrip_gives_identical_predictions(
    tmp_path: Path,
    trained: TrainedModel,
    parts: tuple[RankingData, RankingData, RankingData],
    fmt: str,
) -> None:
    tr, _, te = parts
    reg = ModelRegistry(tmp_path / "models", model_format=fmt)  # type: ignore[arg-type]
    v = _save(reg, trained, metrics={"valid_ndcg@10": trained.best_score}, reference_rows=tr)
    assert v == "v0001" and reg.list_versions() == ["v0001"]
    model = reg.load(v)
    assert np.array_equal(model.predict(te.X, te.base_margin), trained.predict_data(te))
    m = model.manifest
    assert m.version == v and m.feature_names == trained.feature_names
    assert m.featureset_id == "fs-A" and dict(m.base_margin or {}) == RRF
    assert m.xgboost_version == xgb.__version__ and m.model_file == f"model.{fmt}"
    assert m.metrics["valid_ndcg@10"] == pytest.approx(trained.best_score)
    assert m.data_sizes["train"]["queries"] == tr.n_queries
    assert m.best_iteration == trained.best_iteration
    assert m.params["objective"] == "rank:ndcg"
    assert (tmp_path / "models" / v / f"model.{fmt}").is_file()
    # the manifest is plain JSON a human (or another language) can read
    raw = json.loads((tmp_path / "models" / v / "manifest.json").read_text())
    assert raw["feature_names"] == list(trained.feature_names)
    assert Manifest.from_json(raw) == m


def test_no_pickles_anywhere_in_the_registry(tmp_path: Path, trained: TrainedModel) -> None:
    reg = ModelRegistry(tmp_path)
    reg.promote(_save(reg, trained, reference_rows=np.zeros((3, 4), dtype=np.float32)))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".ubj", ".json", ".parquet", "", ".lock"}
    for p in files:
        head = p.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in bytes(range(2, 6))), p  # pickle protocol


def test_reference_sample_is_served_like(
    tmp_path: Path, trained: TrainedModel, parts: tuple[RankingData, RankingData, RankingData]
) -> None:
    """With reference_top_k the registry keeps each query's top-k rows by the model's own
    score (what the API would serve and log), and reference.json says so."""
    tr, _, _ = parts
    reg = ModelRegistry(tmp_path)
    v = _save(reg, trained, reference_rows=tr, reference_top_k=3)
    ref = reg.reference_sample(v)
    top = tr.top_k_rows(trained.predict_data(tr), 3)
    assert len(ref) == len(top) == 3 * len(np.unique(tr.qids))
    assert np.array_equal(
        np.nan_to_num(ref.to_numpy(np.float32), nan=-1), np.nan_to_num(top.X, nan=-1)
    )
    info = reg.reference_info(v)
    assert info == {"kind": "served_top_k", "top_k": 3, "rows": len(top),
                    "queries": len(np.unique(tr.qids)), "click_history": False}  # fmt: skip
    # rows given as they are (served rows from the log): kind "rows"
    v2 = _save(reg, trained, reference_rows=tr)
    assert reg.reference_info(v2)["kind"] == "rows" and len(reg.reference_sample(v2)) == len(tr)


def test_reference_sample_for_monitoring(
    tmp_path: Path, trained: TrainedModel, parts: tuple[RankingData, RankingData, RankingData]
) -> None:
    tr, _, _ = parts
    reg = ModelRegistry(tmp_path)
    v = _save(reg, trained, reference_rows=tr, reference_max_rows=100)
    reg.promote(v)
    ref = reg.reference_sample()
    assert isinstance(ref, pd.DataFrame)
    assert list(ref.columns) == list(trained.feature_names) and len(ref) == 100
    assert ref["all_nan"].isna().all()  # missing stays NaN through Parquet
    rows = {r.tobytes() for r in np.nan_to_num(tr.X, nan=-9e9)}
    assert all(r.tobytes() in rows for r in np.nan_to_num(ref.to_numpy(np.float32), nan=-9e9))
    # a DataFrame with extra columns is reduced to the model's features, in order
    frame = tr.to_frame()
    v2 = _save(reg, trained, reference_rows=frame)
    assert list(reg.reference_sample(v2).columns) == list(trained.feature_names)
    v3 = _save(reg, trained, metrics={"test_ndcg@10": float("nan")})
    with pytest.raises(ModelNotFoundError, match="no reference sample"):
        reg.reference_sample(v3)
    # strict JSON on disk (null), NaN again in Python
    text = (tmp_path / v3 / "manifest.json").read_text()
    assert "NaN" not in text and '"test_ndcg@10": null' in text
    assert math.isnan(reg.manifest(v3).metrics["test_ndcg@10"])


def test_promote_and_rollback(tmp_path: Path, trained: TrainedModel) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no promoted model"):
        reg.load()
    v1, v2, v3 = (_save(reg, trained) for _ in range(3))
    assert reg.list_versions() == [v1, v2, v3] and reg.promoted() is None
    reg.promote(v1)
    reg.promote(v2)
    assert reg.load().version == v2 and reg.promoted() == v2
    reg.promote(v3)
    assert reg.rollback() == v2 and reg.load().version == v2
    assert reg.rollback() == v1 and reg.load().version == v1
    with pytest.raises(ModelNotFoundError, match="nothing to roll back"):
        reg.rollback()
    assert reg.promoted() == v1
    with pytest.raises(ModelNotFoundError, match=r"v0009.*versions: v0001, v0002, v0003"):
        reg.promote("v0009")
    with pytest.raises(ModelNotFoundError):
        reg.load("../../etc")
    # the pointer is one small text file that is replaced, never edited in place
    assert (tmp_path / "PROMOTED").read_text().strip() == v1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_featureset_mismatch_is_refused_naming_both_ids(
    tmp_path: Path, trained: TrainedModel, parts: tuple[RankingData, RankingData, RankingData]
) -> None:
    reg = ModelRegistry(tmp_path)
    reg.promote(_save(reg, trained, fid="aaa111"))
    assert reg.load(expected_featureset_id="aaa111").featureset_id == "aaa111"
    with pytest.raises(FeaturesetMismatchError, match=r"aaa111.*bbb222"):
        reg.load(expected_featureset_id="bbb222")
    model = reg.load()
    with pytest.raises(FeaturesetMismatchError, match=r"aaa111.*ccc333"):
        model.check_featureset("ccc333")
    _, _, te = parts
    with pytest.raises(FeaturesetMismatchError, match=r"expects \[n, 4\]"):
        model.predict(te.X[:, :3], te.base_margin)


def test_retention_keeps_the_promoted_and_rollback_versions(
    tmp_path: Path, trained: TrainedModel
) -> None:
    reg = ModelRegistry(tmp_path, keep_versions=2)
    v1 = _save(reg, trained)
    reg.promote(v1)
    for _ in range(3):
        _save(reg, trained)
    assert reg.list_versions() == ["v0001", "v0004"]  # v1 promoted, v4 newest
    reg.promote("v0004")
    v5 = _save(reg, trained)
    # v1 is the rollback target now, v4 promoted, v5 new: one over the limit is tolerated
    assert reg.list_versions() == ["v0001", "v0004", v5]
    assert reg.rollback() == "v0001"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_base_margin_spec_must_match_the_training(
    tmp_path: Path, trained: TrainedModel, parts: tuple[RankingData, RankingData, RankingData]
) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(ValueError, match="base margin"):
        reg.save(trained, featureset_id="x", base_margin=None)
    tr, va, te = parts
    plain = Trainer(with_overrides(FAST, use_base_margin=False)).fit(tr, va)
    with pytest.raises(ValueError, match="without a base margin"):
        reg.save(plain, featureset_id="x", base_margin=RRF)
    model = reg.load(reg.save(plain, featureset_id="x"))
    assert not model.needs_base_margin
    with pytest.raises(ValueError, match="without a base margin"):
        model.predict(te.X, te.base_margin)
    assert model.predict(te.X).shape == (len(te),)
    served = reg.load(_save(reg, trained))
    with pytest.raises(ValueError, match="'rrf' fusion score; pass base_margin"):
        served.predict(te.X)


def test_contributions_sum_to_the_margin_prediction(
    tmp_path: Path, trained: TrainedModel, parts: tuple[RankingData, RankingData, RankingData]
) -> None:
    _, _, te = parts
    reg = ModelRegistry(tmp_path)
    model = reg.load(_save(reg, trained))
    pred = model.predict(te.X, te.base_margin)
    contrib = model.contributions(te.X, te.base_margin)
    assert contrib.shape == (len(te), 5)
    np.testing.assert_allclose(contrib.sum(axis=1), pred, rtol=0, atol=1e-4)
    approx = model.contributions(te.X, te.base_margin, approximate=True)
    np.testing.assert_allclose(approx.sum(axis=1), pred, rtol=0, atol=1e-4)
    assert not np.allclose(approx[:, :-1], contrib[:, :-1])  # a different attribution
    # the fusion margin lives in the bias column; features carry the corrections
    assert te.base_margin is not None
    assert np.corrcoef(contrib[:, -1], te.base_margin)[0, 1] > 0.999
    assert np.all(contrib[:, 3] == 0)  # the all-NaN feature never contributes
    expl = model.explain(te.X[:2], te.base_margin[:2], top=2)
    assert len(expl) == 2 and len(expl[0]["contributions"]) == 2
    first = expl[0]["contributions"]
    assert abs(first[0]["contribution"]) >= abs(first[1]["contribution"])
    assert expl[0]["bias"] == pytest.approx(float(contrib[0, -1]))
    json.dumps(expl)  # JSON-ready for the API
    assert model.contributions(te.X[:0], te.base_margin[:0]).shape == (0, 5)


def test_predict_is_thread_safe(
    tmp_path: Path, trained: TrainedModel, parts: tuple[RankingData, RankingData, RankingData]
) -> None:
    _, _, te = parts
    reg = ModelRegistry(tmp_path)
    model = reg.load(_save(reg, trained))
    assert te.base_margin is not None
    expected = model.predict(te.X, te.base_margin)
    rng = np.random.default_rng(0)
    slices = [np.sort(rng.choice(len(te), 200, replace=True)) for _ in range(16)]
    results: list[bool] = []

    def work(idx: np.ndarray) -> None:
        for _ in range(20):
            got = model.predict(te.X[idx], te.base_margin[idx])  # type: ignore[index]
            results.append(bool(np.array_equal(got, expected[idx])))

    threads = [threading.Thread(target=work, args=(s,)) for s in slices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16 * 20 and all(results)


def test_a_killed_save_leaves_no_visible_version(tmp_path: Path, trained: TrainedModel) -> None:
    """SIGKILL the saving process after the booster and reference are written but before
    the rename: the registry must look exactly as before and stay usable."""
    root = tmp_path / "models"
    reg = ModelRegistry(root)
    v1 = _save(reg, trained)
    reg.promote(v1)
    trained.booster.save_model(str(tmp_path / "booster.ubj"))
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np, pandas as pd, xgboost as xgb
        sys.path.insert(0, {str(REPO)!r})
        from ltr.registry import ModelRegistry
        from ltr.train import TrainedModel

        real = pd.DataFrame.to_parquet
        def crash_after_write(self, *a, **k):  # fault injection in pandas, not our code
            real(self, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        pd.DataFrame.to_parquet = crash_after_write

        b = xgb.Booster(); b.load_model({str(tmp_path / "booster.ubj")!r})
        names = {list(trained.feature_names)!r}
        t = TrainedModel(booster=b, feature_names=tuple(names), params={{}}, best_iteration=0,
                         best_score=float("nan"), num_rounds_run=1, uses_base_margin=True)
        ModelRegistry({str(root)!r}).save(
            t, featureset_id="fs-A", base_margin={{"name": "rrf"}},
            reference_rows=np.zeros((10, len(names)), dtype=np.float32))
        print("NOT KILLED")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the half-written version exists only as a hidden temp directory
    tmps = [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert len(tmps) == 1 and (tmps[0] / "model.ubj").is_file()
    assert (tmps[0] / "reference.parquet").is_file() and not (tmps[0] / "manifest.json").exists()
    assert reg.list_versions() == [v1] and reg.promoted() == v1
    assert reg.load().version == v1
    # the registry keeps working; the next version number is not taken by the wreck
    assert _save(reg, trained) == "v0002"
    # stale temp dirs (older than an hour) are swept by a later save
    old = 1_000_000_000
    os.utime(tmps[0], (old, old))
    _save(reg, trained)
    assert not tmps[0].exists()


def test_missing_model_files_give_model_not_found(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "nowhere")
    assert reg.list_versions() == []
    with pytest.raises(ModelNotFoundError, match=r"versions: \(none\)"):
        reg.load("v0001")
    with pytest.raises(ModelNotFoundError, match="no model"):
        RankModel.load(tmp_path)


def test_concurrent_saves_get_distinct_complete_versions(
    tmp_path: Path, trained: TrainedModel
) -> None:
    reg = ModelRegistry(tmp_path, keep_versions=20)
    got: list[str] = []

    def work() -> None:
        for _ in range(3):
            got.append(_save(ModelRegistry(tmp_path, keep_versions=20), trained))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"v{i:04d}" for i in range(1, 13)]
    assert reg.list_versions() == sorted(got)
    assert all(reg.load(v).version == v for v in got)
