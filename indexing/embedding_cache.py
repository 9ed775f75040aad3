"""The embedding cache (SQLite, keyed by model id + sha256(text)) and embedding through it.

``embed_texts`` is how the index builds embed documents: it looks every text up in the
``EmbeddingCache``, embeds only the misses (each distinct text once) and stores them, so a
re-index of unchanged documents runs no model. Keys carry ``Encoder.model_id``, so vectors
of one model or backend are never handed to another.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexing.encoders import Encoder, check_texts
from indexing.errors import EmbeddingError

__all__ = ["EmbedStats", "EmbeddingCache", "embed_texts", "text_key"]


def text_key(text: str) -> bytes:
    """sha256 of the UTF-8 text: the cache key next to the model id."""
    return hashlib.sha256(text.encode("utf-8")).digest()


# WITHOUT ROWID: one B-tree search per key. 16 KiB pages keep the ~1.5 KiB rows of a
# 384-d vector inline (several per page) instead of spilling into overflow pages.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY, model_id TEXT NOT NULL UNIQUE, dim INTEGER NOT NULL,
    n INTEGER NOT NULL DEFAULT 0  -- rows in vectors: COUNT(*) would read every blob
);
CREATE TABLE IF NOT EXISTS vectors (
    mid INTEGER NOT NULL, key BLOB NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (mid, key)
) WITHOUT ROWID;
"""


class EmbeddingCache:
    """Vectors on SQLite (WAL), keyed by model id + sha256(text); safe across threads.

    Vectors are stored as raw float32 bytes, so a hit returns exactly what was computed.
    """

    BATCH = 500  # keys per SELECT ... IN (...): under SQLite's variable limit

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA page_size=16384")  # only takes effect on a new file
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA mmap_size=268435456")
            self._db.executescript(_SCHEMA)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(models)")}
            if "n" not in cols:  # a cache written before the row count existed
                self._db.executescript(
                    "BEGIN IMMEDIATE;"
                    "ALTER TABLE models ADD COLUMN n INTEGER NOT NULL DEFAULT 0;"
                    "UPDATE models SET n = (SELECT COUNT(*) FROM vectors WHERE mid = models.id);"
                    "COMMIT;"
                )
        except sqlite3.Error as e:
            raise EmbeddingError(f"cannot open embedding cache {self.path}: {e}") from e
        self._lock = threading.Lock()
        self._mids: dict[str, tuple[int, int]] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _model(self, model_id: str, dim: int | None) -> tuple[int, int] | None:
        """(row id, dim) of a model; registered when ``dim`` is given."""
        if model_id in self._mids:
            mid, known = self._mids[model_id]
            if dim is not None and dim != known:
                raise EmbeddingError(
                    f"embedding cache {self.path}: {model_id} has dim {known}, got vectors of {dim}"
                )
            return mid, known
        row = self._db.execute(
            "SELECT id, dim FROM models WHERE model_id = ?", (model_id,)
        ).fetchone()
        if row is None:
            if dim is None:
                return None
            # OR IGNORE: another process may register the same model at the same moment.
            self._db.execute(
                "INSERT OR IGNORE INTO models (model_id, dim) VALUES (?, ?)", (model_id, dim)
            )
            row = self._db.execute(
                "SELECT id, dim FROM models WHERE model_id = ?", (model_id,)
            ).fetchone()
        self._mids[model_id] = (int(row[0]), int(row[1]))
        return self._model(model_id, dim)

    def lookup(self, model_id: str, keys: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(pos, vectors): ``vectors[pos[i]]`` is key i's vector; ``pos[i] == -1`` is a miss.

        One float32 matrix instead of a Python object per row keeps bulk reads fast. When
        the request covers a good part of the model's rows (a re-index), one sequential scan
        beats a B-tree search per key.
        """
        pos = np.full(len(keys), -1, dtype=np.int64)
        with self._lock:
            m = self._model(model_id, None)
            if m is None or not keys:
                return pos, np.zeros((0, m[1] if m else 0), dtype=np.float32)
            mid, dim = m
            nbytes = dim * 4
            want = dict(zip(map(bytes, keys), itertools.count()))  # a repeat: its last index
            stored = self._db.execute("SELECT n FROM models WHERE id = ?", (mid,)).fetchone()[0]
            if len(want) * 4 >= stored:
                cur = self._db.execute("SELECT key, vec FROM vectors WHERE mid = ?", (mid,))
                cur.arraysize = 4096
                batches: Iterator[Any] = iter(cur.fetchmany, [])
            else:
                unique = list(want)
                batches = (
                    self._db.execute(
                        "SELECT key, vec FROM vectors WHERE mid = ? AND key IN "
                        f"({','.join('?' * len(unique[start : start + self.BATCH]))})",
                        (mid, *unique[start : start + self.BATCH]),
                    ).fetchall()
                    for start in range(0, len(unique), self.BATCH)
                )
            hits: list[int] = []
            blobs: list[bytes] = []
            get = want.get
            for batch in batches:
                for key, blob in batch:
                    i = get(key)
                    if i is None or len(blob) != nbytes:  # a wrong length is damage: a miss
                        continue
                    hits.append(i)
                    blobs.append(blob)
        pos[np.asarray(hits, dtype=np.int64)] = np.arange(len(hits))
        if len(want) < len(keys):  # repeated keys share the row of their last occurrence
            last = np.fromiter(map(want.__getitem__, map(bytes, keys)), np.int64, len(keys))
            pos = pos[last]
        vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)
        return pos, vecs

    def get_keys(self, model_id: str, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """key -> vector for the keys present (others are misses)."""
        pos, vecs = self.lookup(model_id, keys)
        return {bytes(k): vecs[p] for k, p in zip(keys, pos, strict=True) if p >= 0}

    def put_keys(self, model_id: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store (replace) vectors; one transaction per call."""
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(keys):
            raise EmbeddingError(
                f"put_many: {len(keys)} texts but vectors of shape {tuple(vectors.shape)}"
            )
        if len(keys) == 0:
            return
        with self._lock:
            m = self._model(model_id, int(vecs.shape[1]))
            if m is None:  # pragma: no cover - _model registers when dim is given
                raise EmbeddingError(f"cannot register {model_id} in the embedding cache")
            mid = m[0]
            last = {bytes(k): i for i, k in enumerate(keys)}  # a repeated key: last one wins
            unique = list(last)
            try:
                self._db.execute("BEGIN IMMEDIATE")  # the row count stays exact across processes
                existing = 0
                for start in range(0, len(unique), self.BATCH):
                    chunk = unique[start : start + self.BATCH]
                    existing += self._db.execute(
                        "SELECT COUNT(*) FROM vectors WHERE mid = ? AND key IN "
                        f"({','.join('?' * len(chunk))})",
                        (mid, *chunk),
                    ).fetchone()[0]
                self._db.executemany(
                    "INSERT OR REPLACE INTO vectors (mid, key, vec) VALUES (?, ?, ?)",
                    ((mid, k, vecs[i].tobytes()) for k, i in last.items()),
                )
                self._db.execute(
                    "UPDATE models SET n = n + ? WHERE id = ?", (len(unique) - existing, mid)
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise EmbeddingError(f"embedding cache {self.path}: write failed: {e}") from e

    def get_many(self, model_id: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """Vector per text, None for a miss (aligned with ``texts``)."""
        check_texts(texts)
        keys = [text_key(t) for t in texts]
        found = self.get_keys(model_id, list(dict.fromkeys(keys)))
        return [found.get(k) for k in keys]

    def put_many(self, model_id: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        check_texts(texts)
        self.put_keys(model_id, [text_key(t) for t in texts], vectors)

    def count(self, model_id: str | None = None) -> int:
        """Vectors stored (for one model, or all)."""
        with self._lock:
            if model_id is None:
                return int(self._db.execute("SELECT COALESCE(SUM(n), 0) FROM models").fetchone()[0])
            m = self._model(model_id, None)
            if m is None:
                return 0
            return int(self._db.execute("SELECT n FROM models WHERE id = ?", (m[0],)).fetchone()[0])


@dataclass
class EmbedStats:
    """What one embed_texts call did (filled in when passed as ``stats``)."""

    texts: int = 0
    unique: int = 0
    hits: int = 0
    embedded: int = 0  # unique texts that went through the model


def _chunks(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def embed_texts(
    encoder: Encoder,
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    progress: bool = False,
    *,
    chunk_size: int = 2048,
    stats: EmbedStats | None = None,
) -> np.ndarray:
    """[n, dim] float32 vectors aligned with ``texts``; embeds only what the cache lacks.

    Duplicate texts are embedded once. Misses are sorted by length (longest first) so each
    model batch pads little, embedded ``chunk_size`` at a time and stored after each chunk
    (an interrupted run keeps its progress), then put back in input order.
    """
    check_texts(texts)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n, dim = len(texts), encoder.dim
    keys = [text_key(t) for t in texts]
    first: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    unique = list(first)
    # Row of each unique text in `table` (hits first, then misses as they are embedded).
    if cache is not None and unique:
        pos, hit_vecs = cache.lookup(encoder.model_id, unique)
    else:
        pos, hit_vecs = np.full(len(unique), -1, dtype=np.int64), np.zeros((0, dim), np.float32)
    if hit_vecs.shape[1:] not in ((dim,), (0,)):
        raise EmbeddingError(f"cache holds {hit_vecs.shape[1]}-d vectors for {encoder.model_id}")
    miss = [int(u) for u in np.flatnonzero(pos < 0)]  # indices into `unique`
    miss.sort(key=lambda u: -len(texts[first[unique[u]]]))
    parts = [hit_vecs.reshape(-1, dim)]
    next_row = parts[0].shape[0]
    bar = None
    if progress and miss:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(miss), desc=f"embedding ({encoder.model_id})", unit="text")
    try:
        for chunk in _chunks(miss, chunk_size):
            vecs = encoder.encode([texts[first[unique[u]]] for u in chunk])
            if vecs.shape != (len(chunk), dim):
                raise EmbeddingError(
                    f"{encoder.model_id} returned shape {vecs.shape} for {len(chunk)} texts"
                )
            vecs = np.ascontiguousarray(vecs, dtype=np.float32)
            if cache is not None:
                cache.put_keys(encoder.model_id, [unique[u] for u in chunk], vecs)
            pos[chunk] = np.arange(next_row, next_row + len(chunk))
            next_row += len(chunk)
            parts.append(vecs)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    table = np.concatenate(parts) if len(parts) > 1 else parts[0]
    slot = {k: j for j, k in enumerate(unique)}
    out = np.ascontiguousarray(table[pos[[slot[k] for k in keys]]], dtype=np.float32)
    if stats is not None:
        stats.texts, stats.unique = n, len(unique)
        stats.hits, stats.embedded = len(unique) - len(miss), len(miss)
    return out
