"""Click inflation: a client looping search -> click on one document moves that document's
click aggregates (the behavior features) by at most the per-client cap per window.

Real SQLite stores with the real behavior aggregates; the last test goes through a real
aiohttp server over the real local index.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from search.aggregates import BehaviorAggregates
from search.config import EventsConfig
from search.errors import InvalidEventError
from search.events import Event, SqliteEventStore
from search.http import parse_events
from tests.api_support import api_config
from tests.test_api import _json, _state, serve
from tests.test_events import T0, _imp

HOUR = 3600.0
DOCS = ["target", "d1", "d2", "d3"]


def _loop(
    store: SqliteEventStore,
    n: int,
    client: str | None,
    start: float = T0,
    prefix: str = "r",
    doc: str = "target",
) -> None:
    """``n`` rounds of: serve a page for "wing flutter", click ``doc`` on it."""
    for i in range(n):
        rid = f"{prefix}{i}"
        ts = start + i
        store.add_impressions([_imp(rid, DOCS, ts=ts, seed=i)])
        store.add_events([Event("click", rid, doc, ts + 1, client)])


def _clicks(agg: BehaviorAggregates, doc: str = "target", now: float = T0 + HOUR) -> dict:
    got = agg.arrays("wing flutter", [doc], now=now)
    return {k: float(v[0]) for k, v in got.items()}


def test_a_looping_client_moves_click_features_by_at_most_the_cap(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "e.db")
    agg = BehaviorAggregates.attach(store, click_cap=2, click_window_s=HOUR)
    _loop(store, 30, "bot-1")
    c = _clicks(agg)
    assert c["qd_impressions"] == 30 and c["d_impressions"] == 30
    assert c["qd_clicks"] == 2 and c["d_clicks"] == 2  # 30 clicks, 2 counted
    assert c["qd_decayed_clicks"] <= 2 and c["d_decayed_clicks"] <= 2
    # the log keeps every click (with its client) for audits and offline filtering
    assert len(store.events()) == 30 and {e.client_id for e in store.events()} == {"bot-1"}
    # another client has its own cap; the looping one stays capped
    _loop(store, 5, "alice", start=T0 + 100, prefix="a")
    _loop(store, 5, "bot-1", start=T0 + 200, prefix="b")
    assert _clicks(agg)["qd_clicks"] == 4
    # the next window counts again (at most the cap per window)
    _loop(store, 10, "bot-1", start=T0 + HOUR, prefix="n")
    assert _clicks(agg, now=T0 + 2 * HOUR)["qd_clicks"] == 6
    # the cap is per (query, document): the same client on another document counts
    _loop(store, 3, "bot-1", start=T0 + 300, prefix="o", doc="d1")
    assert _clicks(agg, doc="d1")["qd_clicks"] == 2
    store.close()
    # the counts are in the store: a restarted server keeps capping
    store = SqliteEventStore(tmp_path / "e.db")
    agg = BehaviorAggregates.attach(store, click_cap=2, click_window_s=HOUR)
    _loop(store, 3, "bot-1", start=T0 + 400, prefix="s")
    assert _clicks(agg, now=T0 + 2 * HOUR)["qd_clicks"] == 6
    store.close()


def test_clicks_without_client_id_count_once_per_request(tmp_path: Path) -> None:
    """What an anonymous click is bounded by: one counted click per (request, document),
    however many click events name it (docs/contracts.md: what the caps do not defend)."""
    store = SqliteEventStore(tmp_path / "e.db")
    agg = BehaviorAggregates.attach(store, click_cap=1, click_window_s=HOUR)
    store.add_impressions([_imp("r1", DOCS)])
    store.add_events([Event("click", "r1", "target", T0 + 1)] * 5)
    store.add_events([Event("click", "r1", "target", T0 + 2, "late-client")])
    assert _clicks(agg)["qd_clicks"] == 1
    _loop(store, 4, None, start=T0 + 10, prefix="x")
    assert _clicks(agg)["qd_clicks"] == 5
    store.close()


def test_caps_hold_across_connections(tmp_path: Path) -> None:
    """Two connections (two server workers) share the counts: they are read and written in
    the event transaction."""
    stores = [SqliteEventStore(tmp_path / "e.db") for _ in range(2)]
    aggs = [BehaviorAggregates.attach(s, click_cap=3, click_window_s=HOUR) for s in stores]
    for i in range(20):
        store = stores[i % 2]
        store.add_impressions([_imp(f"r{i}", DOCS, ts=T0 + i, seed=i)])
        store.add_events([Event("click", f"r{i}", "target", T0 + i + 1, "bot")])
    for agg, store in zip(aggs, stores, strict=True):
        agg.refresh(store)
        assert _clicks(agg)["qd_clicks"] == 3
        store.close()


@pytest.mark.parametrize(
    ("value", "ok"),
    [("session-42", True), (None, True), ("", False), (7, False), ("x" * 201, False)],
)
def test_client_id_is_validated_like_other_strings(value: Any, ok: bool) -> None:
    ev = {"type": "click", "request_id": "r1", "doc_id": "d1", "client_id": value}
    if ok:
        assert parse_events([ev], now=T0)[0].client_id == value
    else:
        with pytest.raises(InvalidEventError, match=r"events\[0\]\.client_id"):
            parse_events([ev], now=T0)


async def test_a_looping_http_client_is_capped(
    encoder: Any, small_index: Path, tmp_path: Path
) -> None:
    from search.api import make_app

    app = make_app(
        api_config(),
        encoder,
        index_dir=small_index,
        events_path=tmp_path / "e.db",
        events_config=EventsConfig(),  # the default cap: 1 click per client, query, doc, day
    )
    q = "wing flutter"
    async with serve(app) as c:
        target = None
        for _ in range(12):
            page = await _json(await c.post("/search", json={"q": q, "k": 10}))
            ids = [h["id"] for h in page["hits"]]
            target = target or ids[0]
            assert target in ids
            ev = {"type": "click", "request_id": page["request_id"], "doc_id": target}
            r = await c.post("/events", json=[{**ev, "client_id": "loop-bot"}])
            assert r.status == 202, await r.text()
        r = await c.post("/events", json=[{**ev, "client_id": ""}])
        assert r.status == 400 and (await _json(r))["error"]["code"] == "invalid_event"
        state = _state(c)
        got = state.aggregates.arrays(q, [target])
        assert got["qd_impressions"][0] == 12 and got["qd_clicks"][0] == 1
        assert got["d_clicks"][0] == 1 and not math.isnan(got["qd_decayed_clicks"][0])
        assert [e.client_id for e in state.store.events()] == ["loop-bot"] * 12
