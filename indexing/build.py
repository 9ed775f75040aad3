"""Building a local index version: BM25 side, vectors, ANN graph, validation, publishing.

build_local_index writes a version into a staging directory (indexing.layout names its
files), validates the result (document count, one smoke query per retriever) and only
then publishes it and swaps CURRENT (ltr.versions.VersionedDir). A failed or killed build
therefore never changes what is served; its leftover directory is removed by the next
build. rollback points CURRENT back; both hold the index's lock.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexing import bm25_update, layout
from indexing.analysis import Analyzer
from indexing.ann import build_ann
from indexing.bm25 import build_from_streams
from indexing.config import IndexConfig
from indexing.documents import Document, check_unique_ids
from indexing.embedding_cache import EmbeddingCache
from indexing.encoders import Encoder
from indexing.errors import IndexingError, IndexNotFoundError, ValidationError
from indexing.local_store import (
    Snapshot,
    doc_line,
    join_lines,
    link_or_copy,
    save_field_index,
    write_joined,
)
from indexing.reuse import (
    attrs_and_categories,
    document_vectors,
    reusable_terms,
    save_or_link,
    unchanged_rows,
)
from indexing.term_store import write_term_store
from indexing.term_streams import PreviousTerms, analyze_fields
from ltr.versions import LockBusyError, VersionedDir

log = logging.getLogger(__name__)


# --- versions --------------------------------------------------------------------------
@contextlib.contextmanager
def _build_lock(dirs: VersionedDir) -> Iterator[None]:
    """One build (or rollback) at a time per index_dir; the kernel drops the lock if the
    process dies."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(dirs.lock(wait=False))
        except LockBusyError as e:
            raise IndexingError(f"{dirs.root}: another build is running (lock {e})") from None
        yield


def rollback(index_dir: str | Path, version: str | None = None) -> str:
    """Serve the version before the current one (or the named one); returns its name.

    Takes the build lock, so a concurrent build cannot prune the version being restored.
    """
    dirs = layout.index_versions(index_dir)
    root = dirs.root
    if not dirs.versions_dir.is_dir():
        raise IndexNotFoundError(f"{root}: no index versions")
    with _build_lock(dirs):
        versions = dirs.names()
        cur = dirs.current()
        if version is None:
            older = [v for v in versions if cur is None or v < cur]
            if not older:
                raise IndexNotFoundError(f"{root}: no version older than {cur!r} to roll back to")
            version = older[-1]
        elif version not in versions:
            raise IndexNotFoundError(
                f"{root}: unknown version {version!r}; available: {', '.join(versions) or 'none'}"
            )
        dirs.point_to(version)
    return version


def _prune(dirs: VersionedDir, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the current one."""
    versions = dirs.names()
    cur = dirs.current()
    keep_set = set(versions[-keep:]) | ({cur} if cur else set())
    removed = []
    for v in versions:
        if v not in keep_set:
            dirs.discard(v)
            removed.append(v)
    return removed


# --- BM25 side -------------------------------------------------------------------------
def text_field_names(docs: Sequence[Document]) -> tuple[str, ...]:
    """Indexed text fields in index order: title, body, then every extra field by name."""
    return ("title", "body", *sorted({f for d in docs for f in d.extra}))


def _field_texts(
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


def _parallel_by_default(n: int) -> bool:
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return n >= PARALLEL_MIN_DOCS and cores > 1 and load < cores


def _parallel(asked: bool | None, n: int) -> bool:
    return _parallel_by_default(n) if asked is None else asked


def _can_fork() -> bool:
    """Whether the BM25 child can be a fork of this process (POSIX): it then inherits
    the documents instead of receiving their texts pickled (1.4 GB at 1M documents)."""
    return hasattr(os, "fork") and hasattr(os, "waitpid")


class _BM25Build:
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
            self.job["texts"] = _field_texts(docs, self.text_fields, todo)
        elif _can_fork() if fork is None else fork:
            self.pid = self._fork(docs, todo)
        else:
            self.job["texts"] = _field_texts(docs, self.text_fields, todo)
            self._spawn()

    def _fork(self, docs: Sequence[Document], todo: list[int] | None) -> int:
        # Frozen objects are skipped by the child's collector, which then does not copy
        # the pages of the inherited documents (a freeze made by the caller is kept).
        frozen_before = gc.get_freeze_count()
        gc.freeze()
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0 and not frozen_before:
                gc.unfreeze()
        if pid == 0:  # the child: never returns into the caller's code
            code = 1
            try:
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
        code = "import sys; from indexing.build import _bm25_job; _bm25_job(sys.argv[1])"
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
            texts = _field_texts(docs, job["text_fields"], todo)
        clock.update(write_bm25(texts=texts, **job))
    times_file.write_text(json.dumps(clock), encoding="utf-8")


def _bm25_job(job_file: str) -> None:
    """Entry point of the BM25 build process where fork is missing (see _BM25Build)."""
    with open(job_file, "rb") as f:
        job = pickle.load(f)
    times = write_bm25(**job)
    Path(job_file).with_name(layout.BM25_JOB_TIMES).write_text(json.dumps(times))


# --- the other files ------------------------------------------------------------------
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


def _write_version(
    path: Path,
    docs: list[Document],
    lines: tuple[bytes, np.ndarray],
    vectors: np.ndarray,
    version: str,
    model_id: str,
    cfg: IndexConfig,
    stages: Stages,
    previous: Path | None = None,
    bm25: _BM25Build | None = None,
    same_ids: bool = False,
    rows: np.ndarray | None = None,
) -> None:
    """Write every file of a version into ``path`` (``lines``: join_lines of the stored
    documents). ``same_ids``: ``previous`` holds the same ids in the same rows, so its
    ids file is linked; arrays equal to the previous version's are linked too.
    ``rows``: indexing.reuse.unchanged_rows (unchanged documents' attributes and
    categories are taken from the previous version)."""
    analyzer = Analyzer(cfg.stopwords, cfg.stemmer)  # its settings go into the manifest
    bm25 = bm25 or _BM25Build(path, docs, cfg, parallel=False)
    text_fields = bm25.text_fields
    with stages("fields"):
        attr_names = (
            tuple(cfg.attrs) if cfg.attrs else tuple(sorted({a for d in docs for a in d.attrs}))
        )
    n = len(docs)

    with stages("write"):
        if not (path / layout.VECTORS).is_file():  # document_vectors may have written it
            np.save(path / layout.VECTORS, vectors)
    ann = n > cfg.ann_threshold
    ann_build: dict[str, Any] = {}
    if ann:
        with stages("graph"):
            ids = [d.id for d in docs]
            ann_build = build_ann(
                path, ids, vectors, previous, model_id, cfg.ann_nprobe, same_ids=same_ids
            )

    with stages("write"):
        attrs, categories, cat = attrs_and_categories(docs, attr_names, previous, rows)
        save_or_link(path, layout.ATTRS, attrs, previous)
        save_or_link(path, layout.CATEGORY, cat, previous)
        (path / layout.CATEGORIES).write_text(json.dumps(categories), encoding="utf-8")
        if same_ids and previous is not None:
            link_or_copy(previous / layout.IDS, path / layout.IDS)
        else:
            (path / layout.IDS).write_text(json.dumps([d.id for d in docs]), encoding="utf-8")
        write_joined(path / layout.DOCS, *lines)
    with stages("bm25_wait" if bm25.in_child else "bm25_inline"):
        bm25.finish()
    stages.update(bm25.times)

    manifest = {
        "format": layout.FORMAT_VERSION,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "doc_count": n,
        "text_fields": list(text_fields),
        "attr_names": list(attr_names),
        "analyzer": analyzer.settings(),
        "model_id": model_id,
        "dim": int(vectors.shape[1]),
        "bm25": {"method": "lucene", "k1": cfg.k1, "b": cfg.b},
        "bm25_child_process": bm25.in_child,  # how it was built (same result)
        "ann": {
            "enabled": ann,
            "ef_search": cfg.ann_ef_search,
            "threshold": cfg.ann_threshold,
            **ann_build,
        },
    }
    with stages("manifest"):
        tmp = path / layout.MANIFEST_TMP
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.replace(tmp, path / layout.MANIFEST)


# --- validation and publishing --------------------------------------------------------
def _check_vectors(vectors: np.ndarray, n: int, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape != (n, dim):
        raise ValidationError(f"embeddings have shape {vectors.shape}, expected ({n}, {dim})")
    # Squared norms without [N, dim] temporaries (NaN/inf propagate into them).
    sq = np.einsum("ij,ij->i", vectors, vectors)
    if not np.all(np.isfinite(sq)):
        bad_rows = ~np.isfinite(vectors).all(axis=1)
        if bad_rows.any():
            bad = int(np.flatnonzero(bad_rows)[0])
            raise ValidationError(f"embedding of document row {bad} has NaN/inf values")
        sq = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)  # float32 overflow
    norms = np.sqrt(sq)
    if n and float(np.abs(norms - 1.0).max()) > 1e-3:
        bad = int(np.argmax(np.abs(norms - 1.0)))
        raise ValidationError(f"embedding of document row {bad} is not L2-normalized")
    return vectors


KNN_SMOKE_MIN_SHARE = 0.9


def validate_snapshot(snap: Snapshot, docs: Sequence[Document], seed: int = 0) -> None:
    """Refuse a version that cannot serve: wrong count, or a smoke query per retriever fails."""
    if snap.n != len(docs):
        raise ValidationError(f"index holds {snap.n} documents, input had {len(docs)}")
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(docs), size=min(20, len(docs)), replace=False)

    # BM25: the most distinctive sampled title must come back in the top 10 (ties allowed),
    # or, in a large catalog where more than ten documents share its title words and
    # outscore it, the served top 10 must be the exact top 10 of the scoring over all rows.
    def distinctiveness(row: int) -> float:
        return sum(snap.idf(list(set(snap.analyzer.terms(docs[row].title)))).values())

    titled = [int(r) for r in sample if snap.analyzer.terms(docs[int(r)].title)]
    if titled:
        row = max(titled, key=distinctiveness)
        hits = snap.bm25(docs[row].title, 10)
        every = snap.combined.scores(snap.analyzer.terms(docs[row].title))
        own = every[row]
        outranked = (
            own > 0
            and len(hits) == min(10, len(every))
            and np.allclose(np.sort(hits.scores), np.sort(every)[-len(hits) :], atol=1e-9)
        )
        if docs[row].id not in hits.ids and not (
            len(hits) and (own >= hits.scores[-1] - 1e-9 or outranked)
        ):
            raise ValidationError(
                f"BM25 smoke query failed: the title of {docs[row].id!r} "
                "does not retrieve it in the top 10"
            )
    # kNN: sampled documents' own vectors must retrieve them first (an exact duplicate may
    # tie). Nearly all, not all: an HNSW graph can leave a rare node unreachable (2 of 300
    # sampled rows of the 1M synthetic benchmark, at any ef), which is a recall loss to
    # report, not a broken index; misaligned ids or vectors fail every row.
    found = 0
    for r in sample:
        row = int(r)
        hits = snap.knn(snap.vectors[row], 10)
        self_score = float(snap.vectors[row] @ snap.vectors[row])
        if len(hits) and (
            hits.ids[0] == docs[row].id or abs(float(hits.scores[0]) - self_score) <= 1e-5
        ):
            found += 1
    if found < KNN_SMOKE_MIN_SHARE * len(sample):
        raise ValidationError(
            f"kNN smoke query failed: only {found} of {len(sample)} sampled documents "
            "are their own nearest neighbour"
        )


def build_local_index(
    docs: Iterable[Document],
    index_dir: str | Path,
    encoder: Encoder,
    cfg: IndexConfig | None = None,
    cache: EmbeddingCache | None = None,
    progress: bool = False,
    parallel: bool | None = None,
    *,
    reuse_previous: bool = True,
    stages: dict[str, float] | None = None,
) -> str:
    """Build, validate and atomically publish a new version; returns its name.

    On any failure (bad input, embedding error, validation) nothing is published and the
    previous CURRENT keeps serving. ``parallel``: build the BM25 side in a second process
    (default: for PARALLEL_MIN_DOCS documents or more to analyze unless every core is
    busy). ``reuse_previous``: documents stored unchanged in the current version keep its
    analyzed terms, vector and graph node (the result answers as a full build does);
    False builds everything from scratch. ``stages`` receives the seconds per stage.
    """
    cfg = cfg or IndexConfig()
    try:
        cfg.validate()
    except ValueError as e:
        raise IndexingError(f"index settings: {e}") from None
    dirs = layout.index_versions(index_dir)
    dirs.versions_dir.mkdir(parents=True, exist_ok=True)
    docs = list(docs)
    check_unique_ids(docs)
    clock = Stages()
    t_start = time.perf_counter()

    with _build_lock(dirs):
        for stale in dirs.clear_stale():  # left by a killed build
            log.warning("removed stale build directory %s", stale)
        tmp = dirs.stage()
        bm25: _BM25Build | None = None
        try:
            version = dirs.new_name()
            cur = dirs.current()
            previous = dirs.path(cur) if cur and reuse_previous else None
            n_todo = len(docs)
            if previous is None:  # nothing to reuse: the BM25 side starts before the rest
                with clock("bm25_start"):
                    bm25 = _BM25Build(tmp, docs, cfg, _parallel(parallel, n_todo))
            with clock("lines"):
                lines = join_lines(list(map(doc_line, docs)))
            with clock("compare"):
                same = unchanged_rows(previous, [d.id for d in docs], *lines)
                rows = None if same is None else same.rows
            reuse = None
            if bm25 is None:
                with clock("fields"):
                    text_fields = text_field_names(docs)
                    if (
                        previous is not None
                        and rows is not None
                        and (rows >= 0).any()
                        and reusable_terms(previous, text_fields, cfg)
                    ):
                        reuse = (previous, rows)
                n_todo = len(docs) if reuse is None else int(np.count_nonzero(reuse[1] < 0))
                with clock("bm25_start"):
                    bm25 = _BM25Build(
                        tmp, docs, cfg, _parallel(parallel, n_todo), reuse, text_fields=text_fields
                    )
            with clock("vectors"):
                vectors = document_vectors(
                    encoder, docs, cache, progress, previous, rows, out=tmp / layout.VECTORS
                )
                vectors = _check_vectors(vectors, len(docs), encoder.dim)
            _write_version(
                tmp,
                docs,
                lines,
                vectors,
                version,
                encoder.model_id,
                cfg,
                clock,
                previous,
                bm25,
                same_ids=same is not None and same.same_ids,
                rows=rows,
            )
            with clock("validate"):
                snap = Snapshot(tmp, id_map=False)  # validation looks no id up
                try:
                    validate_snapshot(snap, docs)
                finally:
                    snap.close()
            with clock("publish"):
                dirs.publish(tmp, version)
                dirs.point_to(version)
        except BaseException:
            if bm25 is not None:
                bm25.cancel()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with clock("prune"):
            _prune(dirs, cfg.keep_versions)
    if stages is not None:
        stages.update(clock)
        stages["total"] = time.perf_counter() - t_start
        stages["reused_rows"] = 0 if rows is None else float((rows >= 0).sum())
        stages["analyzed_rows"] = float(n_todo)
    return version
