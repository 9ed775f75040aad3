"""Bulk document embedding with torch on a device: length-bucketed batches, tokenized by a
feeder thread, forward passes in fp16 on a GPU (float32 on the CPU), mean pooling and L2
normalization on the device.

sentence-transformers' own ``encode`` tokenizes, pads and pools in the same thread that
drives the GPU, so on an H200 it reached ~5,600 docs/s while the forward pass alone does
27K+ at batch 256 (issue 17). Here a thread tokenizes batch i+1 (the fast tokenizer
releases the GIL) while the device runs batch i; texts are sorted by length first so a
batch pads to about its own length. The same code runs on ``cpu`` (tests compare it with
sentence-transformers' float32 vectors); scripts/gpu_check.py measures it on a GPU.

Only for a plain Transformer -> mean Pooling (-> Normalize) model (what
``BatchPipeline.supports`` checks), the same pipeline the model folder declares.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from indexing.errors import EmbeddingError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a device, else the CPU; ``cuda`` without one is an error."""
    if device not in DEVICES:
        raise EmbeddingError(f"unknown embedding device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    import torch

    has_cuda = bool(torch.cuda.is_available())
    if device == "cuda" and not has_cuda:
        raise EmbeddingError("embedding.device = 'cuda' but torch sees no CUDA device")
    return "cuda" if has_cuda else "cpu"


class BatchPipeline:
    """Embeds many texts with a sentence-transformers torch model on ``device``."""

    def __init__(self, st_model: Any, device: str, batch_size: int = 1024) -> None:
        import torch

        if not self.supports(st_model):
            raise EmbeddingError("batched pipeline needs a Transformer -> mean Pooling model")
        if batch_size < 1:
            raise EmbeddingError(f"batch_size must be >= 1, got {batch_size}")
        self._st = st_model
        self.device = device
        self.batch_size = batch_size
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        st_model.to(device)
        self._model = st_model[0].auto_model.to(device=device, dtype=self.dtype).eval()
        self._inputs = ("input_ids", "attention_mask", "token_type_ids")

    @staticmethod
    def supports(st_model: Any) -> bool:
        kinds = [type(m).__name__ for m in st_model]
        if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
            return False
        pooling = st_model[1].get_config_dict()
        mode = pooling.get("pooling_mode")
        return mode == "mean" or (mode is None and bool(pooling.get("pooling_mode_mean_tokens")))

    def _batches(self, texts: Sequence[str], order: np.ndarray) -> Iterator[tuple[np.ndarray, Any]]:
        """(rows, tokenized features) of each length-sorted batch, tokenized here."""
        pin = self.device == "cuda"
        for s in range(0, len(order), self.batch_size):
            rows = order[s : s + self.batch_size]
            feats = self._st[0].preprocess([texts[i] for i in rows.tolist()])
            feats = {k: v for k, v in feats.items() if k in self._inputs}
            if pin:
                feats = {k: v.pin_memory() for k, v in feats.items()}
            yield rows, feats

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[n, dim] float32, L2-normalized, in input order."""
        import torch

        n = len(texts)
        get_dim = getattr(self._st, "get_embedding_dimension", None) or (
            self._st.get_sentence_embedding_dimension
        )
        dim = int(get_dim() or 0)
        out = np.empty((n, dim), dtype=np.float32)
        if n == 0:
            return out
        # longest first: the first batch shows at once whether the device memory suffices
        order = np.argsort(-np.fromiter(map(len, texts), dtype=np.int64, count=n), kind="stable")
        q: queue.Queue[Any] = queue.Queue(maxsize=4)
        stop = threading.Event()

        def feed() -> None:
            try:
                for item in self._batches(texts, order):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(None)
            except BaseException as e:  # handed to the consumer, raised there
                q.put(e)

        feeder = threading.Thread(target=feed, name="embed-tokenizer", daemon=True)
        feeder.start()
        try:
            with torch.inference_mode():
                while True:
                    item = q.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise EmbeddingError(f"tokenization failed: {item}") from item
                    rows, feats = item
                    feats = {k: v.to(self.device, non_blocking=True) for k, v in feats.items()}
                    hidden = self._model(**feats)[0]
                    mask = feats["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    summed = (hidden * mask).sum(dim=1, dtype=torch.float32)
                    pooled = summed / mask.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                    out[rows] = pooled.cpu().numpy()
        finally:
            stop.set()
            feeder.join(timeout=5)
        if not np.isfinite(out).all():
            raise EmbeddingError("batched pipeline produced non-finite vectors")
        return out
