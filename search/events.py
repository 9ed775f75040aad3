"""The event store: what was served (impressions) and what users did with it (events).

Principle 2: log what was served and join labels later. Every served page is logged with
the EXACT feature vectors the model scored (float32 blobs; the ordered feature names are
stored once per featureset), so training from clicks and drift monitoring read the same
numbers the model saw, never a recomputation.

SQLite in WAL mode with synchronous=FULL: a committed event survives a kill -9 (and a power
cut). Every call is blocking: the API runs them in ``asyncio.to_thread`` and batches
impressions through :class:`ImpressionWriter` so the event loop never waits on a disk sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote

import numpy as np
import pandas as pd

from ltr.types import SERVED_LOG_COLUMNS
from search.errors import (
    EventStoreError,
    ImpressionRejectedError,
    InvalidEventError,
    SearchError,
    UnknownRequestIdError,
)

if TYPE_CHECKING:
    from ltr.click_models import Session

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = ("click", "add_to_cart", "purchase")

TimeBound = float | datetime | None
# an event's ts must lie in [its page's ts - skew, now + skew]: clients' clocks differ
# from the server's by this much at most (events without ts take the server's time)
EVENT_CLOCK_SKEW_S = 300.0
# what writing a row raises when its VALUES cannot be stored (retrying cannot help): a str
# holding a lone surrogate, an int over 64 bits, an unsupported type, a constraint
_ROW_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
)


@dataclass(frozen=True)
class Impression:
    """One served page: the hits in shown order with the exact feature rows scored.

    ``positions`` are 1-based and absolute (offset + i + 1), so page 2 starts at k + 1.
    """

    request_id: str
    ts: float
    query: str
    query_id: str | None
    model_version: str | None
    featureset_id: str
    feature_names: tuple[str, ...]
    offset: int
    doc_ids: tuple[str, ...]
    positions: tuple[int, ...]
    scores: np.ndarray  # float64 [n]
    features: np.ndarray  # float32 [n, F], aligned with doc_ids
    # an online experiment (search.experiments): its id, the arm that served the page
    # (split / shadow / watch) or "interleave", and per position the team that placed it
    # (0 = production, 1 = candidate; interleaved pages only)
    experiment_id: str | None = None
    arm: str | None = None
    teams: tuple[int, ...] | None = None
    client_id: str | None = None

    def __post_init__(self) -> None:
        n = len(self.doc_ids)
        if len(self.positions) != n or len(self.scores) != n:
            raise ValueError("doc_ids, positions and scores must have the same length")
        if self.teams is not None and len(self.teams) != n:
            raise ValueError("teams must have one entry per position")
        if self.features.shape != (n, len(self.feature_names)):
            raise ValueError(
                f"features shape {self.features.shape} != ({n}, {len(self.feature_names)})"
            )


@dataclass(frozen=True)
class Event:
    """A user action on a served hit; ``client_id`` (optional) names the user or session
    the front end vouches for, and bounds how many of its clicks the aggregates count."""

    type: str
    request_id: str
    doc_id: str
    ts: float
    client_id: str | None = None


@runtime_checkable
class EventStore(Protocol):
    """Where impressions and events live. Blocking calls: run them off the event loop."""

    def add_impressions(self, impressions: Sequence[Impression]) -> None:
        """Store served pages, all or nothing: ImpressionRejectedError when a page holds
        what the store cannot keep, EventStoreError when the store itself fails."""
        ...

    def add_events(self, events: Sequence[Event]) -> int:
        """Durably store a validated batch (all or nothing); return the number stored."""
        ...

    def known_request_ids(self, request_ids: Iterable[str]) -> set[str]: ...

    def served_features(self, since: TimeBound = None, until: TimeBound = None) -> pd.DataFrame: ...

    def sessions(self, since: TimeBound = None, until: TimeBound = None) -> list[Session]: ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class StoreListener(Protocol):
    """Derived state (behavior aggregates) updated in the SAME transaction as the log."""

    def on_impressions(
        self, conn: sqlite3.Connection, impressions: Sequence[Impression]
    ) -> None: ...

    def on_events(
        self,
        conn: sqlite3.Connection,
        events: Sequence[Event],
        shown: Mapping[tuple[str, str], Any],
        first_clicks: Sequence[tuple[str, str]],
    ) -> None:
        """``shown``: (request_id, doc_id) -> (query, position, request ts) of each hit;
        ``first_clicks``: the hits clicked for the first time by this batch."""
        ...

    def after_commit(self) -> None: ...

    def after_rollback(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS featuresets (
    featureset_id TEXT PRIMARY KEY,
    feature_names TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    query TEXT NOT NULL,
    query_id TEXT,
    model_version TEXT,
    featureset_id TEXT NOT NULL REFERENCES featuresets(featureset_id),
    page_offset INTEGER NOT NULL,
    n INTEGER NOT NULL,
    experiment_id TEXT,
    arm TEXT,
    client_id TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE TABLE IF NOT EXISTS impressions (
    request_id TEXT NOT NULL REFERENCES requests(request_id),
    position INTEGER NOT NULL,
    doc_id TEXT NOT NULL,
    score REAL,
    features BLOB NOT NULL,
    team INTEGER,
    PRIMARY KEY (request_id, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    request_id TEXT NOT NULL REFERENCES requests(request_id),
    doc_id TEXT NOT NULL,
    ts REAL NOT NULL,
    received_ts REAL NOT NULL,
    client_id TEXT
);
CREATE INDEX IF NOT EXISTS events_request ON events(request_id);
"""
_TABLES = ("featuresets", "requests", "impressions", "events")


# columns added after a table was first released: (table, column, type); a store from
# before gets them (NULL in its old rows) when it is opened for writing
_ADDED_COLUMNS = (
    ("events", "client_id", "TEXT"),
    ("requests", "experiment_id", "TEXT"),
    ("requests", "arm", "TEXT"),
    ("requests", "client_id", "TEXT"),
    ("impressions", "team", "INTEGER"),
)


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns an older store lacks (reads of an old store never need them)."""
    for table, column, kind in _ADDED_COLUMNS:
        if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS requests_experiment ON requests(experiment_id) "
        "WHERE experiment_id IS NOT NULL"
    )


def _ts(bound: TimeBound, default: float) -> float:
    if bound is None:
        return default
    if isinstance(bound, datetime):
        return bound.timestamp()
    return float(bound)


def _to_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Switch to WAL; retried: the switch takes an exclusive lock without waiting on the
    busy timeout, so two processes opening a new store at once (server workers) could
    fail with "database is locked"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class SqliteEventStore:
    """EventStore on one SQLite file (WAL, synchronous=FULL), safe to call from threads.

    ``read_only`` opens an existing store for reports (SQLite URI ``mode=ro``): nothing is
    created, migrated or written, and a missing file or one without the event tables is
    an EventStoreError. ``max_bytes`` (0 = unbounded) caps the file (PRAGMA
    max_page_count): past it writes fail with "database or disk is full" and serving goes
    on. ``write_error`` is the last failed write's reason until a write succeeds again.
    """

    def __init__(
        self,
        path: str | Path,
        listeners: Sequence[StoreListener] = (),
        *,
        read_only: bool = False,
        max_bytes: int = 0,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._listeners = list(listeners)
        self._featuresets: dict[str, tuple[str, ...]] = {}
        self.write_error: str | None = None
        try:
            self._conn = self._open_read_only() if read_only else self._open(max_bytes)
            for fid, names in self._conn.execute(
                "SELECT featureset_id, feature_names FROM featuresets"
            ):
                self._featuresets[fid] = tuple(json.loads(names))
        except sqlite3.Error as e:
            raise EventStoreError(f"{self.path}: cannot open the event store: {e}") from e

    def _open(self, max_bytes: int) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        _to_wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # 64 MiB of page cache (default 2 MiB): inserts and aggregate updates then hit
        # memory, not the OS, as the log grows (every SQLite read releases the GIL).
        conn.execute("PRAGMA cache_size=-65536")
        conn.executescript(_SCHEMA)
        _migrate(conn)
        if max_bytes > 0:  # never below the current size (SQLite keeps that as the floor)
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute(f"PRAGMA max_page_count={max(1, max_bytes // page)}")
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise EventStoreError(f"{self.path}: no event store (no such file)")
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        conn = sqlite3.connect(
            uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        try:
            query = "SELECT name FROM sqlite_master WHERE type='table'"
            tables = {r[0] for r in conn.execute(query)}
        except sqlite3.Error:  # not a database at all
            conn.close()
            raise
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            conn.close()
            raise EventStoreError(
                f"{self.path}: not an event store (no {', '.join(missing)} table"
                f"{'s' if len(missing) > 1 else ''})"
            )
        return conn

    # -- plumbing -------------------------------------------------------------------------
    def add_listener(self, listener: StoreListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    @property
    def connection(self) -> sqlite3.Connection:
        """The shared connection (listeners create their tables through it)."""
        return self._conn

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as e:
                if isinstance(e, sqlite3.Error) and not isinstance(e, _ROW_ERRORS):
                    self.write_error = str(e)  # the store failing, not one row's values
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                for li in self._listeners:
                    li.after_rollback()
                raise
            self.write_error = None
            for li in self._listeners:
                li.after_commit()

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()

    # -- writes ---------------------------------------------------------------------------
    def add_impressions(self, impressions: Sequence[Impression]) -> None:
        """Store served pages (one transaction); a request id already stored, or a value
        SQLite cannot bind, is an ImpressionRejectedError (nothing of the batch is stored)."""
        if not impressions:
            return
        try:
            with self._transaction() as conn:
                for imp in impressions:
                    if imp.featureset_id not in self._featuresets:
                        conn.execute(
                            "INSERT OR IGNORE INTO featuresets VALUES (?, ?)",
                            (imp.featureset_id, json.dumps(list(imp.feature_names))),
                        )
                    elif self._featuresets[imp.featureset_id] != imp.feature_names:
                        raise ImpressionRejectedError(
                            f"featureset {imp.featureset_id} logged with other feature names"
                        )
                    conn.execute(
                        "INSERT INTO requests (request_id, ts, query, query_id, model_version, "
                        "featureset_id, page_offset, n, experiment_id, arm, client_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            imp.request_id,
                            imp.ts,
                            imp.query,
                            imp.query_id,
                            imp.model_version,
                            imp.featureset_id,
                            imp.offset,
                            len(imp.doc_ids),
                            imp.experiment_id,
                            imp.arm,
                            imp.client_id,
                        ),
                    )
                    feats = np.ascontiguousarray(imp.features, dtype=np.float32)
                    teams = imp.teams or (None,) * len(imp.doc_ids)
                    conn.executemany(
                        "INSERT INTO impressions (request_id, position, doc_id, score, "
                        "features, team) VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (
                                imp.request_id,
                                int(pos),
                                doc,
                                float(score) if math.isfinite(float(score)) else None,
                                feats[i].tobytes(),
                                teams[i],
                            )
                            for i, (pos, doc, score) in enumerate(
                                zip(imp.positions, imp.doc_ids, imp.scores, strict=True)
                            )
                        ],
                    )
                for li in self._listeners:
                    li.on_impressions(conn, impressions)
            for imp in impressions:
                self._featuresets.setdefault(imp.featureset_id, imp.feature_names)
        except ImpressionRejectedError:
            raise
        except Exception as e:
            raise _impression_write_error(self.path, e) from e

    def add_events(self, events: Sequence[Event]) -> int:
        """Validate against the log and commit durably, all or nothing.

        Unknown request ids -> UnknownRequestIdError listing them; a doc that was not shown
        in its request -> InvalidEventError naming it. Nothing of a bad batch is stored.
        """
        if not events:
            return 0
        received = time.time()
        try:
            with self._transaction() as conn:
                rids = sorted({e.request_id for e in events})
                shown: dict[tuple[str, str], Any] = {}
                found: set[str] = set()
                for chunk in _chunks(rids, 500):
                    marks = ",".join("?" * len(chunk))
                    for rid, doc, pos, query, rts in conn.execute(
                        "SELECT i.request_id, i.doc_id, i.position, r.query, r.ts "
                        "FROM impressions i "
                        f"JOIN requests r USING (request_id) WHERE i.request_id IN ({marks})",
                        chunk,
                    ):
                        found.add(rid)
                        shown.setdefault((rid, doc), (query, int(pos), float(rts)))
                    for (rid,) in conn.execute(
                        f"SELECT request_id FROM requests WHERE request_id IN ({marks})", chunk
                    ):
                        found.add(rid)
                unknown = [r for r in rids if r not in found]
                if unknown:
                    raise UnknownRequestIdError(unknown)
                for i, e in enumerate(events):
                    hit = shown.get((e.request_id, e.doc_id))
                    if hit is None:
                        raise InvalidEventError(
                            f"events[{i}]: doc_id {e.doc_id!r} was not shown in request "
                            f"{e.request_id!r}"
                        )
                    if e.ts < hit[2] - EVENT_CLOCK_SKEW_S:
                        raise InvalidEventError(
                            f"events[{i}].ts: {e.ts!r} is before its page was served at "
                            f"{hit[2]!r} (less {EVENT_CLOCK_SKEW_S:g} s for clock skew)"
                        )
                first_clicks: list[tuple[str, str]] = []
                for pair in dict.fromkeys(
                    (e.request_id, e.doc_id) for e in events if e.type == "click"
                ):
                    if not conn.execute(
                        "SELECT 1 FROM events WHERE request_id = ? AND doc_id = ? "
                        "AND type = 'click' LIMIT 1",
                        pair,
                    ).fetchone():
                        first_clicks.append(pair)
                conn.executemany(
                    "INSERT INTO events (type, request_id, doc_id, ts, received_ts, client_id) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.type, e.request_id, e.doc_id, e.ts, received, e.client_id) for e in events],
                )
                for li in self._listeners:
                    li.on_events(conn, events, shown, first_clicks)
        except _ROW_ERRORS as e:
            raise InvalidEventError(f"an event holds a value the store cannot keep: {e}") from e
        except sqlite3.Error as e:
            raise EventStoreError(f"{self.path}: writing events failed: {e}") from e
        return len(events)

    # -- reads ----------------------------------------------------------------------------
    def known_request_ids(self, request_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(request_ids))
        found: set[str] = set()
        with self._lock:
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                found.update(
                    r
                    for (r,) in self._conn.execute(
                        f"SELECT request_id FROM requests WHERE request_id IN ({marks})", chunk
                    )
                )
        return found

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                t: int(self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                for t in ("requests", "impressions", "events")
            }

    def feature_names(self, featureset_id: str) -> tuple[str, ...]:
        return self._featuresets[featureset_id]

    def events(self, since: TimeBound = None, until: TimeBound = None) -> list[Event]:
        lo, hi = _ts(since, -math.inf), _ts(until, math.inf)
        with self._lock:
            rows = self._conn.execute(
                "SELECT type, request_id, doc_id, ts, client_id FROM events "
                "WHERE ts >= ? AND ts < ? "
                "ORDER BY id",
                (lo, hi),
            ).fetchall()
        return [Event(*r) for r in rows]

    def served_features(self, since: TimeBound = None, until: TimeBound = None) -> pd.DataFrame:
        """One row per served hit in [since, until) (request time), with its exact features.

        ``ts`` is unix seconds (float). ``clicked`` is 1 when any click event names the hit.
        Rows of different featuresets share columns (union, NaN where a set lacks one).
        """
        lo, hi = _ts(since, -math.inf), _ts(until, math.inf)
        with self._lock:
            rows = self._conn.execute(
                "SELECT r.request_id, r.ts, r.query, r.query_id, i.doc_id, i.position, "
                "r.model_version, r.featureset_id, i.score, "
                "EXISTS (SELECT 1 FROM events e WHERE e.request_id = i.request_id "
                "        AND e.doc_id = i.doc_id AND e.type = 'click') AS clicked, "
                "i.features "
                "FROM requests r JOIN impressions i USING (request_id) "
                "WHERE r.ts >= ? AND r.ts < ? ORDER BY r.ts, r.request_id, i.position",
                (lo, hi),
            ).fetchall()
        names: list[str] = []
        for fid in dict.fromkeys(r[7] for r in rows):
            names.extend(n for n in self._featuresets[fid] if n not in names)
        base = pd.DataFrame([r[:10] for r in rows], columns=list(SERVED_LOG_COLUMNS))
        base["ts"] = base["ts"].astype(float)
        base["position"] = base["position"].astype("int64")
        base["score"] = base["score"].astype(float)
        base["clicked"] = base["clicked"].astype("int64")
        mat = np.full((len(rows), len(names)), np.nan, dtype=np.float32)
        col = {n: j for j, n in enumerate(names)}
        by_fs: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_fs.setdefault(r[7], []).append(i)
        for fid, idx in by_fs.items():
            fnames = self._featuresets[fid]
            block = np.frombuffer(b"".join(rows[i][10] for i in idx), dtype=np.float32)
            block = block.reshape(len(idx), len(fnames))
            mat[np.ix_(idx, [col[n] for n in fnames])] = block
        feats = pd.DataFrame(mat, columns=names, index=base.index)
        return pd.concat([base, feats], axis=1)

    def first_pages(self, since: TimeBound = None, until: TimeBound = None) -> tuple[int, int]:
        """(first pages served, those with no hit) in [since, until): the zero-result
        rate. Empty pages have a request row and no impression rows, so every reader that
        joins the impressions (served_features, sessions) skips them."""
        lo, hi = _ts(since, -math.inf), _ts(until, math.inf)
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(n = 0), 0) FROM requests "
                "WHERE ts >= ? AND ts < ? AND page_offset = 0",
                (lo, hi),
            ).fetchone()
        return int(row[0]), int(row[1])

    def sessions(self, since: TimeBound = None, until: TimeBound = None) -> list[Session]:
        """Click-model sessions: first pages only (offset 0), docs in shown order.

        Later pages are left out because click models read position 1 as the top of the
        screen; a page-2 list would be fitted with page-1 examination probabilities.
        """
        from ltr.click_models import Session

        lo, hi = _ts(since, -math.inf), _ts(until, math.inf)
        with self._lock:
            rows = self._conn.execute(
                "SELECT r.request_id, r.query, r.ts, i.doc_id, "
                "EXISTS (SELECT 1 FROM events e WHERE e.request_id = i.request_id "
                "        AND e.doc_id = i.doc_id AND e.type = 'click') "
                "FROM requests r JOIN impressions i USING (request_id) "
                "WHERE r.ts >= ? AND r.ts < ? AND r.page_offset = 0 "
                "ORDER BY r.ts, r.request_id, i.position",
                (lo, hi),
            ).fetchall()
        out: list[Session] = []
        cur: str | None = None
        docs: list[str] = []
        clicks: list[bool] = []
        query = ""
        ts = 0.0
        for rid, q, t, doc, clicked in rows:
            if rid != cur:
                if cur is not None:
                    out.append(_session(Session, query, docs, clicks, ts))
                cur, query, ts, docs, clicks = rid, q, t, [], []
            docs.append(doc)
            clicks.append(bool(clicked))
        if cur is not None:
            out.append(_session(Session, query, docs, clicks, ts))
        return out


def _session(cls: Any, query: str, docs: list[str], clicks: list[bool], ts: float) -> Any:
    try:
        return cls(query=query, docs=tuple(docs), clicks=tuple(clicks), ts=ts)
    except TypeError:  # a Session without a timestamp field
        return cls(query=query, docs=tuple(docs), clicks=tuple(clicks))


def _impression_write_error(path: Path, e: Exception) -> SearchError:
    """A failed impression write: the store failed (EventStoreError: disk full, locked,
    I/O; worth retrying) or a page holds what it cannot keep (ImpressionRejectedError:
    _ROW_ERRORS, or any other exception that is not SQLite's or the OS's)."""
    if isinstance(e, _ROW_ERRORS) or not isinstance(e, sqlite3.Error | OSError | MemoryError):
        return ImpressionRejectedError(f"{path}: a served page cannot be stored: {e!r}")
    return EventStoreError(f"{path}: writing impressions failed: {e}")


def _chunks(seq: Sequence[str], n: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class ImpressionWriter:
    """Batches impressions and writes them off the event loop.

    Flushes when ``batch_size`` pages are waiting, every ``flush_interval_s``, on demand
    (``flush()``: the events endpoint calls it when an event names a page still waiting, so
    a click right after its search is accepted), and on ``close()``. A failed write keeps
    the batch for the next attempt up to ``max_pending`` pages, then drops the oldest and
    counts them in ``dropped`` (serving must not stop because the log disk is full).
    A batch the store rejects (ImpressionRejectedError) is written again page by page, and
    each page it still rejects is dead-lettered: logged, counted in ``dead_lettered`` and
    skipped, so one bad page never blocks the others.
    """

    def __init__(
        self,
        store: EventStore,
        batch_size: int = 256,
        flush_interval_s: float = 0.5,
        max_pending: int = 100_000,
    ) -> None:
        if batch_size < 1 or flush_interval_s <= 0 or max_pending < batch_size:
            raise ValueError("batch_size >= 1, flush_interval_s > 0, max_pending >= batch_size")
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self._buf: list[Impression] = []
        self._writing: list[Impression] = []  # the batch being written (out of _buf)
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.dead_lettered = 0
        self.failures = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="impression-writer")

    def submit(self, imp: Impression) -> None:
        """Queue one served page (never blocks)."""
        if self._closed:
            raise EventStoreError("the impression writer is closed")
        self._buf.append(imp)
        self._pending.add(imp.request_id)
        if len(self._buf) > self.max_pending:
            drop = len(self._buf) - self.max_pending
            for old in self._buf[:drop]:
                self._pending.discard(old.request_id)
            del self._buf[:drop]
            self.dropped += drop
            log.error("impression log backlog full; dropped %d pages", drop)
        if len(self._buf) >= self.batch_size:
            self._wake.set()

    def is_pending(self, request_id: str) -> bool:
        return request_id in self._pending

    @property
    def pending(self) -> int:
        """Pages queued or being written."""
        return len(self._buf) + len(self._writing)

    async def flush(self) -> None:
        """Write everything queued so far; raises EventStoreError if the store fails (the
        pages not written stay queued, first in line)."""
        async with self._flush_lock:
            while self._buf:
                batch = self._writing = self._buf[: self.batch_size * 4]
                del self._buf[: len(batch)]  # out of reach of submit's backlog trimming
                try:
                    await self._write(batch)
                except BaseException:
                    self.failures += 1
                    raise
                finally:
                    self._writing = []

    async def _write(self, batch: list[Impression]) -> None:
        """Store ``batch``; when the store rejects it, page by page, dead-lettering the
        pages it rejects alone. On any other failure the pages not stored are requeued."""
        try:
            await asyncio.to_thread(self.store.add_impressions, batch)
        except ImpressionRejectedError:
            pass
        except BaseException:
            self._buf[:0] = batch
            raise
        else:
            self._stored(batch)
            return
        for i, imp in enumerate(batch):
            try:
                await asyncio.to_thread(self.store.add_impressions, [imp])
            except ImpressionRejectedError as e:
                self._pending.discard(imp.request_id)
                self.dead_lettered += 1
                log.error(
                    "impression %s dead-lettered: %s",
                    imp.request_id,
                    e,
                    extra={"request_id": imp.request_id, "query": ascii(imp.query)},
                )
            except BaseException:
                self._buf[:0] = batch[i:]
                raise
            else:
                self._stored([imp])

    def _stored(self, pages: list[Impression]) -> None:
        for imp in pages:
            self._pending.discard(imp.request_id)
        self.written += len(pages)

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("impression flush failed; will retry")
                await asyncio.sleep(self.flush_interval_s)

    async def close(self) -> None:
        """Stop the background task (never cancelled mid-write) and write what is left."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
