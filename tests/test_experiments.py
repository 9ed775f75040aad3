"""Online experiments (search.experiments, search.rollout) on a real server process.

Real parts: the small Cranfield index, the session's LambdaMART model, a known-worse
ranker made from it (scripts.demo_rollout.invert_model: every leaf negated), the SQLite
event store, and simulated users with known preferences (they examine position p with
probability 1/p and click what the judgments call relevant).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from ltr.registry import ModelRegistry
from scripts.demo_rollout import invert_model
from scripts.serverproc import free_port, stop_server, wait_ready
from search.events import SqliteEventStore
from search.experiment_store import ExperimentStore
from search.experiments import bucket
from tests.api_support import ADMIN, start_test_server

AUTH = {"Authorization": f"Bearer {ADMIN}"}
FAST_GATE = {"every_s": 0.2, "min_queries": 30}


# -- simulated users -----------------------------------------------------------------------


def judged(beir: Path) -> tuple[list[tuple[str, str]], dict[str, dict[str, float]]]:
    from scripts.simulate_traffic import load_judged

    return load_judged(beir)


async def call(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any, str]:
    async with s.request(method, url, **kw) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, r.headers.get("X-Worker", "")


async def users(
    url: str,
    queries: list[tuple[str, str]],
    qrels: dict[str, dict[str, float]],
    n: int,
    seed: int,
    clients: int = 0,
    fresh: bool = False,
    out: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """``n`` searches; clicks on relevant hits examined with probability 1/position. Each
    result (appended to ``out`` as it comes): the response, the clicks acknowledged (202)
    and the serving worker."""
    rng = np.random.default_rng(seed)
    out = [] if out is None else out
    async with aiohttp.ClientSession() as shared:
        for _i in range(n):
            qid, text = queries[int(rng.integers(len(queries)))]
            body: dict[str, Any] = {"q": text, "k": 10, "query_id": qid}
            if clients:
                body["client_id"] = f"user-{int(rng.integers(clients))}"
            s = aiohttp.ClientSession() if fresh else shared
            try:
                status, page, worker = await call(s, "POST", f"{url}/search", json=body)
                assert status == 200, page
                events = [
                    {"type": "click", "request_id": page["request_id"], "doc_id": h["id"]}
                    for p, h in enumerate(page["hits"], start=1)
                    if qrels[qid].get(h["id"], 0) > 0 and rng.random() < 1.0 / p
                ]
                acked = []
                if events:
                    st, _, _ = await call(s, "POST", f"{url}/events", json=events)
                    if st == 202:
                        acked = events
                out.append({"page": page, "acked": acked, "worker": worker, "req": body})
            finally:
                if fresh:
                    await s.close()
    return out


async def start_exp(url: str, spec: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        status, body, _ = await call(s, "POST", f"{url}/admin/experiments", json=spec, headers=AUTH)
    assert status == 201, body
    return dict(body)


async def report(url: str, eid: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        status, body, _ = await call(s, "GET", f"{url}/admin/experiments/{eid}", headers=AUTH)
    assert status == 200, body
    return dict(body["experiments"][0])


async def wait_status(url: str, eid: str, want: str, timeout_s: float = 20.0) -> dict[str, Any]:
    for _ in range(int(timeout_s / 0.1)):
        rep = await report(url, eid)
        if rep["status"] == want:
            return rep
        await asyncio.sleep(0.1)
    raise AssertionError(f"experiment {eid} never became {want}: {rep}")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A registry copy: (dir, the good promoted version, its inverted twin, not promoted)."""
    d = tmp_path_factory.mktemp("exp") / "models"
    shutil.copytree(model_dir, d)
    good = ModelRegistry(d).promoted()
    assert good is not None
    return d, good, invert_model(d, good)


@dataclass(frozen=True)
class Served:
    url: str
    events: Path


@pytest.fixture(scope="module")
def served(
    small_index: Path, registry: tuple[Path, str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One server for this module's tests (each ends its experiment; the last one changes
    the production model)."""
    d = tmp_path_factory.mktemp("exp-server")
    port, log = free_port(), d / "serve.log"
    proc = start_test_server(small_index, d / "events.db", port, log, registry[0])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, timeout_s=180)
        yield Served(url, d / "events.db")
    finally:
        stop_server(proc)


# -- store-level ---------------------------------------------------------------------------

_OLD_SCHEMA = """
CREATE TABLE featuresets (featureset_id TEXT PRIMARY KEY, feature_names TEXT NOT NULL);
CREATE TABLE requests (request_id TEXT PRIMARY KEY, ts REAL NOT NULL, query TEXT NOT NULL,
    query_id TEXT, model_version TEXT, featureset_id TEXT NOT NULL, page_offset INTEGER NOT NULL,
    n INTEGER NOT NULL);
CREATE TABLE impressions (request_id TEXT NOT NULL, position INTEGER NOT NULL,
    doc_id TEXT NOT NULL, score REAL, features BLOB NOT NULL,
    PRIMARY KEY (request_id, position)) WITHOUT ROWID;
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL,
    request_id TEXT NOT NULL, doc_id TEXT NOT NULL, ts REAL NOT NULL, received_ts REAL NOT NULL);
INSERT INTO featuresets VALUES ('fs1', '["a", "b"]');
INSERT INTO requests VALUES ('r1', 100.0, 'q', NULL, 'v1', 'fs1', 0, 1);
"""


def test_an_old_store_gains_the_experiment_columns_and_stays_readable(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(_OLD_SCHEMA)
    feats = np.array([1.0, 2.0], dtype=np.float32).tobytes()
    conn.execute("INSERT INTO impressions VALUES ('r1', 1, 'd1', 0.5, ?)", (feats,))
    conn.execute("INSERT INTO events VALUES (1, 'click', 'r1', 'd1', 101.0, 101.0)")
    conn.commit()
    conn.close()
    ro = SqliteEventStore(db, read_only=True)  # read-only: nothing migrated, still readable
    assert ro.served_features()["clicked"].tolist() == [1]
    ro.close()
    store = SqliteEventStore(db)
    cols = {r[1] for r in store.connection.execute("PRAGMA table_info(requests)")}
    assert {"experiment_id", "arm", "client_id"} <= cols
    assert "team" in {r[1] for r in store.connection.execute("PRAGMA table_info(impressions)")}
    df = store.served_features()
    assert df["doc_id"].tolist() == ["d1"] and df["clicked"].tolist() == [1]
    assert df[["a", "b"]].to_numpy().tolist() == [[1.0, 2.0]]
    store.close()


def test_the_experiment_log_is_append_only(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "e.db")
    db = ExperimentStore(store)
    exp = db.start({"candidate": "v2", "mode": "interleave", "share": 1.0}, "v1")
    db.append_log(exp.experiment_id, "continue", "why", {"n": 3})
    rows = db.log_rows(exp.experiment_id)
    assert [r["action"] for r in rows] == ["start", "continue"]
    assert rows[1]["numbers"] == {"n": 3}
    for sql in ("UPDATE experiment_log SET reason = 'x'", "DELETE FROM experiment_log"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store.connection.execute(sql)
    assert len(db.log_rows()) == 2
    store.close()


def test_split_assignment_is_sticky_and_near_its_share() -> None:
    salt = "0123abcd"
    arms = [bucket(salt, f"user-{i}") < 0.1 for i in range(20_000)]
    share = sum(arms) / len(arms)
    assert abs(share - 0.1) < 0.006  # 3 standard errors at n = 20000
    assert arms == [bucket(salt, f"user-{i}") < 0.1 for i in range(20_000)]
    other = [bucket("another", f"user-{i}") < 0.1 for i in range(20_000)]
    assert other != arms  # a new experiment draws its own users


# -- on a real server ----------------------------------------------------------------------


@pytest.mark.slow
def test_shadow_does_not_change_served_results(
    served: Served, registry: tuple[Path, str, str], beir_small: Path
) -> None:
    _, good, bad = registry
    url = served.url
    queries, _qrels = judged(beir_small)

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            before = {}
            for qid, text in queries:
                _, page, _ = await call(s, "POST", f"{url}/search", json={"q": text, "k": 10})
                before[qid] = [h["id"] for h in page["hits"]]
            exp = await start_exp(url, {"candidate": bad, "mode": "shadow", "share": 1.0})
            eid = exp["experiment_id"]
            for qid, text in queries:
                _, page, _ = await call(s, "POST", f"{url}/search", json={"q": text, "k": 10})
                assert [h["id"] for h in page["hits"]] == before[qid]
                assert page["model_version"] == good
                assert page["experiment"] == {"experiment_id": eid, "arm": "shadow"}
            await asyncio.sleep(1.5)  # the counts and shadow rows are flushed every second
            rep = await report(url, eid)
            assert rep["shadow"]["requests"] == len(queries)
            assert rep["arms"]["shadow"]["requests"] == len(queries)
            assert rep["shadow"]["nonfinite_scores"] == 0
            # the inverted model disagrees with production: few of the same hits
            assert rep["shadow"]["overlap_mean"] < 0.5
            _, model, _ = await call(s, "GET", f"{url}/model")
            assert model["model_version"] == good
            assert model["experiment"]["experiment_id"] == eid
            _, metrics, _ = await call(s, "GET", f"{url}/metrics")
            # prometheus_client writes labels sorted by name (candidate first)
            info = rf'ltrsearch_experiment_info\{{candidate="[^"]+",experiment_id="{eid}",'
            assert re.search(info + 'mode="shadow",', metrics), metrics
            stop = f"{url}/admin/experiments/{eid}/stop"
            assert (await call(s, "POST", stop, headers=AUTH))[0] == 200

    asyncio.run(run())


@pytest.mark.slow
def test_interleaving_rejects_the_inverted_model_within_its_share(
    served: Served, registry: tuple[Path, str, str], beir_small: Path
) -> None:
    models, good, bad = registry
    url = served.url
    queries, qrels = judged(beir_small)

    async def run() -> None:
        spec = {"candidate": bad, "mode": "interleave", "share": 0.5, "gate": FAST_GATE}
        eid = (await start_exp(url, spec))["experiment_id"]
        got = await users(url, queries, qrels, 160, seed=1)
        rep = await wait_status(url, eid, "rejected")
        assert ModelRegistry(models).promoted() == good
        inter = rep["interleave"]
        assert inter["losses"] > 3 * inter["wins"]  # users prefer production by far
        decision = next(r for r in rep["log"] if r["action"] == "reject")
        assert (
            decision["numbers"]["sign_test"]["losses"] >= decision["numbers"]["sign_test"]["wins"]
        )
        assert decision["numbers"]["sign_test"]["n"] >= FAST_GATE["min_queries"]
        arms = [g["page"].get("experiment", {}).get("arm") for g in got]
        n_inter = arms.count("interleave")
        assert n_inter / len(got) < 0.5 + 0.13  # its share, within ~3 standard errors
        # every interleaved page was logged with its teams, one per position, as served
        conn = sqlite3.connect(served.events)
        for g in got:
            page = g["page"]
            rows = conn.execute(
                "SELECT r.experiment_id, r.arm, i.team FROM requests r JOIN impressions i "
                "USING (request_id) WHERE request_id = ? ORDER BY i.position",
                (page["request_id"],),
            ).fetchall()
            if not rows:
                continue  # a page without clicks may still wait in the impression queue
            if "experiment" not in page:  # served after the rejection: production only
                assert {r[0] for r in rows} == {None}
                continue
            assert {r[0] for r in rows} == {eid}
            assert rows[0][1] == page["experiment"]["arm"]
            teams = [r[2] for r in rows]
            assert teams == page["experiment"].get("teams", [None] * len(rows))
        conn.close()

    asyncio.run(run())


@pytest.mark.slow
def test_split_serves_each_user_one_arm(
    served: Served, registry: tuple[Path, str, str], beir_small: Path
) -> None:
    _, good, bad = registry
    url = served.url
    queries, qrels = judged(beir_small)

    async def run() -> None:
        spec = {"candidate": bad, "mode": "split", "share": 0.3}
        eid = (await start_exp(url, spec))["experiment_id"]
        got = await users(url, queries, qrels, 200, seed=3, clients=40)
        by_client: dict[str, set[tuple[str, str]]] = {}
        for g in got:
            arm, model = g["page"]["experiment"]["arm"], g["page"]["model_version"]
            by_client.setdefault(g["req"]["client_id"], set()).add((arm, model))
        assert all(len(v) == 1 for v in by_client.values())  # sticky
        arms = {next(iter(v)) for v in by_client.values()}
        assert arms == {("candidate", bad), ("control", good)}
        share = sum(next(iter(v))[0] == "candidate" for v in by_client.values()) / len(by_client)
        assert 0.05 < share < 0.6  # 40 users at 30 %: loose; the exact bound is the unit test
        async with aiohttp.ClientSession() as s:
            stop = f"{url}/admin/experiments/{eid}/stop"
            assert (await call(s, "POST", stop, headers=AUTH))[0] == 200

    asyncio.run(run())


@pytest.mark.slow
def test_bad_requests_to_the_experiment_admin(
    served: Served, registry: tuple[Path, str, str]
) -> None:
    _, good, bad = registry
    url = served.url

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            st, body, _ = await call(
                s, "POST", f"{url}/admin/experiments", json={"candidate": bad, "mode": "shadow"}
            )
            assert st == 401
            cases = [
                ({"candidate": bad, "mode": "abtest"}, 400),
                ({"candidate": bad, "mode": "split", "share": 0.9}, 400),
                ({"candidate": "v999", "mode": "shadow"}, 404),
                ({"candidate": good, "mode": "shadow"}, 409),  # production already
                ({"candidate": bad, "mode": "shadow", "extra": 1}, 400),
            ]
            for spec, want in cases:
                st, body, _ = await call(
                    s, "POST", f"{url}/admin/experiments", json=spec, headers=AUTH
                )
                assert st == want, (spec, body)
                assert "error" in body
            exp = await start_exp(url, {"candidate": bad, "mode": "shadow"})
            st, body, _ = await call(
                s, "POST", f"{url}/admin/experiments", json={"candidate": bad, "mode": "split"},
                headers=AUTH,
            )  # fmt: skip
            assert st == 409
            stop = f"{url}/admin/experiments/{exp['experiment_id']}/stop"
            st, body, _ = await call(s, "POST", stop, headers=AUTH)
            assert st == 200 and body["status"] == "stopped"
            st, body, _ = await call(s, "POST", stop, headers=AUTH)
            assert st == 409

    asyncio.run(run())


@pytest.mark.slow
def test_a_better_candidate_is_promoted_and_a_guardrail_breach_rolls_it_back(
    served: Served, registry: tuple[Path, str, str], beir_small: Path
) -> None:
    models, good, bad = registry
    ModelRegistry(models).promote(bad)  # production is the bad ranker; the good one competes
    url = served.url
    queries, qrels = judged(beir_small)

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            st, body, _ = await call(s, "POST", f"{url}/admin/reload", headers=AUTH)
            assert st == 200 and body["model_version"] == bad
        spec = {
            "candidate": good,
            "mode": "interleave",
            "gate": FAST_GATE,
            "guardrails": {"min_requests": 20, "watch_s": 120, "watch_min_requests": 20},
        }
        eid = (await start_exp(url, spec))["experiment_id"]
        await users(url, queries, qrels, 120, seed=2)
        rep = await wait_status(url, eid, "watching")
        assert ModelRegistry(models).promoted() == good
        promote = next(r for r in rep["log"] if r["action"] == "promote")
        assert promote["numbers"]["sign_test"]["wins"] > promote["numbers"]["sign_test"]["losses"]
        async with aiohttp.ClientSession() as s:
            _, page, _ = await call(s, "POST", f"{url}/search", json={"q": queries[0][1]})
            assert page["model_version"] == good
            assert page["experiment"]["arm"] == "watch"
            for _ in range(25):  # no document has this category: zero results
                body = {"q": queries[0][1], "category": "no-such-category"}
                st, page, _ = await call(s, "POST", f"{url}/search", json=body)
                assert st == 200 and page["hits"] == []
        rep = await wait_status(url, eid, "rolled_back")
        rollback = next(r for r in rep["log"] if r["action"] == "rollback")
        assert "zero_result_rate" in rollback["reason"]
        assert rollback["numbers"]["rolled_back_to"] == bad
        assert ModelRegistry(models).promoted() == bad
        async with aiohttp.ClientSession() as s:
            _, model, _ = await call(s, "GET", f"{url}/model")
            assert model["model_version"] == bad
            assert model["experiment"]["status"] == "rolled_back"
            assert model["experiment"]["last_decision"]["action"] == "rollback"
            _, metrics, _ = await call(s, "GET", f"{url}/metrics")
            assert "ltrsearch_model_rollbacks_total 1" in metrics

    asyncio.run(run())


@pytest.mark.slow
def test_demo_rollout_phase_runs_a_promotion_through_its_watch_window(
    served: Served, registry: tuple[Path, str, str], beir_small: Path
) -> None:
    """scripts.demo_rollout.run_phase: a winning candidate is promoted, its guardrail window
    runs to its end ("promoted"), and the next experiment can start (a still-watching one
    refused it with 409 before)."""
    from scripts.demo_rollout import run_phase

    models, good, bad = registry
    ModelRegistry(models).promote(bad)  # production is the bad ranker; the good one competes
    url = served.url
    queries, qrels = judged(beir_small)
    calls = [0]

    async def traffic(n: int) -> dict[str, Any]:
        calls[0] += 1
        return {"searches": len(await users(url, queries, qrels, n, seed=40 + calls[0]))}

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            st, body, _ = await call(s, "POST", f"{url}/admin/reload", headers=AUTH)
            assert st == 200 and body["model_version"] == bad
        spec = {
            "candidate": good,
            "mode": "interleave",
            "gate": FAST_GATE,
            "guardrails": {"min_requests": 20, "watch_s": 1.0, "watch_min_requests": 20},
        }
        rep = await run_phase(url, ADMIN, spec, traffic, max_seconds=90.0, batch=40)
        assert rep["status"] == "promoted", rep
        assert [r["action"] for r in rep["log"] if r["action"] != "continue"] == [
            "start", "promote", "watch_passed",
        ]  # fmt: skip
        assert ModelRegistry(models).promoted() == good
        nxt = await start_exp(url, {"candidate": bad, "mode": "shadow", "gate": FAST_GATE})
        async with aiohttp.ClientSession() as s:
            stop = f"{url}/admin/experiments/{nxt['experiment_id']}/stop"
            st, _, _ = await call(s, "POST", stop, headers=AUTH)
            assert st == 200

    asyncio.run(run())
