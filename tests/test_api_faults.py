"""Faults: kill -9 of a real scripts/serve.py process, failing and slow retrievers,
unexpected exceptions, and the closed learning loop over HTTP.

Fault injection wraps the REAL local backend (every call goes to bm25s / the dense matrix)
and only adds a delay or an exception where a test says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from indexing.backend import Filters, Hits
from indexing.errors import BackendError
from indexing.local import LocalBackend
from scripts.serverproc import ROOT, free_port, stop_server, wait_ready
from search.api import make_app
from search.events import SqliteEventStore
from tests.api_support import ADMIN, api_config, start_test_server
from tests.test_api import _json, serve


class FaultyBackend:
    """The real LocalBackend with injected faults (delay / exception per method)."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.delay: dict[str, float] = {}
        self.fail: dict[str, BaseException] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _fault(self, name: str) -> None:
        if name in self.delay:
            await asyncio.sleep(self.delay[name])
        if name in self.fail:
            raise self.fail[name]

    async def bm25(
        self, query: str, k: int, field: str | None = None, filters: Filters | None = None
    ) -> Hits:
        await self._fault("bm25")
        return await self.inner.bm25(query, k, field, filters)

    async def knn(self, vector: np.ndarray, k: int, filters: Filters | None = None) -> Hits:
        await self._fault("knn")
        return await self.inner.knn(vector, k, filters)

    async def fetch(self, ids: Sequence[str]) -> Any:
        await self._fault("fetch")
        return await self.inner.fetch(ids)

    async def info(self) -> Any:
        return await self.inner.info()

    async def field_scores(self, query: str, ids: Sequence[str]) -> Any:
        return await self.inner.field_scores(query, ids)

    async def cosine(self, vector: np.ndarray, ids: Sequence[str]) -> Any:
        return await self.inner.cosine(vector, ids)

    async def analyze(self, text: str) -> Any:
        return await self.inner.analyze(text)

    async def doc_terms(self, ids: Sequence[str]) -> Any:
        return await self.inner.doc_terms(ids)

    async def idf(self, terms: Sequence[str]) -> Any:
        return await self.inner.idf(terms)

    async def close(self) -> None:
        await self.inner.close()


async def test_failing_and_slow_retrievers_degrade_not_fail(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    backend = FaultyBackend(LocalBackend.open(small_index, encoder))
    app = make_app(api_config(), encoder, backend=backend, model_dir=model_dir)
    async with serve(app) as c:
        backend.fail["bm25"] = BackendError("bm25 shard down")
        r = await c.get("/search", params={"q": "wing flutter"})
        body = await _json(r)
        assert r.status == 200 and body["degraded"] == ["bm25"] and body["hits"]
        assert all(h["retrievers"]["bm25"]["rank"] is None for h in body["hits"])
        backend.fail.clear()
        backend.delay["knn"] = 1.0  # over the 500 ms knn stage timeout
        r = await c.get("/search", params={"q": "wing flutter"})
        body = await _json(r)
        assert r.status == 200 and body["degraded"] == ["dense"] and body["hits"]
        backend.fail["bm25"] = BackendError("bm25 shard down")  # both down: 503, named
        r = await c.get("/search", params={"q": "wing flutter"})
        assert r.status == 503
        assert (await _json(r))["error"]["code"] == "backend_unavailable"
        backend.fail.clear()
        backend.delay.clear()
        r = await c.get("/search", params={"q": "wing flutter"})
        assert r.status == 200 and (await _json(r))["degraded"] == []
        text = await (await c.get("/metrics")).text()
        assert 'ltrsearch_degraded_total{retriever="bm25"} 1' in text
        assert 'ltrsearch_degraded_total{retriever="dense"} 1' in text


async def test_unexpected_exception_is_500_json_without_traceback(
    encoder: Any, small_index: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FaultyBackend(LocalBackend.open(small_index, encoder))
    backend.fail["fetch"] = RuntimeError("secret internal detail /etc/passwd")
    async with serve(make_app(api_config(), encoder, backend=backend)) as c:
        r = await c.get("/search", params={"q": "wing"})
        assert r.status == 500
        text = await r.text()
        body = json.loads(text)
        assert body["error"]["code"] == "internal_error"
        assert body["request_id"] in body["error"]["message"]
        assert "secret" not in text and "Traceback" not in text
        backend.fail.clear()
        assert (await c.get("/search", params={"q": "wing"})).status == 200
    logged = [r for r in caplog.records if r.name == "search.api" and r.exc_info]
    assert logged
    exc_info = logged[0].exc_info
    assert exc_info is not None and "secret internal detail" in str(exc_info[1])


# --------------------------------------------------------------------------------------
# a real server process


@pytest.mark.slow
async def test_kill_9_after_ack_keeps_every_acknowledged_event(
    small_index: Path, tmp_path: Path
) -> None:
    port, db, log = free_port(), tmp_path / "events.db", tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_test_server(small_index, db, port, log)
    acked: list[tuple[str, str, str]] = []
    try:
        await asyncio.to_thread(wait_ready, url, proc, log, 180)
        async with aiohttp.ClientSession() as s:
            for i, q in enumerate(["wing flutter", "heat transfer", "jet noise", "shock"]):
                async with s.get(f"{url}/search", params={"q": q, "k": "5"}) as r:
                    body = await r.json()
                events = [
                    {"type": t, "request_id": body["request_id"], "doc_id": h["id"]}
                    for t, h in zip(("click", "purchase"), body["hits"][i % 2 :], strict=False)
                ]
                async with s.post(f"{url}/events", json=events) as r:
                    assert r.status == 202
                acked += [(e["type"], e["request_id"], e["doc_id"]) for e in events]
        proc.send_signal(signal.SIGKILL)  # right after the last acknowledgement
        proc.wait(timeout=30)
        # restart on the same files: the server recovers the WAL and serves again
        proc = start_test_server(small_index, db, port, log)
        await asyncio.to_thread(wait_ready, url, proc, log, 180)
        async with aiohttp.ClientSession() as s:  # a request id of the killed process
            rid = acked[0][1]
            ev = [{"type": "click", "request_id": rid, "doc_id": acked[0][2]}]
            async with s.post(f"{url}/events", json=ev) as r:
                assert r.status == 202
    finally:
        stop_server(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]  # clean shutdown on SIGTERM
    store = SqliteEventStore(db)
    got = [(e.type, e.request_id, e.doc_id) for e in store.events()]
    store.close()
    assert got[: len(acked)] == acked  # every acknowledged event, in order
    assert len(got) == len(acked) + 1
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert any(x.get("request_id") for x in lines)  # structured logs carry the request id


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    env = dict(os.environ, LTRSEARCH_API__PORT="99999")
    r = subprocess.run(
        [sys.executable, "-m", "scripts.serve", "--index-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "port" in r.stderr and "Traceback" not in r.stderr


def test_simulator_refuses_non_loopback(tmp_path: Path) -> None:
    from scripts.simulate_traffic import main

    assert main(["--url", "http://8.8.8.8:80", "--dataset", str(tmp_path)]) == 2


# --------------------------------------------------------------------------------------
# the loop: serve -> simulated users -> train from the log -> reload -> NDCG


@pytest.mark.slow
async def test_closed_loop_learns_from_clicks(
    encoder: Any, small_index: Path, beir_small: Path, tmp_path: Path
) -> None:
    from scripts.simulate_traffic import SimOptions, run

    db, models = tmp_path / "events.db", tmp_path / "models"
    app = make_app(
        # the log holds first pages of 10: the model reorders the RRF top-10 only
        api_config(require_model=False, rerank_depth=10),
        encoder,
        index_dir=small_index,
        model_dir=models,
        events_path=db,
    )
    async with serve(app) as c:
        url = str(c.make_url("")).rstrip("/")
        args = SimOptions(
            url=url,
            dataset=str(beir_small),
            sessions=1200,
            max_seconds=240.0,
            concurrency=4,
            k=10,
            noise=0.1,
            exam_eta=1.0,
            seed=0,
            holdout=0.25,
            train=True,
            events=str(db),
            model_dir=str(models),
            admin_token=ADMIN,
            settings=None,
            out=None,
        )
        out = await run(args)
    t = out["traffic"]
    assert t["errors"] == 0 and t["searches"] >= 1000 and t["clicks"] > 0
    before, after = out["before"], out["after"]
    assert before["traffic"]["model"] is None  # RRF before the first model
    assert after["traffic"]["model"] == out["train"]["version"]
    assert out["train"]["label_source"].startswith("clicks:")
    # clicks on these queries are learned: a clear gain over RRF where there was traffic
    # (measured 0.548 -> 0.697 with seed 0; see docs/benchmarks.md "Search API")
    assert after["traffic"]["ndcg@10"] >= before["traffic"]["ndcg@10"] + 0.05, out
    # Queries without traffic are NOT protected: the click-trained model drops them
    # (measured 0.467 -> 0.299), a known limitation reported in the docs, not asserted.
    assert 0.0 <= after["holdout"]["ndcg@10"] <= 1.0
    print(json.dumps({k: out[k] for k in ("before", "after", "traffic")}, default=str))
