"""LambdaMART training: data handling, splits, early stopping, determinism, served-log join.

Synthetic ranking tasks have a known signal, so "the model learned" is checkable; NDCG is
measured with ir-measures (an outside library), not with our own metric code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
import pandas as pd
import pytest

from ltr.config import RegistryConfig, TrainConfig
from ltr.dataset import RankingData, concat, from_served_log, kfold_by_query, split_by_query
from ltr.errors import TrainingDataError
from ltr.train import Trainer, with_overrides

FEATURES = ("signal", "noise", "sparse_signal", "all_nan")


def synthetic(n_queries: int = 120, n_docs: int = 25, seed: int = 0) -> RankingData:
    """Graded labels from a latent relevance; the base margin is a noisy view of it (like a
    fusion score) and the features carry more of the signal, so boosting from the margin
    has something to learn. ``sparse_signal`` is NaN for 30 % of rows, ``all_nan`` always."""
    rng = np.random.default_rng(seed)
    groups = []
    for q in range(n_queries):
        latent = rng.normal(size=n_docs)
        y = np.clip(np.round(latent + 1.0), 0, 3)
        X = np.c_[
            latent + rng.normal(scale=0.6, size=n_docs),
            rng.normal(size=n_docs),
            np.where(rng.random(n_docs) < 0.3, np.nan, latent + rng.normal(scale=0.6, size=n_docs)),
            np.full(n_docs, np.nan),
        ]
        margin = latent + rng.normal(scale=1.5, size=n_docs)
        groups.append((f"q{q}", X, y, [f"q{q}d{i}" for i in range(n_docs)], margin))
    return RankingData.from_groups(groups, FEATURES)


def ndcg10(data: RankingData, scores: np.ndarray) -> float:
    """Mean NDCG@10 (trec_eval linear gain) over queries with a relevant document, computed
    by ir-measures; the gain form is irrelevant here: the same for every ranker compared."""
    assert data.doc_ids is not None
    qrels, run = [], []
    judged = {str(q) for q, y in zip(data.qids, data.y, strict=True) if y > 0}
    for q, d, y, s in zip(data.qids, data.doc_ids, data.y, scores, strict=True):
        if str(q) in judged:
            qrels.append(ir_measures.Qrel(str(q), str(d), int(y)))
            run.append(ir_measures.ScoredDoc(str(q), str(d), float(s)))
    measure = ir_measures.nDCG @ 10
    return float(ir_measures.calc_aggregate([measure], qrels, run)[measure])


FAST = TrainConfig(num_boost_round=80, early_stopping_rounds=15, eta=0.1, nthread=1)


@pytest.fixture(scope="module")
def data() -> RankingData:
    return synthetic()


@pytest.fixture(scope="module")
def splits(data: RankingData) -> tuple[RankingData, RankingData, RankingData]:
    tr, va, te = split_by_query(data, (0.6, 0.2, 0.2), seed=3)
    return tr, va, te


# --- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("eta", 0.0, "eta"),
        ("eta", 1.5, "eta"),
        ("max_depth", 0, "max_depth"),
        ("subsample", 0.0, "subsample"),
        ("colsample_bytree", 1.2, "colsample_bytree"),
        ("num_boost_round", -1, "num_boost_round"),
        ("early_stopping_rounds", -1, "early_stopping_rounds"),
        ("lambdarank_pair_method", "all", "lambdarank_pair_method"),
        ("valid_fraction", 1.0, "valid_fraction"),
        ("reg_lambda", float("nan"), "reg_lambda"),
        ("objective", "reg:squarederror", "objective"),
        ("click_model", "ubm", "click_model"),
        ("eta_grid", (0.1, 0.03), "eta_grid"),
        ("eta_grid", (0.03, 0.03), "eta_grid"),
        ("eta_grid", (0.0, 0.1), "eta_grid"),
        ("eta_grid", (0.1, 1.5), "eta_grid"),
        ("eta_grid", [0.03, 0.1], "eta_grid"),
    ],
)
def test_train_config_rejects_bad_values(field: str, value: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        with_overrides(TrainConfig(), **{field: value})


def test_defaults_validate_and_map_to_xgboost_params() -> None:
    cfg = TrainConfig()
    cfg.validate()
    RegistryConfig().validate()
    p = cfg.xgb_params()
    assert p["objective"] == "rank:ndcg" and p["eval_metric"] == "ndcg@10"
    assert p["seed"] == cfg.seed and p["lambda"] == cfg.reg_lambda
    with pytest.raises(ValueError, match="keep_versions"):
        RegistryConfig(keep_versions=0).validate()


def test_settings_compose_ltr_and_registry_sections() -> None:
    from scripts.settings import SettingsError, load_settings

    s = load_settings(env={"LTRSEARCH_LTR__ETA": "0.2", "LTRSEARCH_REGISTRY__KEEP_VERSIONS": "2"})
    assert s.ltr.eta == 0.2 and s.registry.keep_versions == 2
    with pytest.raises(SettingsError, match=r"ltr: subsample"):
        load_settings(env={"LTRSEARCH_LTR__SUBSAMPLE": "2"})


def test_defaults_are_the_evaluated_recipe() -> None:
    """One definition: the CLI's TrainConfig defaults are what ltr.evaluation measured."""
    from ltr import evaluation as ev

    cfg = TrainConfig()
    assert cfg == ev.DEFAULT_TRAIN and ev.EvalConfig().train == cfg
    assert (cfg.max_depth, cfg.eta, cfg.min_child_weight, cfg.reg_lambda, cfg.subsample) == (
        3,
        0.03,
        5.0,
        5.0,
        0.7,
    )
    assert (cfg.inner_folds, cfg.smooth_rounds, cfg.nthread) == (3, 25, 1)
    assert cfg.eta_grid == (0.03, 0.1)  # the recipe chooses the rate on the inner folds
    assert ev.EvalConfig().margin_scale == cfg.base_margin_scale == 2.0
    assert ev.EvalConfig().margin == cfg.base_margin == "linear" and cfg.monotone
    assert cfg.base_margin_spec() == {"name": "linear", "params": {"scale": 2.0}}
    fitted = {"weights": {"bm25": 0.4, "dense": 0.6}}
    assert cfg.base_margin_spec(fitted) == {"name": "linear", "params": {**fitted, "scale": 2.0}}
    assert with_overrides(cfg, use_base_margin=False).base_margin_spec() is None
    for field, value in (
        ("inner_folds", 0),
        ("smooth_rounds", 0),
        ("cold_share", 1.5),
        ("base_margin_scale", 0.0),
    ):
        with pytest.raises(ValueError, match=field):
            with_overrides(cfg, **{field: value})


# --- dataset --------------------------------------------------------------------------


def test_ranking_data_keeps_nan_and_groups(data: RankingData) -> None:
    assert data.X.dtype == np.float32 and data.n_features == 4
    assert np.isnan(data.X[:, 3]).all()  # missing stays NaN, never 0
    assert 0.2 < np.isnan(data.X[:, 2]).mean() < 0.4
    assert data.n_queries == 120 and data.group_sizes().tolist() == [25] * 120
    codes = data.qid_codes()
    assert np.all(np.diff(codes) >= 0) and codes[-1] == 119


def test_ranking_data_rejects_inconsistent_input() -> None:
    X = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(TrainingDataError, match="contiguous"):
        RankingData(np.array(["a", "b", "a", "b"]), X, np.zeros(4), ("f1", "f2"))
    with pytest.raises(TrainingDataError, match="columns"):
        RankingData(np.array(["a"] * 4), X, np.zeros(4), ("f1",))
    with pytest.raises(TrainingDataError, match="finite"):
        RankingData(np.array(["a"] * 4), X, np.array([0, 1, np.nan, 0]), ("f1", "f2"))
    with pytest.raises(TrainingDataError, match="base_margin"):
        RankingData(np.array(["a"] * 4), X, np.zeros(4), ("f1", "f2"), base_margin=np.zeros(3))


def test_split_by_query_has_no_overlap_and_covers_everything(data: RankingData) -> None:
    parts = split_by_query(data, (0.6, 0.2, 0.2), seed=7)
    sets = [set(p.query_ids) for p in parts]
    assert [len(s) for s in sets] == [72, 24, 24]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not sets[i] & sets[j]
    assert set().union(*sets) == set(data.query_ids)
    assert sum(len(p) for p in parts) == len(data)
    # rows travel with their query: labels and margins unchanged
    back = concat(parts)
    order = {q: i for i, q in enumerate(data.query_ids)}
    key = np.array([order[q] for q in back.qids]) * 1000 + np.tile(np.arange(25), 120)
    idx = np.argsort(key, kind="stable")
    assert np.array_equal(back.y[idx], data.y)
    assert np.array_equal(back.X[idx], data.X, equal_nan=True)
    # same seed -> same split; another seed -> another split
    again = split_by_query(data, (0.6, 0.2, 0.2), seed=7)
    assert [p.query_ids for p in again] == [p.query_ids for p in parts]
    other = split_by_query(data, (0.6, 0.2, 0.2), seed=8)
    assert set(other[1].query_ids) != sets[1]


def test_split_units_keep_every_request_of_a_query_together(data: RankingData) -> None:
    # 120 groups = requests of 20 query texts (6 each): a query never straddles parts
    units = {g: f"text{int(g[1:]) % 20}" for g in data.query_ids}
    parts = split_by_query(data, (0.6, 0.2, 0.2), seed=2, units=units)
    texts = [{units[g] for g in p.query_ids} for p in parts]
    assert [len(t) for t in texts] == [12, 4, 4]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert sum(p.n_queries for p in parts) == 120
    held = [units[g] for _, h in kfold_by_query(data, 4, seed=0, units=units) for g in h.query_ids]
    assert sorted(set(held)) == sorted(set(units.values())) and len(held) == 120
    with pytest.raises(TrainingDataError, match="no split unit"):
        split_by_query(data, (0.5, 0.5), units={})


def test_split_refuses_bad_fractions_and_tiny_data(data: RankingData) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_query(data, (0.5, 0.2))
    with pytest.raises(TrainingDataError, match="cannot split"):
        split_by_query(data.take_queries(["q1"]), (0.5, 0.5))


def test_kfold_holds_each_query_out_once(data: RankingData) -> None:
    folds = kfold_by_query(data, k=5, seed=1)
    held = [q for _, h in folds for q in h.query_ids]
    assert sorted(held) == sorted(data.query_ids)
    for tr, h in folds:
        assert not set(tr.query_ids) & set(h.query_ids)
        assert tr.n_queries + h.n_queries == data.n_queries


# --- training -------------------------------------------------------------------------


def test_training_beats_the_base_margin_alone(
    splits: tuple[RankingData, RankingData, RankingData],
) -> None:
    tr, va, te = splits
    model = Trainer(FAST).fit(tr, va)
    assert model.uses_base_margin
    assert te.base_margin is not None
    base = ndcg10(te, te.base_margin)
    learned = ndcg10(te, model.predict_data(te))
    assert learned > base + 0.05, (base, learned)
    # and the reported validation score is XGBoost's NDCG@10 at the kept iteration
    assert model.best_score == pytest.approx(
        model.history["valid"]["ndcg@10"][model.best_iteration]
    )
    assert model.booster.num_boosted_rounds() == model.best_iteration + 1


def test_early_stopping_stops_when_validation_stops_improving(
    splits: tuple[RankingData, RankingData, RankingData],
) -> None:
    tr, va, _ = splits
    # labels unrelated to the features: validation NDCG cannot keep improving
    rng = np.random.default_rng(0)
    noise_tr = RankingData(tr.qids, tr.X, rng.integers(0, 3, len(tr)), tr.feature_names)
    noise_va = RankingData(va.qids, va.X, rng.integers(0, 3, len(va)), va.feature_names)
    cfg = with_overrides(FAST, num_boost_round=400, early_stopping_rounds=10)
    model = Trainer(cfg).fit(noise_tr, noise_va)
    assert model.num_rounds_run < 400
    assert model.num_rounds_run == model.best_iteration + 1 + 10
    scores = model.history["valid"]["ndcg@10"]
    assert scores[model.best_iteration] == max(scores)


def test_without_validation_a_query_level_split_is_made(data: RankingData) -> None:
    cfg = with_overrides(FAST, valid_fraction=0.25)
    model = Trainer(cfg).fit(data)
    assert model.data_sizes["valid"]["queries"] == 30
    assert model.data_sizes["train"]["queries"] == 90


def test_training_is_deterministic_for_a_seed(
    splits: tuple[RankingData, RankingData, RankingData],
) -> None:
    tr, va, te = splits
    a = Trainer(FAST).fit(tr, va)
    b = Trainer(FAST).fit(tr, va)
    assert a.model_bytes() == b.model_bytes()
    assert np.array_equal(a.predict_data(te), b.predict_data(te))
    c = Trainer(with_overrides(FAST, seed=FAST.seed + 1)).fit(tr, va)  # subsample differs
    assert c.model_bytes() != a.model_bytes()


def test_base_margin_is_used_and_can_be_switched_off(
    splits: tuple[RankingData, RankingData, RankingData],
) -> None:
    tr, va, te = splits
    off = Trainer(with_overrides(FAST, use_base_margin=False)).fit(tr, va)
    assert not off.uses_base_margin
    with pytest.raises(ValueError, match="base_margin"):
        Trainer(FAST).fit(tr, va).predict(te.X)  # a margin model without its margin
    # a model boosted from the margin scores differently from one that was not
    on = Trainer(FAST).fit(tr, va)
    assert not np.allclose(on.predict_data(te), off.predict_data(te))


def test_missing_values_stay_missing(data: RankingData) -> None:
    """NaN means 'missing' to the booster: it learns a direction for it, unlike 0."""
    rng = np.random.default_rng(5)
    n_q, n_d = 60, 20
    qids = np.repeat([f"q{i}" for i in range(n_q)], n_d)
    y = (rng.random(n_q * n_d) < 0.3).astype(float)
    # relevant docs have the feature missing; the others a value around 0
    x = np.where(y > 0, np.nan, rng.normal(scale=0.01, size=n_q * n_d)).astype(np.float32)
    d = RankingData(qids, x[:, None], y, ("maybe_missing",))
    model = Trainer(with_overrides(FAST, subsample=1.0, colsample_bytree=1.0)).fit(d)
    s = model.predict(np.array([[np.nan], [0.0]], dtype=np.float32))
    assert s[0] > s[1]


def test_degenerate_data_is_refused(data: RankingData) -> None:
    trainer = Trainer(FAST)
    with pytest.raises(TrainingDataError, match="no rows"):
        trainer.fit(RankingData.empty(FEATURES))
    zeros = RankingData(data.qids, data.X, np.zeros(len(data)), data.feature_names)
    with pytest.raises(TrainingDataError, match="no positive label"):
        trainer.fit(zeros)
    tr, va = split_by_query(data, (0.5, 0.5), seed=0)
    with pytest.raises(TrainingDataError, match="both training and validation"):
        trainer.fit(tr, concat([va, tr.take_queries(list(tr.query_ids[:1]))]))
    fractional = RankingData(data.qids, data.X, data.y / 3.0, data.feature_names)
    with pytest.raises(TrainingDataError, match="ndcg_exp_gain"):
        trainer.fit(fractional)
    # fractional click-model relevances train with linear gain
    m = Trainer(with_overrides(FAST, ndcg_exp_gain=False)).fit(fractional)
    assert m.params["ndcg_exp_gain"] is False
    assert 0 <= m.best_iteration < m.num_rounds_run <= FAST.num_boost_round
    assert m.booster.num_boosted_rounds() == m.best_iteration + 1


def test_verbose_training_prints_progress(
    splits: tuple[RankingData, RankingData, RankingData], capsys: pytest.CaptureFixture[str]
) -> None:
    tr, va, _ = splits
    Trainer(with_overrides(FAST, num_boost_round=12)).fit(tr, va, verbose=5)
    err = capsys.readouterr().err
    assert "[round 0]" in err and "[round 10]" in err and "valid-ndcg@10=" in err
    Trainer(with_overrides(FAST, num_boost_round=12)).fit(tr, va)
    assert capsys.readouterr().err == ""  # quiet by default in library code


# --- served log join -------------------------------------------------------------------


def _served_log(tmp_path, n_requests: int = 6, names=("f_a", "f_b", "rrf")):  # type: ignore[no-untyped-def]
    """A real SQLite event store with impressions whose vectors include NaN and float32
    values that do not round-trip through float64 text (so only an exact join passes)."""
    from search.events import Impression, SqliteEventStore

    rng = np.random.default_rng(11)
    store = SqliteEventStore(tmp_path / "events.db")
    fid = "fs-test"
    logged = {}
    imps = []
    for r in range(n_requests):
        k = 5
        feats = rng.normal(size=(k, len(names))).astype(np.float32) / np.float32(3.0)
        feats[rng.random((k, len(names))) < 0.2] = np.nan
        docs = tuple(f"d{(r * 3 + i) % 11}" for i in range(k))
        # store positions out of order to check the join restores served order
        imps.append(
            Impression(
                request_id=f"req{r}",
                ts=1000.0 + r,
                query=f"query {r % 3}",
                query_id=None,
                model_version="v0001",
                featureset_id=fid,
                feature_names=tuple(names),
                offset=0,
                doc_ids=docs,
                positions=tuple(range(1, k + 1)),
                scores=np.arange(k, 0, -1, dtype=np.float64),
                features=feats,
            )
        )
        for i, d in enumerate(docs):
            logged[(f"req{r}", d)] = feats[i]
    store.add_impressions(imps)
    frame = store.served_features()
    store.close()
    return frame, logged, fid


def test_from_served_log_keeps_the_exact_served_vectors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    frame, logged, fid = _served_log(tmp_path)
    # click-model labels are per (query, doc)
    pairs = zip(frame["query"], frame["doc_id"], strict=True)
    labels = {(q, d): float(i % 3) for i, (q, d) in enumerate(pairs)}
    data = from_served_log(frame, labels, featureset_id=fid)
    assert data.feature_names == ("f_a", "f_b", "rrf")
    assert data.X.dtype == np.float32 and len(data) == len(frame)
    for i, (req, doc) in enumerate(zip(data.qids, data.doc_ids, strict=True)):  # type: ignore[arg-type]
        assert np.array_equal(data.X[i], logged[(req, doc)], equal_nan=True)
        assert data.X[i].tobytes() == logged[(req, doc)].tobytes()  # bit for bit
    assert data.n_queries == 6 and set(data.query_ids) == {f"req{r}" for r in range(6)}
    query_of = dict(zip(frame["request_id"], frame["query"], strict=False))
    for req, doc, y in zip(data.qids, data.doc_ids, data.y, strict=True):  # type: ignore[arg-type]
        assert y == labels[(query_of[req], doc)]
    assert data.base_margin is None  # the log has no base_margin column
    with_margin = from_served_log(frame, labels, margin_column="rrf", missing_label="zero")
    assert with_margin.base_margin is None  # rrf has NaN rows: not usable as a margin


def test_from_served_log_request_keys_missing_labels_and_refusals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    frame, logged, _ = _served_log(tmp_path)
    labels = {k: 1.0 for k in list(logged)[:7]}  # (request_id, doc) keys, most rows unlabeled
    dropped = from_served_log(frame, labels)
    assert len(dropped) == 7 and np.all(dropped.y == 1.0)
    zero = from_served_log(frame, labels, missing_label="zero")
    assert len(zero) == len(frame) and zero.y.sum() == 7.0
    with pytest.raises(TrainingDataError, match="no label"):
        from_served_log(frame, labels, missing_label="error")
    with pytest.raises(TrainingDataError, match="empty"):
        from_served_log(frame.iloc[:0], labels)
    mixed = pd.concat([frame, frame.assign(featureset_id="other", request_id="x")])
    with pytest.raises(TrainingDataError, match="mixes featuresets"):
        from_served_log(mixed, labels)
    with pytest.raises(TrainingDataError, match="lacks feature"):
        from_served_log(frame, labels, feature_names=["nope"])


def test_served_log_trains(tmp_path) -> None:  # type: ignore[no-untyped-def]
    frame, _, fid = _served_log(tmp_path, n_requests=30)
    labels = {
        (r, d): float(v > 0)
        for r, d, v in zip(
            frame["request_id"], frame["doc_id"], frame["f_a"].fillna(-1), strict=True
        )
    }
    data = from_served_log(frame, labels, featureset_id=fid)
    m = Trainer(with_overrides(FAST, ndcg_exp_gain=True)).fit(data)
    assert m.feature_names == data.feature_names and not math.isnan(m.best_score)


# --- the train command ------------------------------------------------------------------

CLI_FEATURES = ("rrf", "dense_cosine", "bm25")


def _click_log(
    db: Path,
    n_queries: int = 12,
    n_docs: int = 8,
    sessions: int = 600,
    names: tuple[str, ...] = CLI_FEATURES,
    texts: list[str] | None = None,
) -> dict:  # type: ignore[type-arg]
    """A real event store filled like the API would: each simulated PBM session is one
    served page (exact float32 feature rows) plus its click events. ``names``: the logged
    features (three columns: a retriever-like score, a relevance-like one, a sparse one);
    ``texts``: the query texts (default "query 0", "query 1", ...)."""
    from ltr.click_models_sim import simulate_pbm
    from ltr.features import featureset_id
    from search.events import Event, Impression, SqliteEventStore

    rng = np.random.default_rng(3)
    rankings, attract, feats = {}, {}, {}
    texts = texts or [f"query {q}" for q in range(n_queries)]
    for q, text in enumerate(texts):
        docs = [f"q{q}-d{i}" for i in range(n_docs)]
        rankings[text] = docs
        rel = rng.random(n_docs)
        for i, d in enumerate(docs):
            attract[(text, d)] = float(0.05 + 0.9 * rel[i] ** 2)
            feats[d] = np.array(
                [1 / (60 + i + 1) + 1 / (60 + n_docs - i), rel[i] + rng.normal(scale=0.1), np.nan],
                dtype=np.float32,
            )
            if rng.random() < 0.5:
                feats[d][2] = np.float32(rng.random())
    exam = 1.0 / np.arange(1, n_docs + 1)
    sess = simulate_pbm(rankings, attract, exam, sessions, rng=5, shuffle=0.5)
    fid = featureset_id(list(names))
    store = SqliteEventStore(db)
    imps, events = [], []
    for i, s in enumerate(sess):
        rid = f"r{i}"
        imps.append(
            Impression(
                request_id=rid,
                ts=1000.0 + i,
                query=s.query,
                query_id=None,
                model_version=None,
                featureset_id=fid,
                feature_names=names,
                offset=0,
                doc_ids=s.docs,
                positions=tuple(range(1, len(s.docs) + 1)),
                scores=np.zeros(len(s.docs)),
                features=np.stack([feats[d] for d in s.docs]),
            )
        )
        events += [
            Event("click", rid, d, 1000.5 + i) for d, c in zip(s.docs, s.clicks, strict=True) if c
        ]
    store.add_impressions(imps)
    store.add_events(events)
    store.close()
    return {"fid": fid, "feats": feats}


def test_train_command_from_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ltr.registry import ModelRegistry
    from scripts.train import main

    log = _click_log(tmp_path / "events.db")
    out = tmp_path / "result.json"
    rc = main(
        [
            "--events",
            str(tmp_path / "events.db"),
            "--model-dir",
            str(tmp_path / "models"),
            "--promote",
            "--json",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "held-out perplexity" in captured.err  # auto chose by perplexity
    assert "inner-CV NDCG@10" in captured.out and "promoted" in captured.out
    result = json.loads(out.read_text())
    reg = ModelRegistry(tmp_path / "models")
    model = reg.load(expected_featureset_id=log["fid"])  # the promoted one, same featureset
    assert model.version == result["version"] and model.feature_names == CLI_FEATURES
    assert model.manifest.label_source.startswith("clicks:")
    # the margin trained from: this log lacks the linear fusion's inputs (bm25_minmax,
    # dense_minmax), so the logged raw RRF x 20, which serving recomputes from the spec
    assert dict(model.manifest.base_margin or {}) == {"name": "rrf", "params": {"scale": 20.0}}
    # the rate the inner folds chose from the default grid, recorded in params and extra
    eta = model.manifest.params["eta"]
    assert model.manifest.params["max_depth"] == 3 and eta in TrainConfig().eta_grid
    assert model.manifest.extra["eta"] == eta and "rounds" in model.manifest.extra
    m = result["metrics"]
    assert math.isfinite(m["cv_xgb_ndcg@10"]) and not any(k.startswith("valid_") for k in m)
    assert all(math.isfinite(m[k]) for k in ("test_ndcg@10", "test_rrf_ndcg@10"))
    # the clicks carry the relevance that dense_cosine encodes: the model must beat RRF
    # (here a position prior that knows nothing about relevance)
    assert m["test_ndcg@10"] > m["test_rrf_ndcg@10"]
    ref = reg.reference_sample()
    assert list(ref.columns) == list(CLI_FEATURES)
    served = {v.tobytes() for v in log["feats"].values()}
    assert all(r.astype(np.float32).tobytes() in served for r in ref.to_numpy(np.float32))


@pytest.mark.slow  # loads MiniLM and replays 300 logged requests (13 s on the shared Xeon)
def test_train_command_from_events_replays_the_log_on_the_index_dir(
    beir_small: Path, small_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--index-dir``: the new model's drift reference is the logged requests replayed on the
    serving index with it (its own top 10, as the API will serve them once promoted), not the
    logged rows (the previous model's pages, here synthetic vectors the index never makes)."""
    from ltr.registry import ModelRegistry
    from scripts.train import main

    texts = [json.loads(x)["text"] for x in (beir_small / "queries.jsonl").open()][:8]
    log = _click_log(tmp_path / "events.db", sessions=300, texts=texts)
    argv = ["--events", str(tmp_path / "events.db"), "--model-dir", str(tmp_path / "models")]
    out = tmp_path / "r.json"
    rc = main([*argv, "--index-dir", str(small_index), "--quiet", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    # each request's 8 logged rows plus 20 candidates the log never showed (log_unshown;
    # none of the index's documents was logged here), graded 0
    sizes = json.loads(out.read_text())["data_sizes"]
    assert sizes["train"]["rows"] + sizes["test"]["rows"] == 300 * (8 + 20)
    reg = ModelRegistry(tmp_path / "models")
    version = reg.list_versions()[-1]
    info = reg.reference_info(version)
    assert (info["kind"], info["top_k"], info["queries"]) == ("served_top_k", 10, 300)
    ref = reg.reference_sample(version).to_numpy(np.float64)
    assert len(ref) == info["rows"] == 10 * 300  # every index query has >= 10 candidates
    served = {v.tobytes() for v in log["feats"].values()}
    assert not any(r.astype(np.float32).tobytes() in served for r in ref)
    # what serving computes on the index: RRF of two lists (<= 2/61), cosine in [-1, 1]
    rrf, cos = ref[:, 0], ref[:, 1]
    assert np.all((rrf > 0) & (rrf <= 2 / 61 + 1e-9)) and np.all(np.abs(cos) <= 1 + 1e-6)
    # without it: the logged rows
    rc = main([*argv, "--quiet", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    sizes = json.loads(out.read_text())["data_sizes"]
    assert sizes["train"]["rows"] + sizes["test"]["rows"] == 300 * 8
    kept = reg.reference_sample(reg.list_versions()[-1]).to_numpy(np.float32)
    assert reg.reference_info(reg.list_versions()[-1])["kind"] == "rows"
    assert all(r.tobytes() in served for r in kept)
    # a directory that is not there: one line, exit 2
    rc = main([*argv, "--index-dir", str(tmp_path / "nope"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--index-dir" in err


def test_second_events_training_continues_from_the_promoted_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logged clicks cover only shown pages: a retrain adds correction trees to the promoted
    model (its trees kept as they are) instead of starting over."""
    import xgboost as xgb

    from ltr.registry import ModelRegistry
    from scripts.train import main

    log = _click_log(tmp_path / "events.db")
    argv = ["--events", str(tmp_path / "events.db"), "--model-dir", str(tmp_path / "models")]
    assert main([*argv, "--promote", "--quiet"]) == 0
    reg = ModelRegistry(tmp_path / "models")
    parent = reg.load(expected_featureset_id=log["fid"])
    assert main([*argv, "--promote", "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr()
    assert "previous model on the same test rows" in out.out
    child = reg.load(expected_featureset_id=log["fid"])
    assert child.version != parent.version
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert 0.0 <= metrics["test_parent_ndcg@10"] <= 1.0  # an NDCG, not NaN
    p, c = xgb.Booster(), xgb.Booster()
    p.load_model(bytearray(parent.booster_bytes()))
    c.load_model(bytearray(child.booster_bytes()))
    n = p.num_boosted_rounds()
    # the correction rounds are chosen on inner folds like any others, zero included (the
    # parent alone); the parent's trees are kept either way
    assert c.num_boosted_rounds() >= n > 0
    X = np.stack(list(log["feats"].values()))[:50]
    # the child's first n trees ARE the parent: same margins on any rows
    assert np.array_equal(
        c[:n].inplace_predict(X, predict_type="margin", missing=np.nan),
        p.inplace_predict(X, predict_type="margin", missing=np.nan),
    )


LINEAR_INPUTS = ("bm25_minmax", "dense_minmax", "rrf")  # the linear fusion's logged inputs


def test_events_training_continues_from_a_linear_margin_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model boosted from the fitted linear fusion (the default recipe) promoted, then a
    retrain from the log: the child continues from it with the parent's own margin (its
    saved weights over the logged bm25_minmax / dense_minmax), not an error and not the
    logged RRF."""
    import xgboost as xgb

    from ltr.fusion import linear_normed
    from ltr.registry import ModelRegistry
    from scripts.train import main

    log = _click_log(tmp_path / "events.db", names=LINEAR_INPUTS)
    argv = ["--events", str(tmp_path / "events.db"), "--model-dir", str(tmp_path / "models")]
    assert main([*argv, "--promote", "--quiet"]) == 0, capsys.readouterr().err
    reg = ModelRegistry(tmp_path / "models")
    parent = reg.load(expected_featureset_id=log["fid"])
    spec = dict(parent.manifest.base_margin or {})
    assert spec["name"] == "linear"
    rc = main([*argv, "--promote", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    child = reg.load(expected_featureset_id=log["fid"])
    assert child.version != parent.version
    assert dict(child.manifest.base_margin or {}) == spec  # the child keeps the parent's
    p, c = xgb.Booster(), xgb.Booster()
    p.load_model(bytearray(parent.booster_bytes()))
    c.load_model(bytearray(child.booster_bytes()))
    n = p.num_boosted_rounds()
    assert c.num_boosted_rounds() >= n
    X = np.stack(list(log["feats"].values()))[:50]
    params = spec["params"]
    bm = linear_normed(
        {"bm25": X[:, 0].astype(np.float64), "dense": X[:, 1].astype(np.float64)},
        params["weights"],
        params["scale"],
    )
    parent_scores = p.inplace_predict(X, predict_type="margin", missing=np.nan, base_margin=bm)
    if n == 0:  # the recipe kept no trees: the parent IS its linear fusion
        assert np.allclose(parent_scores, bm, atol=1e-6)
    else:  # the child's first n trees on the parent's margin ARE the parent
        assert np.array_equal(
            c[:n].inplace_predict(X, predict_type="margin", missing=np.nan, base_margin=bm),
            parent_scores,
        )


def test_trainer_init_model_keeps_the_parent_trees() -> None:
    data = synthetic(n_queries=40)
    parent = Trainer(dataclasses.replace(FAST, early_stopping_rounds=0, num_boost_round=10)).fit(
        data
    )
    child = Trainer(dataclasses.replace(FAST, early_stopping_rounds=0, num_boost_round=5)).fit(
        data, init_model=parent.booster
    )
    assert child.booster.num_boosted_rounds() == 15
    bm = data.base_margin
    assert np.array_equal(
        child.booster[:10].inplace_predict(data.X, predict_type="margin", base_margin=bm),
        parent.booster.inplace_predict(data.X, predict_type="margin", base_margin=bm),
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--dataset", "/nonexistent", "--index-dir", "x", "--model-dir", "m"], "not a BEIR"),
        (["--dataset", "/nonexistent", "--model-dir", "m"], "--index-dir is required"),
        (["--events", "/nonexistent.db", "--model-dir", "m"], "no such event store"),
        (["--events", "/nonexistent.db", "--settings", "/nope.toml"], "settings file not found"),
    ],
)
def test_train_command_bad_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts.train import main

    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err


def test_train_opens_the_event_store_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts.train import main

    empty = tmp_path / "events.db"
    empty.touch()
    assert main(["--events", str(empty), "--model-dir", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an event store" in err and "\n" not in err
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["events.db"]


def test_feature_spec_resolution() -> None:
    from ltr import features as F
    from ltr.errors import TrainingDataError, UnknownNameError
    from ltr.training_run import resolve_features

    assert resolve_features("text") == F.TEXT_FEATURES
    assert resolve_features("text,static") == F.TEXT_FEATURES + F.STATIC_FEATURES
    everything = resolve_features("all")
    assert set(everything) == set(F.FEATURES) and len(everything) == len(F.FEATURES)
    assert resolve_features("rrf,bm25,rrf") == ("rrf", "bm25")
    with pytest.raises(UnknownNameError, match="valid:"):
        resolve_features("text,nope")
    with pytest.raises(TrainingDataError):
        resolve_features(" , ")


@pytest.mark.slow
def test_train_command_on_a_cranfield_subset(
    cranfield_dir: Path, embedding_cache: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real replay through the serving code (index build, bm25s, MiniLM) on 30 queries."""
    from ltr.features import featureset_id
    from ltr.registry import ModelRegistry
    from scripts.train import main

    sub = tmp_path / "cran"
    (sub / "qrels").mkdir(parents=True)
    qrels = (cranfield_dir / "qrels" / "test.tsv").read_text().splitlines()
    header, rows = qrels[0], [r.split("\t") for r in qrels[1:]]
    keep_q = {str(i) for i in range(1, 31)}
    kept = [r for r in rows if r[0] in keep_q]
    (sub / "qrels" / "test.tsv").write_text("\n".join([header, *("\t".join(r) for r in kept)]))
    judged = {r[1] for r in kept}
    corpus = [json.loads(x) for x in (cranfield_dir / "corpus.jsonl").read_text().splitlines()]
    docs = [d for i, d in enumerate(corpus) if d["_id"] in judged or i % 10 == 0]
    (sub / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    queries = (cranfield_dir / "queries.jsonl").read_text().splitlines()
    (sub / "queries.jsonl").write_text("\n".join(queries[:30]))

    # the command builds its index with the embedding cache beside it: the session's, so
    # texts another test already embedded (the whole Cranfield index) are not embedded again
    (tmp_path / "index.embeddings.sqlite").symlink_to(embedding_cache.path)
    out = tmp_path / "r.json"
    argv = [
        "--dataset",
        str(sub),
        "--index-dir",
        str(tmp_path / "index"),
        "--model-dir",
        str(tmp_path / "models"),
        "--features",
        "text",
        "--json",
        str(out),
    ]
    rc = main(argv)
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    sizes = result["data_sizes"]
    assert sizes["train"]["queries"] + sizes["test"]["queries"] == 30
    assert sizes["cold_copies"]["queries"] == 0  # no behavior features: no cold copies
    assert all(math.isfinite(v) for v in result["metrics"].values())
    reg = ModelRegistry(tmp_path / "models")
    with pytest.raises(Exception, match="no promoted model"):
        reg.load()  # not promoted without --promote
    from ltr import features as F

    model = reg.load(result["version"], expected_featureset_id=featureset_id(F.TEXT_FEATURES))
    assert model.feature_names == F.TEXT_FEATURES
    # the drift reference: each training query's top reference_top_k (10) rows
    assert len(reg.reference_sample(result["version"])) == 10 * sizes["train"]["queries"]


def test_top_k_rows_keeps_each_querys_best_rows_in_order() -> None:
    """The drift reference keeps per query what the model would serve (its top-k)."""
    from ltr.dataset import RankingData

    data = RankingData(
        qids=np.array(["a", "a", "a", "b", "b"]),
        X=np.arange(10, dtype=np.float32).reshape(5, 2),
        y=np.array([0, 1, 2, 0, 1], dtype=np.float64),
        feature_names=("f1", "f2"),
    )
    top = data.top_k_rows(np.array([0.1, 0.9, 0.5, 0.3, 0.2]), k=2)
    assert list(top.qids) == ["a", "a", "b", "b"]
    assert top.X[:, 0].tolist() == [2.0, 4.0, 6.0, 8.0]  # rows 1 and 2 of "a", both of "b"
    assert data.top_k_rows(np.zeros(5), k=0) is data


# --- the recipe (ltr.train.fit_recipe) ---------------------------------------------------

RECIPE = TrainConfig(num_boost_round=60, smooth_rounds=10, eta_grid=())  # one rate: eta


@pytest.mark.parametrize("grid", [(), (0.03,)])  # a grid of one rate = that rate alone
def test_recipe_picks_rounds_from_the_smoothed_inner_fold_curves(
    data: RankingData, grid: tuple[float, ...]
) -> None:
    from ltr.train import fit_recipe, inner_splits, smoothed_best_round

    tr, _ = split_by_query(data, (0.75, 0.25), seed=1)
    model = fit_recipe(tr, with_overrides(RECIPE, eta_grid=grid))
    assert model.params["eta"] == RECIPE.eta == 0.03 and "cv_eta_grid" not in model.history
    # independently: 3 query-level folds, each trained the full 60 rounds
    splits = inner_splits(tr, 3, RECIPE.valid_fraction, RECIPE.seed)
    assert len(splits) == 3
    for a, b in splits:
        assert not set(a.query_ids) & set(b.query_ids)
        assert set(a.query_ids) | set(b.query_ids) == set(tr.query_ids)
    curves = [Trainer(RECIPE).fit(a, b).history["valid"]["ndcg@10"] for a, b in splits]
    mean = np.mean(np.stack(curves), axis=0)
    assert model.history["cv"]["ndcg@10"] == pytest.approx(mean.tolist())
    rounds, score = smoothed_best_round(curves, 10)
    w = np.convolve(np.pad(mean, (5, 4), mode="edge"), np.ones(10) / 10, mode="valid")
    assert rounds == int(np.argmax(w)) + 1 and score == pytest.approx(w.max())
    # the final booster: every training query, exactly that many trees
    assert model.best_iteration + 1 == rounds == model.booster.num_boosted_rounds()
    assert model.data_sizes["train"]["queries"] == tr.n_queries and model.best_score == score
    assert model.uses_base_margin
    # deterministic, and the grid of one is bit for bit the plain recipe
    assert fit_recipe(tr, RECIPE).model_bytes() == model.model_bytes()


def test_recipe_chooses_the_learning_rate_on_the_inner_folds(data: RankingData) -> None:
    """Each rate of the grid gets its own inner-fold curves, rounds and one-SE floor; the
    best smoothed inner NDCG wins and the final booster is trained at that rate."""
    from ltr.train import _smooth, fit_recipe, inner_splits, smoothed_best_round

    tr, _ = split_by_query(data, (0.75, 0.25), seed=1)
    grid = (0.03, 0.3)
    model = fit_recipe(tr, with_overrides(RECIPE, eta_grid=grid))
    splits = inner_splits(tr, 3, RECIPE.valid_fraction, RECIPE.seed)
    starts = np.array([Trainer(RECIPE).start_score(a, b) for a, b in splits])
    expect = {}
    for eta in grid:
        cfg = with_overrides(RECIPE, eta=eta)
        curves = [Trainer(cfg).fit(a, b).history["valid"]["ndcg@10"] for a, b in splits]
        rounds, score = smoothed_best_round(curves, RECIPE.smooth_rounds)
        gains = np.array([_smooth(c, RECIPE.smooth_rounds)[rounds - 1] for c in curves]) - starts
        assert gains.mean() > gains.std(ddof=1) / np.sqrt(3)  # trees pass the floor here
        expect[f"{eta:g}"] = [float(rounds), score]
    got = model.history["cv_eta_grid"]
    assert set(got) == set(expect) and all(got[k] == pytest.approx(expect[k]) for k in expect)
    # 60 rounds at 0.03 under-fit this task; 0.3 learns more on the inner folds
    assert expect["0.3"][1] > expect["0.03"][1]
    assert model.params["eta"] == 0.3 and model.best_score == pytest.approx(expect["0.3"][1])
    assert model.booster.num_boosted_rounds() == int(expect["0.3"][0])
    want = Trainer(with_overrides(RECIPE, eta=0.3, num_boost_round=int(expect["0.3"][0])))
    assert want.fit(tr).model_bytes() == model.model_bytes()


def test_recipe_grid_ties_go_to_the_smaller_rate_and_zero_rounds_stays() -> None:
    """Trees cannot help (the margin is the answer): every rate scores the margin alone,
    so the smallest rate is recorded and the model has no trees."""
    from ltr.train import fit_recipe

    data = _margin_is_all()
    model = fit_recipe(data, TrainConfig(num_boost_round=40, smooth_rounds=5, eta_grid=(0.03, 0.3)))
    assert model.booster.num_boosted_rounds() == 0 and model.params["eta"] == 0.03
    (r1, s1), (r2, s2) = model.history["cv_eta_grid"].values()
    assert r1 == r2 == 0.0 and s1 == s2 == model.best_score
    assert data.base_margin is not None
    want = data.base_margin.astype(np.float32)
    assert model.predict(data.X, data.base_margin).tobytes() == want.tobytes()


def test_recipe_inner_splits_keep_units_and_cold_copies_together(data: RankingData) -> None:
    from ltr.train import COLD_COPY, add_cold_copies, base_qid, inner_splits

    sub = data.take_queries(list(data.query_ids[:12]))
    units = {q: f"text{int(q[1:]) // 2}" for q in sub.query_ids}  # two groups per unit
    for a, b in inner_splits(sub, 3, 0.2, 0, units):
        assert not {units[q] for q in a.query_ids} & {units[q] for q in b.query_ids}
    # cold copies: the query-level history withheld, everything else identical
    names = ("qd_ctr", "d_ctr", "signal")
    X = np.c_[np.arange(len(sub)), np.arange(len(sub)) + 0.5, sub.X[:, 0]].astype(np.float32)
    beh = RankingData(sub.qids, X, sub.y, names, sub.base_margin, sub.doc_ids)
    both = add_cold_copies(beh, ("qd_ctr", "d_ctr"), 1.0, 0)
    assert both.n_queries == 24
    cold = both.take_queries([q + COLD_COPY for q in sub.query_ids])
    assert np.isnan(cold.X[:, 0]).all()
    np.testing.assert_array_equal(cold.X[:, 1:], beh.X[:, 1:])
    np.testing.assert_array_equal(cold.y, beh.y)
    for a, b in inner_splits(both, 3, 0.2, 0):
        assert not {base_qid(q) for q in a.query_ids} & {base_qid(q) for q in b.query_ids}
    assert add_cold_copies(beh, ("qd_ctr",), 0.5, 0).n_queries == 18
    # nothing to withhold (no history anywhere, or no behavior column): unchanged
    no_hist = RankingData(sub.qids, np.full_like(X, np.nan), sub.y, names)
    assert add_cold_copies(no_hist, ("qd_ctr",), 1.0, 0) is no_hist
    assert add_cold_copies(sub, ("qd_ctr",), 1.0, 0) is sub


@pytest.mark.slow
def test_a_model_trained_by_the_command_serves_its_training_scores(
    beir_small: Path, small_index: Path, encoder: object, tmp_path: Path
) -> None:
    """Parity: search.training.train (scripts/train.py --dataset) -> ltr.registry ->
    search.pipeline. The served score of every hit equals the trained model's score of that
    candidate's training row (features + base margin as training computed them), bit for
    bit: the manifest's base_margin spec is exactly what the pipeline applies."""
    import asyncio

    from indexing.local import LocalBackend
    from ltr import features as F
    from ltr.registry import ModelRegistry
    from search.pipeline import Pipeline, SearchRequest
    from search.training import ReplaySource, replay_dataset, train

    source = ReplaySource(beir_small, small_index, F.TEXT_FEATURES)
    result = train(source, TrainConfig(), tmp_path / "models", verbose=False, encoder=encoder)  # type: ignore[arg-type]
    model = ModelRegistry(tmp_path / "models").load(result.version)
    spec = dict(model.manifest.base_margin or {})
    # the linear fusion, its weights fitted on the run's training queries, and the scale
    assert spec["name"] == "linear" and set(spec["params"]) == {"weights", "scale"}
    assert spec["params"]["scale"] == TrainConfig().base_margin_scale
    ts = replay_dataset(source, TrainConfig(), encoder=encoder)  # type: ignore[arg-type]
    data = ts.data
    assert data.base_margin is None and ts.margin_inputs is not None  # fitted by the run
    from ltr.fusion import linear_normed

    margin = linear_normed(ts.margin_inputs, spec["params"]["weights"], spec["params"]["scale"])
    trained = model.predict(data.X, margin)
    unscaled = model.predict(data.X, margin / spec["params"]["scale"])  # scale not applied
    from indexing.loaders import load_beir

    texts = {q.id: q.text for q in load_beir(beir_small).queries}

    async def serve() -> dict[str, list[dict[str, object]]]:
        backend = LocalBackend.open(small_index, encoder)  # type: ignore[arg-type]
        p = Pipeline(backend, encoder, F.TEXT_FEATURES, backend.version, model=model)  # type: ignore[arg-type]
        try:
            out = {}
            for qid in list(data.query_ids)[:4]:
                res = await p.search(SearchRequest(q=texts[qid], k=10, query_id=qid))
                assert res.degraded == [] and res.model_version == model.version
                out[qid] = res.hits
            return out
        finally:
            await p.close()

    served = asyncio.run(serve())
    checked = 0
    for qid, hits in served.items():
        rows = {
            str(d): i
            for i, (q, d) in enumerate(zip(data.qids, data.doc_ids, strict=True))
            if q == qid
        }  # type: ignore[arg-type]
        for h in hits:
            i = rows[str(h["id"])]
            assert float(h["score"]) == float(trained[i])  # type: ignore[arg-type]
            assert float(h["score"]) != float(unscaled[i])  # type: ignore[arg-type]
            checked += 1
    assert checked >= 20


# --- the base-margin floor (issue 13) -----------------------------------------------------


def _margin_is_all(n_queries: int = 60, seed: int = 5) -> RankingData:
    """The base margin ranks perfectly and the features are noise: trees cannot help."""
    rng = np.random.default_rng(seed)
    groups = []
    for q in range(n_queries):
        latent = rng.normal(size=20)
        y = np.clip(np.round(latent + 1.0), 0, 3)
        X = rng.normal(size=(20, 2))
        groups.append((f"q{q}", X, y, [f"q{q}d{i}" for i in range(20)], 3.0 * latent))
    return RankingData.from_groups(groups, ("noise_a", "noise_b"))


def test_recipe_zero_rounds_is_the_base_margin_exactly(tmp_path: Path) -> None:
    from ltr.registry import ModelRegistry
    from ltr.train import fit_recipe

    data = _margin_is_all()
    assert data.base_margin is not None
    model = fit_recipe(data, TrainConfig(num_boost_round=40, smooth_rounds=5))
    assert model.booster.num_boosted_rounds() == 0 and model.best_iteration == -1
    want = data.base_margin.astype(np.float32)
    assert model.predict(data.X, data.base_margin).tobytes() == want.tobytes()
    # saved and loaded as the API loads it: still exactly the margin
    reg = ModelRegistry(tmp_path / "models")
    spec = {"name": "linear", "params": {"weights": {"bm25": 0.4, "dense": 0.6}, "scale": 5.0}}
    version = reg.save(model, featureset_id="f" * 64, base_margin=spec)
    served = reg.load(version)
    assert served.predict(data.X, data.base_margin).tobytes() == want.tobytes()
    assert dict(served.manifest.base_margin or {}) == spec
    # the same data with an informative feature: trees are kept
    informative = dataclasses.replace(data, base_margin=np.zeros(len(data)))
    X = informative.X.copy()
    X[:, 0] = informative.y + np.random.default_rng(1).normal(scale=0.3, size=len(data))
    m2 = fit_recipe(dataclasses.replace(informative, X=X), TrainConfig(num_boost_round=40))
    assert m2.booster.num_boosted_rounds() > 0


def test_zero_rounds_are_chosen_on_the_inner_folds_only(data: RankingData) -> None:
    """The round-0 score is the inner folds' NDCG of the margin alone (XGBoost's metric)."""
    from ltr.train import inner_splits

    tr, va = inner_splits(data, 3, 0.2, 42)[0]
    t = Trainer(TrainConfig(num_boost_round=5))
    start = t.start_score(tr, va)
    after = t.fit(tr, va).history["valid"]["ndcg@10"]
    assert 0 < start < 1 and len(after) == 5 and start != after[0]
