"""Event store, impression writer and behavior aggregates on real SQLite files."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ltr.behavior import aggregate_sessions, behavior_arrays, query_key
from ltr.types import SERVED_LOG_COLUMNS
from search.aggregates import BehaviorAggregates
from search.errors import EventStoreError, InvalidEventError, UnknownRequestIdError
from search.events import (
    EVENT_CLOCK_SKEW_S,
    Event,
    Impression,
    ImpressionWriter,
    SqliteEventStore,
)
from search.http import parse_events

NAMES = ("f_a", "f_b", "f_c")
T0 = 1_700_000_000.0


def _imp(
    rid: str,
    docs: list[str],
    ts: float = T0,
    query: str = "wing flutter",
    offset: int = 0,
    names: tuple[str, ...] = NAMES,
    fid: str = "fs1",
    seed: int = 0,
) -> Impression:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(docs), len(names))).astype(np.float32)
    X[0, 1] = np.nan  # a missing feature must stay NaN through the log
    return Impression(
        request_id=rid,
        ts=ts,
        query=query,
        query_id="q1",
        model_version="v1",
        featureset_id=fid,
        feature_names=names,
        offset=offset,
        doc_ids=tuple(docs),
        positions=tuple(range(offset + 1, offset + 1 + len(docs))),
        scores=np.linspace(1.0, 0.1, len(docs)),
        features=X,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteEventStore]:
    s = SqliteEventStore(tmp_path / "events.db")
    yield s
    s.close()


def test_store_is_wal_with_full_sync(store: SqliteEventStore) -> None:
    assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_served_features_are_the_exact_vectors(store: SqliteEventStore) -> None:
    a, b = _imp("r1", ["d1", "d2", "d3"], seed=1), _imp("r2", ["d4", "d1"], ts=T0 + 5, seed=2)
    store.add_impressions([a, b])
    store.add_events([Event("click", "r1", "d2", T0 + 1), Event("purchase", "r2", "d4", T0 + 6)])
    df = store.served_features()
    assert list(df.columns) == [*SERVED_LOG_COLUMNS, *NAMES]
    assert len(df) == 5
    assert df["request_id"].tolist() == ["r1", "r1", "r1", "r2", "r2"]
    assert df["position"].tolist() == [1, 2, 3, 1, 2]
    assert df["clicked"].tolist() == [0, 1, 0, 0, 0]  # a purchase is not a click
    got = df[list(NAMES)].to_numpy(np.float32)
    want = np.vstack([a.features, b.features])
    np.testing.assert_array_equal(got, want)  # bit-exact, NaN where NaN
    assert math.isnan(got[0, 1])
    np.testing.assert_allclose(df["score"], np.concatenate([a.scores, b.scores]))
    assert df["featureset_id"].unique().tolist() == ["fs1"]
    # time window [since, until)
    assert store.served_features(since=T0 + 1)["request_id"].unique().tolist() == ["r2"]
    assert store.served_features(until=T0 + 5)["request_id"].unique().tolist() == ["r1"]
    assert store.served_features(since=T0 + 100).empty


def test_two_featuresets_share_columns_with_nan(store: SqliteEventStore) -> None:
    store.add_impressions([_imp("r1", ["d1"]), _imp("r2", ["d2"], names=("f_a", "f_z"), fid="fs2")])
    df = store.served_features()
    assert list(df.columns)[len(SERVED_LOG_COLUMNS) :] == ["f_a", "f_b", "f_c", "f_z"]
    assert math.isnan(df.loc[1, "f_b"]) and math.isnan(df.loc[0, "f_z"])


def test_unknown_request_ids_are_listed_and_nothing_is_stored(store: SqliteEventStore) -> None:
    store.add_impressions([_imp("r1", ["d1", "d2"])])
    with pytest.raises(UnknownRequestIdError) as err:
        store.add_events(
            [
                Event("click", "r1", "d1", T0),
                Event("click", "nope-2", "d1", T0),
                Event("click", "nope-1", "d1", T0),
            ]
        )
    assert err.value.request_ids == ("nope-1", "nope-2")
    assert "nope-1, nope-2" in str(err.value)
    assert store.counts()["events"] == 0  # all or nothing


def test_event_on_a_doc_not_shown_is_refused(store: SqliteEventStore) -> None:
    store.add_impressions([_imp("r1", ["d1", "d2"])])
    with pytest.raises(InvalidEventError, match="'d9' was not shown in request 'r1'"):
        store.add_events([Event("click", "r1", "d9", T0)])
    assert store.counts()["events"] == 0


def test_events_survive_reopen(tmp_path: Path) -> None:
    s = SqliteEventStore(tmp_path / "e.db")
    s.add_impressions([_imp("r1", ["d1", "d2"])])
    s.add_events([Event("add_to_cart", "r1", "d2", T0 + 2)])
    s.close()
    s2 = SqliteEventStore(tmp_path / "e.db")
    assert s2.events() == [Event("add_to_cart", "r1", "d2", T0 + 2)]
    assert s2.feature_names("fs1") == NAMES
    s2.close()


def test_duplicate_request_id_is_an_error(store: SqliteEventStore) -> None:
    from search.errors import EventStoreError

    store.add_impressions([_imp("r1", ["d1"])])
    with pytest.raises(EventStoreError):
        store.add_impressions([_imp("r1", ["d1"])])


def test_sessions_first_pages_only(store: SqliteEventStore) -> None:
    store.add_impressions(
        [_imp("r1", ["d1", "d2", "d3"]), _imp("r2", ["d4", "d5"], ts=T0 + 1, offset=3)]
    )
    store.add_events([Event("click", "r1", "d3", T0 + 1), Event("click", "r2", "d5", T0 + 2)])
    sessions = store.sessions()
    assert len(sessions) == 1
    s = sessions[0]
    assert (s.query, s.docs, s.clicks) == ("wing flutter", ("d1", "d2", "d3"), (False, False, True))
    assert s.ts == T0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "click"}, "expected a JSON list"),
        ([], "the batch is empty"),
        (["x"], "events[0]: expected an object"),
        ([{"type": "hover", "request_id": "r", "doc_id": "d"}], "events[0].type: 'hover'"),
        ([{"type": "click", "request_id": "", "doc_id": "d"}], "events[0].request_id"),
        ([{"type": "click", "request_id": "r"}], "events[0].doc_id"),
        ([{"type": "click", "request_id": "r", "doc_id": "d", "ts": "x"}], "events[0].ts"),
        ([{"type": "click", "request_id": "r", "doc_id": "d", "ts": -1}], "plausible"),
        ([{"type": "click", "request_id": "r", "doc_id": "d", "pos": 1}], "unknown field(s) pos"),
    ],
)
def test_parse_events_names_the_problem(raw: object, message: str) -> None:
    with pytest.raises(InvalidEventError) as err:
        parse_events(raw, now=T0)
    assert message in str(err.value)


def test_parse_events_defaults_ts_and_accepts_wrapper() -> None:
    evs = parse_events({"events": [{"type": "click", "request_id": "r", "doc_id": "d"}]}, now=T0)
    assert evs == [Event("click", "r", "d", T0)]


def test_aggregates_equal_offline_math_and_survive_restart(tmp_path: Path) -> None:
    """Online incremental aggregates == ltr.behavior.aggregate_sessions over the log."""
    half_life = 3600.0
    store = SqliteEventStore(tmp_path / "e.db")
    agg = BehaviorAggregates.attach(store, half_life_s=half_life)
    rng = np.random.default_rng(7)
    docs = [f"d{i}" for i in range(8)]
    queries = ["Wing  flutter", "heat transfer", "wing flutter"]  # 1st and 3rd: same key
    for r in range(40):
        shown = list(rng.choice(docs, size=5, replace=False))
        rid = f"r{r}"
        ts = T0 + 60.0 * r
        store.add_impressions([_imp(rid, shown, ts=ts, query=queries[r % 3], seed=r)])
        clicked = [d for d in shown if rng.random() < 0.4]
        if clicked:
            evs = [Event("click", rid, d, ts + 1) for d in clicked]
            evs.append(Event("click", rid, clicked[0], ts + 2))  # a second click counts once
            store.add_events(evs)
    now = T0 + 60.0 * 45
    offline = aggregate_sessions(
        [_KeyedSession(s) for s in store.sessions()], now=now, half_life_s=half_life
    )
    online = agg.snapshot(now=now)
    for key, table in offline.items():
        assert set(online[key]) == set(table), key
        for k, v in table.items():
            assert online[key][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (key, k)
    # the per-candidate arrays the pipeline reads equal behavior_arrays over the offline table
    ids = ["d0", "d3", "unknown"]
    got = agg.arrays("WING flutter", ids, now=now)
    want = behavior_arrays(offline, query_key("wing flutter"), ids)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9)
    assert np.isnan(got["qd_clicks"][2]) and np.isnan(got["d_impressions"][2])
    store.close()
    # restart: the table on disk reloads to the same state
    store2 = SqliteEventStore(tmp_path / "e.db")
    agg2 = BehaviorAggregates.attach(store2, half_life_s=half_life)
    assert agg2.snapshot(now=now) == online
    store2.close()


def test_failed_event_batch_leaves_aggregates_untouched(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "e.db")
    agg = BehaviorAggregates.attach(store)
    store.add_impressions([_imp("r1", ["d1", "d2"])])
    before = agg.snapshot(now=T0)
    with pytest.raises(UnknownRequestIdError):
        store.add_events([Event("click", "r1", "d1", T0), Event("click", "zz", "d1", T0)])
    assert agg.snapshot(now=T0) == before
    rows = store.connection.execute("SELECT SUM(clicks) FROM behavior").fetchone()[0]
    assert rows == 0
    store.close()


def _write_half(path: str, parity: int, seed: int) -> None:
    """One of two writer processes: the impressions/clicks of pages r with r % 2 == parity."""
    store = SqliteEventStore(path)
    BehaviorAggregates.attach(store, half_life_s=3600.0)
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(6)]
    for r in range(60):
        shown = list(rng.choice(docs, size=4, replace=False))
        if r % 2 != parity:
            continue
        rid = f"p{parity}-r{r}"
        store.add_impressions([_imp(rid, shown, ts=T0 + r, query="wing flutter", seed=r)])
        store.add_events([Event("click", rid, shown[r % 4], T0 + r + 1)])
    store.close()


def test_two_writer_processes_lose_no_count_and_mirrors_converge(tmp_path: Path) -> None:
    """Two processes (ltrsearch-serve --workers 2) update the same aggregates concurrently:
    every count is in the table (read-modify-write inside the write transaction, not from a
    stale mirror), and a third reader's refresh() mirrors them, equal to the offline math."""
    import multiprocessing as mp

    path = tmp_path / "e.db"
    reader = SqliteEventStore(path)
    agg = BehaviorAggregates.attach(reader, half_life_s=3600.0)
    assert len(agg) == 0
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_half, args=(str(path), k, 5)) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    # one row per level ("qd" with the one query, "d") and document: all six were shown
    assert agg.refresh(reader) == 2 * 6 == len(agg)
    assert agg.refresh(reader) == 0  # nothing new since
    now = T0 + 100.0
    offline = aggregate_sessions(
        [_KeyedSession(s) for s in reader.sessions()], now=now, half_life_s=3600.0
    )
    online = agg.snapshot(now=now)
    assert sum(online["d_impressions"].values()) == 60 * 4  # nothing lost to a race
    assert sum(online["d_clicks"].values()) == 60
    for key, table in offline.items():
        assert set(online[key]) == set(table), key
        for k, v in table.items():
            assert online[key][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (key, k)
    assert agg.refresh(reader) == 0  # nothing new
    reader.close()


def _open_new_store(path: str, results: Any) -> None:
    try:
        store = SqliteEventStore(path)
        BehaviorAggregates.attach(store)
        store.close()
        results.put("ok")
    except Exception as e:  # reported to the parent
        results.put(repr(e))


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """N server workers open the same new event store at the same moment; the switch to
    WAL used to fail with "database is locked" in ~1 of 4 such races."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for i in range(60):
        path, results = str(tmp_path / f"e{i}.db"), ctx.Queue()
        procs = [ctx.Process(target=_open_new_store, args=(path, results)) for _ in range(2)]
        for p in procs:
            p.start()
        got = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
        assert got == ["ok", "ok"], (i, got)


def test_store_from_before_seq_column_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    store = SqliteEventStore(path)
    store.connection.executescript(
        "CREATE TABLE behavior (level TEXT NOT NULL, query TEXT NOT NULL, doc_id TEXT NOT NULL,"
        " impressions REAL NOT NULL, clicks REAL NOT NULL, examinations REAL NOT NULL,"
        " decayed_clicks REAL NOT NULL, decayed_impressions REAL NOT NULL, ref_ts REAL NOT NULL,"
        " PRIMARY KEY (level, query, doc_id)) WITHOUT ROWID;"
        "INSERT INTO behavior VALUES ('d', '', 'd1', 3, 1, 2.5, 1, 3, 1700000000);"
    )
    store.close()
    store = SqliteEventStore(path)
    agg = BehaviorAggregates.attach(store)
    assert agg.snapshot(now=T0)["d_impressions"] == {("d1",): 3.0}
    store.add_impressions([_imp("r1", ["d1"])])
    assert agg.snapshot(now=T0)["d_impressions"] == {("d1",): 4.0}
    store.close()
    cols = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(behavior)")]
    assert cols[-1] == "seq"


class _KeyedSession:
    """A click-model session keyed by the normalized query (as the online store keys it)."""

    def __init__(self, s: object) -> None:
        self.query = query_key(s.query)  # type: ignore[attr-defined]
        self.doc_ids = s.docs  # type: ignore[attr-defined]
        self.clicks = s.clicks  # type: ignore[attr-defined]
        self.ts = s.ts  # type: ignore[attr-defined]


async def test_writer_flushes_on_size_interval_and_close(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "e.db")
    w = ImpressionWriter(store, batch_size=3, flush_interval_s=60.0)
    await w.start()
    for i in range(3):
        w.submit(_imp(f"s{i}", ["d1"]))
    for _ in range(1000):  # size-triggered flush happens in the background task
        if store.counts()["requests"] == 3 and w.pending == 0:  # rows land, then the count
            break
        await asyncio.sleep(0.01)
    assert store.counts()["requests"] == 3 and w.pending == 0
    w.submit(_imp("s3", ["d1"]))
    assert w.is_pending("s3")
    await w.close()  # flush on shutdown
    assert store.counts()["requests"] == 4 and not w.is_pending("s3")

    w2 = ImpressionWriter(store, batch_size=100, flush_interval_s=0.05)
    await w2.start()
    w2.submit(_imp("t0", ["d1"]))
    for _ in range(1000):
        if store.counts()["requests"] == 5:
            break
        await asyncio.sleep(0.01)
    assert store.counts()["requests"] == 5  # interval-triggered flush
    await w2.close()
    store.close()


def test_bad_writer_settings_refused(store: SqliteEventStore) -> None:
    with pytest.raises(ValueError):
        ImpressionWriter(store, batch_size=0)


def test_unreadable_store_path_is_a_clear_error(tmp_path: Path) -> None:
    from search.errors import EventStoreError

    bad = tmp_path / "dir.db"
    bad.mkdir()
    with pytest.raises(EventStoreError, match="cannot open the event store"):
        SqliteEventStore(bad)


def test_sqlite_file_is_plain_sqlite(tmp_path: Path) -> None:
    """Other tools (train, monitoring) may open the file directly."""
    s = SqliteEventStore(tmp_path / "e.db")
    s.add_impressions([_imp("r1", ["d1"])])
    s.close()
    con = sqlite3.connect(tmp_path / "e.db")
    assert con.execute("SELECT COUNT(*) FROM impressions").fetchone()[0] == 1
    con.close()


# --------------------------------------------------------------------------------------
# hostile rows (issue 15): a page the store cannot keep never blocks the others


async def test_writer_dead_letters_a_page_the_store_cannot_keep(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteEventStore(tmp_path / "e.db")
    w = ImpressionWriter(store, batch_size=4, flush_interval_s=60.0)
    await w.start()
    w.submit(_imp("ok1", ["d1"]))
    w.submit(dataclasses.replace(_imp("bad1", ["d1"]), query_id="\udfff"))  # cannot bind
    w.submit(_imp("ok2", ["d1"]))
    w.submit(_imp("ok1", ["d9"]))  # a request id already stored
    with caplog.at_level(logging.ERROR, logger="search.events"):
        await w.flush()
    assert store.known_request_ids(["ok1", "ok2", "bad1"]) == {"ok1", "ok2"}
    assert w.dead_lettered == 2 and w.pending == 0 and not w.is_pending("bad1")
    assert "bad1" in caplog.text and "dead-lettered" in caplog.text
    # later pages keep flowing; at shutdown a poisoned page does not take valid ones along
    w.submit(_imp("ok3", ["d1"]))
    w.submit(dataclasses.replace(_imp("bad2", ["d1"]), query="wing \ud800"))
    w.submit(_imp("ok4", ["d1"]))
    await w.close()
    assert store.counts()["requests"] == 4 and w.dead_lettered == 3
    assert w.written == 4 and w.failures == 0
    store.close()


class _FailingStore:
    """The real store, whose next ``fail`` impression writes fail like a full disk."""

    def __init__(self, inner: SqliteEventStore, fail: int) -> None:
        self.inner = inner
        self.fail = fail

    def add_impressions(self, impressions: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise EventStoreError("database or disk is full")
        self.inner.add_impressions(impressions)


async def test_writer_keeps_pages_while_the_store_fails(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "e.db")
    flaky = _FailingStore(store, fail=1)
    w = ImpressionWriter(flaky, batch_size=4, flush_interval_s=60.0)  # type: ignore[arg-type]
    w.submit(_imp("a", ["d1"]))
    w.submit(_imp("b", ["d1"]))
    with pytest.raises(EventStoreError):
        await w.flush()
    assert w.pending == 2 and w.dead_lettered == 0 and w.is_pending("a")
    await w.flush()
    assert store.counts()["requests"] == 2 and w.pending == 0
    store.close()


def test_event_before_its_page_was_served_is_refused(store: SqliteEventStore) -> None:
    store.add_impressions([_imp("r1", ["d1"], ts=T0)])
    early = T0 - EVENT_CLOCK_SKEW_S - 1
    with pytest.raises(InvalidEventError, match=r"events\[0\]\.ts: .*before its page was served"):
        store.add_events([Event("click", "r1", "d1", early)])
    assert store.add_events([Event("click", "r1", "d1", T0 - EVENT_CLOCK_SKEW_S + 1)]) == 1


def test_event_values_the_store_cannot_bind_are_invalid_events(store: SqliteEventStore) -> None:
    store.add_impressions([_imp("r1", ["d1"])])
    for ev in (Event("click", "\udfff", "d1", T0), Event("click", "r1", "d\ud800", T0)):
        with pytest.raises(InvalidEventError):
            store.add_events([ev])
    assert store.counts()["events"] == 0
