"""Acceptance tests of the scheduled drift report, end to end through the real parts.

A real XGBoost LambdaMART model in a real ModelRegistry (its training rows are the drift
reference), served lists scored by that model and logged in a real SqliteEventStore with
click events, scripts/drift_report.py's main() reading both, real Evidently, and a real
aiohttp webhook receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ltr.config import TrainConfig
from ltr.dataset import RankingData
from ltr.features import featureset_id
from ltr.registry import ModelRegistry
from ltr.train import Trainer
from monitoring.report import EXIT_DRIFT, EXIT_ERROR, EXIT_OK
from scripts.drift_report import main
from search.errors import EventStoreError
from search.events import Event, Impression, SqliteEventStore

NAMES = (
    "bm25",
    "dense_cosine",
    "bm25_title",
    "cov_title",
    "query_len",
    "rating",  # all NaN, as on Cranfield: never tested
    "qd_ctr",
    "d_log_impressions",
)
DEPTH = 10
T0 = 1_700_000_000.0  # end of the "current" window in every scenario
HOUR = 3600.0


def draw(rng: np.random.Generator, n: int, shift: frozenset[str] = frozenset()) -> np.ndarray:
    """Candidate feature rows [n, F]; ``shift`` moves the named features' distributions."""
    cols = {
        "bm25": rng.gamma(2.0, 3.0, n) + (4.0 if "bm25" in shift else 0.0),
        "dense_cosine": rng.normal(0.6 if "dense_cosine" in shift else 0.4, 0.1, n),
        "bm25_title": np.where(rng.random(n) < 0.6, 0.0, rng.gamma(2.0, 2.0, n)),
        "cov_title": rng.integers(0, 4, n) / 3.0,
        "query_len": rng.integers(2, 9, n).astype(float),
        "rating": np.full(n, np.nan),
        "qd_ctr": np.where(
            rng.random(n) < (0.2 if "qd_ctr" in shift else 0.7), np.nan, rng.beta(2, 8, n)
        ),
        "d_log_impressions": np.log1p(rng.poisson(20, n)).astype(float),
    }
    return np.column_stack([cols[c] for c in NAMES]).astype(np.float32)


def true_relevance(X: np.ndarray) -> np.ndarray:
    """What users want (the ground truth the model learns): more text match = better."""
    z = 0.25 * X[:, 0] + 8.0 * (X[:, 1] - 0.4) + 0.8 * X[:, 3]
    return 1.0 / (1.0 + np.exp(-(z - 2.0)))


@pytest.fixture(scope="module")
def drift_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A promoted real LambdaMART model whose training rows are the drift reference."""
    rng = np.random.default_rng(0)
    n_q = 150
    X = draw(rng, n_q * DEPTH)
    rel = true_relevance(X)
    y = np.digitize(rel + rng.normal(0, 0.05, len(rel)), [0.3, 0.55, 0.8]).astype(float)
    data = RankingData(
        qids=np.repeat([f"q{i}" for i in range(n_q)], DEPTH), X=X, y=y, feature_names=NAMES
    )
    cfg = TrainConfig(num_boost_round=30, early_stopping_rounds=0, use_base_margin=False)
    trained = Trainer(cfg).fit(data)
    root = tmp_path_factory.mktemp("models")
    reg = ModelRegistry(root)
    version = reg.save(
        trained,
        featureset_id=featureset_id(NAMES),
        metrics={"ndcg@10": 0.9},
        reference_rows=pd.DataFrame(X, columns=list(NAMES)),
    )
    reg.promote(version)
    return root


def serve_window(
    store: SqliteEventStore,
    drift_model_dir: Path,
    start: float,
    n_requests: int,
    seed: int,
    shift: frozenset[str] = frozenset(),
    users_changed: bool = False,
) -> None:
    """Log n served pages in [start, start + 1h) scored by the promoted model, with clicks.

    Clicks follow a position-based model: examination 1/sqrt(position) times the
    attractiveness of the document. ``users_changed``: users now want the opposite of what
    the model learned (same features, same scores, other clicks) -- concept drift.
    """
    reg = ModelRegistry(drift_model_dir)
    model = reg.load()
    rng = np.random.default_rng(seed)
    imps, events = [], []
    for r in range(n_requests):
        X = draw(rng, DEPTH, shift)
        scores = model.predict(X)
        order = np.argsort(-scores, kind="stable")
        X, scores = X[order], scores[order]
        rel = true_relevance(X)
        attract = 1.0 - rel if users_changed else rel
        ts = start + (r + 0.5) * HOUR / n_requests
        rid = f"{seed}-{r}"
        docs = tuple(f"d{rng.integers(0, 10**9)}" for _ in range(DEPTH))
        imps.append(
            Impression(
                request_id=rid,
                ts=ts,
                query=f"query {r % 40}",
                query_id=None,
                model_version=model.version,
                featureset_id=model.featureset_id,
                feature_names=NAMES,
                offset=0,
                doc_ids=docs,
                positions=tuple(range(1, DEPTH + 1)),
                scores=scores.astype(np.float64),
                features=X,
            )
        )
        exam = 1.0 / np.sqrt(np.arange(1, DEPTH + 1))
        for i in np.flatnonzero(rng.random(DEPTH) < exam * attract):
            events.append(Event("click", rid, docs[i], ts + 5.0))
    store.add_impressions(imps)
    store.add_events(events)


def make_log(
    path: Path, drift_model_dir: Path, current: dict[str, Any] | None = None, n: int = 150
) -> Path:
    """Previous window [T0-2h, T0-1h) as trained; current [T0-1h, T0) with ``current``."""
    store = SqliteEventStore(path)
    try:
        serve_window(store, drift_model_dir, T0 - 2 * HOUR, n, seed=1)
        serve_window(store, drift_model_dir, T0 - HOUR, n, seed=2, **(current or {}))
    finally:
        store.close()
    return path


def run(drift_model_dir: Path, events: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model-dir", str(drift_model_dir), "--events", str(events), "--window", "1h",
        "--out", str(out), "--now", str(T0), *extra,
    ]  # fmt: skip


def summary_of(out: Path) -> dict[str, Any]:
    (report,) = sorted(out.glob("drift-*"))
    return json.loads((report / "summary.json").read_text())


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Monitoring settings come from the test alone, not from the developer's shell."""
    for k in list(os.environ):
        if k.startswith("LTRSEARCH_MONITORING__"):
            monkeypatch.delenv(k)


def test_no_drift_control(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_log(tmp_path / "events.db", drift_model_dir)
    out = tmp_path / "reports"
    assert main(run(drift_model_dir, events, out)) == EXIT_OK
    line = capsys.readouterr().out.strip()
    assert line.startswith("drift-report: decision=no_drift ")
    assert len(line.splitlines()) == 1
    s = summary_of(out)
    assert s["decision"] == "no_drift"
    assert s["feature_drift"]["drifted_features"] == []
    assert s["feature_drift"]["not_tested"] == ["rating"]
    assert s["feature_drift"]["current_rows"] == 150 * DEPTH
    assert s["concept_drift"]["quality_dropped"] is False
    assert s["concept_drift"]["score_drift"]["score"]["drifted"] is False
    assert s["window"] == {"since": "2023-11-14T21:13:20Z", "until": "2023-11-14T22:13:20Z"}
    report = Path(s["report_dir"])
    assert (report / "features.html").stat().st_size > 10_000
    assert (report / "concept.html").is_file()


def add_empty_pages(path: Path, start: float, n: int) -> None:
    """``n`` first pages with no hit in [start, start + 1h), as search.pipeline logs them."""
    store = SqliteEventStore(path)
    try:
        store.add_impressions([
            Impression(
                request_id=f"empty-{start}-{i}", ts=start + (i + 0.25) * HOUR / n,
                query=f"no such thing {i}", query_id=None, model_version=None,
                featureset_id=featureset_id(NAMES), feature_names=NAMES, offset=0,
                doc_ids=(), positions=(), scores=np.zeros(0),
                features=np.zeros((0, len(NAMES)), np.float32),
            )
            for i in range(n)
        ])  # fmt: skip
        # empty pages are requests without served rows: training and click models skip them
        assert store.first_pages(start, start + HOUR)[1] == n
        assert len(store.served_features(start, start + HOUR)) == 150 * DEPTH
        assert len(store.sessions(start, start + HOUR)) == 150
    finally:
        store.close()


def test_zero_result_rate_rising_is_an_input_shift(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_log(tmp_path / "events.db", drift_model_dir)
    add_empty_pages(events, T0 - 2 * HOUR, 2)  # 2 of 152 first pages before, 20 of 170 now
    add_empty_pages(events, T0 - HOUR, 20)
    out = tmp_path / "reports"
    assert main(run(drift_model_dir, events, out)) == EXIT_DRIFT
    line = capsys.readouterr().out
    s = summary_of(out)
    z = s["signals"]["zero_results"]
    assert (z["reference_zero"], z["reference_pages"], z["current_zero"], z["current_pages"]) == (
        2, 152, 20, 170,
    )  # fmt: skip
    assert z["drifted"] is True and z["p_value"] < 0.01
    assert z["line"].startswith("Zero-result queries: 1.3% -> 11.8% of first pages")
    assert s["feature_drift"]["drifted_features"] == []  # the served rows did not move
    assert s["decision"] == "covariate_drift"
    assert "signals=zero_results" in line and 'action="check the index and the catalog' in line
    html = (Path(s["report_dir"]) / "features.html").read_text()
    assert "Zero-result queries: 1.3% -&gt; 11.8%" in html


def test_zero_result_rate_below_the_alarm_is_a_number(
    drift_model_dir: Path, tmp_path: Path
) -> None:
    events = make_log(tmp_path / "events.db", drift_model_dir)
    add_empty_pages(events, T0 - 2 * HOUR, 2)
    add_empty_pages(events, T0 - HOUR, 3)  # +0.5 percentage points: reported, no alarm
    out = tmp_path / "reports"
    assert main(run(drift_model_dir, events, out, "--no-html")) == EXIT_OK
    z = summary_of(out)["signals"]["zero_results"]
    assert (z["reference_zero"], z["current_zero"], z["drifted"]) == (2, 3, False)


def test_covariate_drift_flags_exactly_the_shifted_features(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shifted = frozenset({"bm25", "dense_cosine"})
    events = make_log(tmp_path / "events.db", drift_model_dir, {"shift": shifted})
    out = tmp_path / "reports"
    assert main(run(drift_model_dir, events, out)) == EXIT_DRIFT
    s = summary_of(out)
    assert set(s["feature_drift"]["drifted_features"]) == shifted
    assert s["feature_drift"]["drifted"] is True  # 2 of 7 tested > 25%
    assert s["decision"] == "covariate_drift"
    assert "decision=covariate_drift" in capsys.readouterr().out


def test_concept_drift_is_not_reported_as_feature_drift(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_log(tmp_path / "events.db", drift_model_dir, {"users_changed": True})
    out = tmp_path / "reports"
    assert main(run(drift_model_dir, events, out)) == EXIT_DRIFT
    s = summary_of(out)
    assert s["decision"] == "concept_drift"
    assert s["feature_drift"]["drifted_features"] == []
    c = s["concept_drift"]
    assert c["quality_dropped"] is True
    assert c["relative_drop"] >= 0.1 and c["p_value"] < 0.01
    assert c["score_drift"]["score"]["drifted"] is False  # the model scores the same inputs
    assert "decision=concept_drift" in capsys.readouterr().out


def test_click_change_dragging_behavior_features_is_still_concept_drift(
    drift_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users changed, and their clicks moved the click-derived qd_ctr too: concept drift.
    With click history alarmed like any feature (trend_groups empty) qd_ctr drifts; by
    default, against the training reference, it is a trend (more history than then)."""
    monkeypatch.setenv("LTRSEARCH_MONITORING__DRIFT_SHARE", "0.1")
    current = {"users_changed": True, "shift": frozenset({"qd_ctr"})}
    events = make_log(tmp_path / "events.db", drift_model_dir, current)
    out = tmp_path / "reports"
    assert main(run(drift_model_dir, events, tmp_path / "default", "--no-html")) == EXIT_DRIFT
    s = summary_of(tmp_path / "default")
    assert s["feature_drift"]["drifted_features"] == []
    assert s["feature_drift"]["trend_features"] == ["qd_ctr"]
    assert s["decision"] == "concept_drift"
    monkeypatch.setenv("LTRSEARCH_MONITORING__TREND_GROUPS", "")
    assert main(run(drift_model_dir, events, out, "--no-html")) == EXIT_DRIFT
    s = summary_of(out)
    assert s["feature_drift"]["drifted_features"] == ["qd_ctr"]
    assert s["feature_drift"]["drifted"] is True  # 1/7 > 10%
    assert s["concept_drift"]["inputs_drifted"] is False
    assert s["decision"] == "concept_drift"


def test_settings_file_and_manifest_reference(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_log(tmp_path / "events.db", drift_model_dir, {"shift": frozenset({"bm25"})})
    settings = tmp_path / "s.toml"
    settings.write_text(
        '[monitoring]\ndrift_share = 0.1\nconcept_reference = "manifest"\nhtml = false\n'
    )
    out = tmp_path / "reports"
    args = run(
        drift_model_dir, events, out, "--settings", str(settings), "--model-version", "v0001"
    )
    assert main(args) == EXIT_DRIFT
    s = summary_of(out)
    assert s["feature_drift"]["drifted_features"] == ["bm25"]
    assert s["feature_drift"]["drift_share_threshold"] == 0.1
    assert s["concept_drift"]["reference_source"] == "manifest"
    assert s["concept_drift"]["reference_value"] == 0.9
    assert not list(Path(s["report_dir"]).glob("*.html"))


async def test_webhook_receives_the_summary_on_drift(
    drift_model_dir: Path, tmp_path: Path, aiohttp_server: Any
) -> None:
    from aiohttp import web

    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/hook"
    ok_log = await asyncio.to_thread(make_log, tmp_path / "ok.db", drift_model_dir)
    code = await asyncio.to_thread(
        main, run(drift_model_dir, ok_log, tmp_path / "a", "--webhook", url)
    )
    assert code == EXIT_OK and received == []  # no drift, no call
    bad_log = await asyncio.to_thread(
        make_log,
        tmp_path / "bad.db",
        drift_model_dir,
        {"shift": frozenset({"bm25", "dense_cosine"})},
    )
    code = await asyncio.to_thread(
        main, run(drift_model_dir, bad_log, tmp_path / "b", "--webhook", url)
    )
    assert code == EXIT_DRIFT
    (payload,) = received
    # the body leads with what the one-line summary says, then the whole summary
    summary = summary_of(tmp_path / "b")
    assert payload["summary"] == summary
    assert summary["decision"] == "covariate_drift"
    assert payload["line"].startswith("drift-report: decision=covariate_drift ")
    top = [t["name"] for t in payload["top_drifted"]]
    assert set(top) == {"bm25", "dense_cosine"} and payload["top_drifted"][0]["group"] == "text"
    assert f"top={top[0]}(text," in payload["line"]
    assert payload["action"] == summary["action"] and payload["action"] in payload["line"]
    assert payload["grouped_since_last_alert"] == 0
    # the same cause again within alert_group (24h): grouped, not resent
    code = await asyncio.to_thread(
        main, run(drift_model_dir, bad_log, tmp_path / "b", "--webhook", url)
    )
    assert code == EXIT_DRIFT and len(received) == 1
    state = json.loads((tmp_path / "b" / "alerts.json").read_text())
    assert state[payload["cause"]]["grouped"] == 1


def test_unreachable_webhook_warns_but_keeps_the_drift_exit_code(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_log(
        tmp_path / "e.db", drift_model_dir, {"shift": frozenset({"bm25", "dense_cosine"})}
    )
    args = run(drift_model_dir, events, tmp_path / "r", "--webhook", "http://127.0.0.1:9/none")
    assert main(args) == EXIT_DRIFT
    err = capsys.readouterr().err
    assert "warning: webhook http://127.0.0.1:9/none unreachable" in err


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drift-report: error: ")
    return lines[0]


def test_empty_window_exits_2(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_log(tmp_path / "events.db", drift_model_dir, n=20)
    args = run(drift_model_dir, events, tmp_path / "r")
    args[args.index("--now") + 1] = "2030-01-01T00:00:00Z"
    assert main(args) == EXIT_ERROR
    assert "no served rows for featureset" in _error_line(capsys)


def test_too_few_rows_exits_2(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_log(tmp_path / "events.db", drift_model_dir, n=15)  # 150 rows < min_rows 200
    assert main(run(drift_model_dir, events, tmp_path / "r")) == EXIT_ERROR
    assert "150 served rows; min_rows is 200" in _error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_missing_inputs_exit_2(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = make_log(tmp_path / "events.db", drift_model_dir, n=20)
    out = tmp_path / "r"
    assert main(run(tmp_path / "nomodels", events, out)) == EXIT_ERROR
    assert "no model registry at" in _error_line(capsys)
    empty_reg = tmp_path / "emptyreg"
    empty_reg.mkdir()
    assert main(run(empty_reg, events, out)) == EXIT_ERROR
    assert "no promoted model" in _error_line(capsys)
    assert main(run(drift_model_dir, tmp_path / "none.db", out)) == EXIT_ERROR
    assert "no event store at" in _error_line(capsys)
    assert not (tmp_path / "none.db").exists()
    assert main(run(drift_model_dir, events, out, "--model-version", "v0099")) == EXIT_ERROR
    assert "no model version 'v0099'" in _error_line(capsys)
    # a model saved without a reference sample
    no_ref = tmp_path / "noref"
    shutil.copytree(drift_model_dir, no_ref)
    for p in (no_ref / str(ModelRegistry(drift_model_dir).promoted())).glob("reference*"):
        p.unlink()
    assert main(run(no_ref, events, out)) == EXIT_ERROR
    assert "no reference sample" in _error_line(capsys)


def test_the_report_opens_the_event_store_read_only(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty file or another SQLite database is not an event store: exit 2 with one
    line, and the file is left exactly as it was (no tables, no WAL files)."""
    import sqlite3

    out = tmp_path / "r"
    empty = tmp_path / "empty.db"
    empty.touch()
    assert main(run(drift_model_dir, empty, out)) == EXIT_ERROR
    assert "not an event store" in _error_line(capsys)
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    before = other.read_bytes()
    assert main(run(drift_model_dir, other, out)) == EXIT_ERROR
    assert "not an event store" in _error_line(capsys)
    assert other.read_bytes() == before
    # a real store: the report reads it through a connection that cannot write
    events = make_log(tmp_path / "events.db", drift_model_dir, n=20)
    assert main(run(drift_model_dir, events, out)) == EXIT_OK
    assert "drift" in capsys.readouterr().out
    reader = SqliteEventStore(events, read_only=True)
    try:
        served = reader.served_features()
        assert len(served) == 400
        rid, doc = served["request_id"].iloc[0], served["doc_id"].iloc[0]
        with pytest.raises(EventStoreError, match="readonly"):
            reader.add_events([Event("click", rid, doc, T0)])
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--now", "yesterday"], "--now: 'yesterday' is neither"),
        (["--window", "forever"], "window: 'forever' is not a duration"),
        (["--webhook", "ftp://x"], "webhook_url: 'ftp://x' is not an http(s) URL"),
    ],
)
def test_bad_arguments_exit_2(
    drift_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main([*run(drift_model_dir, tmp_path / "e.db", tmp_path / "r"), *extra]) == EXIT_ERROR
    assert message in _error_line(capsys)


def test_bad_setting_from_environment_exits_2(
    drift_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LTRSEARCH_MONITORING__TEXT_METHOD", "magic")
    assert main(run(drift_model_dir, tmp_path / "e.db", tmp_path / "r")) == EXIT_ERROR
    assert "monitoring: text_method: unknown drift method 'magic'" in _error_line(capsys)


@pytest.mark.slow  # three full reports
def test_loop_backfills_windows_and_applies_retention(
    drift_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        for h in range(4):  # four hours of traffic: [T0-2h, T0+2h)
            serve_window(store, drift_model_dir, T0 + (h - 2) * HOUR, 40, seed=10 + h)
    finally:
        store.close()
    out = tmp_path / "reports"
    monkeypatch.setenv("LTRSEARCH_MONITORING__KEEP_REPORTS", "2")
    args = run(drift_model_dir, tmp_path / "events.db", out, "--every", "1h", "--max-runs", "3")
    assert main(args) == EXIT_OK
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("decision=no_drift" in ln for ln in lines)
    # windows ending T0, T0+1h, T0+2h; the oldest report was pruned (keep_reports=2)
    assert [p.name for p in sorted(out.glob("drift-*"))] == [
        "drift-20231114T231320Z",
        "drift-20231115T001320Z",
    ]


def test_previous_window_as_feature_reference(
    drift_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LTRSEARCH_MONITORING__FEATURE_REFERENCE", "previous_window")
    shifted = frozenset({"bm25", "dense_cosine"})
    events = make_log(tmp_path / "e.db", drift_model_dir, {"shift": shifted})
    out = tmp_path / "r"
    assert main(run(drift_model_dir, events, out, "--no-html")) == EXIT_DRIFT
    s = summary_of(out)
    assert set(s["feature_drift"]["drifted_features"]) == shifted
    assert s["feature_drift"]["reference_rows"] == 150 * DEPTH  # the previous window's rows
    # nothing before the first window: a clear error, not a comparison with nothing
    args = run(drift_model_dir, events, out)
    args[args.index("--now") + 1] = str(T0 - HOUR)
    assert main(args) == EXIT_ERROR
    assert "feature_reference is previous_window but" in _error_line(capsys)


@pytest.mark.slow  # a real index (MiniLM) and model, serves ~450 searches
async def test_demo_drift_catches_shifted_live_traffic(
    beir_small: Path, small_index: Path, model_dir: Path, encoder: Any, tmp_path: Path
) -> None:
    """The demo step end to end: a real API on 127.0.0.1 over a Cranfield subset (the
    session's: its 20 queries, its index and its model over every feature)."""
    from aiohttp.test_utils import TestServer

    from scripts.demo_drift import demo_drift
    from search.api import DEFAULT_FEATURES, make_app
    from tests.api_support import api_config

    beir, index_dir, events = beir_small, small_index, tmp_path / "events.db"
    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    assert ModelRegistry(models).manifest().feature_names == DEFAULT_FEATURES
    app = make_app(
        api_config(impression_flush_ms=100.0), encoder,
        index_dir=index_dir, model_dir=models, events_path=events,
    )  # fmt: skip
    lines: list[str] = []
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        out = await demo_drift(
            url, events, models, beir, sessions=120, out_dir=tmp_path / "reports",
            echo=lines.append,
        )  # fmt: skip
    print("\n".join(lines))
    base, mix, clicks = out["baseline_vs_training"], out["query_mix"], out["clicks_changed"]
    # normal traffic against the served-like reference (the model's top 10 per judged
    # query): no alarm; behavior features are not compared (the replay had no clicks)
    assert base.concept is None  # features only
    assert base.decision == "no_drift", base.line()
    assert base.reference_info["kind"] == "served_top_k"
    assert not base.features.drifted_features
    behavior = {f.name for f in base.features.features if f.group == "behavior"}
    assert behavior <= set(base.features.not_tested)
    assert [ln.split(":")[1].strip() for ln in lines[-3:]] == [
        "no drift", "covariate drift", "concept drift",
    ]  # fmt: skip
    assert mix.decision == "covariate_drift"
    assert "query_len" in mix.features.drifted_features
    # same queries, users click the opposite: quality falls, only click-derived features move
    assert clicks.concept is not None and clicks.concept.quality_dropped
    assert clicks.decision == "concept_drift"
    groups = {f.name: f.group for f in clicks.features.features}
    assert {groups[n] for n in clicks.features.drifted_features} == {"behavior"}
    assert (tmp_path / "reports" / "query_mix").is_dir()


@pytest.mark.slow  # a subprocess importing Evidently
def test_loop_stops_on_sigterm_while_waiting(drift_model_dir: Path, tmp_path: Path) -> None:
    """--every without --now: one run now, then a wait that SIGTERM ends promptly."""
    import signal
    import subprocess
    import sys
    import time

    store = SqliteEventStore(tmp_path / "events.db")
    try:
        serve_window(store, drift_model_dir, time.time() - HOUR, 60, seed=5)
    finally:
        store.close()
    cmd = [
        sys.executable, "-m", "scripts.drift_report", "--model-dir", str(drift_model_dir),
        "--events", str(tmp_path / "events.db"), "--window", "1h", "--every", "1h",
        "--out", str(tmp_path / "r"), "--no-html",
    ]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTRSEARCH_")}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first run's summary: now it waits for an hour
        assert line.startswith("drift-report: decision=no_drift")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()


def test_retention_keeps_newest_and_drops_old(tmp_path: Path) -> None:
    from monitoring.report import apply_retention

    stamps = ["20231110T000000Z", "20231112T000000Z", "20231113T000000Z", "20231114T000000Z"]
    for st in stamps:
        (tmp_path / f"drift-{st}").mkdir()
    (tmp_path / "notes").mkdir()  # not a report: never touched
    (tmp_path / "drift-latest").mkdir()  # not a stamp: never deleted by age
    now = 1_699_920_000.0  # 2023-11-14T00:00:00Z
    removed = apply_retention(tmp_path, keep=0, days=3, now=now)
    assert [p.name for p in removed] == ["drift-20231110T000000Z"]
    removed = apply_retention(tmp_path, keep=2, days=0, now=now)
    assert [p.name for p in removed] == ["drift-20231112T000000Z"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["drift-20231113T000000Z", "drift-20231114T000000Z", "drift-latest", "notes"]
    assert apply_retention(tmp_path / "missing", keep=1) == []


def test_loop_reports_a_failed_run_and_goes_on(
    drift_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        serve_window(
            store, drift_model_dir, T0 - HOUR, 40, seed=3
        )  # traffic only in the 2nd window
    finally:
        store.close()
    args = run(drift_model_dir, tmp_path / "events.db", tmp_path / "r", "--every", "1h",
               "--max-runs", "2", "--no-html")  # fmt: skip
    args[args.index("--now") + 1] = str(T0 - HOUR)
    assert main(args) == EXIT_OK  # the last run's code
    captured = capsys.readouterr()
    assert "no served rows for featureset" in captured.err  # run 1: empty window
    assert captured.out.count("decision=no_drift") == 1  # run 2


async def test_an_empty_page_is_logged_and_only_counted(
    small_index: Path, encoder: Any, tmp_path: Path
) -> None:
    """A query that finds nothing is logged as a request without served rows: the
    zero-result rate counts it, the readers of served rows (training, click models, the
    drift features, rollout) never see it, and the behavior aggregates do not move."""
    from indexing.local import LocalBackend
    from search.aggregates import BehaviorAggregates
    from search.api import DEFAULT_FEATURES
    from search.pipeline import Pipeline, SearchRequest

    backend = LocalBackend.open(small_index, encoder)
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        agg = BehaviorAggregates.attach(store)
        p = Pipeline(backend, encoder, DEFAULT_FEATURES, backend.version, aggregates=agg)
        empty = await p.search(SearchRequest(q="flow over a plate", category="no-such-one"))
        full = await p.search(SearchRequest(q="flow over a plate", k=10))
        assert empty.hits == [] and empty.impression is not None
        assert empty.impression.doc_ids == () and empty.impression.features.shape == (
            0, len(DEFAULT_FEATURES),
        )  # fmt: skip
        assert full.impression is not None
        store.add_impressions([empty.impression, full.impression])
        assert store.first_pages() == (2, 1)
        assert set(store.served_features()["request_id"]) == {full.request_id}
        assert [len(s.docs) for s in store.sessions()] == [10]
        assert len(agg) == 20  # 10 (query, doc) + 10 doc rows, from the full page only
    finally:
        store.close()
        await backend.close()
