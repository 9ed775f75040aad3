"""The embedded ``local`` backend: LocalBackend serves the current local index version.

Versions are built by indexing.build and read through indexing.local_store.Snapshot; their
files are named in indexing.layout. ``reload()`` swaps in a newer CURRENT without
disturbing requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from indexing import layout
from indexing.backend import OVERLAP, Filters, Hits, IndexInfo, Lookups
from indexing.documents import Document
from indexing.encoders import Encoder
from indexing.errors import BackendError, IndexingError, IndexNotFoundError
from indexing.local_store import Snapshot
from indexing.prf import DEFAULT_RM3, Rm3Params

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class LocalBackend:
    """indexing.backend.RetrievalBackend over the current local index version.

    ``reload()`` swaps in a newer CURRENT without disturbing requests in flight (they keep
    the snapshot they started with). Every answer comes from the snapshot ``version``
    names, which is why search.candidates.CandidateCache may keep its candidate sets.

    Where the work runs: with ``inline`` (the default) BM25, the per-candidate lookups and
    fetch run on the calling event loop, and so does kNN unless the caller marks its search
    as the only one in flight (indexing.backend.OVERLAP): then kNN (faiss, no GIL) goes to
    a thread and overlaps BM25. Each stage is ~0.3-2 ms of CPU at 1M documents; a thread
    hop costs more CPU than that overlap saves once other searches keep the cores busy
    (docs/benchmarks.md). The price: a stage timeout cannot interrupt an inline stage, so
    ``inline=False`` puts every call in a thread again, for catalogs whose BM25 or ANN
    takes long.
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
        self._ann_breadth: int | None = None
        self.inline = inline

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        encoder: Encoder | None = None,
        *,
        version: str | None = None,
        ann_breadth: int | None = None,
        inline: bool = True,
    ) -> LocalBackend:
        """Load CURRENT (or a named version); refuses an encoder of another dimension."""
        root = Path(index_dir)
        snap = cls._load(root, version, ann_breadth)
        _check_encoder(snap, encoder)
        backend = cls(root, snap, encoder, inline=inline)
        backend._ann_breadth = ann_breadth
        return backend

    @staticmethod
    def _load(root: Path, version: str | None, ann_breadth: int | None) -> Snapshot:
        dirs = layout.index_versions(root)
        version = version or dirs.current()
        if version is None:
            raise IndexNotFoundError(f"{root}: no current index (run ltrsearch-reindex first)")
        path = dirs.path(version)
        if not path.is_dir():
            raise IndexNotFoundError(f"{root}: version {version!r} not found")
        return Snapshot(path, ann_breadth=ann_breadth)

    @property
    def version(self) -> str:
        return self._state().version

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._state().manifest)

    def reload_sync(self) -> bool:
        """Switch to CURRENT if it changed; True when a new version was loaded."""
        cur = layout.current_version(self.index_dir)
        if cur is None or cur == self.version:
            return False
        snap = self._load(self.index_dir, cur, self._ann_breadth)
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

    async def rm3(
        self,
        query: str,
        feedback: Hits,
        k: int,
        filters: Filters | None = None,
        params: Rm3Params = DEFAULT_RM3,
    ) -> Hits:
        return await self._run(self._state().rm3, query, feedback, k, filters, params)

    async def knn(self, vector: np.ndarray, k: int, filters: Filters | None = None) -> Hits:
        inline = self.inline and not OVERLAP.get()  # alone on the loop: beside BM25 in a thread
        return await self._call(inline, self._state().knn, vector, k, filters)

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
        return await self._run(self._state().static_attrs, list(ids))

    async def lookups(self, query: str, ids: Sequence[str], vector: np.ndarray | None) -> Lookups:
        """All per-candidate lookups in one call (see Snapshot.lookups)."""
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
