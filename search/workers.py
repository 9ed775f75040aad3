"""Several server processes on one port, and how they stay one server to their clients.

One Python process serves about 75 searches/s at 100K documents, bound by the GIL, not by
the CPU (docs/benchmarks.md). ``ltrsearch-serve --workers N`` runs N full copies of the
app, each accepting on its own SO_REUSEPORT socket of the same port (created by the parent,
so port 0 works and a restarted worker takes over its socket). What one worker does the
others must follow:

- the event store is shared (SQLite serializes writers; behavior aggregates read-modify-
  write in the transaction and every worker mirrors new rows, search.aggregates);
- ``/admin/reload`` loads a model in one worker, which then *requests* a reload here; the
  others load the same version and confirm, and the response waits for every confirmation;
- an event naming a page another worker has not logged yet *requests* a flush; the
  workers write their queued impressions and confirm before the event is judged unknown;
- ``/metrics`` shows every worker's series (label ``worker``) from the snapshots each one
  writes here every second.

The group directory (created by the parent, removed on exit) holds small JSON files written
atomically: ``request-<kind>.json`` ({"gen", ...}), ``state-<i>.json`` (worker i's last
handled gen per kind, its model and index versions) and ``metrics-<i>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REQUEST_KINDS = ("reload", "flush")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class WorkerGroup:
    """This worker's view of the group directory (thread-safe: files are replaced whole)."""

    def __init__(self, directory: str | Path, worker_id: int, workers: int) -> None:
        if workers < 1 or not 0 <= worker_id < workers:
            raise ValueError(f"worker id {worker_id} outside 0..{workers - 1}")
        self.dir = Path(directory)
        self.worker_id = worker_id
        self.workers = workers
        # a (re)started worker follows the newest reload (the group may serve a model other
        # than the promoted one); an old flush request has nothing of its to flush
        self.handled: dict[str, int] = {"reload": 0, "flush": self.current("flush")[0]}
        self.versions: dict[str, str | None] = {"model_version": None, "index_version": None}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- requests ---------------------------------------------------------------------
    def current(self, kind: str) -> tuple[int, dict[str, Any]]:
        """(gen, payload) of the newest request of this kind (gen 0: none yet)."""
        got = _read_json(self.dir / f"request-{kind}.json") or {}
        return int(got.get("gen", 0)), dict(got.get("payload", {}))

    def signature(self) -> tuple[tuple[int, int], ...]:
        """Identity of the request files as they are now (a new request replaces its file):
        an ``os.stat`` per kind, cheap enough to poll on the event loop."""
        out = []
        for kind in REQUEST_KINDS:
            try:
                st = os.stat(self.dir / f"request-{kind}.json")
                out.append((st.st_ino, st.st_mtime_ns))
            except FileNotFoundError:
                out.append((0, 0))
        return tuple(out)

    def request(self, kind: str, **payload: Any) -> int:
        """Ask every worker to do ``kind``; returns the request's generation."""
        if kind not in REQUEST_KINDS:
            raise ValueError(f"unknown request kind {kind!r}")
        with self._locked():
            gen = self.current(kind)[0] + 1
            _write_json(self.dir / f"request-{kind}.json", {"gen": gen, "payload": payload})
        return gen

    def done(self, kind: str, gen: int, **versions: str | None) -> None:
        """Record that this worker handled request ``gen`` (and what it now serves)."""
        self.handled[kind] = max(self.handled.get(kind, 0), gen)
        self.versions.update(versions)
        self.report()

    def report(self) -> None:
        _write_json(
            self.dir / f"state-{self.worker_id}.json",
            {"pid": os.getpid(), "handled": self.handled, **self.versions, "ts": time.time()},
        )

    def _read_all(self, prefix: str) -> dict[int, dict[str, Any]]:
        """Worker id -> the JSON of its ``<prefix>-<id>.json`` (workers without one left out)."""
        out: dict[int, dict[str, Any]] = {}
        for i in range(self.workers):
            got = _read_json(self.dir / f"{prefix}-{i}.json")
            if got is not None:
                out[i] = got
        return out

    def states(self) -> dict[int, dict[str, Any]]:
        return self._read_all("state")

    def confirmed(self, kind: str, gen: int) -> list[int]:
        """Workers that handled request ``gen`` of ``kind`` (or a later one)."""
        return sorted(
            i for i, s in self.states().items() if int(s.get("handled", {}).get(kind, 0)) >= gen
        )

    async def wait(self, kind: str, gen: int, timeout_s: float) -> list[int]:
        """Wait until every worker confirmed ``gen``; returns the ones that did."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = await asyncio.to_thread(self.confirmed, kind, gen)
            if len(done) == self.workers or time.monotonic() >= deadline:
                return done
            await asyncio.sleep(0.02)

    async def broadcast(
        self, kind: str, timeout_s: float, payload: dict[str, Any], **versions: str | None
    ) -> list[int]:
        """Request ``kind`` of every worker, count this one as done (it did the work
        already; ``versions``: what it now serves), wait for the others' confirmations.
        Returns the workers that did not confirm within ``timeout_s``."""
        gen = await asyncio.to_thread(self.request, kind, **payload)
        await asyncio.to_thread(self.done, kind, gen, **versions)
        done = await self.wait(kind, gen, timeout_s)
        return [i for i in range(self.workers) if i not in done]

    # -- metrics ----------------------------------------------------------------------
    def write_metrics(self, snapshot: dict[str, Any]) -> None:
        _write_json(self.dir / f"metrics-{self.worker_id}.json", snapshot)

    def read_metrics(self) -> dict[int, dict[str, Any]]:
        return self._read_all("metrics")


def group_from_env() -> WorkerGroup | None:
    """The group a worker process was started in (scripts/serve.py sets these)."""
    directory = os.environ.get("LTRSEARCH_WORKER_GROUP")
    if not directory:
        return None
    return WorkerGroup(
        directory,
        int(os.environ["LTRSEARCH_WORKER_ID"]),
        int(os.environ["LTRSEARCH_WORKERS"]),
    )
