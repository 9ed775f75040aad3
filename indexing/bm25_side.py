"""The BM25 side of a build: the texts, their analysis, the BM25 matrices and the term
store of a version, written inline or by a child process that starts with the build.

indexing.build runs it beside the vectors and the ANN graph; at 1M documents it is the
longest single stage, hence the child (docs/benchmarks.md, "Reindex at 1M"). An
incremental build's BM25 side is indexing.bm25_update, which write_bm25 chooses itself.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexing import bm25_update, layout
from indexing.analysis import Analyzer
from indexing.bm25 import build_from_streams
from indexing.config import IndexConfig
from indexing.documents import Document
from indexing.errors import IndexingError
from indexing.local_store import save_field_index
from indexing.term_store import write_term_store
from indexing.term_streams import PreviousTerms, analyze_fields

log = logging.getLogger(__name__)


class Stages(dict[str, float]):
    """Seconds spent per stage of a build (what scripts/benchmark_scale.py reports): wall
    under the stage's name, this process's CPU (every thread) under ``<name>_cpu``."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0
            cpu = f"{name}_cpu"
            self[cpu] = self.get(cpu, 0.0) + time.process_time() - c0


def text_field_names(docs: Sequence[Document]) -> tuple[str, ...]:
    """Indexed text fields in index order: title, body, then every extra field by name."""
    return ("title", "body", *sorted({f for d in docs for f in d.extra}))


def field_texts(
    docs: Sequence[Document], text_fields: Sequence[str], rows: list[int] | None = None
) -> list[list[str]]:
    """texts[field][row]; with ``rows``, only those rows' texts ("" elsewhere)."""
    out = []
    pick = docs if rows is None else [docs[i] for i in rows]
    for name in text_fields:
        if name == "title":
            col = [d.title for d in pick]
        elif name == "body":
            col = [d.body for d in pick]
        else:
            col = [d.extra.get(name, "") for d in pick]
        if rows is not None:
            full = [""] * len(docs)
            for i, t in zip(rows, col, strict=True):
                full[i] = t
            col = full
        out.append(col)
    return out


def write_bm25(
    path: str | Path,
    texts: Sequence[Sequence[str]],
    text_fields: Sequence[str],
    k1: float,
    b: float,
    stopwords: str,
    stemmer: str,
    previous: str | None = None,
    reuse_rows: np.ndarray | None = None,
) -> dict[str, float]:
    """Analyze the text fields and write the BM25 matrices and the term store of a version;
    returns the seconds of each stage (analysis, bm25, term_store; see Stages).

    Each distinct text is analyzed once and becomes integer term streams
    (indexing.term_streams); with ``previous`` (a version whose term store holds the same
    fields under the same analyzer), rows with ``reuse_rows[row] >= 0`` take that
    previous row's terms instead of being analyzed. Matrices, statistics and the term
    store come out as a full analysis of the same texts would make them. When the
    previous version allows it (indexing.bm25_update.plan: rows in order, few changed),
    its matrices and term store are updated for the changed rows instead (same scores,
    terms and answers; vocabulary ids kept).
    """
    path = Path(path)
    times = Stages()
    analyzer = Analyzer(stopwords, stemmer)
    if previous is not None and reuse_rows is not None:
        why = bm25_update.plan(Path(previous), reuse_rows, text_fields, k1, b, analyzer)
        if why is None:
            bm25_update.update_bm25(
                path, Path(previous), texts, text_fields, reuse_rows, k1, b, analyzer, times
            )
            times["bm25_incremental"] = 1.0
            return times
        log.info("BM25 side built from every row's terms: %s", why)
    with times("analysis"):
        prev = None
        if previous is not None and reuse_rows is not None:
            prev = PreviousTerms.load(Path(previous), reuse_rows)
        words, streams = analyze_fields(analyzer, texts, prev)
        del prev
    with times("bm25"):
        fields, combined, stored = build_from_streams(words, streams, k1, b)
        del streams
        (path / layout.BM25_DIR).mkdir()
        for name, fi in zip(text_fields, fields, strict=True):
            save_field_index(fi, layout.bm25_field(path, name))
        save_field_index(combined, layout.bm25_field(path, layout.COMBINED), block_max=True)
    with times("term_store"):
        write_term_store(path, stored)
    return times


# Corpora at least this large get their BM25 side (analysis, matrices, terms store) built
# by a second process while this one loads the vectors and writes the other files, unless
# the machine is saturated (1-minute load average >= cores): with both cores busy it
# gains nothing. A forked child costs no measurable CPU over inline at 100K documents
# (6.6-9.1 vs 7.1-9.2 CPU s, shared machine) but holds pages the parent then copies on
# write: process tree PSS 2.5 vs 1.8-1.9 GB inline at 100K; 14.2-14.7 GB at 1M against
# 13.0-13.3 with the pickled-job child (docs/benchmarks.md, "Reindex at 1M: forked BM25 child").
PARALLEL_MIN_DOCS = 20_000


def parallel_by_default(n: int) -> bool:
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return n >= PARALLEL_MIN_DOCS and cores > 1 and load < cores


def parallel_choice(asked: bool | None, n: int) -> bool:
    return parallel_by_default(n) if asked is None else asked


def _can_fork() -> bool:
    """Whether the BM25 child can be a fork of this process (POSIX): it then inherits
    the documents instead of receiving their texts pickled (1.4 GB at 1M documents)."""
    return hasattr(os, "fork") and hasattr(os, "waitpid")


class BM25Build:
    """The BM25 side of a build: inline, or in a child process started right away.

    The child is a fork of this process where the platform has fork: it collects the
    texts from the inherited documents itself, so it starts at once and nothing is
    pickled. Elsewhere it is a fresh interpreter that reads the texts from a pickled job
    file. Either way it writes only under ``path`` (the staging directory) plus a times
    file, and reports failure through its exit status and an error file.

    ``reuse``: (previous version, previous row of each row or -1), when the previous
    version's term store can serve the unchanged rows (indexing.reuse.reusable_terms);
    the texts of those rows are then not even collected.
    """

    def __init__(
        self,
        path: Path,
        docs: Sequence[Document],
        cfg: IndexConfig,
        parallel: bool,
        reuse: tuple[Path, np.ndarray] | None = None,
        fork: bool | None = None,
        text_fields: tuple[str, ...] | None = None,
    ):
        # text_fields: text_field_names(docs) when the caller has it (a pass over every doc)
        self.text_fields = text_field_names(docs) if text_fields is None else text_fields
        todo = None if reuse is None else np.flatnonzero(reuse[1] < 0).tolist()
        self.job: dict[str, Any] = {
            "path": str(path),
            "text_fields": self.text_fields,
            "k1": cfg.k1,
            "b": cfg.b,
            "stopwords": cfg.stopwords,
            "stemmer": cfg.stemmer,
            "previous": None if reuse is None else str(reuse[0]),
            "reuse_rows": None if reuse is None else reuse[1],
        }
        self.times: dict[str, float] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the forked child
        self.job_file = path / layout.BM25_JOB
        self.err_file = path / layout.BM25_JOB_ERR
        self.times_file = path / layout.BM25_JOB_TIMES
        self.in_child = parallel  # a second process builds it (the manifest records it)
        if not parallel:
            self.job["texts"] = field_texts(docs, self.text_fields, todo)
        elif _can_fork() if fork is None else fork:
            self.pid = self._fork(docs, todo)
        else:
            self.job["texts"] = field_texts(docs, self.text_fields, todo)
            self._spawn()

    def _fork(self, docs: Sequence[Document], todo: list[int] | None) -> int:
        # Frozen objects are skipped by the child's collector, which then does not copy
        # the pages of the inherited documents (a freeze made by the caller is kept).
        frozen_before = gc.get_freeze_count()
        gc.freeze()
        parent = os.getpid()
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0 and not frozen_before:
                gc.unfreeze()
        if pid == 0:  # the child: never returns into the caller's code
            code = 1
            try:
                _exit_with_parent(parent)
                _detach_signals()
                with open(self.err_file, "w", encoding="utf-8") as err:
                    try:
                        _forked_job(self.job, docs, todo, self.times_file)
                        code = 0
                    except BaseException:
                        traceback.print_exc(file=err)
            finally:
                os._exit(code)
        return pid

    def _spawn(self) -> None:
        with open(self.job_file, "wb") as f:
            pickle.dump(self.job, f, protocol=pickle.HIGHEST_PROTOCOL)
        code = "import sys; from indexing.bm25_side import _bm25_job; _bm25_job(sys.argv[1])"
        env = dict(os.environ)  # the child imports this very package, wherever it is
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        with open(self.err_file, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(self.job_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    def finish(self) -> None:
        """Wait for (or do) the BM25 side; raises IndexingError if the process failed."""
        if not self.in_child:
            self.times = write_bm25(**self.job)
            return
        if self.proc is not None:
            rc = self.proc.wait()
        else:
            assert self.pid is not None
            _, status = os.waitpid(self.pid, 0)
            self.pid = None
            rc = os.waitstatus_to_exitcode(status)
        err = ""
        if self.err_file.is_file():
            err = self.err_file.read_text(encoding="utf-8", errors="replace")[-2000:]
        if rc == 0 and self.times_file.is_file():
            self.times = json.loads(self.times_file.read_text(encoding="utf-8"))
        for f in (self.job_file, self.err_file, self.times_file):
            f.unlink(missing_ok=True)
        if rc != 0:
            raise IndexingError(f"BM25 build process exited with {rc}: {err.strip()}")

    def cancel(self) -> None:
        """Kill the child if it still runs (the caller removes the staging directory)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None


PARENT_POLL_S = 0.2


def _exit_with_parent(parent: int) -> None:
    """In the forked child: exit within PARENT_POLL_S of the building process's death.

    The child holds copies of all the parent's descriptors, the index's build lock among
    them (a flock lives until its last copy closes), so an orphaned child would refuse
    the next build until it finished on its own: tens of seconds at 1M documents, for a
    version nobody will publish. A thread polls the parent id, which changes when the
    parent dies (the child is re-parented); PR_SET_PDEATHSIG would fire on the death of
    the forking thread instead, e.g. an executor thread of a server."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="bm25-parent-watch", daemon=True).start()


def _detach_signals() -> None:
    """In the forked child: SIGINT and SIGTERM end it (the parent's handlers, e.g. a
    server's graceful shutdown, are not its own) and no signal wakes the parent's event
    loop through the inherited wakeup fd."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)


def _forked_job(
    job: dict[str, Any], docs: Sequence[Document], todo: list[int] | None, times_file: Path
) -> None:
    """The forked BM25 child's work: the texts from the inherited documents, then
    write_bm25. NumPy's BLAS stays on one thread: the parent builds the ANN on the other
    core meanwhile."""
    from threadpoolctl import threadpool_limits

    clock = Stages()
    with threadpool_limits(limits=1, user_api="blas"):
        with clock("texts"):
            texts = field_texts(docs, job["text_fields"], todo)
        clock.update(write_bm25(texts=texts, **job))
    times_file.write_text(json.dumps(clock), encoding="utf-8")


def _bm25_job(job_file: str) -> None:
    """Entry point of the BM25 build process where fork is missing (see BM25Build)."""
    with open(job_file, "rb") as f:
        job = pickle.load(f)
    times = write_bm25(**job)
    Path(job_file).with_name(layout.BM25_JOB_TIMES).write_text(json.dumps(times))
