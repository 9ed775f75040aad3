"""Chaos: while clients search and click against ``ltrsearch-serve --workers 2``, a
candidate model's file is truncated (and a reload to it tried), that candidate is promoted
and a worker killed with -9 (its replacement starts on the corrupt promotion), and the
event store is made full (``events.max_size_mb`` sets PRAGMA max_page_count; filling the
file from outside gives SQLITE_FULL without touching the machine's disks).

Asserted: every acknowledged (202) event is in the store afterwards; no request gets a 5xx
other than 503; /ready names what is degraded (a worker restarting, the event store, the
refused model) while staying ready; the refusal is one log line. Load runs at most
LOAD_S seconds.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ltr.registry import ModelRegistry
from scripts.serverproc import free_port
from search.events import SqliteEventStore
from tests.api_support import ADMIN, start_test_server
from tests.test_api_workers import _children

pytestmark = pytest.mark.slow

LOAD_S = 45.0  # the clients stop after this, whatever happens
CAP_MB = 4
QUERIES = ["wing flutter", "heat transfer", "jet noise", "shock wave", "boundary layer"]


async def _call(method: str, url: str, timeout_s: float = 5.0, **kw: Any) -> tuple[int, str, Any]:
    """One request on a fresh connection (so the kernel spreads them over both workers'
    sockets): (status, worker, JSON body); status 0 when the connection failed or hung (a
    killed worker's socket queues connections until its replacement accepts)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
            s.request(method, url, **kw) as r,
        ):
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, r.headers.get("X-Worker", ""), body
    except (TimeoutError, aiohttp.ClientError):
        return 0, "", None


class Load:
    """Clients looping search -> click on the first hit until stopped or LOAD_S passed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: list[tuple[str, str]] = []
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.stop = asyncio.Event()
        self.deadline = math.inf  # set by begin(), when the clients start

    def begin(self) -> None:
        """Start the LOAD_S budget now: not while the workers were still starting (under
        load they took ~49 s, and the clients never ran)."""
        self.deadline = time.monotonic() + LOAD_S

    async def client(self, i: int) -> None:
        n = 0
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            q = QUERIES[(i + n) % len(QUERIES)]
            n += 1
            st, _, page = await _call("GET", f"{self.url}/search", params={"q": q, "k": "5"})
            self.statuses["search", st] += 1
            if st != 200:
                continue
            rid, doc = page["request_id"], page["hits"][0]["id"]
            ev = [{"type": "click", "request_id": rid, "doc_id": doc}]
            st, _, _ = await _call("POST", f"{self.url}/events", json=ev)
            self.statuses["events", st] += 1
            if st == 202:
                self.acked.append((rid, doc))
            await asyncio.sleep(0.05)


async def _until(what: str, pred: Any, timeout_s: float, seen: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await pred()
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"never saw {what} within {timeout_s:g} s; saw {seen}")


def _fill(db: Path, cap_bytes: int) -> None:
    """Grow the store past the server's page cap from another connection (no cap here)."""
    conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS chaos_filler (b BLOB)")
        blob = os.urandom(256 * 1024)
        while True:
            pages, size = (
                conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size")
            )
            if pages * size > cap_bytes + 1024 * 1024:
                return
            conn.execute("INSERT INTO chaos_filler VALUES (?)", (blob,))
    finally:
        conn.close()


async def test_chaos_keeps_acknowledged_events_and_reports_what_is_degraded(
    small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_dir, models)
    reg = ModelRegistry(models)
    first = reg.promoted()
    assert first is not None
    cand = f"v{int(first[1:]) + 1:04d}"  # a candidate: a byte copy under the next name
    shutil.copytree(models / first, models / cand)
    manifest = json.loads((models / cand / "manifest.json").read_text())
    (models / cand / "manifest.json").write_text(json.dumps({**manifest, "version": cand}))

    port, db, log = free_port(), tmp_path / "events.db", tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_test_server(
        small_index,
        db,
        port,
        log,
        models,
        ["--workers", "2"],
        LTRSEARCH_API__REQUIRE_MODEL="true",
        LTRSEARCH_API__AGGREGATES_POLL_S="0.2",
        LTRSEARCH_API__WORKERS_TIMEOUT_S="3",  # a flush request must not wait on a dead worker
        LTRSEARCH_EVENTS__MAX_SIZE_MB=str(CAP_MB),
    )
    auth = {"Authorization": f"Bearer {ADMIN}"}
    load = Load(url)
    seen: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 240
        while '"workers": 2' not in log.read_text():  # the supervisor: all are serving
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.3)
        load.begin()
        clients = [asyncio.create_task(load.client(i)) for i in range(3)]

        async def acked() -> bool:
            return len(load.acked) >= 5

        await _until("acknowledged events", acked, LOAD_S)  # the clients stop by then anyway

        # 1. a candidate's booster truncated: the reload is refused (422) and counted
        mfile = models / cand / "model.ubj"
        mfile.write_bytes(mfile.read_bytes()[: mfile.stat().st_size // 3])
        st, w, body = await _call(
            "POST", f"{url}/admin/reload", json={"version": cand}, headers=auth
        )
        assert st == 422 and body["error"]["code"] == "corrupt_model", body
        assert f"still serving model {first}" in body["error"]["message"]
        counted = f'ltrsearch_reloads_total{{outcome="corrupt",worker="{w}"}} 1'

        async def metric() -> bool:  # another worker's series are at most 1 s old
            st, _, text = await _call("GET", f"{url}/metrics", timeout_s=2.0)
            return st == 200 and counted in text

        await _until("the refused reload in /metrics", metric, 10)

        polls: list[tuple[int, str, Any]] = []

        async def ready_says(key: str) -> Any:
            # four polls at once, each on a fresh connection: the kernel spreads them over
            # both workers' sockets, and one that lands on a killed worker's socket waits
            # there (until its timeout) while another reaches the live worker. The window
            # in which a worker is missing can be a second or two on a quiet machine.
            answers = await asyncio.gather(
                *(_call("GET", f"{url}/ready", timeout_s=0.5) for _ in range(4))
            )
            for st, w, body in answers:
                polls.append((st, w, sorted(body["degraded"]) if st == 200 else body))
                if st == 200 and key in body.get("degraded", {}):
                    seen[key] = (w, body)
                    return body
            return None

        # 2. the event store full (SQLITE_FULL for the server's connections): events are
        # refused (503, not acknowledged), searches go on, /ready names the store
        await asyncio.to_thread(_fill, db, CAP_MB * 1024 * 1024)

        async def refused_event() -> bool:
            return load.statuses["events", 503] > 0

        await _until("an event refused by the full store", refused_event, 20)
        await _until("the event store in /ready", lambda: ready_says("event_store"), 20)
        assert "full" in seen["event_store"][1]["degraded"]["event_store"]
        assert seen["event_store"][1]["ready"]

        # 3. the corrupt candidate promoted, then a worker killed: /ready says a worker is
        # missing; its replacement refuses the promotion and serves the previous one
        reg.promote(cand)
        os.kill(_children(proc.pid)[0], signal.SIGKILL)
        polls.clear()
        await _until("a missing worker in /ready", lambda: ready_says("workers"), 30, polls)

        async def replacement_refused() -> Any:
            got = await ready_says("model")
            return got if got and got["model_fallback"]["refused"] == cand else None

        body = await _until("the replacement's model fallback", replacement_refused, 150)
        assert body["ready"] and body["model_version"] == first
        assert body["model_fallback"]["serving"] == first
        assert "checksum mismatch" in body["model_fallback"]["reason"]
        load.stop.set()
        await asyncio.gather(*clients)
    finally:
        load.stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except Exception:
            proc.kill()
            proc.wait()
    statuses = dict(load.statuses)
    assert {s for (route, s) in statuses if route == "search"} <= {200, 0}, statuses
    assert {s for (route, s) in statuses if route == "events"} <= {202, 422, 503, 0}, statuses
    reader = SqliteEventStore(db, read_only=True)
    try:
        stored = {(e.request_id, e.doc_id) for e in reader.events()}
    finally:
        reader.close()
    assert load.acked and set(load.acked) <= stored  # no acknowledged event lost
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    refusals = [x for x in lines if f"model {cand} refused" in x.get("msg", "")]
    assert len(refusals) == 1 and "exc" not in refusals[0], refusals  # one line, no traceback
