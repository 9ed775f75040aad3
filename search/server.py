"""The search server's lifecycle: what it opens at startup, keeps current, and closes.

One aiohttp cleanup context per resource, in startup order (aiohttp closes them in
reverse): the event store (with its behavior aggregates), the impression writer, the
index (the backend and the Pipeline over it), the model (the registry's promoted model)
and the background tasks (index and aggregates pollers, following the worker group).
Each reads what to open from the app's ``ServerState.spec`` (search.api.make_app fills
it from explicit arguments; only scripts read settings). ``load_model`` is the one way a
model starts serving: at startup, on /admin/reload and when another worker asks.

A promoted model this server cannot serve (corrupt files, another featureset) never stops
it: startup logs one line, serves the newest earlier promotion that loads (or RRF) and
says so in ``ServerState.model_fallback``; ``degraded`` lists what /ready reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from indexing.backend import RetrievalBackend
from indexing.encoders import Encoder
from ltr.errors import (
    CorruptModelError,
    FeaturesetMismatchError,
    LTRError,
    ModelNotFoundError,
    UnknownNameError,
)
from ltr.model import RankModel
from search.aggregates import BehaviorAggregates
from search.config import ApiConfig, EventsConfig
from search.errors import WorkersNotConfirmedError
from search.events import ImpressionWriter, SqliteEventStore
from search.http import JsonErrorRunner
from search.metrics import ApiMetrics
from search.pipeline import GeneratorFactory, Pipeline
from search.workers import ENV_PARENT, WorkerGroup

if TYPE_CHECKING:
    from ltr.registry import ModelRegistry
    from search.experiments import ExperimentRuntime

log = logging.getLogger("search.api")  # one logger for the API, whichever module logs


@dataclass(frozen=True)
class ServerSpec:
    """What the server opens at startup (the arguments of search.api.make_app).

    Exactly one of ``index_dir`` (a local index, swapped by /admin/reload and the index
    poller) or ``backend`` (an open backend, closed with the app) is set.
    """

    encoder: Encoder
    features: tuple[str, ...]  # served without a model
    generator_factory: GeneratorFactory
    index_dir: Path | None = None
    backend: RetrievalBackend | None = None
    index_version: str | None = None  # of ``backend``; None = ask its info()
    model_dir: str | Path | None = None
    events_path: str | Path | None = None


@dataclass(frozen=True)
class ModelFallback:
    """A model this server was asked to serve and refused, and what serves instead."""

    refused: str | None  # the version (None: the promoted one could not be named)
    reason: str
    serving: str | None  # None: RRF

    def to_json(self) -> dict[str, Any]:
        return {"refused": self.refused, "reason": self.reason, "serving": self.serving}

    def describe(self) -> str:
        return (
            f"model {self.refused} refused ({self.reason}); serving {self.serving or 'RRF ranking'}"
        )


@dataclass
class ServerState:
    """Everything the handlers share; filled by the cleanup contexts."""

    config: ApiConfig
    events_config: EventsConfig
    metrics: ApiMetrics
    spec: ServerSpec
    pipeline: Pipeline | None = None
    registry: ModelRegistry | None = None
    store: SqliteEventStore | None = None
    aggregates: BehaviorAggregates | None = None
    writer: ImpressionWriter | None = None
    group: WorkerGroup | None = None  # the other server processes (--workers N)
    model_fallback: ModelFallback | None = None  # set while a refused model is replaced
    experiments: ExperimentRuntime | None = None  # search.rollout.experiments_ctx
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started: float = field(default_factory=time.time)


STATE = web.AppKey("ltrsearch_state", ServerState)


# --------------------------------------------------------------------------------------
# cleanup contexts, one per resource


async def event_store_ctx(app: web.Application) -> AsyncIterator[None]:
    """The SQLite event store and the behavior aggregates kept in it (when configured)."""
    state = app[STATE]
    path, ecfg = state.spec.events_path, state.events_config
    if path is not None:
        state.store = await asyncio.to_thread(SqliteEventStore, path, max_bytes=ecfg.max_bytes)
        state.aggregates = BehaviorAggregates.attach(
            state.store,
            half_life_s=ecfg.half_life_s,
            exam_eta=ecfg.exam_eta,
            exam_positions=ecfg.exam_positions,
            click_cap=ecfg.click_cap,
            click_window_s=ecfg.click_window_s,
        )
    yield
    if state.store is not None:
        state.store.close()


async def impression_writer_ctx(app: web.Application) -> AsyncIterator[None]:
    """Served pages batched into the event store; the last batch is written at shutdown."""
    state = app[STATE]
    config = state.config
    if state.store is not None:
        state.writer = ImpressionWriter(
            state.store,
            batch_size=config.impression_batch_size,
            flush_interval_s=config.impression_flush_ms / 1000.0,
            max_pending=config.impression_max_pending,
        )
        await state.writer.start()
    yield
    if state.writer is not None:
        try:
            await state.writer.close()
        except Exception:
            log.exception(
                "final impression flush failed; %d pages not logged", state.writer.pending
            )


async def index_ctx(app: web.Application) -> AsyncIterator[None]:
    """The retrieval backend and the Pipeline serving it (which closes the backend)."""
    state = app[STATE]
    spec, config = state.spec, state.config
    opened: RetrievalBackend
    if spec.index_dir is not None:
        from indexing.local import LocalBackend

        lb = await asyncio.to_thread(
            LocalBackend.open, spec.index_dir, spec.encoder, inline=config.local_inline
        )
        opened, version = lb, lb.version
    else:
        assert spec.backend is not None  # make_app checked it; narrows the type for mypy
        opened = spec.backend
        version = spec.index_version or (await spec.backend.info()).version
    state.pipeline = Pipeline(
        opened,
        spec.encoder,
        default_features=spec.features,
        index_version=version,
        aggregates=state.aggregates,
        config=config,
        generator_factory=spec.generator_factory,
        expected_featureset_id=config.featureset_id or None,
    )
    state.metrics.index_info.set(1, version)
    yield
    await state.pipeline.close()
    state.pipeline = None


async def model_ctx(app: web.Application) -> AsyncIterator[None]:
    """The model registry and its promoted model (none: RRF ranking; a refused one: the
    newest earlier promotion that loads, else RRF, reported as ``model_fallback``)."""
    state = app[STATE]
    if state.spec.model_dir is not None:
        from ltr.registry import ModelRegistry

        state.registry = ModelRegistry(state.spec.model_dir)
        try:
            await load_model(state, None)
        except ModelNotFoundError as e:
            log.warning("serving without a model (RRF ranking): %s", e)
        except (CorruptModelError, FeaturesetMismatchError, UnknownNameError) as e:
            await _fall_back(state, str(e))
    set_model_metric(state)
    yield


_REFUSED = (ModelNotFoundError, CorruptModelError, FeaturesetMismatchError, UnknownNameError)


async def _fall_back(state: ServerState, reason: str) -> None:
    """The promoted model was refused: serve the newest earlier promotion that loads.

    Only versions that were promoted before are candidates (a version never promoted was
    never approved to serve); none loads -> RRF. One log line says all of it.
    """
    registry = state.registry
    assert registry is not None
    try:
        promoted, history = registry.promoted(), registry.history()
    except LTRError as e:  # an unreadable promotion history: nothing to fall back to
        promoted, history = None, []
        reason = f"{reason}; {e}"
    serving, skipped = None, []
    for version in reversed(dict.fromkeys(history)):
        if version == promoted:
            continue
        try:
            await load_model(state, version)
        except _REFUSED as e:
            skipped.append(f"{version}: {e}")
            continue
        serving = version
        break
    state.model_fallback = ModelFallback(promoted, reason, serving)
    set_model_metric(state)
    also = f" (earlier promotions refused too: {'; '.join(skipped)})" if skipped else ""
    log.error("promoted %s%s", state.model_fallback.describe(), also)


async def background_ctx(app: web.Application) -> AsyncIterator[None]:
    """The pollers and, with workers, following the group (after catching up with it)."""
    state = app[STATE]
    config, group, pipeline = state.config, state.group, state.pipeline
    assert pipeline is not None  # the index context opened it
    tasks = []
    if state.spec.index_dir is not None and config.index_poll_s > 0:
        tasks.append(asyncio.create_task(_index_poller(state, config.index_poll_s)))
    if state.aggregates is not None and config.aggregates_poll_s > 0:
        tasks.append(asyncio.create_task(_aggregates_poller(state, config.aggregates_poll_s)))
    if group is not None:
        group.versions.update(
            model_version=pipeline.model.version if pipeline.model is not None else None,
            index_version=pipeline.index_version,
        )
        gen, payload = await asyncio.to_thread(group.current, "reload")
        if gen:  # a restarted worker serves what the group was told to, before serving
            await _follow_reload(state, group, gen, payload.get("model_version"))
        await asyncio.to_thread(group.report)
        tasks.append(asyncio.create_task(_follow_group(state)))
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


CLEANUP_CONTEXTS = (event_store_ctx, impression_writer_ctx, index_ctx, model_ctx, background_ctx)


# --------------------------------------------------------------------------------------
# model and index versions


async def load_model(state: ServerState, version: str | None) -> RankModel:
    """Serve ``version`` of the registry (None = the promoted one) from the next request on.

    Raises ModelNotFoundError, CorruptModelError (unreadable or checksum-failing files), or
    FeaturesetMismatchError / UnknownNameError for a model this code cannot serve; the
    serving model then stays. A model that loads clears ``state.model_fallback``.
    """
    assert state.registry is not None and state.pipeline is not None
    model = await asyncio.to_thread(state.registry.load, version, None, state.config.model_threads)
    state.pipeline.set_model(model)  # refuses a featureset mismatch; old model stays
    state.model_fallback = None  # the model asked for serves
    set_model_metric(state)
    return model


async def reload_index(state: ServerState) -> bool:
    """Open the CURRENT local index version if it changed; True when swapped."""
    index_dir = state.spec.index_dir
    if index_dir is None or state.pipeline is None:
        return False
    from indexing.layout import current_version
    from indexing.local import LocalBackend

    cur = await asyncio.to_thread(current_version, index_dir)
    if cur is None or cur == state.pipeline.index_version:
        return False
    backend = await asyncio.to_thread(
        LocalBackend.open,
        index_dir,
        state.pipeline.encoder,
        version=cur,
        inline=state.config.local_inline,
    )
    await state.pipeline.swap_backend(backend, cur)
    state.metrics.index_info.clear()
    state.metrics.index_info.set(1, cur)
    log.info("index swapped to %s", cur)
    return True


def set_model_metric(state: ServerState) -> None:
    state.metrics.model_info.clear()
    model = state.pipeline.model if state.pipeline is not None else None
    if model is not None:
        state.metrics.model_info.set(1, model.version, model.featureset_id)
    else:
        state.metrics.model_info.set(1, "none", "none")


def reload_outcome(exc: BaseException) -> str:
    """The ``outcome`` label of ltrsearch_reloads_total for a model that did not load."""
    if isinstance(exc, CorruptModelError):
        return "corrupt"
    if isinstance(exc, ModelNotFoundError):
        return "not_found"
    if isinstance(exc, FeaturesetMismatchError | UnknownNameError):
        return "refused"
    return "error"


def degraded(state: ServerState) -> dict[str, str]:
    """What serves in a reduced way, by component (what /ready reports). Reads the worker
    group's small state files (one per worker) on the calling thread: /ready must answer
    when the thread pool is busy with a failing store."""
    out: dict[str, str] = {}
    if state.model_fallback is not None:
        out["model"] = state.model_fallback.describe()
    store = state.store
    if store is not None and store.write_error is not None:
        out["event_store"] = f"writes failing: {store.write_error}"
    writer = state.writer
    if writer is not None and writer.dropped:
        out["impressions"] = f"{writer.dropped} served pages dropped from the impression log"
    group = state.group
    if group is not None:
        missing = [i for i in range(group.workers) if i not in group.states()]
        if missing:
            out["workers"] = (
                f"{group.workers - len(missing)} of {group.workers} workers serving "
                f"(not serving: {', '.join(map(str, missing))}; starting or restarting)"
            )
    return out


def update_gauges(state: ServerState) -> None:
    """Impression-writer and candidate-cache gauges, read when they are published."""
    if state.writer is not None:
        state.metrics.impressions_pending.set(state.writer.pending)
        state.metrics.impressions_written.set(state.writer.written)
        state.metrics.impressions_dropped.set(state.writer.dropped)
        state.metrics.impressions_dead_lettered.set(state.writer.dead_lettered)
    cache = state.pipeline.candidate_cache if state.pipeline is not None else None
    if cache is not None:
        stats = {"hits": cache.hits, "misses": cache.misses, "entries": len(cache)}
        for stat, value in stats.items():
            state.metrics.candidate_cache.set(value, stat)


# --------------------------------------------------------------------------------------
# background tasks


async def _index_poller(state: ServerState, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            async with state.reload_lock:
                await reload_index(state)
        except Exception:
            log.exception(
                "index poll failed; still serving %s",
                state.pipeline and state.pipeline.index_version,
            )


async def _aggregates_poller(state: ServerState, every_s: float) -> None:
    """Mirror behavior rows other processes (workers) committed to the shared store."""
    while True:
        await asyncio.sleep(every_s)
        if state.aggregates is None or state.store is None:
            continue
        try:
            await asyncio.to_thread(state.aggregates.refresh, state.store)
        except Exception:
            log.exception("behavior aggregates refresh failed; will retry")


async def _follow_group(state: ServerState, every_s: float = 0.05) -> None:
    """Do what another worker requested (reload a model, flush impressions), publish this
    worker's metrics, and stop when the parent supervisor is gone."""
    group = state.group
    assert group is not None
    parent = int(os.environ.get(ENV_PARENT, "0"))
    attempted = dict(group.handled)  # a failed request is not retried every tick
    last_metrics = 0.0
    seen: tuple[tuple[int, int], ...] | None = None
    while True:
        await asyncio.sleep(every_s)
        if parent and os.getppid() != parent:
            log.error("the supervisor (pid %d) is gone; stopping", parent)
            signal.raise_signal(signal.SIGTERM)
            return
        try:
            now = time.monotonic()
            if now - last_metrics >= 1.0:
                last_metrics = now
                update_gauges(state)  # into the shared files the other workers render
            sig = group.signature()  # two stat calls: no thread hop unless a request came
            if sig == seen:
                continue
            seen = sig
            gen, _ = await asyncio.to_thread(group.current, "flush")
            if gen > attempted["flush"]:
                attempted["flush"] = gen
                if state.writer is not None:
                    await state.writer.flush()
                await asyncio.to_thread(group.done, "flush", gen)
            gen, payload = await asyncio.to_thread(group.current, "reload")
            if gen > attempted["reload"]:
                attempted["reload"] = gen
                await _follow_reload(state, group, gen, payload.get("model_version"))
            gen, _ = await asyncio.to_thread(group.current, "experiment")
            if gen > attempted["experiment"]:
                attempted["experiment"] = gen
                if state.experiments is not None:
                    await state.experiments.refresh()
                await asyncio.to_thread(group.done, "experiment", gen)
        except Exception:
            seen = None  # read the requests again next tick
            log.exception("following the worker group failed; will retry")


async def reload_workers(state: ServerState, group: WorkerGroup, model_version: str) -> int:
    """Have every other worker serve ``model_version`` (and this index); the worker count."""
    assert state.pipeline is not None
    timeout_s = state.config.workers_timeout_s
    missing = await group.broadcast(
        "reload",
        timeout_s,
        {"model_version": model_version},
        model_version=model_version,
        index_version=state.pipeline.index_version,
    )
    if missing:
        raise WorkersNotConfirmedError(
            f"worker {group.worker_id} serves model {model_version}, but workers "
            f"{missing} did not confirm within {timeout_s:g} s; retry the reload"
        )
    return group.workers


async def _follow_reload(
    state: ServerState, group: WorkerGroup, gen: int, version: str | None
) -> None:
    """Do reload request ``gen`` of another worker: the index, then model ``version``."""
    pipeline = state.pipeline
    if pipeline is None:
        return
    async with state.reload_lock:
        await reload_index(state)
        current = pipeline.model.version if pipeline.model is not None else None
        if version is not None and version != current and state.registry is not None:
            try:
                await load_model(state, version)
            except Exception as e:
                state.metrics.reloads.inc(reload_outcome(e))
                log.error(
                    "worker %d cannot load model %s: %s",
                    group.worker_id,
                    version,
                    e,
                    exc_info=not isinstance(e, LTRError),  # a known refusal: one line
                )
                state.model_fallback = ModelFallback(version, str(e), current)
                return
            state.metrics.reloads.inc("ok")
            log.info("model %s -> %s (requested by another worker)", current, version)
        model_version = pipeline.model.version if pipeline.model is not None else None
        await asyncio.to_thread(
            group.done,
            "reload",
            gen,
            model_version=model_version,
            index_version=pipeline.index_version,
        )


def run_app(
    app: web.Application,
    loop: asyncio.AbstractEventLoop,
    *,
    host: str | None,
    port: int | None,
    sock: Any = None,
    shutdown_timeout: float = 10.0,
) -> None:
    """Serve ``app`` on ``loop`` until SIGINT / SIGTERM, like ``web.run_app``, but through
    ``JsonErrorRunner`` so that what aiohttp's parser refuses (an over-long request line
    or header field) is answered in the API's JSON error shape, not aiohttp's plain text.
    Start-up errors (no index, port in use) propagate to the caller."""

    async def serve() -> None:
        runner = JsonErrorRunner(
            app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout
        )
        await runner.setup()
        try:
            site: web.BaseSite = (
                web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
            )
            await site.start()
            while True:
                await asyncio.sleep(3600)
        finally:
            await runner.cleanup()

    task = loop.create_task(serve())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        pending = asyncio.all_tasks(loop)
        for t in pending:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
