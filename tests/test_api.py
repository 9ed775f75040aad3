"""The search API on a real aiohttp server (127.0.0.1), a real local index (bm25s + MiniLM)
over a Cranfield subset, a real XGBoost model and a real SQLite event store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from indexing.loaders import load_beir
from ltr.features import TEXT_FEATURES, featureset_id
from search.api import DEFAULT_FEATURES, make_app
from search.events import SqliteEventStore
from search.http import JsonErrorRunner
from search.server import STATE
from tests.api_support import ADMIN, api_config, build_index, build_model_sync


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[TestClient]:
    """The app on 127.0.0.1 through the runner ``scripts/serve.py`` uses."""
    async with TestClient(_Server(app, host="127.0.0.1")) as client:
        yield client


class _Server(TestServer):
    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return JsonErrorRunner(self.app, **kwargs)


def write_current(index_dir: Path, version: str) -> None:
    """Swap CURRENT the way indexing.build does (rollback to a named version)."""
    from indexing.build import rollback

    rollback(index_dir, version)


def _app(encoder: Any, index_dir: Path, model_dir: Path | None, events: Path | None, **kw: Any):
    return make_app(
        api_config(**kw), encoder, index_dir=index_dir, model_dir=model_dir, events_path=events
    )


def _state(c: TestClient) -> Any:
    app = c.app
    assert app is not None
    return app[STATE]


async def _json(resp: Any) -> Any:
    return json.loads(await resp.text())


# --------------------------------------------------------------------------------------
# routes


async def test_search_get_and_post(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    app = _app(encoder, small_index, model_dir, tmp_path / "e.db")
    async with serve(app) as c:
        r = await c.get("/search", params={"q": "wing flutter at supersonic speed", "k": "5"})
        assert r.status == 200, await r.text()
        body = await _json(r)
        assert set(body) >= {"request_id", "query", "model_version", "hits", "degraded", "took_ms"}
        assert body["model_version"] == "v1" or body["model_version"]
        assert body["degraded"] == []
        assert len(body["hits"]) == 5
        assert [h["position"] for h in body["hits"]] == [1, 2, 3, 4, 5]
        scores = [h["score"] for h in body["hits"]]
        assert scores == sorted(scores, reverse=True)
        h = body["hits"][0]
        assert set(h) >= {"id", "score", "position", "fields", "retrievers"}
        assert set(h["retrievers"]) == {"bm25", "dense"}
        assert h["fields"]["title"] and h["fields"]["category"] in ("even", "odd")
        assert r.headers["X-Request-ID"] == body["request_id"]
        # POST gives the same ranking for the same query
        r2 = await c.post("/search", json={"q": "wing flutter at supersonic speed", "k": 5})
        assert [x["id"] for x in (await _json(r2))["hits"]] == [x["id"] for x in body["hits"]]


async def test_pagination_slices_the_reranked_list(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    async with serve(_app(encoder, small_index, model_dir, None)) as c:
        q = "boundary layer transition heat transfer"
        full = (await _json(await c.get("/search", params={"q": q, "k": 12})))["hits"]
        page2 = (await _json(await c.get("/search", params={"q": q, "k": 4, "offset": 4})))["hits"]
        assert [h["id"] for h in page2] == [h["id"] for h in full[4:8]]
        assert [h["position"] for h in page2] == [5, 6, 7, 8]
        far = await _json(await c.get("/search", params={"q": q, "k": 10, "offset": 1000}))
        assert far["hits"] == []


async def test_filters_category_and_ranges(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    async with serve(_app(encoder, small_index, model_dir, None)) as c:
        r = await c.post(
            "/search",
            json={
                "q": "pressure distribution on a wing",
                "k": 20,
                "category": "even",
                "filters": {"year": {"gte": 1955, "lte": 1960}},
            },
        )
        assert r.status == 200, await r.text()
        hits = (await _json(r))["hits"]
        assert hits
        for h in hits:
            assert h["fields"]["category"] == "even"
            assert 1955 <= h["fields"]["year"] <= 1960
        r = await c.get("/search", params={"q": "pressure", "category": "odd", "k": 20})
        assert all(h["fields"]["category"] == "odd" for h in (await _json(r))["hits"])


async def test_explain_contributions_sum_to_the_score(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    async with serve(_app(encoder, small_index, model_dir, None)) as c:
        r = await c.get("/search", params={"q": "shock wave interaction", "explain": "true"})
        hits = (await _json(r))["hits"]
        for h in hits:
            contrib = h["contributions"]
            assert set(contrib) == {*DEFAULT_FEATURES, "_bias"}
            assert sum(contrib.values()) == pytest.approx(h["score"], abs=1e-3)
        plain = await _json(await c.get("/search", params={"q": "shock wave interaction"}))
        assert "contributions" not in plain["hits"][0]


async def test_health_ready_model_metrics(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    async with serve(_app(encoder, small_index, None, None)) as c:  # no model
        assert (await c.get("/health")).status == 200
        r = await c.get("/ready")
        assert r.status == 503
        assert "no model loaded" in (await _json(r))["problems"][0]
        body = await _json(await c.get("/model"))
        assert body["model_version"] is None and body["ranking"] == "rrf"
        # without a model the search still serves, ranked by RRF
        r = await c.get("/search", params={"q": "wing", "explain": "1"})
        body = await _json(r)
        assert r.status == 200 and body["model_version"] is None and "RRF" in body["explain"]
    async with serve(_app(encoder, small_index, model_dir, None)) as c:
        r = await c.get("/ready")
        assert r.status == 200
        ready = await _json(r)
        assert ready["ready"] and ready["model_version"] and ready["index_version"]
        m = await _json(await c.get("/model"))
        assert m["featureset_id"] == featureset_id(DEFAULT_FEATURES)
        assert m["base_margin"] == {"name": "rrf", "params": {}}
        await c.get("/search", params={"q": "wing"})
        await c.get("/search", params={"q": ""})
        r = await c.get("/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
        assert 'ltrsearch_http_requests_total{route="/search",status="200"} 1' in text
        assert 'ltrsearch_http_requests_total{route="/search",status="400"} 1' in text
        for stage in ("embed", "bm25", "knn", "features", "model", "total"):
            assert f'ltrsearch_search_stage_duration_seconds_count{{stage="{stage}"}} 1' in text
        # prometheus_client writes labels sorted by name (featureset_id before version)
        info = f'{{featureset_id="{m["featureset_id"]}",version="{m["model_version"]}"}} 1.0'
        assert f"ltrsearch_model_info{info}" in text
        assert 'ltrsearch_errors_total{code="invalid_query"} 1' in text
        assert 'ltrsearch_candidate_cache{stat="misses"} 1' in text
        await c.get("/search", params={"q": "wing"})  # the same query again: a cache hit
        text = await (await c.get("/metrics")).text()
        for stat, value in (("hits", 1), ("misses", 1), ("entries", 1)):
            assert f'ltrsearch_candidate_cache{{stat="{stat}"}} {value}' in text
        assert 'ltrsearch_search_stage_duration_seconds_count{stage="bm25"} 1' in text
        assert 'ltrsearch_search_stage_duration_seconds_count{stage="total"} 2' in text


async def test_events_for_a_just_served_page_are_accepted(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "e.db"
    async with serve(_app(encoder, small_index, model_dir, db)) as c:
        body = await _json(await c.get("/search", params={"q": "jet noise", "k": 5}))
        rid, doc = body["request_id"], body["hits"][1]["id"]
        # the impression is still in the writer's batch (flush interval is 60 s here)
        assert _state(c).writer.is_pending(rid)
        r = await c.post(
            "/events",
            json=[
                {"type": "click", "request_id": rid, "doc_id": doc},
                {"type": "add_to_cart", "request_id": rid, "doc_id": doc},
            ],
        )
        assert r.status == 202, await r.text()
        assert (await _json(r))["accepted"] == 2
    store = SqliteEventStore(db)  # after shutdown: everything is on disk
    df = store.served_features()
    assert df["request_id"].unique().tolist() == [rid]
    assert df.loc[df["doc_id"] == doc, "clicked"].tolist() == [1]
    assert df["clicked"].sum() == 1
    assert df["query"].iloc[0] == "jet noise"
    assert store.counts()["events"] == 2
    store.close()


# --------------------------------------------------------------------------------------
# bad input: 4xx with {"error": {"code", "message"}} naming the problem


@pytest.mark.parametrize(
    ("params", "status", "code", "needle"),
    [
        ({"q": ""}, 400, "invalid_query", "empty"),
        ({"q": "   \t "}, 400, "invalid_query", "empty"),
        ({"q": "x" * 600}, 400, "invalid_query", "longer than 512"),
        ({}, 400, "bad_request", "q: the query is missing"),
        ({"q": "wing", "k": "0"}, 400, "invalid_parameter", "k: must be between 1 and 100"),
        ({"q": "wing", "k": "101"}, 400, "invalid_parameter", "k: must be between"),
        ({"q": "wing", "k": "ten"}, 400, "invalid_parameter", "k: expected an integer"),
        ({"q": "wing", "offset": "-1"}, 400, "invalid_parameter", "offset: must be between"),
        ({"q": "wing", "offset": "5000"}, 400, "invalid_parameter", "offset"),
        ({"q": "wing", "explain": "maybe"}, 400, "invalid_parameter", "explain"),
        ({"q": "wing", "colour": "red"}, 400, "unknown_field", "colour"),
    ],
)
async def test_bad_get_search(
    encoder: Any,
    small_index: Path,
    params: dict[str, str],
    status: int,
    code: str,
    needle: str,
) -> None:
    async with serve(_app(encoder, small_index, None, None)) as c:
        r = await c.get("/search", params=params)
        assert r.status == status
        err = (await _json(r))["error"]
        assert err["code"] == code and needle in err["message"]
        assert (await c.get("/search", params={"q": "wing"})).status == 200  # still serving


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "needle"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "malformed_json", "valid JSON"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "malformed_json", "object"),
        (
            b'{"q": "wing", "size": 3}',
            {"Content-Type": "application/json"},
            400,
            "unknown_field",
            "size",
        ),
        (b'{"q": 3}', {"Content-Type": "application/json"}, 400, "invalid_parameter", "q"),
        (
            b'{"q": "wing", "k": true}',
            {"Content-Type": "application/json"},
            400,
            "invalid_parameter",
            "k",
        ),
        (
            b'{"q": "wing", "filters": {"nope": {"gte": 1}}}',
            {"Content-Type": "application/json"},
            400,
            "invalid_parameter",
            "filters.nope: unknown attribute; valid: year",
        ),
        (
            b'{"q": "wing", "filters": {"year": {"gt": 1}}}',
            {"Content-Type": "application/json"},
            400,
            "invalid_parameter",
            "gte",
        ),
        (
            b'{"q": "wing", "filters": {"year": {"gte": 9, "lte": 1}}}',
            {"Content-Type": "application/json"},
            400,
            "invalid_parameter",
            "greater",
        ),
        (
            b"q=wing",
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            b'{"q": "' + b"w" * 70_000 + b'"}',
            {"Content-Type": "application/json"},
            413,
            "payload_too_large",
            "65536",
        ),
    ],
)
async def test_bad_post_search(
    encoder: Any,
    small_index: Path,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    needle: str,
) -> None:
    async with serve(_app(encoder, small_index, None, None)) as c:
        r = await c.post("/search", data=body, headers=headers)
        assert r.status == status, await r.text()
        err = (await _json(r))["error"]
        assert err["code"] == code and needle in err["message"], err
        assert (await c.post("/search", json={"q": "wing"})).status == 200


async def test_bad_events(encoder: Any, small_index: Path, tmp_path: Path) -> None:
    async with serve(_app(encoder, small_index, None, tmp_path / "e.db")) as c:
        body = await _json(await c.get("/search", params={"q": "wing", "k": 3}))
        rid = body["request_id"]
        r = await c.post(
            "/events",
            json=[
                {"type": "click", "request_id": rid, "doc_id": body["hits"][0]["id"]},
                {"type": "click", "request_id": "deadbeef", "doc_id": "1"},
                {"type": "click", "request_id": "cafe", "doc_id": "1"},
            ],
        )
        assert r.status == 422
        err = (await _json(r))["error"]
        assert err["code"] == "unknown_request_id"
        assert "cafe, deadbeef" in err["message"]
        r = await c.post("/events", json=[{"type": "hover", "request_id": rid, "doc_id": "1"}])
        assert r.status == 400 and "events[0].type" in (await _json(r))["error"]["message"]
        r = await c.post("/events", json=[{"type": "click", "request_id": rid, "doc_id": "zz"}])
        assert r.status == 400 and "not shown" in (await _json(r))["error"]["message"]
        r = await c.post("/events", data=b"[", headers={"Content-Type": "application/json"})
        assert r.status == 400
        r = await c.post("/events", data=b"[]", headers={"Content-Type": "text/plain"})
        assert r.status == 415
        r = await c.get("/nowhere")
        assert r.status == 404 and (await _json(r))["error"]["code"] == "not_found"
        r = await c.delete("/search")
        assert r.status == 405 and (await _json(r))["error"]["code"] == "method_not_allowed"
        store = _state(c).store
        assert store.counts()["events"] == 0  # nothing of a bad batch was stored


async def test_events_without_store_is_503(encoder: Any, small_index: Path) -> None:
    async with serve(_app(encoder, small_index, None, None)) as c:
        r = await c.post("/events", json=[{"type": "click", "request_id": "a", "doc_id": "b"}])
        assert r.status == 503
        assert (await _json(r))["error"]["code"] == "event_store_unavailable"


# --------------------------------------------------------------------------------------
# admin


@pytest.mark.slow
async def test_admin_reload_tokens_and_featureset_refusal(
    encoder: Any, small_index: Path, model_dir: Path, beir_small: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    # a second model over another feature list, promoted: the server is pinned to the first
    await asyncio.to_thread(
        build_model_sync, small_index, beir_small, models, encoder, TEXT_FEATURES
    )
    from ltr.registry import ModelRegistry

    reg = ModelRegistry(models)
    first, second = reg.list_versions()[0], reg.promoted()
    reg.promote(first)
    pin = featureset_id(DEFAULT_FEATURES)
    app = _app(encoder, small_index, models, None, featureset_id=pin)
    async with serve(app) as c:
        assert (await c.post("/admin/reload")).status == 401
        r = await c.post("/admin/reload", headers={"Authorization": "Bearer wrong"})
        assert r.status == 403 and (await _json(r))["error"]["code"] == "forbidden"
        auth = {"Authorization": f"Bearer {ADMIN}"}
        r = await c.post("/admin/reload", json={"version": second}, headers=auth)
        assert r.status == 409, await r.text()
        err = (await _json(r))["error"]
        assert err["code"] == "conflict" and f"still serving model {first}" in err["message"]
        assert (await _json(await c.get("/model")))["model_version"] == first
        body = await _json(await c.get("/search", params={"q": "wing"}))
        assert body["model_version"] == first
        r = await c.post("/admin/reload", json={"version": "v999"}, headers=auth)
        assert r.status == 404 and "v999" in (await _json(r))["error"]["message"]
        r = await c.post("/admin/reload", json={"versio": "v1"}, headers=auth)
        assert r.status == 400
        r = await c.post("/admin/reload", headers=auth)  # newest promoted = first
        assert r.status == 200
        assert (await _json(r))["model_version"] == first


async def test_admin_disabled_without_token(encoder: Any, small_index: Path) -> None:
    async with serve(_app(encoder, small_index, None, None, admin_token="")) as c:
        r = await c.post("/admin/reload", headers={"Authorization": "Bearer anything"})
        assert r.status == 403 and "disabled" in (await _json(r))["error"]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "threaded"])
async def test_concurrent_searches_during_model_reload_and_index_swap(
    encoder: Any,
    embedding_cache: Any,
    small_index: Path,
    two_models_dir: Path,
    beir_small: Path,
    tmp_path: Path,
    inline: bool,
) -> None:
    index = tmp_path / "index"
    shutil.copytree(small_index, index)
    models = tmp_path / "models"
    shutil.copytree(two_models_dir, models)
    from ltr.registry import ModelRegistry

    reg = ModelRegistry(models)
    v1, v2 = reg.list_versions()
    reg.promote(v1)
    ds = load_beir(beir_small)
    queries = [q.text for q in ds.queries]
    from indexing.build import rollback
    from indexing.layout import current_version

    # a second index version, built beforehand; CURRENT goes back to the first one
    new_version = await asyncio.to_thread(build_index, beir_small, index, encoder, embedding_cache)
    await asyncio.to_thread(rollback, index)
    assert current_version(index) != new_version
    app = _app(encoder, index, models, tmp_path / "e.db", local_inline=inline)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with serve(app) as c:
        assert _state(c).pipeline.backend.inline is inline  # api.local_inline
        old_index = (await _json(await c.get("/model")))["index_version"]
        statuses: list[int] = []
        versions: set[str] = set()

        async def searcher(i: int) -> None:
            for j in range(12):
                r = await c.get("/search", params={"q": queries[(i + j) % len(queries)]})
                statuses.append(r.status)
                b = await _json(r)
                if r.status == 200:
                    versions.add(b["model_version"])
                    assert b["degraded"] == [] and b["hits"]

        async def admin() -> None:
            await asyncio.sleep(0.05)
            reg.promote(v2)
            r = await c.post("/admin/reload", headers=auth)
            assert r.status == 200, await r.text()
            assert (await _json(r))["index_reloaded"] is False
            await asyncio.sleep(0.05)
            write_current(index, new_version)  # an index swap (what a reindex ends with)
            r = await c.post("/admin/reload", headers=auth)
            assert r.status == 200 and (await _json(r))["index_reloaded"] is True

        await asyncio.gather(*(searcher(i) for i in range(4)), admin())
        assert statuses and set(statuses) == {200}
        assert v2 in versions
        new_index = (await _json(await c.get("/model")))["index_version"]
        assert new_index == new_version != old_index
        assert _state(c).pipeline.backend.inline is inline  # the swapped-in backend too
        r = await c.get("/search", params={"q": "wing"})
        assert r.status == 200


async def test_logged_vectors_equal_replay_and_scores_are_identical(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Parity: the impression log holds exactly what featurize computes for the same
    query and candidates, and the model scores the logged rows to the served scores."""
    db = tmp_path / "e.db"
    app = _app(encoder, small_index, model_dir, db)
    async with serve(app) as c:
        state = _state(c)
        # some click history first so behavior features are not all NaN
        b0 = await _json(await c.get("/search", params={"q": "supersonic flow", "k": 5}))
        await c.post(
            "/events",
            json=[{"type": "click", "request_id": b0["request_id"], "doc_id": b0["hits"][0]["id"]}],
        )
        body = await _json(await c.get("/search", params={"q": "supersonic flow", "k": 8}))
        # replay before the page is flushed: once logged, its own impressions join the
        # behavior aggregates (features are "as of serve time")
        assert state.writer.is_pending(body["request_id"])
        imp_ts = state.writer._buf[-1].ts
        fz = await state.pipeline.featurize("supersonic flow", now=imp_ts)
        await state.writer.flush()
        df = state.store.served_features()
        rows = df[df["request_id"] == body["request_id"]].sort_values("position")
        names = list(state.pipeline.model.feature_names)
        logged = rows[names].to_numpy(np.float32)
        assert float(rows["ts"].iloc[0]) == imp_ts
        idx = [fz.cs.ids.index(d) for d in rows["doc_id"]]
        np.testing.assert_array_equal(logged, fz.X[idx])  # bit-exact, NaN included
        beh = [names.index(n) for n in names if n.startswith(("qd_", "d_"))]
        assert np.isfinite(logged[:, beh]).any()  # the click history is in the vectors
        from ltr.fusion import fusion_score

        model = state.pipeline.model
        bm = fusion_score(fz.cs, "rrf", {})[idx]
        rescored = model.predict(logged, bm)
        np.testing.assert_array_equal(rescored.astype(np.float64), rows["score"].to_numpy())
        assert [h["score"] for h in body["hits"]] == pytest.approx(rows["score"].tolist())
