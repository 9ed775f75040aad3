"""The workbench's API side on a real aiohttp server (127.0.0.1): the page and its files, the
model card, explain's fusion ranks and click statistics, side-by-side rankings
(``model=``), the debug flag that keeps the page out of the training data, and the
read-only drift reports (path traversal, symlinks, encoded dots).

Real local index, real XGBoost models, real SQLite event store (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from monitoring.report import CONCEPT_HTML, FEATURES_HTML, REPORT_PREFIX, SUMMARY_FILE
from search.api import DEFAULT_FEATURES, make_app
from search.server import STATE
from search.workbench import ASSETS, UI_DIR, WORKBENCH, ReportSource
from tests.api_support import ADMIN, api_config

Q = "shock wave interaction"
SECRET = "top secret outside the report directory"


@contextlib.asynccontextmanager
async def serve(
    encoder: Any,
    index: Path,
    models: Path | None,
    events: Path | None = None,
    reports: ReportSource | None = None,
) -> AsyncIterator[TestClient]:
    app: web.Application = make_app(
        api_config(),
        encoder,
        index_dir=index,
        model_dir=models,
        events_path=events,
        reports=reports,
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def _json(resp: Any) -> Any:
    return json.loads(await resp.text())


def _source(root: Path) -> ReportSource:
    """What scripts/serve.py passes: monitoring.report's names."""
    files = (FEATURES_HTML, CONCEPT_HTML, SUMMARY_FILE)
    return ReportSource(root, REPORT_PREFIX, files, summary=SUMMARY_FILE)


# --------------------------------------------------------------------------------------
# the page


async def test_page_and_its_files_are_served_read_only(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    async with serve(encoder, small_index, model_dir) as c:
        for path in ("/", "/ui"):
            r = await c.get(path)
            assert r.status == 200 and r.content_type == "text/html"
            html = await r.text()
            assert '<script src="/ui/app.js"' in html and "<form" in html
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        for name, ctype in ASSETS.items():
            r = await c.get(f"/ui/{name}")
            assert r.status == 200 and r.content_type == ctype
            assert await r.read() == (UI_DIR / name).read_bytes()
        r = await c.get("/ui/workbench.py")
        assert r.status == 404 and (await _json(r))["error"]["code"] == "not_found"
        assert (await c.post("/ui", data=b"")).status == 405


def test_the_page_holds_no_token_and_calls_only_public_routes() -> None:
    """Nothing of the admin API is in the shipped files: the page cannot send a token."""
    text = "".join((UI_DIR / n).read_text() for n in ASSETS)
    assert ADMIN not in text
    for word in ("/admin", "Authorization", "Bearer", "innerHTML", "eval("):
        assert word not in text, word
    # every route the script calls
    script = (UI_DIR / "app.js").read_text()
    assert sorted(set(_api_paths(script))) == ["/events", "/model/card", "/reports", "/search"]


def _api_paths(script: str) -> list[str]:
    import re

    return [m.group(1) for m in re.finditer(r"api\(`?\"?(/[a-z/]+)", script)]


# --------------------------------------------------------------------------------------
# the model card


async def test_model_card_of_the_serving_model(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    async with serve(encoder, small_index, model_dir) as c:
        card = await _json(await c.get("/model/card"))
        model = c.app[STATE].pipeline.model  # type: ignore[index, union-attr]
        assert card["version"] == card["serving_version"] == model.version
        assert card["versions"] == [model.version] and card["promoted_version"] == model.version
        assert card["featureset_id"] == model.featureset_id
        assert card["feature_names"] == list(DEFAULT_FEATURES)
        assert card["data_sizes"]["train"]["queries"] > 0
        assert card["metrics"] == {} and card["label_source"] == "qrels"  # no held-out split
        imp = card["feature_importance"]
        assert set(imp) == set(DEFAULT_FEATURES)
        assert sum(imp.values()) == pytest.approx(1.0) and min(imp.values()) >= 0
        assert card["attributes"] == ["year"]
        assert "model_sha256" not in card and "extra" not in card
        r = await c.get("/model/card", params={"version": "v9999"})
        body = await _json(r)
        assert r.status == 404 and body["error"]["code"] == "model_not_found"
        assert model.version in body["error"]["message"]  # lists the known versions
    async with serve(encoder, small_index, None) as c:
        card = await _json(await c.get("/model/card"))
        assert card["version"] is None and card["ranking"] == "rrf" and card["versions"] == []


# --------------------------------------------------------------------------------------
# explain: fusion rank and click statistics


async def test_explain_adds_fusion_ranks_and_click_statistics(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.db"
    async with serve(encoder, small_index, model_dir, events) as c:
        first = await _json(await c.get("/search", params={"q": Q, "k": "5"}))
        assert "fusion" not in first["hits"][0] and "behavior" not in first["hits"][0]
        clicked = first["hits"][2]["id"]
        click = [{"type": "click", "request_id": first["request_id"], "doc_id": clicked}]
        assert (await c.post("/events", json=click)).status == 202
        rrf = await _json(await c.get("/search", params={"q": Q, "k": "5", "model": "rrf"}))
        page = await _json(await c.get("/search", params={"q": Q, "k": "5", "explain": "1"}))
    # RRF's own page is the fusion ranking: ranks 1..5 in order, scores equal
    assert all("fusion" not in h for h in rrf["hits"])  # model= alone does not explain
    for h in page["hits"]:
        assert h["fusion"]["name"] == "rrf" and h["fusion"]["rank"] >= 1
        b = h["behavior"]
        assert b["qd_impressions"] == 1.0  # the first page was logged once
        assert b["qd_clicks"] == (1.0 if h["id"] == clicked else 0.0)
    rrf_ids = [h["id"] for h in rrf["hits"]]
    for h in page["hits"]:
        if h["id"] in rrf_ids:
            assert h["fusion"]["rank"] == rrf_ids.index(h["id"]) + 1
            rrf_score = rrf["hits"][rrf_ids.index(h["id"])]["score"]
            assert h["fusion"]["score"] == pytest.approx(rrf_score)


# --------------------------------------------------------------------------------------
# side by side: model=rrf or a registry version


async def test_side_by_side_rankings(
    encoder: Any, small_index: Path, two_models_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(two_models_dir, models)
    events = tmp_path / "events.db"
    async with serve(encoder, small_index, models, events) as c:
        wb = c.app[WORKBENCH]  # type: ignore[index]
        state = c.app[STATE]  # type: ignore[index]
        serving = state.pipeline.model.version
        older = next(v for v in state.registry.list_versions() if v != serving)
        plain = await _json(await c.get("/search", params={"q": Q, "k": "10"}))
        assert plain["model_version"] == serving
        assert len(wb.models._models) == 0  # a plain search never loads a compare model
        other = await _json(await c.get("/search", params={"q": Q, "k": "10", "model": older}))
        assert other["model_version"] == older and len(other["hits"]) == 10
        assert list(wb.models._models) == [older]
        same = await _json(await c.get("/search", params={"q": Q, "k": "10", "model": serving}))
        assert [h["id"] for h in same["hits"]] == [h["id"] for h in plain["hits"]]
        rrf = await _json(await c.post("/search", json={"q": Q, "k": 10, "model": "rrf"}))
        assert rrf["model_version"] is None
        scores = [h["score"] for h in rrf["hits"]]
        assert scores == sorted(scores, reverse=True)
        for bad, status, code in (
            ("v9999", 404, "model_not_found"),
            ("../../etc/passwd", 404, "model_not_found"),
            ("x" * 65, 400, "invalid_parameter"),
        ):
            r = await c.get("/search", params={"q": Q, "model": bad})
            body = await _json(r)
            assert (r.status, body["error"]["code"]) == (status, code), bad
        assert (await c.get("/model/card", params={"version": older})).status == 200
        await state.writer.flush()
        counts = state.store.counts()
    # only the plain page was logged: another model's ranking is not what a user saw
    assert counts["requests"] == 1 and counts["impressions"] == 10


async def test_model_parameter_without_a_registry(encoder: Any, small_index: Path) -> None:
    async with serve(encoder, small_index, None) as c:
        r = await c.get("/search", params={"q": Q, "model": "v0001"})
        assert r.status == 404 and (await _json(r))["error"]["code"] == "not_found"
        assert (await c.get("/search", params={"q": Q, "model": "rrf"})).status == 200


# --------------------------------------------------------------------------------------
# debug: the page's searches and clicks stay out of the training data


async def test_debug_search_and_click_leave_the_training_data_unchanged(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    """What search.training.events_dataset trains on: served_features() and sessions()."""
    events = tmp_path / "events.db"
    async with serve(encoder, small_index, model_dir, events) as c:
        state = c.app[STATE]  # type: ignore[index]
        page = await _json(await c.post("/search", json={"q": Q, "k": 5, "debug": True}))
        click = [
            {"type": "click", "request_id": page["request_id"], "doc_id": page["hits"][0]["id"]}
        ]
        r = await c.post("/events?debug=true", json=click)
        assert r.status == 202 and await _json(r) == {"accepted": 0, "debug": True}
        page2 = await _json(await c.get("/search", params={"q": Q, "k": "5", "debug": "true"}))
        await state.writer.flush()
        assert state.store.counts() == {"requests": 0, "impressions": 0, "events": 0}
        assert state.store.served_features().empty and state.store.sessions() == []
        # the same click without debug names a page that was never logged: refused
        r = await c.post("/events", json=click)
        assert r.status == 422 and (await _json(r))["error"]["code"] == "unknown_request_id"
        assert page2["hits"]
        # control: a user's search and click do reach the log (the test can fail)
        user = await _json(await c.get("/search", params={"q": Q, "k": "5"}))
        ok = [{"type": "click", "request_id": user["request_id"], "doc_id": user["hits"][1]["id"]}]
        assert (await c.post("/events", json=ok)).status == 202
        await state.writer.flush()
        assert state.store.counts() == {"requests": 1, "impressions": 5, "events": 1}
        frame = state.store.served_features()
        assert len(frame) == 5 and int(frame["clicked"].sum()) == 1
        assert len(state.store.sessions()) == 1
        # a debug click on the user's page is still dropped
        assert (await c.post("/events?debug=1", json=ok)).status == 202
        assert state.store.counts()["events"] == 1
        r = await c.post("/events?debug=maybe", json=ok)
        assert r.status == 400 and (await _json(r))["error"]["code"] == "invalid_parameter"
        bad = [{"type": "click", "request_id": "", "doc_id": "x"}]
        assert (await c.post("/events?debug=true", json=bad)).status == 400  # still validated


# --------------------------------------------------------------------------------------
# drift reports: read only, nothing outside the directory


def _report_tree(tmp_path: Path) -> Path:
    root = tmp_path / "drift"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.html").write_text(SECRET)
    (outside / FEATURES_HTML).write_text(SECRET)
    (tmp_path / "secret.txt").write_text(SECRET)
    new = root / f"{REPORT_PREFIX}20260102T000000Z"
    old = root / f"{REPORT_PREFIX}20260101T000000Z"
    for d in (new, old):
        d.mkdir(parents=True)
        (d / FEATURES_HTML).write_text(f"<html>features of {d.name}</html>")
        (d / "notes.txt").write_text(SECRET)  # not a report file
    summary = {"decision": "feature_drift", "drifted": True, "model_version": "v0001"}
    (new / SUMMARY_FILE).write_text(json.dumps({**summary, "window": {"since": "a"}}))
    os.symlink(outside / "secret.html", old / CONCEPT_HTML)  # a symlinked file
    os.symlink(outside, root / f"{REPORT_PREFIX}20260103T000000Z")  # a symlinked report
    return root


async def _raw_get(c: TestClient, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client-side normalisation of dots)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", c.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_reports_are_listed_and_served_read_only(
    encoder: Any, small_index: Path, tmp_path: Path
) -> None:
    root = _report_tree(tmp_path)
    async with serve(encoder, small_index, None, reports=_source(root)) as c:
        listed = (await _json(await c.get("/reports")))["reports"]
        assert [r["name"] for r in listed] == ["drift-20260102T000000Z", "drift-20260101T000000Z"]
        assert listed[0]["files"] == {
            FEATURES_HTML: f"/reports/drift-20260102T000000Z/{FEATURES_HTML}",
            SUMMARY_FILE: f"/reports/drift-20260102T000000Z/{SUMMARY_FILE}",
        }
        assert listed[0]["summary"]["decision"] == "feature_drift"
        assert listed[1]["files"] == {
            FEATURES_HTML: f"/reports/drift-20260101T000000Z/{FEATURES_HTML}"
        }
        r = await c.get(listed[0]["files"][FEATURES_HTML])
        assert r.status == 200 and "features of drift-20260102" in await r.text()
        assert r.headers["Content-Security-Policy"] == "sandbox allow-scripts"
        assert (await c.post(listed[0]["files"][FEATURES_HTML])).status == 405
        for target in (
            "/reports/drift-20260101T000000Z/concept.html",  # symlink to outside
            "/reports/drift-20260103T000000Z/features.html",  # symlinked directory
            "/reports/drift-20260101T000000Z/notes.txt",  # not a report file
            "/reports/../secret.txt",
            "/reports/../../secret.txt",
            "/reports/drift-20260101T000000Z/../../secret.txt",
            "/reports/%2e%2e/secret.txt",
            "/reports/%2E%2E/%2E%2E/secret.txt",
            "/reports/drift-20260101T000000Z/%2e%2e%2f%2e%2e%2fsecret.txt",
            "/reports/..%2f..%2foutside/secret.html",
            "/reports/drift-20260101T000000Z/..%5c..%5csecret.txt",
            "/reports/%2e%2e%2foutside/features.html",
            "/reports/outside/features.html",
            "/reports/drift-20260101T000000Z%00/features.html",
            "/reports//etc/passwd",
            "/reports/drift-20260101T000000Z/",
        ):
            status, body = await _raw_get(c, target)
            assert status in (400, 404), target
            assert SECRET.encode() not in body and b"root:" not in body, target
    async with serve(encoder, small_index, None) as c:  # no report directory configured
        assert (await _json(await c.get("/reports"))) == {"reports": []}
        assert (await c.get("/reports/drift-20260102T000000Z/features.html")).status == 404
    async with serve(encoder, small_index, None, reports=_source(tmp_path / "none")) as c:
        assert (await _json(await c.get("/reports"))) == {"reports": []}


def test_readme_shows_each_view_in_a_small_screenshot() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    shots = sorted((root / "docs" / "img").glob("workbench-*.png"))
    views = {"search", "explain", "side-by-side", "model-card", "reports", "drift-report"}
    assert {p.stem.removeprefix("workbench-") for p in shots} == views
    for p in shots:
        assert f"(docs/img/{p.name})" in readme, p.name
        assert p.stat().st_size < 300_000, p.name
