"""Behavior aggregates kept up to date from the impression log and the events.

Updated incrementally in the same SQLite transaction that logs the impressions / events
(so a crash can never count a click twice or lose one), mirrored in an in-memory table the
pipeline reads at serve time without touching the disk.

Several processes may write one store (``ltrsearch-serve --workers N``): every update
stamps its rows with the next ``seq``; a write transaction that finds another connection
committed since (SQLite's ``data_version``) first pulls the rows with a newer ``seq`` into
the mirror, so it never adds to a stale row; and every process pulls new rows periodically
(``refresh``, polled by the API) for serving.

The math is ltr.behavior's, the one definition the offline aggregate_sessions uses too:
every (level, query, doc) row is a tally (``add_to_tally``: the examination probability
of the shown position from ``exam_at``, decayed sums relative to the newest contributing
time, ``decay_factor``) read with ``tally_values``. Online, a page's impressions are added
when it is served and its clicks when they arrive, both at the time the page was served
(as offline); a hit counts as clicked once however many click events name it.

Click caps (docs/contracts.md, "Events: trust model"): a click that carries a
``client_id`` counts only while that client has fewer than ``click_cap`` counted clicks on
the same (query, document) in the same window (ltr.behavior.click_window of the page's
serve time); the counts live in the ``click_caps`` table, read and written in the event
transaction, so workers share them. The event log keeps every click; only the aggregates
(the served behavior features) are capped.
"""

from __future__ import annotations

import math
import operator
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from itertools import compress, repeat
from typing import Any

import numpy as np

from ltr.behavior import (
    AGGREGATE_KEYS,
    DEFAULT_CLICK_CAP,
    DEFAULT_CLICK_WINDOW_S,
    DEFAULT_EXAM_ETA,
    DEFAULT_HALF_LIFE_S,
    STATS,
    Tally,
    add_to_tally,
    click_window,
    decay_factor,
    exam_at,
    examination_probs,
    new_tally,
    query_key,
    tally_values,
)
from search.events import Event, Impression, SqliteEventStore

# One row per (level, query, doc); for level "d" the query is "".
_SCHEMA = """
CREATE TABLE IF NOT EXISTS behavior (
    level TEXT NOT NULL,
    query TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    impressions REAL NOT NULL,
    clicks REAL NOT NULL,
    examinations REAL NOT NULL,
    decayed_clicks REAL NOT NULL,
    decayed_impressions REAL NOT NULL,
    ref_ts REAL NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (level, query, doc_id)
) WITHOUT ROWID;
"""
_CAPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS click_caps (
    client_id TEXT NOT NULL,
    query TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    window_no INTEGER NOT NULL,
    clicks INTEGER NOT NULL,
    PRIMARY KEY (client_id, query, doc_id, window_no)
) WITHOUT ROWID;
"""
_SEQ_INDEX = "CREATE INDEX IF NOT EXISTS behavior_seq ON behavior(seq)"
_COLUMNS = (
    "level, query, doc_id, impressions, clicks, examinations, decayed_clicks, "
    "decayed_impressions, ref_ts"
)

_Key = tuple[str, str, str]


class BehaviorAggregates:
    """Incremental qd_* / d_* aggregates; attach to a SqliteEventStore as a listener."""

    def __init__(
        self,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        exam_eta: float = DEFAULT_EXAM_ETA,
        exam_positions: int = 100,
        click_cap: int = DEFAULT_CLICK_CAP,
        click_window_s: float = DEFAULT_CLICK_WINDOW_S,
    ) -> None:
        if not math.isfinite(half_life_s) or half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s!r}")
        if exam_positions < 1:
            raise ValueError("exam_positions must be >= 1")
        if click_cap < 1 or not math.isfinite(click_window_s) or click_window_s <= 0:
            raise ValueError("click_cap must be >= 1 and click_window_s > 0")
        self.half_life_s = half_life_s
        self.click_cap = click_cap
        self.click_window_s = click_window_s
        self._exam = examination_probs(exam_positions, exam_eta)
        self._rows: dict[_Key, Tally] = {}
        self._staged: dict[_Key, Tally] = {}
        self._lock = threading.Lock()
        self._seen = -1  # the highest seq mirrored (rows of an old store have seq 0)
        self._seq: int | None = None  # the seq of the open write transaction
        self._data_version = -1  # PRAGMA data_version when the mirror was last exact

    @classmethod
    def attach(
        cls, store: SqliteEventStore, half_life_s: float = DEFAULT_HALF_LIFE_S, **kw: Any
    ) -> BehaviorAggregates:
        """Create the table, load the current state into memory, listen to the store."""
        agg = cls(half_life_s, **kw)
        with store.lock:
            conn = store.connection
            conn.executescript(_SCHEMA + _CAPS_SCHEMA)
            if "seq" not in {r[1] for r in conn.execute("PRAGMA table_info(behavior)")}:
                # a store written before seq existed: its rows are all "old" (seq 0)
                conn.execute("ALTER TABLE behavior ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
            conn.execute(_SEQ_INDEX)
        agg.refresh(store)
        store.add_listener(agg)
        return agg

    @classmethod
    def read(
        cls, store: SqliteEventStore, half_life_s: float = DEFAULT_HALF_LIFE_S
    ) -> BehaviorAggregates:
        """The aggregates as the store holds them now, without writing (a read-only store:
        training's replay); empty for a log written without them (no click history)."""
        agg = cls(half_life_s)
        with store.lock:
            found = store.connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'behavior'"
            ).fetchone()
        if found:
            agg.refresh(store)
        return agg

    def refresh(self, store: SqliteEventStore) -> int:
        """Mirror rows other writers (processes) committed since the last refresh.

        Returns how many rows changed. Commits are serialized and each stamps its rows
        with a seq above every earlier one, so reading ``seq > seen`` misses nothing.
        """
        with store.lock:
            return self._pull(store.connection)

    def _pull(self, conn: sqlite3.Connection) -> int:
        got = conn.execute(
            f"SELECT {_COLUMNS}, seq FROM behavior WHERE seq > ? ORDER BY seq", (self._seen,)
        ).fetchall()
        if not got:
            return 0
        new = {(lv, q, d): [float(v) for v in vals[:-1]] for lv, q, d, *vals in got}
        with self._lock:
            self._rows.update(new)
            self._seen = max(self._seen, int(got[-1][-1]))
        return len(got)

    def _sync(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: bring the mirror up to the database if another
        connection (a worker process) committed since ours last did. SQLite's data_version
        changes exactly then; we hold the write lock, so nobody commits until we do."""
        v = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if v != self._data_version:
            self._pull(conn)
            self._data_version = v

    def _current(self, conn: sqlite3.Connection, key: _Key) -> Tally:
        row = self._staged.get(key)
        if row is None:
            cached = self._rows.get(key)
            row = list(cached) if cached is not None else new_tally()
            self._staged[key] = row
        return row

    # -- listener -------------------------------------------------------------------------
    def on_impressions(self, conn: sqlite3.Connection, impressions: Sequence[Impression]) -> None:
        touched: set[_Key] = set()
        self._sync(conn)
        for imp in impressions:
            q = query_key(imp.query)
            for doc, pos in zip(imp.doc_ids, imp.positions, strict=True):
                ex = exam_at(self._exam, int(pos))
                for key in (("qd", q, doc), ("d", "", doc)):
                    add_to_tally(self._current(conn, key), imp.ts, 1.0, 0.0, ex, self.half_life_s)
                    touched.add(key)
        self._write(conn, touched)

    def on_events(
        self,
        conn: sqlite3.Connection,
        events: Sequence[Event],
        shown: Mapping[tuple[str, str], Any],
        first_clicks: Sequence[tuple[str, str]] = (),
    ) -> None:
        touched: set[_Key] = set()
        self._sync(conn)
        clients: dict[tuple[str, str], str | None] = {}
        for e in events:  # the client of a hit's first click in the batch
            if e.type == "click":
                clients.setdefault((e.request_id, e.doc_id), e.client_id)
        for rid, doc in first_clicks:
            query, _pos, req_ts = shown[(rid, doc)]
            client = clients.get((rid, doc))
            if client is not None and not self._count_capped(
                conn, client, query_key(query), doc, float(req_ts)
            ):
                continue  # over this client's cap: logged, not counted
            for key in (("qd", query_key(query), doc), ("d", "", doc)):
                add_to_tally(
                    self._current(conn, key), float(req_ts), 0.0, 1.0, 0.0, self.half_life_s
                )
                touched.add(key)
        self._write(conn, touched)

    def _count_capped(
        self, conn: sqlite3.Connection, client: str, query: str, doc: str, ts: float
    ) -> bool:
        """Count one click of ``client`` on (query, doc) if it is under the cap of the
        window of ``ts``; False when the cap is reached (inside the event transaction)."""
        window = click_window(ts, self.click_window_s)
        key = (client, query, doc, window)
        row = conn.execute(
            "SELECT clicks FROM click_caps WHERE client_id = ? AND query = ? AND doc_id = ? "
            "AND window_no = ?",
            key,
        ).fetchone()
        n = 0 if row is None else int(row[0])
        if n >= self.click_cap:
            return False
        conn.execute("INSERT OR REPLACE INTO click_caps VALUES (?, ?, ?, ?, ?)", (*key, n + 1))
        return True

    def _write(self, conn: sqlite3.Connection, keys: set[_Key]) -> None:
        if not keys:
            return
        if self._seq is None:  # one seq per transaction, above every committed one
            self._seq = (
                int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM behavior").fetchone()[0]) + 1
            )
        conn.executemany(
            f"INSERT OR REPLACE INTO behavior ({_COLUMNS}, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*k, *self._staged[k], self._seq) for k in keys],
        )

    def after_commit(self) -> None:
        with self._lock:
            self._rows.update(self._staged)
            if self._seq is not None and self._seq == self._seen + 1:
                self._seen = self._seq  # nothing of another writer's in between
        self._staged = {}
        self._seq = None

    def after_rollback(self) -> None:
        self._staged = {}
        self._seq = None

    # -- reads ----------------------------------------------------------------------------
    def arrays(
        self, query: str, ids: Sequence[str], now: float | None = None
    ) -> dict[str, np.ndarray]:
        """Per-candidate arrays of every contract key (NaN = no history), decayed to now.

        The dict lookups run in C (map over zipped keys) and the values are scattered as
        one [k, 6] array per level; only the decay factor of a row with history is computed
        in Python, by ``decay_factor`` as ``tally_values`` does (bit-identical values;
        numpy's vectorized power may differ in the last bit from the libm one).
        """
        now = time.time() if now is None else now
        q = query_key(query)
        n = len(ids)
        out = {k: np.full(n, np.nan, dtype=np.float64) for k in AGGREGATE_KEYS}
        get = self._rows.get  # dict reads are atomic; rows are replaced, never mutated
        for level, qk in (("qd", q), ("d", "")):
            got = list(map(get, zip(repeat(level), repeat(qk), ids)))
            have = np.fromiter(map(operator.is_not, got, repeat(None)), dtype=bool, count=n)
            if not have.any():
                continue
            rows = list(compress(got, have))
            vals = np.array(rows, dtype=np.float64).reshape(len(rows), 6)
            hl = self.half_life_s
            f = np.array([decay_factor(now - t, hl) for t in vals[:, 5].tolist()], np.float64)
            out[f"{level}_impressions"][have] = vals[:, 0]
            out[f"{level}_clicks"][have] = vals[:, 1]
            out[f"{level}_examinations"][have] = vals[:, 2]
            out[f"{level}_decayed_clicks"][have] = vals[:, 3] * f
            out[f"{level}_decayed_impressions"][have] = vals[:, 4] * f
        return out

    def snapshot(self, now: float | None = None) -> dict[str, dict[tuple[str, ...], float]]:
        """All aggregates as ltr.behavior.aggregate_sessions returns them (for tests, replay)."""
        now = time.time() if now is None else now
        out: dict[str, dict[tuple[str, ...], float]] = {k: {} for k in AGGREGATE_KEYS}
        with self._lock:
            items = list(self._rows.items())
        for (level, q, doc), row in items:
            key: tuple[str, ...] = (q, doc) if level == "qd" else (doc,)
            for stat, v in zip(STATS, tally_values(row, now, self.half_life_s), strict=True):
                out[f"{level}_{stat}"][key] = v
        return out

    def __len__(self) -> int:
        return len(self._rows)
