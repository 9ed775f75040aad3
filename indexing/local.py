"""The embedded ``local`` backend: versioned on-disk indexes with an atomic swap.

Layout under ``index_dir``::

    CURRENT                  the serving version's name (replaced atomically)
    versions/<version>/      complete, validated, immutable versions (see local_store)
    .building-<random>/      a build in progress; renamed into versions/ only when complete
    .lock                    flock held by the one running build

A build writes into ``.building-*``, validates the result (document count, one smoke
query per retriever) and only then renames it into ``versions/`` and swaps ``CURRENT``.
A failed or killed build therefore never changes what is served; its leftover directory
is removed by the next build.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from indexing.analysis import Analyzer
from indexing.backend import Filters, Hits, IndexInfo
from indexing.config import IndexConfig
from indexing.documents import Document, check_unique_ids
from indexing.embedding_cache import EmbeddingCache, embed_texts
from indexing.encoders import Encoder
from indexing.errors import (
    BackendError,
    IndexingError,
    IndexNotFoundError,
    ValidationError,
)
from indexing.local_store import (
    ANN_ROWS,
    COMBINED,
    FORMAT_VERSION,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    READABLE_FORMATS,
    Lookups,
    Snapshot,
    build_indexes_and_streams,
    doc_line,
    load_ann_rows,
    write_blobs,
    write_term_store,
)

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
VERSIONS = "versions"
BUILDING_PREFIX = ".building-"
LOCK = ".lock"

P = ParamSpec("P")
T = TypeVar("T")


# --- versions ------------------------------------------------------------------------
def current_version(index_dir: str | Path) -> str | None:
    """The serving version's name (None before the first build); one small file read."""
    try:
        return (Path(index_dir) / CURRENT).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def list_versions(index_dir: str | Path) -> list[str]:
    """Complete versions on disk, oldest first (names sort by build time)."""
    vdir = Path(index_dir) / VERSIONS
    if not vdir.is_dir():
        return []
    return sorted(p.name for p in vdir.iterdir() if (p / "manifest.json").is_file())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (durable before it is published)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _swap_current(index_dir: Path, version: str) -> None:
    """Point CURRENT at ``version``: write a temp file, fsync, os.replace, fsync the dir."""
    tmp = index_dir / f".{CURRENT}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, index_dir / CURRENT)
    _fsync_dir(index_dir)


def rollback(index_dir: str | Path, version: str | None = None) -> str:
    """Serve the version before the current one (or the named one); returns its name.

    Takes the build lock, so a concurrent build cannot prune the version being restored.
    """
    root = Path(index_dir)
    if not (root / VERSIONS).is_dir():
        raise IndexNotFoundError(f"{root}: no index versions")
    with _build_lock(root):
        versions = list_versions(root)
        cur = current_version(root)
        if version is None:
            older = [v for v in versions if cur is None or v < cur]
            if not older:
                raise IndexNotFoundError(f"{root}: no version older than {cur!r} to roll back to")
            version = older[-1]
        elif version not in versions:
            raise IndexNotFoundError(
                f"{root}: unknown version {version!r}; available: {', '.join(versions) or 'none'}"
            )
        _swap_current(root, version)
    return version


def _prune(root: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions, never the current one."""
    versions = list_versions(root)
    cur = current_version(root)
    keep_set = set(versions[-keep:]) | ({cur} if cur else set())
    removed = []
    for v in versions:
        if v not in keep_set:
            shutil.rmtree(root / VERSIONS / v, ignore_errors=True)
            removed.append(v)
    return removed


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """One build at a time per index_dir; the kernel drops the lock if the process dies."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexingError(f"{root}: another build is running (lock {root / LOCK})") from None
        yield
    finally:
        os.close(fd)


def _new_version_name(root: Path) -> str:
    """A UTC timestamp name that sorts after every existing version (even if the clock
    went backwards: then the newest name plus a suffix)."""
    existing = list_versions(root)
    name = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    if existing and name <= existing[-1]:
        name = existing[-1] + ".1"
    return name


# --- build -----------------------------------------------------------------------------
def embedding_text(doc: Document) -> str:
    """The one text embedded per document: title, body and extra fields, blank ones skipped."""
    return "\n".join(t for t in doc.text_fields().values() if t)


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
    """Analyze every text field and write ``bm25/`` and the term store of a version.

    The analyzer's token cache makes every token after its first occurrence a C-level
    dict hit; the combined field is merged from the per-field postings, not re-analyzed.
    """
    path = Path(path)
    analyzer = Analyzer(stopwords, stemmer)
    per_field = [analyzer.terms_many(t) for t in texts]
    fields, combined, streams = build_indexes_and_streams(per_field, k1, b)
    (path / "bm25").mkdir()
    for name, fi in zip(text_fields, fields, strict=True):
        fi.save(path / "bm25" / name)
    combined.save(path / "bm25" / COMBINED)
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


_JOB = ".bm25-job"


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
        self.job_file = path / f"{_JOB}.pickle"
        self.err_file = path / f"{_JOB}.err"
        if parallel:
            with open(self.job_file, "wb") as f:
                pickle.dump(self.job, f, protocol=pickle.HIGHEST_PROTOCOL)
            code = "import sys; from indexing.local import _bm25_job; _bm25_job(sys.argv[1])"
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

    np.save(path / "vectors.npy", vectors)
    ann = n > cfg.ann_threshold
    ann_build: dict[str, Any] = {}
    if ann:
        ids = [d.id for d in docs]
        ann_build = build_ann(path, ids, vectors, previous, model_id)

    np.save(path / "attrs.npy", _attr_matrix(docs, attr_names))
    categories = sorted({d.category for d in docs if d.category is not None})
    code = {c: i for i, c in enumerate(categories)}
    cat = np.array([code.get(d.category, -1) if d.category is not None else -1 for d in docs])
    np.save(path / "category.npy", cat.astype(np.int32))
    (path / "categories.json").write_text(json.dumps(categories), encoding="utf-8")
    (path / "ids.json").write_text(json.dumps([d.id for d in docs]), encoding="utf-8")
    write_blobs(path / "docs.jsonl", [doc_line(d) for d in docs])
    bm25.finish()

    manifest = {
        "format": FORMAT_VERSION,
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
            "library": "hnswlib",
            "space": "ip",
            "M": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION,
            "ef_search": cfg.ann_ef_search,
            "threshold": cfg.ann_threshold,
            **ann_build,
        },
    }
    tmp = path / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp, path / "manifest.json")


# --- ANN -----------------------------------------------------------------------------------
# Rebuild the graph from scratch when more than this share of its nodes would be deleted
# (deleted nodes still cost memory and search time; their labels are never reused).
ANN_MAX_DELETED = 0.2


def _reusable_graph(
    previous: Path | None, model_id: str, dim: int
) -> tuple[dict[str, Any], list[str], np.ndarray, np.ndarray] | None:
    """(manifest, ids, vectors (memory-mapped), label -> row) of a previous version whose
    hnswlib graph a new build can extend, or None (no version, other model/dim/format, no
    graph, other graph parameters)."""
    if previous is None:
        return None
    try:
        m = json.loads((previous / "manifest.json").read_text(encoding="utf-8"))
        a = m.get("ann", {})
        if (
            m.get("format") not in READABLE_FORMATS
            or m.get("model_id") != model_id
            or int(m.get("dim", -1)) != dim
            or not a.get("enabled")
            or (a.get("M"), a.get("ef_construction")) != (HNSW_M, HNSW_EF_CONSTRUCTION)
            or not (previous / "ann.bin").is_file()
        ):
            return None
        ids = json.loads((previous / "ids.json").read_text(encoding="utf-8"))
        vectors = np.load(previous / "vectors.npy", mmap_mode="r")
        rows = load_ann_rows(previous, m)
        if rows is None:
            rows = np.arange(len(ids), dtype=np.int64)
    except (OSError, ValueError, KeyError) as e:
        log.warning("previous version %s unusable for graph reuse: %s", previous, e)
        return None
    if vectors.shape != (len(ids), dim):
        return None
    return m, ids, vectors, rows


def build_ann(
    path: Path,
    ids: Sequence[str],
    vectors: np.ndarray,
    previous: Path | None,
    model_id: str,
) -> dict[str, Any]:
    """Write ``ann.bin`` (+ ``ann_rows.npy``: hnswlib label -> row, -1 = deleted node).

    Reuses the previous version's graph when it can: documents whose id and vector bytes
    are unchanged keep their node, removed or changed ones are marked deleted, new or
    changed ones are added under fresh labels. The previous version is only read (its
    graph is loaded into memory and saved into ``path``). Returns the manifest's record
    of what was done.
    """
    import hnswlib

    n, dim = vectors.shape
    threads = min(2, os.cpu_count() or 1)
    prev = _reusable_graph(previous, model_id, dim)
    if prev is not None and previous is not None:
        _, prev_ids, prev_vectors, prev_rows = prev
        label_of_prev_row = np.full(len(prev_ids), -1, dtype=np.int64)
        live = np.flatnonzero(prev_rows >= 0)
        label_of_prev_row[prev_rows[live]] = live
        prev_row_of = {d: i for i, d in enumerate(prev_ids)}
        prev_row = np.fromiter((prev_row_of.get(d, -1) for d in ids), dtype=np.int64, count=n)
        common = np.flatnonzero(prev_row >= 0)
        same = np.zeros(n, dtype=bool)
        if len(common):
            a = vectors[common].view(np.uint32)
            b = np.asarray(prev_vectors[prev_row[common]], dtype=np.float32).view(np.uint32)
            same[common] = np.all(a == b, axis=1)
        kept_prev = np.zeros(len(prev_ids), dtype=bool)
        kept_prev[prev_row[same]] = True
        n_labels_prev = len(prev_rows)
        added = np.flatnonzero(~same)
        n_labels = n_labels_prev + len(added)
        dead = n_labels - n
        if dead / max(n_labels, 1) <= ANN_MAX_DELETED and int(same.sum()) > 0:
            index = hnswlib.Index(space="ip", dim=dim)
            index.load_index(str(previous / "ann.bin"), max_elements=n_labels)  # type: ignore[operator]
            index.set_num_threads(threads)
            newly_dead = label_of_prev_row[~kept_prev]
            for label in newly_dead.tolist():
                index.mark_deleted(label)
            rows = np.full(n_labels, -1, dtype=np.int64)
            rows[label_of_prev_row[prev_row[same]]] = np.flatnonzero(same)
            new_labels = np.arange(n_labels_prev, n_labels, dtype=np.int64)
            rows[new_labels] = added
            if len(added):
                index.add_items(vectors[added], new_labels, num_threads=threads)
            index.save_index(str(path / "ann.bin"))
            np.save(path / ANN_ROWS, rows)
            return {
                "build": "incremental",
                "reused_from": str(prev[0].get("version", previous.name)),
                "kept": int(same.sum()),
                "added": len(added),
                "deleted": len(newly_dead),
                "labels": n_labels,
            }
        log.info(
            "hnswlib: %d of %d graph nodes would be deleted; building from scratch", dead, n_labels
        )
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=42)
    index.set_num_threads(threads)
    index.add_items(vectors, np.arange(n), num_threads=threads)
    index.save_index(str(path / "ann.bin"))
    np.save(path / ANN_ROWS, np.arange(n, dtype=np.int64))
    return {
        "build": "scratch",
        "reused_from": None,
        "kept": 0,
        "added": n,
        "deleted": 0,
        "labels": n,
    }


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


def validate_snapshot(snap: Snapshot, docs: Sequence[Document], seed: int = 0) -> None:
    """Refuse a version that cannot serve: wrong count, or a smoke query per retriever fails."""
    if snap.n != len(docs):
        raise ValidationError(f"index holds {snap.n} documents, input had {len(docs)}")
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(docs), size=min(20, len(docs)), replace=False)

    # BM25: the most distinctive sampled title must come back in the top 10 (ties allowed).
    def distinctiveness(row: int) -> float:
        return sum(snap.idf(list(set(snap.analyzer.terms(docs[row].title)))).values())

    titled = [int(r) for r in sample if snap.analyzer.terms(docs[int(r)].title)]
    if titled:
        row = max(titled, key=distinctiveness)
        hits = snap.bm25(docs[row].title, 10)
        own = snap.combined.scores(snap.analyzer.terms(docs[row].title))[row]
        if docs[row].id not in hits.ids and not (len(hits) and own >= hits.scores[-1] - 1e-9):
            raise ValidationError(
                f"BM25 smoke query failed: the title of {docs[row].id!r} "
                "does not retrieve it in the top 10"
            )
    # kNN: a document's own vector must retrieve it first (an exact duplicate may tie).
    row = int(sample[0])
    hits = snap.knn(snap.vectors[row], 10)
    self_score = float(snap.vectors[row] @ snap.vectors[row])
    if not len(hits) or (
        hits.ids[0] != docs[row].id and abs(float(hits.scores[0]) - self_score) > 1e-5
    ):
        raise ValidationError(
            f"kNN smoke query failed: {docs[row].id!r} is not its own nearest neighbour"
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
    root = Path(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / VERSIONS).mkdir(exist_ok=True)
    docs = list(docs)
    check_unique_ids(docs)

    with _build_lock(root):
        for stale in root.glob(BUILDING_PREFIX + "*"):  # left by a killed build
            log.warning("removing stale build directory %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=BUILDING_PREFIX, dir=root))
        if parallel is None:
            parallel = _parallel_by_default(len(docs))
        bm25: _BM25Build | None = None
        try:
            version = _new_version_name(root)
            bm25 = _BM25Build(tmp, docs, cfg, parallel)
            texts = [embedding_text(d) for d in docs]
            vectors = embed_texts(encoder, texts, cache=cache, progress=progress)
            vectors = _check_vectors(vectors, len(docs), encoder.dim)
            cur = current_version(root)
            previous = root / VERSIONS / cur if cur else None
            _write_version(tmp, docs, vectors, version, encoder.model_id, cfg, previous, bm25)
            snap = Snapshot(tmp)
            try:
                validate_snapshot(snap, docs)
            finally:
                snap.close()
            _fsync_tree(tmp)
            final = root / VERSIONS / version
            os.rename(tmp, final)
            _fsync_dir(root / VERSIONS)
            _swap_current(root, version)
        except BaseException:
            if bm25 is not None:
                bm25.cancel()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _prune(root, cfg.keep_versions)
    return version


# --- backend ---------------------------------------------------------------------------
class LocalBackend:
    """indexing.backend.RetrievalBackend over the current local index version.

    ``reload()`` swaps in a newer CURRENT without disturbing requests in flight (they keep
    the snapshot they started with). Every answer comes from the snapshot ``version``
    names, which is why search.candidates.CandidateCache may keep its candidate sets.

    Where the work runs: kNN always runs in a thread (hnswlib searches without the GIL, so
    it overlaps BM25). With ``inline`` (the default) BM25, the per-candidate lookups and
    fetch run on the calling event loop: each is ~0.3-1 ms of GIL-holding CPU at 100K
    documents, and a thread hop added ~0.3 ms of waiting to each while saving nothing
    (docs/benchmarks.md). The price: a stage timeout cannot interrupt an inline stage, so
    ``inline=False`` puts every call in a thread again, for catalogs whose BM25 takes long.
    """

    name = "local"

    def __init__(
        self,
        index_dir: Path,
        snapshot: Snapshot,
        encoder: Encoder | None = None,
        *,
        inline: bool = True,
    ) -> None:
        self.index_dir = index_dir
        self._snap: Snapshot | None = snapshot
        self._encoder = encoder
        self._ef_search: int | None = None
        self.inline = inline

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        encoder: Encoder | None = None,
        *,
        version: str | None = None,
        ef_search: int | None = None,
        inline: bool = True,
    ) -> LocalBackend:
        """Load CURRENT (or a named version); refuses an encoder of another dimension."""
        root = Path(index_dir)
        snap = cls._load(root, version, ef_search)
        _check_encoder(snap, encoder)
        backend = cls(root, snap, encoder, inline=inline)
        backend._ef_search = ef_search
        return backend

    @staticmethod
    def _load(root: Path, version: str | None, ef_search: int | None) -> Snapshot:
        version = version or current_version(root)
        if version is None:
            raise IndexNotFoundError(f"{root}: no current index (run ltrsearch-reindex first)")
        path = root / VERSIONS / version
        if not path.is_dir():
            raise IndexNotFoundError(f"{root}: version {version!r} not found")
        return Snapshot(path, ef_search=ef_search)

    @property
    def version(self) -> str:
        return self._state().version

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._state().manifest)

    def reload_sync(self) -> bool:
        """Switch to CURRENT if it changed; True when a new version was loaded."""
        cur = current_version(self.index_dir)
        if cur is None or cur == self.version:
            return False
        snap = self._load(self.index_dir, cur, self._ef_search)
        _check_encoder(snap, self._encoder)
        self._snap = snap  # the old snapshot's files close when the last request drops it
        return True

    async def reload(self) -> bool:
        return await asyncio.to_thread(self.reload_sync)

    def _state(self) -> Snapshot:
        if self._snap is None:
            raise BackendError("local backend is closed")
        return self._snap

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` on this loop when ``inline``, else in a thread (see the class docstring)."""
        return await self._call(self.inline, fn, *args, **kwargs)

    async def _call(self, inline: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            if inline:
                return fn(*args, **kwargs)
            return await asyncio.to_thread(fn, *args, **kwargs)
        except OSError as e:
            raise BackendError(f"local index I/O failed: {e}") from e

    # --- RetrievalBackend ------------------------------------------------------------
    async def info(self) -> IndexInfo:
        s = self._state()
        return IndexInfo(
            backend=self.name,
            version=s.version,
            doc_count=s.n,
            text_fields=s.text_fields,
            attr_names=s.attr_names,
            model_id=str(s.manifest["model_id"]),
            dim=s.dim,
        )

    async def bm25(
        self, query: str, k: int, field: str | None = None, filters: Filters | None = None
    ) -> Hits:
        return await self._run(self._state().bm25, query, k, field, filters)

    async def knn(self, vector: np.ndarray, k: int, filters: Filters | None = None) -> Hits:
        return await self._call(False, self._state().knn, vector, k, filters)  # always a thread

    async def fetch(self, ids: Sequence[str]) -> list[Document | None]:
        return await self._run(self._state().fetch, list(ids))

    async def field_scores(self, query: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return await self._run(self._state().field_scores, query, list(ids))

    async def cosine(self, vector: np.ndarray, ids: Sequence[str]) -> np.ndarray:
        return await self._run(self._state().cosine, vector, list(ids))

    async def analyze(self, text: str) -> tuple[str, ...]:
        return self._state().analyzer.terms(text)

    async def doc_terms(self, ids: Sequence[str]) -> dict[str, tuple[tuple[str, ...], ...]]:
        return await self._run(self._state().doc_terms, list(ids))

    async def idf(self, terms: Sequence[str]) -> dict[str, float]:
        return self._state().idf(list(terms))

    async def static_attrs(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Numeric attributes per id (NaN = missing); cheaper than fetch (not in the Protocol)."""
        return await self._run(self._state().static_attrs, list(ids))

    async def lookups(self, query: str, ids: Sequence[str], vector: np.ndarray | None) -> Lookups:
        """All per-candidate lookups in one call (see Snapshot.lookups; not in the
        Protocol: search.candidates uses it when present, else the separate methods)."""
        return await self._run(self._state().lookups, query, list(ids), vector)

    async def close(self) -> None:
        if self._snap is not None:
            self._snap.close()
            self._snap = None


def _check_encoder(snap: Snapshot, encoder: Encoder | None) -> None:
    if encoder is None:
        return
    if encoder.dim != snap.dim:
        raise IndexingError(
            f"encoder {encoder.model_id!r} has dim {encoder.dim}, "
            f"index {snap.version} has {snap.dim}"
        )
    if encoder.model_id != snap.manifest["model_id"]:
        log.warning(
            "query encoder %r differs from the index's %r",
            encoder.model_id,
            snap.manifest["model_id"],
        )
