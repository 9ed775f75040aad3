"""Building a local index version: BM25 side, vectors, ANN graph, validation, publishing.

build_local_index writes a version into a staging directory (indexing.layout names its
files), validates the result (document count, one smoke query per retriever) and only
then publishes it and swaps CURRENT (ltr.versions.VersionedDir). A failed or killed build
therefore never changes what is served; its leftover directory is removed by the next
build. rollback points CURRENT back; both hold the index's lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexing import layout
from indexing.analysis import Analyzer
from indexing.ann import build_ann
from indexing.bm25 import build_indexes_and_streams
from indexing.config import IndexConfig
from indexing.documents import Document, check_unique_ids, embedding_text
from indexing.embedding_cache import EmbeddingCache, embed_texts
from indexing.encoders import Encoder
from indexing.errors import IndexingError, IndexNotFoundError, ValidationError
from indexing.local_store import Snapshot, doc_line, save_field_index, write_blobs
from indexing.term_store import write_term_store
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


def _field_texts(docs: Sequence[Document], text_fields: Sequence[str]) -> list[list[str]]:
    out = []
    for name in text_fields:
        if name == "title":
            out.append([d.title for d in docs])
        elif name == "body":
            out.append([d.body for d in docs])
        else:
            out.append([d.extra.get(name, "") for d in docs])
    return out


def write_bm25(
    path: str | Path,
    texts: Sequence[Sequence[str]],
    text_fields: Sequence[str],
    k1: float,
    b: float,
    stopwords: str,
    stemmer: str,
) -> None:
    """Analyze every text field and write the BM25 matrices and the term store of a version.

    The analyzer's token cache makes every token after its first occurrence a C-level
    dict hit; the combined field is merged from the per-field postings, not re-analyzed.
    """
    path = Path(path)
    analyzer = Analyzer(stopwords, stemmer)
    per_field = [analyzer.terms_many(t) for t in texts]
    fields, combined, streams = build_indexes_and_streams(per_field, k1, b)
    (path / layout.BM25_DIR).mkdir()
    for name, fi in zip(text_fields, fields, strict=True):
        save_field_index(fi, layout.bm25_field(path, name))
    save_field_index(combined, layout.bm25_field(path, layout.COMBINED))
    write_term_store(path, per_field, streams)


# Corpora at least this large get their BM25 side (analysis, matrices, terms store) built
# by a second process while this one loads the vectors and writes the other files, unless
# the machine is saturated (1-minute load average >= cores). The child costs ~1.3 CPU-s
# more at 100K documents (interpreter start, pickling, a fresh heap): with a core to spare
# it cut a 100K build from 6-7 s to 3.8-5 s wall, with both cores busy it gained nothing
# (docs/benchmarks.md, "Reindex").
PARALLEL_MIN_DOCS = 20_000


def _parallel_by_default(n: int) -> bool:
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return n >= PARALLEL_MIN_DOCS and cores > 1 and load < cores


class _BM25Build:
    """The BM25 side of a build: inline, or in a child process started right away."""

    def __init__(self, path: Path, docs: Sequence[Document], cfg: IndexConfig, parallel: bool):
        self.text_fields = text_field_names(docs)
        self.job: dict[str, Any] = {
            "path": str(path),
            "texts": _field_texts(docs, self.text_fields),
            "text_fields": self.text_fields,
            "k1": cfg.k1,
            "b": cfg.b,
            "stopwords": cfg.stopwords,
            "stemmer": cfg.stemmer,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.job_file = path / layout.BM25_JOB
        self.err_file = path / layout.BM25_JOB_ERR
        if parallel:
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
        if self.proc is None:
            write_bm25(**self.job)
            return
        rc = self.proc.wait()
        err = self.err_file.read_text(encoding="utf-8", errors="replace")[-2000:]
        self.job_file.unlink(missing_ok=True)
        self.err_file.unlink(missing_ok=True)
        if rc != 0:
            raise IndexingError(f"BM25 build process exited with {rc}: {err.strip()}")

    def cancel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _bm25_job(job_file: str) -> None:
    """Entry point of the BM25 build process (see _BM25Build)."""
    with open(job_file, "rb") as f:
        job = pickle.load(f)
    write_bm25(**job)


# --- the other files ------------------------------------------------------------------
def _attr_matrix(docs: Sequence[Document], attr_names: Sequence[str]) -> np.ndarray:
    """float64 [N, A]; NaN where a document has no value."""
    attrs = np.full((len(docs), len(attr_names)), np.nan, dtype=np.float64)
    for j, a in enumerate(attr_names):
        col = [d.attrs.get(a) for d in docs]
        attrs[:, j] = [np.nan if v is None else float(v) for v in col]
    return attrs


def _write_version(
    path: Path,
    docs: list[Document],
    vectors: np.ndarray,
    version: str,
    model_id: str,
    cfg: IndexConfig,
    previous: Path | None = None,
    bm25: _BM25Build | None = None,
) -> None:
    analyzer = Analyzer(cfg.stopwords, cfg.stemmer)  # its settings go into the manifest
    bm25 = bm25 or _BM25Build(path, docs, cfg, parallel=False)
    text_fields = bm25.text_fields
    attr_names = (
        tuple(cfg.attrs) if cfg.attrs else tuple(sorted({a for d in docs for a in d.attrs}))
    )
    n = len(docs)

    np.save(path / layout.VECTORS, vectors)
    ann = n > cfg.ann_threshold
    ann_build: dict[str, Any] = {}
    if ann:
        ids = [d.id for d in docs]
        ann_build = build_ann(path, ids, vectors, previous, model_id)

    np.save(path / layout.ATTRS, _attr_matrix(docs, attr_names))
    categories = sorted({d.category for d in docs if d.category is not None})
    code = {c: i for i, c in enumerate(categories)}
    cat = np.array([code.get(d.category, -1) if d.category is not None else -1 for d in docs])
    np.save(path / layout.CATEGORY, cat.astype(np.int32))
    (path / layout.CATEGORIES).write_text(json.dumps(categories), encoding="utf-8")
    (path / layout.IDS).write_text(json.dumps([d.id for d in docs]), encoding="utf-8")
    write_blobs(path / layout.DOCS, [doc_line(d) for d in docs])
    bm25.finish()

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
        "bm25_child_process": bm25.proc is not None,  # how it was built (same result)
        "ann": {
            "enabled": ann,
            "ef_search": cfg.ann_ef_search,
            "threshold": cfg.ann_threshold,
            **ann_build,
        },
    }
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
) -> str:
    """Build, validate and atomically publish a new version; returns its name.

    On any failure (bad input, embedding error, validation) nothing is published and the
    previous CURRENT keeps serving. ``parallel``: build the BM25 side in a second process
    (default: for PARALLEL_MIN_DOCS documents or more unless every core is busy).
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

    with _build_lock(dirs):
        for stale in dirs.clear_stale():  # left by a killed build
            log.warning("removed stale build directory %s", stale)
        tmp = dirs.stage()
        if parallel is None:
            parallel = _parallel_by_default(len(docs))
        bm25: _BM25Build | None = None
        try:
            version = dirs.new_name()
            bm25 = _BM25Build(tmp, docs, cfg, parallel)
            texts = [embedding_text(d) for d in docs]
            vectors = embed_texts(encoder, texts, cache=cache, progress=progress)
            vectors = _check_vectors(vectors, len(docs), encoder.dim)
            cur = dirs.current()
            previous = dirs.path(cur) if cur else None
            _write_version(tmp, docs, vectors, version, encoder.model_id, cfg, previous, bm25)
            snap = Snapshot(tmp)
            try:
                validate_snapshot(snap, docs)
            finally:
                snap.close()
            dirs.publish(tmp, version)
            dirs.point_to(version)
        except BaseException:
            if bm25 is not None:
                bm25.cancel()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _prune(dirs, cfg.keep_versions)
    return version
