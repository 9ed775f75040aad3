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
- ``/metrics`` shows every worker's series (label ``worker``): prometheus_client's
  multiprocess mode, its files in ``prometheus/`` here (search.metrics).

The group directory (created by the parent, removed on exit) holds small JSON files written
atomically: ``request-<kind>.json`` ({"gen", ...}), ``state-<i>.json`` (worker i's last
handled gen per kind, its model and index versions); ``prometheus/`` holds the metrics.

Both sides of the protocol live here: ``supervise`` (the parent: sockets, the group
directory, the LTRSEARCH_WORKER_* environment, restarts) and ``WorkerGroup`` /
``group_from_env`` / ``worker_socket`` (a worker's view). scripts/serve.py only chooses
which side to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from search.metrics import MULTIPROC_ENV

REQUEST_KINDS = ("reload", "flush", "experiment")
# the environment a worker process is started with (set by supervise, read by a worker)
ENV_GROUP = "LTRSEARCH_WORKER_GROUP"  # the group directory
ENV_ID = "LTRSEARCH_WORKER_ID"  # this worker's index, 0..N-1
ENV_WORKERS = "LTRSEARCH_WORKERS"  # N
ENV_FD = "LTRSEARCH_WORKER_FD"  # the inherited listening socket
ENV_PARENT = "LTRSEARCH_WORKER_PARENT"  # the supervisor's pid (a worker stops without it)

log = logging.getLogger(__name__)


def _write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` atomically. The temp name is unique per call: threads of one worker
    write the same state file at once (each flush request reports), and a name shared by
    them let one thread's rename take the other's file (a 500 on /events)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
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
        # than the promoted one); an old flush request has nothing of its to flush, and the
        # live experiment is read from the event store at startup
        self.handled: dict[str, int] = {
            "reload": 0,
            "flush": self.current("flush")[0],
            "experiment": self.current("experiment")[0],
        }
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


def group_from_env() -> WorkerGroup | None:
    """The group a worker process was started in (None: not started by ``supervise``)."""
    directory = os.environ.get(ENV_GROUP)
    if not directory:
        return None
    return WorkerGroup(directory, int(os.environ[ENV_ID]), int(os.environ[ENV_WORKERS]))


def worker_socket() -> socket.socket:
    """The listening socket ``supervise`` passed to this worker process."""
    return socket.socket(fileno=int(os.environ[ENV_FD]))


# -- the supervisor ---------------------------------------------------------------------


def listen(host: str, port: int, n: int) -> list[socket.socket]:
    """n listening sockets on one address with SO_REUSEPORT: the kernel spreads new
    connections over them. Port 0: the first one picks the port, the others join it."""
    family, _, _, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(addr)
            addr = s.getsockname()
            s.listen(1024)
            s.set_inheritable(True)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def init_event_store(path: str | None) -> None:
    """Create or migrate the event store (WAL mode, tables, aggregates) once, before N
    workers open it at the same moment: two first opens would both try the schema change
    of an old store (the switch to WAL alone is retried by the store itself)."""
    if not path:
        return
    from search.aggregates import BehaviorAggregates
    from search.events import SqliteEventStore

    store = SqliteEventStore(path)
    try:
        BehaviorAggregates.attach(store)
    finally:
        store.close()


class _Workers:
    """The worker processes of one group: start, watch, restart, stop."""

    def __init__(self, socks: Sequence[socket.socket], command: Sequence[str]) -> None:
        self.socks = socks
        self.command = list(command)
        self.n = len(socks)
        self.dir = tempfile.mkdtemp(prefix="ltrsearch-workers-")
        self.metrics_dir = os.path.join(self.dir, "prometheus")
        os.mkdir(self.metrics_dir)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.restarts: list[float] = []

    def spawn(self, i: int) -> subprocess.Popen[bytes]:
        fd = self.socks[i].fileno()
        env = dict(os.environ)
        env.update(
            {
                ENV_GROUP: self.dir,
                ENV_ID: str(i),
                ENV_WORKERS: str(self.n),
                ENV_FD: str(fd),
                ENV_PARENT: str(os.getpid()),
                MULTIPROC_ENV: self.metrics_dir,
            }
        )
        return subprocess.Popen(self.command, env=env, pass_fds=(fd,))

    def serving(self, i: int) -> bool:
        return os.path.exists(os.path.join(self.dir, f"state-{i}.json"))

    def check(self) -> int | None:
        """Restart a worker that died after it was serving; an exit code when the group
        must stop (one died before serving: 2; too many restarts: 1), else None."""
        for i, p in enumerate(self.procs):
            rc = p.poll()
            if rc is None:
                continue
            if not self.serving(i):  # died before it served: bad index, settings...
                log.error("worker %d exited with %d before serving; stopping", i, rc)
                return 2
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < 60.0] + [now]
            if len(self.restarts) > 5:
                log.error("workers keep dying (%d restarts in 60 s); stopping", len(self.restarts))
                return 1
            log.error("worker %d (pid %d) exited with %d; restarting it", i, p.pid, rc)
            mark_process_dead(p.pid, self.metrics_dir)  # its gauges; counters stay summed
            os.remove(os.path.join(self.dir, f"state-{i}.json"))
            self.procs[i] = self.spawn(i)
        return None

    def stop(self) -> int:
        """SIGTERM every worker, wait (kill after 20 s), clean up; 1 if one exited badly."""
        code = 0
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.returncode not in (0, -signal.SIGTERM):
                code = code or 1
        for s in self.socks:
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


def supervise(host: str, socks: Sequence[socket.socket], command: Sequence[str]) -> int:
    """Run one process of ``command`` per socket of ``listen(host, ...)`` (a server that
    serves on ``worker_socket`` when ``group_from_env`` finds its group): restart one that
    dies after it was serving, stop them all on SIGTERM/SIGINT. Returns the exit code
    (2: a worker could not start; 1: they keep dying or one exited badly at the end)."""
    workers = len(socks)
    group = _Workers(socks, command)
    bound = group.socks[0].getsockname()[1]
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    group.procs = [group.spawn(i) for i in range(workers)]
    announced = False
    try:
        while not stopping:
            time.sleep(0.1)
            if not announced and all(group.serving(i) for i in range(workers)):
                announced = True
                log.info("serving", extra={"host": host, "port": bound, "workers": workers})
            if stopping:
                break
            code = group.check()
            if code is not None:
                return code
    finally:
        stop_code = group.stop()
    return stop_code
