"""Per-request stage timings: one ContextVar, written by the code that runs each stage.

``Pipeline.search`` opens a collection (:func:`collect`) for its request; the candidate
generator (embed, bm25, knn), ``featurize`` (candidates) and the pipeline (features, model,
total) record into it. asyncio copies the context into gather()'d tasks and to_thread()
calls, so every task of one request writes the same dict. Outside a collection (offline
replay, a direct ``featurize``) recording does nothing.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

# stage -> seconds of the request being served (None: no request is collecting)
_TIMINGS: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "ltrsearch_timings", default=None
)


@contextmanager
def collect() -> Iterator[dict[str, float]]:
    """Collect the stage timings of the code run inside (one request); yields the dict."""
    timings: dict[str, float] = {}
    token = _TIMINGS.set(timings)
    try:
        yield timings
    finally:
        _TIMINGS.reset(token)


def record(stage: str, seconds: float) -> None:
    """Add ``seconds`` to ``stage`` of the current request (a no-op outside one)."""
    t = _TIMINGS.get()
    if t is not None:
        t[stage] = t.get(stage, 0.0) + seconds


def measure(stage: str) -> _Timer:
    """``with measure("model"): ...`` records the block's wall time (also when it raises)."""
    return _Timer(stage)


class _Timer:
    """The context manager ``measure`` returns (a class: cheaper than @contextmanager)."""

    __slots__ = ("stage", "t0")

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.t0 = 0.0

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        record(self.stage, time.perf_counter() - self.t0)


async def measure_await(stage: str, aw: Awaitable[T]) -> T:
    """Await ``aw`` and record how long it took as ``stage`` (also when it raises)."""
    t0 = time.perf_counter()
    try:
        return await aw
    finally:
        record(stage, time.perf_counter() - t0)
