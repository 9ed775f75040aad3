"""The workbench page in a real browser: Debian's chromium, headless, driven by selenium
through Debian's chromium-driver, against a real server process (scripts/serverproc.py)
over the small Cranfield index, a registry of three real models and a real drift report.

The page loads, a query shows highlighted results, the explain panel opens with feature
contributions and click statistics, the side-by-side view marks moves, the model card
and the drift reports render; the browser logs no error (a Content-Security-Policy
violation would be one); the page calls only public routes of its own origin; its clicks
(debug) leave the event store unchanged.

Without chromium, chromium-driver or selenium the test is skipped and says what is
missing (.ci/run installs them). ``WORKBENCH_SCREENSHOTS=docs/img`` also saves a
screenshot of each view there (what the README shows).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts.serverproc import free_port, stop_server, wait_ready
from tests.api_support import ADMIN, start_test_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
Q = "shock wave interaction"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _missing() -> list[str]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    return missing


MISSING = _missing()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason="no browser to test the workbench with; missing: "
        + ", ".join(MISSING)
        + " (Debian: apt-get install -y chromium chromium-driver)",
    ),
]


def _post(url: str, body: Any) -> Any:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with OPENER.open(req, timeout=30) as r:
        return json.loads(r.read())


def _model_with_metrics(index: Path, beir: Path, models: Path, encoder: Any) -> str:
    """A third model, trained with a held-out split (its card shows offline metrics)."""
    import asyncio

    from indexing.loaders import load_beir
    from indexing.local import LocalBackend
    from ltr.config import TrainConfig
    from ltr.dataset import RankingData
    from ltr.features import featureset_id
    from ltr.fusion import fusion_score
    from ltr.metrics import ndcg_at_k
    from ltr.registry import ModelRegistry
    from ltr.train import Trainer
    from search.pipeline import Pipeline
    from tests.api_support import DEFAULT_FEATURES

    async def groups() -> list[Any]:
        backend = LocalBackend.open(index, encoder)
        p = Pipeline(backend, encoder, DEFAULT_FEATURES, index_version=backend.version)
        ds = load_beir(beir)
        grades: dict[str, dict[str, float]] = {}
        for j in ds.qrels:
            grades.setdefault(j.query_id, {})[j.doc_id] = j.grade
        out = []
        try:
            for q in ds.judged_queries():
                fz = await p.featurize(q.text, query_id=q.id)
                y = [grades[q.id].get(d, 0.0) for d in fz.cs.ids]
                out.append((q.id, fz.X, y, fz.cs.ids, fusion_score(fz.cs, "rrf", {})))
        finally:
            await p.close()
        return out

    g = asyncio.run(groups())
    train = RankingData.from_groups(g[:14], DEFAULT_FEATURES)
    valid = RankingData.from_groups(g[14:], DEFAULT_FEATURES)
    trained = Trainer(TrainConfig(num_boost_round=40)).fit(train, valid)
    metrics = {"valid_xgb_ndcg@10": trained.best_score}
    for name, score in (("model", None), ("rrf", "rrf")):
        vals = []
        for _qid, X, y, ids, bm in g[14:]:
            bm = np.asarray(bm, dtype=np.float64)
            s = (
                bm
                if score
                else trained.booster.inplace_predict(
                    X,
                    predict_type="margin",
                    missing=np.nan,
                    base_margin=bm,
                    validate_features=False,
                )
            )
            ranked = [ids[i] for i in np.argsort(-s, kind="stable")]
            vals.append(ndcg_at_k(ranked, dict(zip(ids, y, strict=True)), 10))
        metrics[f"valid_{name}_ndcg@10"] = float(np.nanmean(vals))
    reg = ModelRegistry(models)
    version = reg.save(
        trained,
        featureset_id=featureset_id(DEFAULT_FEATURES),
        base_margin={"name": "rrf", "params": {}},
        metrics=metrics,
        data_sizes={
            "train": {"queries": train.n_queries, "rows": len(train)},
            "valid": {"queries": valid.n_queries, "rows": len(valid)},
        },
        reference_rows=train,
    )
    reg.promote(version)
    return version


@pytest.fixture(scope="module")
def workbench(
    small_index: Path,
    beir_small: Path,
    two_models_dir: Path,
    encoder: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """A real server over three models, some logged traffic and one drift report."""
    tmp = tmp_path_factory.mktemp("workbench")
    models = tmp / "models"
    shutil.copytree(two_models_dir, models)
    serving = _model_with_metrics(small_index, beir_small, models, encoder)
    events, reports, log = tmp / "events.db", tmp / "drift", tmp / "server.log"
    port = free_port()
    proc = start_test_server(
        small_index,
        events,
        port,
        log,
        model_dir=models,
        LTRSEARCH_MONITORING__OUT_DIR=str(reports),
        LTRSEARCH_API__IMPRESSION_FLUSH_MS="100",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, timeout_s=300)
        _traffic_and_report(url, beir_small, models, events, reports)
        yield {"url": url, "serving": serving, "models": models, "events": events}
    finally:
        stop_server(proc)


def _traffic_and_report(url: str, beir: Path, models: Path, events: Path, reports: Path) -> None:
    """Users' searches and clicks (logged), then scripts/drift_report.py over them."""
    import time

    from scripts.drift_report import main as drift_main

    queries = [json.loads(x)["text"] for x in (beir / "queries.jsonl").read_text().splitlines()]
    queries += [Q] * 4  # the query the browser test runs: its hits have a click history
    for i, q in enumerate(queries):
        page = _post(f"{url}/search", {"q": q, "k": 20})
        doc = page["hits"][i % 3]["id"]
        _post(f"{url}/events", [{"type": "click", "request_id": page["request_id"], "doc_id": doc}])
    time.sleep(0.5)  # the impression writer flushes every 100 ms
    code = drift_main(["--model-dir", str(models), "--events", str(events), "--out", str(reports)])
    assert code in (0, 3)  # no drift / drift: a report was written either way


def _counts(events: Path) -> dict[str, int]:
    from search.events import SqliteEventStore

    store = SqliteEventStore(events, read_only=True)
    try:
        return store.counts()
    finally:
        store.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.add_argument("--disable-dev-shm-usage")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: Any, name: str) -> None:
    out = os.environ.get("WORKBENCH_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(out) / f"workbench-{name}.png"))


def test_workbench_in_headless_chromium(workbench: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, serving = workbench["url"], workbench["serving"]
    wait = WebDriverWait(browser, 30)
    before = _counts(workbench["events"])
    assert before["events"] == 24  # the users' clicks

    # the page loads and knows the serving model
    browser.get(f"{url}/")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    assert serving in browser.find_element(By.ID, "serving").text
    assert browser.title == "ltrsearch workbench"

    # a query shows results: title, highlighted snippet, attributes, ranks
    browser.find_element(By.ID, "q").send_keys(Q)
    browser.find_element(By.CSS_SELECTOR, "#query button[type=submit]").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".hit")) == 10)
    first = browser.find_elements(By.CSS_SELECTOR, ".hit")[0]
    marks = {m.text.lower() for m in browser.find_elements(By.CSS_SELECTOR, ".hit mark")}
    assert marks and all(m.startswith(("shock", "wave", "interaction")) for m in marks)
    chips = first.find_element(By.CSS_SELECTOR, ".chips").text
    assert "year 19" in chips and ("even" in chips or "odd" in chips)
    heads = [th.text for th in first.find_elements(By.CSS_SELECTOR, ".ranks tr:first-child th")]
    assert heads == ["", "bm25", "dense", "fusion"]
    assert "debug: not logged" in browser.find_element(By.ID, "status").text
    _shot(browser, "search")

    # the explain panel opens: contributions and click statistics
    first.find_element(By.CSS_SELECTOR, ".explain-toggle").click()
    panel = first.find_element(By.CSS_SELECTOR, ".explain")
    wait.until(lambda d: panel.is_displayed())
    assert len(panel.find_elements(By.CSS_SELECTOR, ".contribs tr")) == 8
    assert "this query" in panel.find_element(By.CSS_SELECTOR, ".clicks").text
    _shot(browser, "explain")

    # a click on a title is sent with debug=true
    first.find_element(By.CSS_SELECTOR, ".title").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "debug: not logged"))
    assert "click on" in browser.find_element(By.ID, "status").text

    # side by side: the serving model vs the first model of the registry
    Select(browser.find_element(By.ID, "compare")).select_by_value("v0001")
    browser.find_element(By.CSS_SELECTOR, "#query button[type=submit]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".results.side-by-side .column"))
    cols = browser.find_elements(By.CSS_SELECTOR, ".results.side-by-side .column")
    assert len(cols) == 2
    assert serving in cols[0].find_element(By.TAG_NAME, "h2").text
    assert "v0001" in cols[1].find_element(By.TAG_NAME, "h2").text
    moves = [m.text for m in cols[1].find_elements(By.CSS_SELECTOR, ".move")]
    assert len(moves) == 10 and any(m[0] in "▲▼" or m == "new" for m in moves)
    _shot(browser, "side-by-side")

    # the model card: version, training data, metrics, feature importance
    browser.find_element(By.CSS_SELECTOR, ".tab[data-view=card]").click()
    card = browser.find_element(By.ID, "card")
    wait.until(lambda d: card.is_displayed())
    assert f"model {serving}" in card.find_element(By.TAG_NAME, "h2").text
    text = card.text
    assert "qrels" in text and "ndcg" in text.lower() and "feature importance" in text
    assert len(card.find_elements(By.CSS_SELECTOR, ".importance tr")) > 5
    _shot(browser, "model-card")

    # the drift reports: the newest listed, its Evidently HTML opens
    browser.find_element(By.CSS_SELECTOR, ".tab[data-view=reports]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".report-list li"))
    item = browser.find_element(By.CSS_SELECTOR, ".report-list li")
    assert item.text.startswith("drift-")
    links = {a.text: a.get_attribute("href") for a in item.find_elements(By.TAG_NAME, "a")}
    assert "features.html" in links and links["features.html"].startswith(f"{url}/reports/")
    _shot(browser, "reports")

    # nothing failed in the page; it called only its own origin's public routes
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    called = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert called and all(u.startswith(f"{url}/") for u in called)
    assert not [u for u in called if "/admin" in u]
    assert ADMIN not in browser.page_source
    # the page's searches and click were debug: the log and training data did not move
    assert _counts(workbench["events"]) == before

    assert (
        card.find_element(By.CSS_SELECTOR, "#card-drift a").get_attribute("href") in links.values()
    )

    # the Evidently report itself, as the link opens it (sandboxed: its scripts still run)
    browser.get(links["features.html"])
    wait.until(lambda d: len(d.find_element(By.TAG_NAME, "body").text) > 200)
    assert "drift" in browser.find_element(By.TAG_NAME, "body").text.lower()
    _shot(browser, "drift-report")
