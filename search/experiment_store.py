"""The experiment tables in the event store: what an experiment is, and its records.

Tables (created on open, in the store's SQLite file: WAL, synchronous=FULL, so every
``--workers`` process sees the same rows and a restart resumes): ``experiments`` (one row
per experiment and its status), ``experiment_log`` (append-only: triggers refuse UPDATE and
DELETE; every start, stop and gate decision with its numbers), ``experiment_assignments``
(who a split experiment served by which arm, written by a store listener in the SAME
transaction as the page's impression, so an acknowledged click's assignment is as durable as
the click), ``experiment_stats`` (per process and arm: requests, zero-result pages, errors,
a latency histogram; the guardrails read their sum) and ``shadow_log``.

search.experiments serves experiments from these rows; search.rollout decides on them.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from search.errors import ConflictError, InvalidParameterError, NotFoundError

if TYPE_CHECKING:
    from search.events import Event, Impression, SqliteEventStore

MODES = ("shadow", "interleave", "split")
LIVE = ("active", "watching")  # statuses that shape serving
# latency histogram bucket upper bounds (ms) of experiment_stats (the last holds the rest)
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 60_000,
)  # fmt: skip
GATE_DEFAULTS: dict[str, float] = {
    "alpha": 0.05,
    "beta": 0.2,
    "effect": 0.1,
    "min_queries": 200,
    "every_s": 2.0,  # how often the gate looks
}
GUARDRAIL_DEFAULTS: dict[str, float] = {
    "max_zero_result_rate": 0.2,
    "max_p99_ms": 2000.0,
    "max_error_rate": 0.02,
    "min_requests": 50,  # no guardrail verdict on fewer requests of the arm
    "watch_s": 60.0,  # after a promotion: watch the new model this long ...
    "watch_min_requests": 50,  # ... and over at least this many requests
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    production TEXT,
    candidate TEXT NOT NULL,
    share REAL NOT NULL,
    salt TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    watch_until REAL
);
CREATE TABLE IF NOT EXISTS experiment_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    experiment_id TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    numbers TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS experiment_log_no_update BEFORE UPDATE ON experiment_log
BEGIN SELECT RAISE(ABORT, 'experiment_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS experiment_log_no_delete BEFORE DELETE ON experiment_log
BEGIN SELECT RAISE(ABORT, 'experiment_log is append-only'); END;
CREATE TABLE IF NOT EXISTS experiment_assignments (
    experiment_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    arm TEXT NOT NULL,
    first_request_id TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (experiment_id, client_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS experiment_stats (
    experiment_id TEXT NOT NULL,
    process TEXT NOT NULL,
    arm TEXT NOT NULL,
    requests INTEGER NOT NULL,
    zero_results INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    latency_counts TEXT NOT NULL,
    PRIMARY KEY (experiment_id, process, arm)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shadow_log (
    request_id TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL,
    ts REAL NOT NULL,
    served TEXT NOT NULL,
    candidate TEXT NOT NULL,
    kendall_tau REAL,
    overlap REAL NOT NULL,
    candidate_ms REAL NOT NULL,
    nonfinite INTEGER NOT NULL,
    outliers INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_log_experiment ON shadow_log(experiment_id);
"""


@dataclass(frozen=True)
class Experiment:
    """One experiment row: what competes, how traffic is shared, and where it stands."""

    experiment_id: str
    mode: str
    production: str | None
    candidate: str
    share: float
    salt: str
    status: str  # active | watching (promoted) | promoted | rejected | stopped | rolled_back
    params: Mapping[str, Any]
    created_at: float
    watch_until: float | None = None

    def gate(self, key: str) -> float:
        return float(self.params.get("gate", {}).get(key, GATE_DEFAULTS[key]))

    def guardrail(self, key: str) -> float:
        return float(self.params.get("guardrails", {}).get(key, GUARDRAIL_DEFAULTS[key]))

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "mode": self.mode,
            "production": self.production,
            "candidate": self.candidate,
            "share": self.share,
            "status": self.status,
            "gate": {k: self.gate(k) for k in GATE_DEFAULTS},
            "guardrails": {k: self.guardrail(k) for k in GUARDRAIL_DEFAULTS},
            "created_at": self.created_at,
            "watch_until": self.watch_until,
        }


_COLUMNS = (
    "experiment_id, mode, production, candidate, share, salt, status, params, created_at, "
    "watch_until"
)


def _experiment(row: Sequence[Any]) -> Experiment:
    eid, mode, prod, cand, share, salt, status, params, created, watch = row
    return Experiment(eid, mode, prod, cand, float(share), salt, status, json.loads(params),
                      float(created), watch)  # fmt: skip


def parse_start(data: Any) -> dict[str, Any]:
    """Validate a POST /admin/experiments body; raises 4xx search errors naming the field."""
    from search.errors import MalformedJSONError, UnknownFieldError

    fields = ["candidate", "mode", "share", "gate", "guardrails"]
    if not isinstance(data, dict):
        raise MalformedJSONError('expected a JSON object like {"candidate": "v3", "mode": ...}')
    unknown = set(data) - set(fields)
    if unknown:
        raise UnknownFieldError(sorted(unknown), fields)
    cand = data.get("candidate")
    if not isinstance(cand, str) or not cand:
        raise InvalidParameterError("candidate", "expected a registry version name")
    mode = data.get("mode")
    if mode not in MODES:
        raise InvalidParameterError("mode", f"expected one of {', '.join(MODES)}")
    default = 0.1 if mode == "split" else 1.0
    share = data.get("share", default)
    if isinstance(share, bool) or not isinstance(share, int | float):
        raise InvalidParameterError("share", "expected a number")
    lo, hi = (0.01, 0.5) if mode == "split" else (0.0, 1.0)
    if not (lo <= float(share) <= hi) or float(share) == 0.0:
        raise InvalidParameterError("share", f"must be in ({lo:g}, {hi:g}] for mode {mode}")
    out: dict[str, Any] = {"candidate": cand, "mode": mode, "share": float(share)}
    for name, defaults in (("gate", GATE_DEFAULTS), ("guardrails", GUARDRAIL_DEFAULTS)):
        given = data.get(name) or {}
        if not isinstance(given, dict) or set(given) - set(defaults):
            raise InvalidParameterError(name, f"expected an object with keys {sorted(defaults)}")
        for k, v in given.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
                raise InvalidParameterError(f"{name}.{k}", "expected a number >= 0")
        out[name] = {k: float(v) for k, v in given.items()}
    return out


@dataclass
class ArmStats:
    """One arm's counts in one process (summed over processes by ``arm_stats``)."""

    requests: int = 0
    zero_results: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))

    def add(self, ms: float, zero: bool, error: bool) -> None:
        self.requests += 1
        self.zero_results += int(zero)
        self.errors += int(error)
        last = len(LATENCY_BUCKETS_MS) - 1
        self.latency[next((i for i, b in enumerate(LATENCY_BUCKETS_MS) if ms <= b), last)] += 1


class ExperimentStore:
    """The experiment tables in one event store (blocking calls: run them in a thread)."""

    def __init__(self, store: SqliteEventStore) -> None:
        self.store = store
        with store.lock:
            store.connection.executescript(_SCHEMA)
        store.add_listener(_AssignmentRecorder())

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.store.lock:
            conn = self.store.connection
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def live(self) -> Experiment | None:
        """The experiment that shapes serving now (active or watching a promotion)."""
        with self.store.lock:
            row = self.store.connection.execute(
                f"SELECT {_COLUMNS} FROM experiments WHERE status IN (?, ?) "
                "ORDER BY created_at DESC LIMIT 1",
                LIVE,
            ).fetchone()
        return _experiment(row) if row else None

    def get(self, experiment_id: str) -> Experiment:
        with self.store.lock:
            row = self.store.connection.execute(
                f"SELECT {_COLUMNS} FROM experiments WHERE experiment_id = ?", (experiment_id,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no experiment {experiment_id!r}")
        return _experiment(row)

    def recent(self, limit: int = 20) -> list[Experiment]:
        with self.store.lock:
            rows = self.store.connection.execute(
                f"SELECT {_COLUMNS} FROM experiments ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_experiment(r) for r in rows]

    def start(self, spec: Mapping[str, Any], production: str | None) -> Experiment:
        """Create an active experiment (409 while another one is live)."""
        now = time.time()
        eid = f"exp-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
        params = {"gate": spec.get("gate", {}), "guardrails": spec.get("guardrails", {})}
        with self._tx() as conn:
            live = conn.execute(
                "SELECT experiment_id, status FROM experiments WHERE status IN (?, ?)", LIVE
            ).fetchone()
            if live:
                raise ConflictError(f"experiment {live[0]} is {live[1]}; stop it first")
            conn.execute(
                f"INSERT INTO experiments ({_COLUMNS}, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, NULL, ?)",
                (eid, spec["mode"], production, spec["candidate"], spec["share"],
                 uuid.uuid4().hex, json.dumps(params), now, now),
            )  # fmt: skip
            self._log(conn, eid, "start", f"{spec['mode']} {production} vs {spec['candidate']}",
                      {"share": spec["share"], **params})  # fmt: skip
        return self.get(eid)

    def transition(
        self,
        experiment_id: str,
        from_status: Sequence[str],
        to_status: str,
        action: str,
        reason: str,
        numbers: Mapping[str, Any],
        watch_until: float | None = None,
    ) -> bool:
        """Move an experiment on and log why, in one transaction; False when it was no
        longer in ``from_status`` (another worker or request got there first)."""
        marks = ",".join("?" * len(from_status))
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE experiments SET status = ?, updated_at = ?, "
                f"watch_until = COALESCE(?, watch_until) "
                f"WHERE experiment_id = ? AND status IN ({marks})",
                (to_status, time.time(), watch_until, experiment_id, *from_status),
            )
            if cur.rowcount == 0:
                return False
            self._log(conn, experiment_id, action, reason, numbers)
        return True

    def append_log(
        self, experiment_id: str, action: str, reason: str, numbers: Mapping[str, Any]
    ) -> None:
        with self._tx() as conn:
            self._log(conn, experiment_id, action, reason, numbers)

    @staticmethod
    def _log(
        conn: sqlite3.Connection, eid: str, action: str, reason: str, numbers: Mapping[str, Any]
    ) -> None:
        conn.execute(
            "INSERT INTO experiment_log (ts, experiment_id, action, reason, numbers) "
            "VALUES (?, ?, ?, ?, ?)",
            (time.time(), eid, action, reason, json.dumps(numbers, default=float)),
        )

    def log_rows(self, experiment_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        where, args = ("WHERE experiment_id = ?", (experiment_id,)) if experiment_id else ("", ())
        with self.store.lock:
            rows = self.store.connection.execute(
                "SELECT id, ts, experiment_id, action, reason, numbers FROM experiment_log "
                f"{where} ORDER BY id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [
            {"id": i, "ts": ts, "experiment_id": e, "action": a, "reason": r,
             "numbers": json.loads(n)}
            for i, ts, e, a, r, n in reversed(rows)
        ]  # fmt: skip

    def add_stats(
        self, stats: Mapping[tuple[str, str], ArmStats], shadows: Sequence[tuple[Any, ...]],
        process: str,
    ) -> None:  # fmt: skip
        """Add this process's counts since the last flush, and shadow rows, in one commit."""
        with self._tx() as conn:
            for (eid, arm), s in stats.items():
                row = conn.execute(
                    "SELECT requests, zero_results, errors, latency_counts FROM experiment_stats "
                    "WHERE experiment_id = ? AND process = ? AND arm = ?",
                    (eid, process, arm),
                ).fetchone()
                req, zero, err, lat = row if row else (0, 0, 0, "[]")
                old = json.loads(lat) or [0] * len(LATENCY_BUCKETS_MS)
                merged = [a + b for a, b in zip(old, s.latency, strict=True)]
                conn.execute(
                    "INSERT OR REPLACE INTO experiment_stats VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (eid, process, arm, req + s.requests, zero + s.zero_results,
                     err + s.errors, json.dumps(merged)),
                )  # fmt: skip
            conn.executemany(
                "INSERT OR IGNORE INTO shadow_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", shadows
            )

    def arm_stats(self, experiment_id: str) -> dict[str, dict[str, float]]:
        """Per arm, summed over processes: requests, zero-result and error rates, p50/p99."""
        with self.store.lock:
            rows = self.store.connection.execute(
                "SELECT arm, requests, zero_results, errors, latency_counts "
                "FROM experiment_stats WHERE experiment_id = ?",
                (experiment_id,),
            ).fetchall()
        acc: dict[str, ArmStats] = {}
        for arm, req, zero, err, lat in rows:
            a = acc.setdefault(arm, ArmStats())
            a.requests += req
            a.zero_results += zero
            a.errors += err
            a.latency = [x + y for x, y in zip(a.latency, json.loads(lat), strict=True)]
        return {arm: _summary(a) for arm, a in acc.items()}

    def interleave_outcomes(self, experiment_id: str) -> tuple[int, int, int]:
        """(wins, losses, ties) of the candidate over the logged interleaved pages: each
        page's teams and clicked positions credited by ltr.interleaving.credit."""
        from ltr.interleaving import credit

        with self.store.lock:
            rows = self.store.connection.execute(
                "SELECT i.request_id, i.position, i.team, EXISTS (SELECT 1 FROM events e "
                "  WHERE e.request_id = i.request_id AND e.doc_id = i.doc_id "
                "  AND e.type = 'click') "
                "FROM requests r JOIN impressions i USING (request_id) "
                "WHERE r.experiment_id = ? AND r.arm = 'interleave' "
                "ORDER BY i.request_id, i.position",
                (experiment_id,),
            ).fetchall()
        counts = {1: 0, -1: 0, 0: 0}
        cur, teams, clicked = None, [], []  # type: ignore[var-annotated]
        for rid, _pos, team, click in [*rows, (None, 0, 0, 0)]:
            if rid != cur:
                if cur is not None:
                    counts[credit(teams, clicked)] += 1
                cur, teams, clicked = rid, [], []
            if click:
                clicked.append(len(teams))
            teams.append(int(team) if team is not None else 0)
        return counts[1], counts[-1], counts[0]

    def shadow_summary(self, experiment_id: str) -> dict[str, float | None]:
        with self.store.lock:
            row = self.store.connection.execute(
                "SELECT COUNT(*), AVG(kendall_tau), AVG(overlap), SUM(nonfinite), SUM(outliers) "
                "FROM shadow_log WHERE experiment_id = ?",
                (experiment_id,),
            ).fetchone()
            ms = [
                r[0]
                for r in self.store.connection.execute(
                    "SELECT candidate_ms FROM shadow_log WHERE experiment_id = ?",
                    (experiment_id,),
                )
            ]
        n, tau, overlap, nonfinite, outliers = row
        return {
            "requests": int(n),
            "kendall_tau_mean": _f(tau),
            "overlap_mean": _f(overlap),
            "nonfinite_scores": int(nonfinite or 0),
            "outlier_scores": int(outliers or 0),
            "candidate_p50_ms": float(np.percentile(ms, 50)) if ms else None,
            "candidate_p99_ms": float(np.percentile(ms, 99)) if ms else None,
        }


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _summary(a: ArmStats) -> dict[str, float]:
    n = max(1, a.requests)
    return {
        "requests": a.requests,
        "zero_result_rate": a.zero_results / n,
        "error_rate": a.errors / n,
        "p50_ms": _quantile(a.latency, 0.5),
        "p99_ms": _quantile(a.latency, 0.99),
    }


def _quantile(counts: Sequence[int], q: float) -> float:
    """The upper bound of the histogram bucket holding quantile ``q`` (0 when empty)."""
    total = sum(counts)
    run = 0
    for c, b in zip(counts, LATENCY_BUCKETS_MS, strict=True):
        run += c
        if run >= q * total:
            return float(b)
    return float(LATENCY_BUCKETS_MS[-1])


class _AssignmentRecorder:
    """StoreListener: a split page's (experiment, client, arm) goes in with its page."""

    def on_impressions(self, conn: sqlite3.Connection, impressions: Sequence[Impression]) -> None:
        rows = [
            (imp.experiment_id, imp.client_id, imp.arm, imp.request_id, imp.ts)
            for imp in impressions
            if imp.experiment_id and imp.client_id and imp.arm in ("control", "candidate")
        ]
        if rows:
            conn.executemany(
                "INSERT OR IGNORE INTO experiment_assignments VALUES (?, ?, ?, ?, ?)", rows
            )

    def on_events(
        self,
        conn: sqlite3.Connection,
        events: Sequence[Event],
        shown: Mapping[tuple[str, str], Any],
        first_clicks: Sequence[tuple[str, str]],
    ) -> None:
        return None

    def after_commit(self) -> None:
        return None

    def after_rollback(self) -> None:
        return None
