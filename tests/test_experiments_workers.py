"""Experiments across processes: ``--workers 2`` agree on the live experiment, and a
kill -9 loses no acknowledged click and no assignment record (real servers, real store)."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ltr.registry import ModelRegistry
from scripts.demo_rollout import invert_model
from scripts.serverproc import free_port, stop_server, wait_ready
from tests.api_support import start_test_server
from tests.test_experiments import AUTH, call, judged, report, start_exp, users

pytestmark = pytest.mark.slow


@pytest.fixture
def models(model_dir: Path, tmp_path: Path) -> tuple[Path, str, str]:
    d = tmp_path / "models"
    shutil.copytree(model_dir, d)
    good = ModelRegistry(d).promoted()
    assert good is not None
    return d, good, invert_model(d, good)


def test_an_experiment_started_on_one_worker_is_served_and_counted_by_all(
    small_index: Path, models: tuple[Path, str, str], beir_small: Path, tmp_path: Path
) -> None:
    d, _good, bad = models
    port, db, log = free_port(), tmp_path / "events.db", tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_test_server(small_index, db, port, log, d, ["--workers", "2"])
    queries, qrels = judged(beir_small)
    try:
        wait_ready(url, proc, log, timeout_s=240)

        async def run() -> None:
            spec = {"candidate": bad, "mode": "interleave", "gate": {"min_queries": 100000}}
            eid = (await start_exp(url, spec))["experiment_id"]  # answered by one worker
            got = await users(url, queries, qrels, 60, seed=5, fresh=True)
            workers = {g["worker"] for g in got}
            assert workers == {"0", "1"}  # fresh connections reach both
            for g in got:  # every worker serves the experiment from its start on
                assert g["page"]["experiment"]["experiment_id"] == eid
                assert g["page"]["experiment"]["arm"] == "interleave"
                assert len(g["page"]["experiment"]["teams"]) == len(g["page"]["hits"])
            await asyncio.sleep(1.5)  # each worker writes its counts every second
            conn = sqlite3.connect(db)
            procs = conn.execute(
                "SELECT COUNT(DISTINCT process), SUM(requests) FROM experiment_stats "
                "WHERE experiment_id = ? AND arm = 'interleave'",
                (eid,),
            ).fetchone()
            conn.close()
            assert procs == (2, len(got))
            rep = await report(url, eid)
            assert rep["arms"]["interleave"]["requests"] == len(got)
            clicked = sum(1 for g in got if g["acked"])
            inter = rep["interleave"]
            # a page with an acknowledged click is in the log: counted, whichever worker
            assert inter["wins"] + inter["losses"] + inter["ties"] >= clicked
            async with aiohttp.ClientSession() as s:
                _, metrics, _ = await call(s, "GET", f"{url}/metrics")
            for w in ("0", "1"):
                # prometheus_client writes labels sorted by name
                assert f'arm="interleave",experiment_id="{eid}",worker="{w}"' in metrics
                info = rf'ltrsearch_experiment_info\{{candidate="[^"]+",experiment_id="{eid}",'
                assert re.search(info + rf'mode="interleave",[^}}]*worker="{w}"', metrics)
            async with aiohttp.ClientSession() as s:  # stopped on one: stopped on all
                st, _, _ = await call(
                    s, "POST", f"{url}/admin/experiments/{eid}/stop", headers=AUTH
                )
                assert st == 200
            after = await users(url, queries, qrels, 20, seed=6, fresh=True)
            assert {g["worker"] for g in after} == {"0", "1"}
            assert all("experiment" not in g["page"] for g in after)

        asyncio.run(run())
    finally:
        assert stop_server(proc) == 0


def test_kill_9_loses_no_acknowledged_event_and_no_assignment(
    small_index: Path, models: tuple[Path, str, str], beir_small: Path, tmp_path: Path
) -> None:
    d, good, bad = models
    db, log = tmp_path / "events.db", tmp_path / "serve.log"
    queries, qrels = judged(beir_small)

    def start() -> tuple[Any, str]:
        port = free_port()
        proc = start_test_server(small_index, db, port, log, d)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, log, timeout_s=180)
        return proc, url

    proc, url = start()
    got: list[dict[str, Any]] = []
    try:

        async def traffic() -> None:
            eid = (await start_exp(url, {"candidate": bad, "mode": "split", "share": 0.5}))[
                "experiment_id"
            ]
            task = asyncio.create_task(_keep_searching(url, queries, qrels, got))
            while sum(bool(g["acked"]) for g in got) < 25:
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)  # mid-traffic: no shutdown, no final flush
            proc.wait()
            await task
            assert got and got[0]["page"]["experiment"]["experiment_id"] == eid

        asyncio.run(traffic())
    finally:
        stop_server(proc)

    acked = [g for g in got if g["acked"]]
    assert len(acked) >= 25
    eid = acked[0]["page"]["experiment"]["experiment_id"]
    conn = sqlite3.connect(db)
    for g in acked:
        rid, arm, client = (
            g["page"]["request_id"],
            g["page"]["experiment"]["arm"],
            g["req"]["client_id"],
        )
        stored = {
            r[0] for r in conn.execute("SELECT doc_id FROM events WHERE request_id = ?", (rid,))
        }
        assert stored == {e["doc_id"] for e in g["acked"]}
        row = conn.execute(
            "SELECT experiment_id, arm, client_id FROM requests WHERE request_id = ?", (rid,)
        ).fetchone()
        assert row == (eid, arm, client)
        assigned = conn.execute(
            "SELECT arm FROM experiment_assignments WHERE experiment_id = ? AND client_id = ?",
            (eid, client),
        ).fetchone()
        assert assigned == (arm,)
    status = conn.execute(
        "SELECT status FROM experiments WHERE experiment_id = ?", (eid,)
    ).fetchone()
    conn.close()
    assert status == ("active",)

    proc, url = start()  # the restarted server resumes the experiment, same users same arms
    try:
        arms = {g["req"]["client_id"]: g["page"]["experiment"]["arm"] for g in acked}

        async def again() -> None:
            async with aiohttp.ClientSession() as s:
                for client, arm in arms.items():
                    body = {"q": queries[0][1], "client_id": client}
                    st, page, _ = await call(s, "POST", f"{url}/search", json=body)
                    assert st == 200
                    assert page["experiment"] == {"experiment_id": eid, "arm": arm}
                    assert page["model_version"] == (bad if arm == "candidate" else good)

        asyncio.run(again())
    finally:
        assert stop_server(proc) == 0


async def _keep_searching(url: str, queries: Any, qrels: Any, got: list[dict[str, Any]]) -> None:
    """Simulated users until the server dies (a connection error ends the run)."""
    seed = 100
    while True:
        try:
            await users(url, queries, qrels, 5, seed=seed, clients=30, out=got)
        except (TimeoutError, aiohttp.ClientError, AssertionError):
            return
        seed += 1
