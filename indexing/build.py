"""Building a local index version: vectors, ANN graph, the other files, validation and
publishing, with the BM25 side (indexing.bm25_side) running beside them.

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
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexing import layout
from indexing.analysis import Analyzer
from indexing.ann import build_ann
from indexing.bm25_side import BM25Build, Stages, parallel_choice, text_field_names
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
    write_joined,
)
from indexing.reuse import (
    attrs_and_categories,
    document_vectors,
    reusable_terms,
    save_or_link,
    unchanged_rows,
)
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


# --- the other files ------------------------------------------------------------------
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
    bm25: BM25Build | None = None,
    same_ids: bool = False,
    rows: np.ndarray | None = None,
) -> None:
    """Write every file of a version into ``path`` (``lines``: join_lines of the stored
    documents). ``same_ids``: ``previous`` holds the same ids in the same rows, so its
    ids file is linked; arrays equal to the previous version's are linked too.
    ``rows``: indexing.reuse.unchanged_rows (unchanged documents' attributes and
    categories are taken from the previous version)."""
    analyzer = Analyzer(cfg.stopwords, cfg.stemmer)  # its settings go into the manifest
    bm25 = bm25 or BM25Build(path, docs, cfg, parallel=False)
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
        bm25: BM25Build | None = None
        try:
            version = dirs.new_name()
            cur = dirs.current()
            previous = dirs.path(cur) if cur and reuse_previous else None
            n_todo = len(docs)
            if previous is None:  # nothing to reuse: the BM25 side starts before the rest
                with clock("bm25_start"):
                    bm25 = BM25Build(tmp, docs, cfg, parallel_choice(parallel, n_todo))
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
                    bm25 = BM25Build(
                        tmp,
                        docs,
                        cfg,
                        parallel_choice(parallel, n_todo),
                        reuse,
                        text_fields=text_fields,
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
