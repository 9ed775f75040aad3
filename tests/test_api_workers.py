"""``ltrsearch-serve --workers 2``: two real server processes on one port behave as one.

Every request opens its own connection, so the kernel spreads them over both workers
(SO_REUSEPORT); the ``X-Worker`` response header says which one answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ltr.registry import ModelRegistry
from scripts.serverproc import free_port, wait_ready
from search.events import SqliteEventStore
from tests.api_support import ADMIN, raw_request, start_test_server

pytestmark = pytest.mark.slow


def _start(index_dir: Path, models: Path, events: Path, port: int, log: Path) -> Any:
    return start_test_server(
        index_dir,
        events,
        port,
        log,
        models,
        ["--workers", "2"],
        LTRSEARCH_API__REQUIRE_MODEL="true",
        LTRSEARCH_API__AGGREGATES_POLL_S="0.2",
    )


async def _call(method: str, url: str, **kw: Any) -> tuple[int, str, Any]:
    """One request on a fresh connection: (status, worker, JSON body)."""
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, **kw) as r,
    ):
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, r.headers.get("X-Worker", ""), body


async def _until(pred: Any, what: str, tries: int = 200) -> Any:
    for _ in range(tries):
        got = await pred()
        if got is not None:
            return got
    raise AssertionError(f"never got {what}")


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def test_two_workers_share_events_reloads_metrics_and_stop_with_the_supervisor(
    small_index: Path,
    two_models_dir: Path,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    shutil.copytree(two_models_dir, models)
    reg = ModelRegistry(models)
    first, second = reg.list_versions()
    assert reg.promoted() == second  # the newer one: the workers start on it
    port, db, log = free_port(), tmp_path / "events.db", tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = _start(small_index, models, db, port, log)
    acked: list[tuple[str, str, str]] = []
    try:
        deadline = time.monotonic() + 240
        while len(_children(proc.pid)) < 2 or not (tmp_path / "ready").exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "workers did not start"
            if '"workers": 2' in log.read_text():  # the supervisor's line: all are serving
                (tmp_path / "ready").touch()
            await asyncio.sleep(0.3)
        workers = _children(proc.pid)

        # searches land on both workers
        served: dict[str, Any] = {}

        async def search() -> Any:
            st, w, body = await _call("GET", f"{url}/search", params={"q": "wing flutter"})
            assert st == 200, body
            assert body["model_version"] == second
            served.setdefault(w, body)
            return served if len(served) == 2 else None

        await _until(search, "searches on both workers")
        assert set(served) == {"0", "1"}

        # a click on a page worker 0 served (still in its queue: flush every 60 s) is
        # accepted by worker 1, which has every worker flush before judging the id
        page = served["0"]
        ev = [{"type": "click", "request_id": page["request_id"], "doc_id": page["hits"][0]["id"]}]

        async def post_on_other() -> Any:
            st, w, body = await _call("POST", f"{url}/events", json=ev)
            assert st == 202, body
            acked.append(("click", page["request_id"], page["hits"][0]["id"]))
            return w if w == "1" else None

        await _until(post_on_other, "an event on worker 1")
        st, _, body = await _call("POST", f"{url}/events", json=[{**ev[0], "request_id": "f" * 32}])
        assert st == 422 and body["error"]["code"] == "unknown_request_id"  # still refused

        # /admin/reload on one worker: every worker serves the named version afterwards
        st, _, body = await _call(
            "POST",
            f"{url}/admin/reload",
            json={"version": first},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert st == 200 and body["model_version"] == first and body["workers"] == 2, body
        seen: set[str] = set()

        async def model_everywhere() -> Any:
            st, w, body = await _call("GET", f"{url}/model")
            assert st == 200 and body["model_version"] == first, (w, body)
            seen.add(w)
            return seen if len(seen) == 2 else None

        await _until(model_everywhere, "/model from both workers")

        # /metrics: one exposition with both workers' series
        st, _, text = await _call("GET", f"{url}/metrics")
        assert st == 200
        assert 'worker="0"' in text and 'worker="1"' in text
        assert text.count("# TYPE ltrsearch_http_requests_total counter") == 1

        # a request line past aiohttp's own parser limit: scripts/serve.py runs the app
        # through JsonErrorRunner, so it is the API's JSON 414, not aiohttp's plain text
        huge = b"GET /search?q=" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        st, headers, raw = await raw_request(port, huge)
        assert st == 414 and headers["content-type"].startswith("application/json"), raw
        assert json.loads(raw)["error"]["code"] == "uri_too_long"

        # a worker killed with -9 is replaced; searches keep being answered meanwhile
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while len(set(_children(proc.pid)) - {workers[0]}) < 2:
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            await asyncio.sleep(0.2)
        for _ in range(6):  # the new worker serves the model the group was reloaded to
            st, _, body = await _call("GET", f"{url}/search", params={"q": "heat transfer"})
            assert st == 200 and body["model_version"] == first, body
        assert "restarting it" in log.read_text()
        workers = _children(proc.pid)

        # kill -9 of the supervisor: the workers notice and stop (no orphan keeps the port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{w}").exists() for w in workers):
            assert time.monotonic() < deadline, "orphaned workers kept running"
            await asyncio.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    store = SqliteEventStore(db)
    got = [(e.type, e.request_id, e.doc_id) for e in store.events()]
    store.close()
    assert got == acked  # every acknowledged event


async def test_supervisor_stops_cleanly_and_exits_2_when_a_worker_cannot_start(
    small_index: Path, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    proc = _start(tmp_path / "no-index", tmp_path / "models", tmp_path / "e.db", port, log)
    assert proc.wait(timeout=180) == 2, log.read_text()[-3000:]
    assert "before serving" in log.read_text()
    # and a healthy group exits 0 on SIGTERM
    proc = _start(small_index, tmp_path / "models", tmp_path / "e.db", port, log)
    try:  # /health: no model is promoted, so /ready stays 503 (require_model)
        url = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_ready, url, proc, log, 200, "/health", 0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
