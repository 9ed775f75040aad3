"""The search HTTP API (aiohttp): an app factory, its routes and the one error middleware.

Resources (index backend, model registry, event store, impression writer) are opened and
closed in an aiohttp cleanup context, so a test, ``scripts/serve.py`` and a benchmark all
build the same app from explicit arguments; only scripts read settings.

Every error leaves as ``{"error": {"code", "message"}}`` with the status its class names
(search.errors, plus the indexing/ltr errors mapped in ``_status_of``); an unexpected
exception is a 500 whose body names the request id, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from indexing.backend import RetrievalBackend
from indexing.encoders import Encoder
from indexing.errors import BackendError, IndexingError, IndexNotFoundError
from ltr.errors import FeaturesetMismatchError, LTRError, ModelNotFoundError, UnknownNameError
from ltr.features import BEHAVIOR_FEATURES, STATIC_FEATURES, TEXT_FEATURES
from search.aggregates import BehaviorAggregates
from search.config import ApiConfig, EventsConfig
from search.errors import (
    BadRequestError,
    ConflictError,
    EventStoreError,
    ForbiddenError,
    InvalidParameterError,
    MalformedJSONError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    SearchError,
    UnauthorizedError,
    UnknownFieldError,
    UnknownRequestIdError,
    UnsupportedMediaTypeError,
    WorkersNotConfirmedError,
)
from search.events import ImpressionWriter, SqliteEventStore, parse_events
from search.metrics import CONTENT_TYPE, STAGES, ApiMetrics
from search.pipeline import (
    GeneratorFactory,
    Pipeline,
    PipelineConfig,
    SearchRequest,
    default_generator_factory,
)
from search.workers import WorkerGroup

_orjson: Any
try:  # not a declared dependency: used when installed (search responses are the hot path)
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

log = logging.getLogger("search.api")

DEFAULT_FEATURES: tuple[str, ...] = (*TEXT_FEATURES, *STATIC_FEATURES, *BEHAVIOR_FEATURES)

SEARCH_FIELDS = ("q", "k", "offset", "category", "filters", "explain", "query_id")
RANGE_OPS = ("gte", "lte")


@dataclass
class ServerState:
    """Everything the handlers share; filled by the cleanup context."""

    config: ApiConfig
    events_config: EventsConfig
    metrics: ApiMetrics
    pipeline: Pipeline | None = None
    registry: Any = None  # ltr.registry.ModelRegistry | None
    store: SqliteEventStore | None = None
    aggregates: BehaviorAggregates | None = None
    writer: ImpressionWriter | None = None
    index_dir: Path | None = None
    group: WorkerGroup | None = None  # the other server processes (--workers N)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started: float = field(default_factory=time.time)


STATE = web.AppKey("ltrsearch_state", ServerState)
REQUEST_ID = web.RequestKey("ltrsearch_request_id", str)


# --------------------------------------------------------------------------------------
# errors


def _status_of(exc: BaseException) -> tuple[int, str]:
    """HTTP status and error code for an exception of our packages."""
    if isinstance(exc, SearchError):
        return exc.status, exc.code
    if isinstance(exc, FeaturesetMismatchError):
        return 409, "featureset_mismatch"
    if isinstance(exc, ModelNotFoundError):
        return 404, "model_not_found"
    if isinstance(exc, UnknownNameError):
        return 400, "unknown_name"
    if isinstance(exc, IndexNotFoundError):
        return 503, "index_not_found"
    if isinstance(exc, BackendError):
        return 503, "backend_unavailable"
    if isinstance(exc, IndexingError | LTRError):
        return 500, "internal_error"
    return 500, "internal_error"


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, request_id: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}, "request_id": request_id},
        status=status,
        headers={"X-Request-ID": request_id},
    )


def _route_of(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


def new_request_id() -> str:
    """32 hex chars: milliseconds since the epoch (12) + 80 random bits (20), like UUIDv7.

    Time-ordered so the event store's request-keyed B-trees (requests, impressions) grow
    at their right edge. With uuid4 every impression batch landed on random pages of an
    ever larger table, and a 10-minute soak at 32 connections lost ~25% of its throughput
    as the store grew past the page cache.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Map every exception to a JSON error; count and log every request."""
    state = request.app[STATE]
    rid = new_request_id()
    request[REQUEST_ID] = rid
    t0 = time.perf_counter()
    route = _route_of(request)
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        resp.headers.setdefault("X-Request-ID", rid)
        return resp
    except web.HTTPException as e:
        status = e.status
        if status < 400:
            raise
        code = _HTTP_CODES.get(status, "http_error")
        msg = e.text if e.text and not e.text.startswith(f"{status}:") else e.reason
        if status == 413:
            msg = f"the body is larger than {state.config.max_body_bytes} bytes"
        state.metrics.errors.inc(code)
        return error_response(status, code, msg or e.reason, rid)
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    except Exception as e:
        status, code = _status_of(e)
        state.metrics.errors.inc(code)
        if status >= 500:
            log.error(
                "request failed: %s",
                e,
                exc_info=status == 500,
                extra={"request_id": rid, "route": route},
            )
        if status == 500:
            msg = f"internal error (request id {rid}); see the server log"
        else:
            msg = e.message if isinstance(e, SearchError) else str(e)
        return error_response(status, code, msg, rid)
    finally:
        dt = time.perf_counter() - t0
        state.metrics.requests.inc(route, str(status))
        state.metrics.latency.observe(dt, route)
        if state.config.access_log:
            log.info(
                "%s %s %d",
                request.method,
                request.path,
                status,
                extra={"request_id": rid, "route": route, "status": status, "ms": dt * 1000.0},
            )


# --------------------------------------------------------------------------------------
# request parsing


async def _json_body(request: web.Request, max_bytes: int) -> Any:
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLargeError(f"the body is larger than {max_bytes} bytes")
    if request.content_type != "application/json":
        raise UnsupportedMediaTypeError(
            f"expected Content-Type application/json, got {request.content_type or 'none'}"
        )
    raw = await request.read()  # client_max_size raises 413 on a chunked oversized body
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(f"the body is larger than {max_bytes} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedJSONError(f"the body is not valid JSON: {e}") from None


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidParameterError(name, "expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidParameterError(name, f"expected an integer, got {value!r}")


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no", ""):
        return value.lower() in ("1", "true", "yes")
    raise InvalidParameterError(name, f"expected true or false, got {value!r}")


def _opt_str(name: str, value: Any, max_len: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidParameterError(name, f"expected a string of at most {max_len} characters")
    return value


def _filters(raw: Any, attr_names: Sequence[str]) -> dict[str, tuple[float | None, float | None]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidParameterError("filters", 'expected an object {attr: {"gte", "lte"}}')
    out: dict[str, tuple[float | None, float | None]] = {}
    for attr, spec in raw.items():
        if attr not in attr_names:
            valid = ", ".join(sorted(attr_names)) or "(the index has no numeric attributes)"
            raise InvalidParameterError(f"filters.{attr}", f"unknown attribute; valid: {valid}")
        if not isinstance(spec, dict) or not spec or set(spec) - set(RANGE_OPS):
            raise InvalidParameterError(
                f"filters.{attr}", 'expected an object with "gte" and/or "lte"'
            )
        bounds: list[float | None] = []
        for op in RANGE_OPS:
            v = spec.get(op)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
            ):
                raise InvalidParameterError(f"filters.{attr}.{op}", "expected a finite number")
            bounds.append(None if v is None else float(v))
        lo, hi = bounds
        if lo is not None and hi is not None and lo > hi:
            raise InvalidParameterError(f"filters.{attr}", "gte is greater than lte")
        out[attr] = (lo, hi)
    return out


def _search_request(data: Mapping[str, Any], attr_names: Sequence[str]) -> SearchRequest:
    unknown = set(data) - set(SEARCH_FIELDS)
    if unknown:
        raise UnknownFieldError(sorted(unknown), SEARCH_FIELDS)
    q = data.get("q")
    if q is None:
        raise BadRequestError("q: the query is missing")
    if not isinstance(q, str):
        raise InvalidParameterError("q", "expected a string")
    return SearchRequest(
        q=q,
        k=_int("k", data.get("k", 10)),
        offset=_int("offset", data.get("offset", 0)),
        category=_opt_str("category", data.get("category")),
        ranges=_filters(data.get("filters"), attr_names),
        explain=_bool("explain", data.get("explain", False)),
        query_id=_opt_str("query_id", data.get("query_id")),
    )


# --------------------------------------------------------------------------------------
# handlers


def _ready_pipeline(state: ServerState) -> Pipeline:
    if state.pipeline is None:
        raise NotReadyError("the index is not loaded")
    return state.pipeline


async def _attr_names(pipeline: Pipeline) -> tuple[str, ...]:
    return (await pipeline.backend.info()).attr_names


async def _run_search(request: web.Request, data: Mapping[str, Any]) -> web.Response:
    state = request.app[STATE]
    pipeline = _ready_pipeline(state)
    attrs = await _attr_names(pipeline) if data.get("filters") else ()
    req = _search_request(data, attrs)
    pipeline.validate(req, state.config.max_query_chars)
    result = await pipeline.search(req, request_id=request[REQUEST_ID])
    for stage, ms in result.timings_ms.items():
        if stage in STAGES:
            state.metrics.stage.observe(ms / 1000.0, stage)
    for r in result.degraded:
        state.metrics.degraded.inc(r)
    if result.impression is not None and state.writer is not None:
        try:
            state.writer.submit(result.impression)
        except EventStoreError:  # shutting down: the page is served, not logged
            log.warning("impression not logged (writer closed)")
        state.metrics.impressions_pending.set(state.writer.pending)
    body = result.to_json()
    if req.explain and result.model_version is None:
        body["explain"] = "no model is serving: hits are ranked by RRF, no contributions"
    return _json_response(body)


def _json_response(body: Any) -> web.Response:
    """web.json_response, encoded by orjson when it is installed (~10x faster than json
    for a page of hits; the same JSON except that a non-finite float becomes null)."""
    if _orjson is not None:
        try:
            data = _orjson.dumps(body)
        except TypeError:  # a type orjson does not encode: the standard encoder decides
            pass
        else:
            return web.Response(body=data, content_type="application/json", charset="utf-8")
    return web.json_response(body)


async def search_get(request: web.Request) -> web.Response:
    params = request.query
    dup = sorted({k for k in params if len(params.getall(k)) > 1})
    if dup:
        raise InvalidParameterError(dup[0], "given more than once")
    if "filters" in params:
        raise InvalidParameterError("filters", "only in POST /search (JSON)")
    return await _run_search(request, dict(params))


async def search_post(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = await _json_body(request, state.config.max_body_bytes)
    if not isinstance(data, dict):
        raise MalformedJSONError("expected a JSON object")
    return await _run_search(request, data)


async def post_events(request: web.Request) -> web.Response:
    """Store a batch of events; 202 only after the SQLite commit (WAL, synchronous=FULL)."""
    state = request.app[STATE]
    if state.store is None:
        raise EventStoreError("no event store is configured")
    data = await _json_body(request, state.config.max_body_bytes)
    events = parse_events(data, max_events=state.config.max_events_per_batch)
    writer = state.writer
    if writer is not None and any(writer.is_pending(e.request_id) for e in events):
        await writer.flush()  # the page must be in the log before an event can name it
    try:
        stored = await asyncio.to_thread(state.store.add_events, events)
    except UnknownRequestIdError as err:
        if state.group is None or not any(_recent_id(r, state) for r in err.request_ids):
            raise
        # served by another worker moments ago: its page may still wait in that worker's
        # impression queue; have every worker write its queue, then judge again
        await _group_flush(state)
        stored = await asyncio.to_thread(state.store.add_events, events)
    for e in events:
        state.metrics.events.inc(e.type)
    return web.json_response({"accepted": stored}, status=202)


def _recent_id(request_id: str, state: ServerState) -> bool:
    """A request id of new_request_id's form stamped within the impression flush window."""
    try:
        ms = int(request_id[:12], 16)
    except ValueError:
        return False
    age = time.time() - ms / 1000.0
    return len(request_id) == 32 and -5.0 <= age <= state.config.impression_flush_ms / 1000 + 60


async def _group_flush(state: ServerState) -> None:
    group = state.group
    assert group is not None
    if state.writer is not None:
        await state.writer.flush()
    missing = await group.broadcast("flush", state.config.workers_timeout_s, {})
    if missing:
        log.warning("impression flush not confirmed by workers %s", missing)


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"status": "ok", "uptime_s": round(time.time() - state.started, 3)})


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    p = state.pipeline
    index = p.index_version if p is not None else None
    model = p.model.version if p is not None and p.model is not None else None
    problems = []
    if index is None:
        problems.append("no index loaded")
    if model is None and state.config.require_model:
        problems.append("no model loaded (serving would fall back to RRF)")
    body: dict[str, Any] = {"ready": not problems, "index_version": index, "model_version": model}
    if problems:
        body["problems"] = problems
    return web.json_response(body, status=503 if problems else 200)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _update_gauges(state)
    if state.group is None:
        text = state.metrics.render()
    else:  # every worker's series, this one's current, the others' at most 1 s old
        group, snap = state.group, state.metrics.registry.snapshot()
        await asyncio.to_thread(group.write_metrics, snap)
        snaps = await asyncio.to_thread(group.read_metrics)
        snaps[group.worker_id] = snap
        text = state.metrics.registry.render_workers(snaps)
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})


def _update_gauges(state: ServerState) -> None:
    if state.writer is not None:
        state.metrics.impressions_pending.set(state.writer.pending)
        state.metrics.impressions_written.set(state.writer.written)
        state.metrics.impressions_dropped.set(state.writer.dropped)
    cache = state.pipeline.candidate_cache if state.pipeline is not None else None
    if cache is not None:
        stats = {"hits": cache.hits, "misses": cache.misses, "entries": len(cache)}
        for stat, value in stats.items():
            state.metrics.candidate_cache.set(value, stat)


def _model_json(pipeline: Pipeline | None) -> dict[str, Any]:
    model = pipeline.model if pipeline is not None else None
    if model is None:
        return {"model_version": None, "ranking": "rrf"}
    m = model.manifest
    return {
        "model_version": m.version,
        "ranking": "ltr",
        "featureset_id": m.featureset_id,
        "feature_names": list(m.feature_names),
        "base_margin": None if m.base_margin is None else dict(m.base_margin),
        "metrics": dict(m.metrics),
        "created_at": m.created_at,
        "label_source": m.label_source,
    }


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = _model_json(state.pipeline)
    body["index_version"] = state.pipeline.index_version if state.pipeline else None
    return web.json_response(body)


def _check_admin(request: web.Request, token: str) -> None:
    header = request.headers.get("Authorization", "")
    if not header:
        raise UnauthorizedError("missing Authorization: Bearer <admin token>")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UnauthorizedError("expected Authorization: Bearer <admin token>")
    if not token:
        raise ForbiddenError("the admin API is disabled (no admin token configured)")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ForbiddenError("wrong admin token")


async def admin_reload(request: web.Request) -> web.Response:
    """Load the promoted (or a named) model and pick up a swapped index version.

    A model for another featureset is refused with 409 and the serving model stays.
    """
    state = request.app[STATE]
    _check_admin(request, state.config.admin_token)
    version: str | None = None
    if request.can_read_body:
        data = await _json_body(request, state.config.max_body_bytes)
        if not isinstance(data, dict):
            raise MalformedJSONError('expected a JSON object like {"version": "v3"}')
        unknown = set(data) - {"version"}
        if unknown:
            raise UnknownFieldError(sorted(unknown), ["version"])
        version = _opt_str("version", data.get("version"))
    pipeline = _ready_pipeline(state)
    async with state.reload_lock:
        index_reloaded = await reload_index(state)
        previous = pipeline.model.version if pipeline.model is not None else None
        if state.registry is None:
            raise NotFoundError("no model directory is configured")
        try:
            model = await asyncio.to_thread(
                state.registry.load, version, None, state.config.model_threads
            )
            pipeline.set_model(model)  # refuses a featureset mismatch; old model stays
        except FeaturesetMismatchError as e:
            state.metrics.reloads.inc("refused")
            raise ConflictError(f"{e}; still serving model {previous}") from None
        except ModelNotFoundError:
            state.metrics.reloads.inc("not_found")
            raise
        _set_model_metric(state)
        state.metrics.reloads.inc("ok")
    log.info("model %s -> %s", previous, model.version, extra={"request_id": request[REQUEST_ID]})
    body: dict[str, Any] = {
        "model_version": model.version,
        "previous_model_version": previous,
        "featureset_id": model.featureset_id,
        "index_version": pipeline.index_version,
        "index_reloaded": index_reloaded,
    }
    group = state.group
    if group is not None:  # the other workers load the same version before we answer
        missing = await group.broadcast(
            "reload",
            state.config.workers_timeout_s,
            {"model_version": model.version},
            model_version=model.version,
            index_version=pipeline.index_version,
        )
        if missing:
            raise WorkersNotConfirmedError(
                f"worker {group.worker_id} serves model {model.version}, but workers "
                f"{missing} did not confirm within {state.config.workers_timeout_s:g} s; "
                "retry the reload"
            )
        body["workers"] = group.workers
    return web.json_response(body)


async def reload_index(state: ServerState) -> bool:
    """Open the CURRENT local index version if it changed; True when swapped."""
    if state.index_dir is None or state.pipeline is None:
        return False
    from indexing.local import LocalBackend, current_version

    cur = await asyncio.to_thread(current_version, state.index_dir)
    if cur is None or cur == state.pipeline.index_version:
        return False
    backend = await asyncio.to_thread(
        LocalBackend.open,
        state.index_dir,
        state.pipeline.encoder,
        version=cur,
        inline=state.config.local_inline,
    )
    await state.pipeline.swap_backend(backend, cur)
    state.metrics.index_info.clear()
    state.metrics.index_info.set(1, cur)
    log.info("index swapped to %s", cur)
    return True


def _set_model_metric(state: ServerState) -> None:
    state.metrics.model_info.clear()
    model = state.pipeline.model if state.pipeline is not None else None
    if model is not None:
        state.metrics.model_info.set(1, model.version, model.featureset_id)
    else:
        state.metrics.model_info.set(1, "none", "none")


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
    parent = int(os.environ.get("LTRSEARCH_WORKER_PARENT", "0"))
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
                _update_gauges(state)
                await asyncio.to_thread(group.write_metrics, state.metrics.registry.snapshot())
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
        except Exception:
            seen = None  # read the requests again next tick
            log.exception("following the worker group failed; will retry")


async def _follow_reload(
    state: ServerState, group: WorkerGroup, gen: int, version: str | None
) -> None:
    pipeline = state.pipeline
    if pipeline is None:
        return
    async with state.reload_lock:
        await reload_index(state)
        current = pipeline.model.version if pipeline.model is not None else None
        if version is not None and version != current and state.registry is not None:
            try:
                model = await asyncio.to_thread(
                    state.registry.load, version, None, state.config.model_threads
                )
                pipeline.set_model(model)
            except Exception:
                state.metrics.reloads.inc("refused")
                log.exception("worker %d cannot load model %s", group.worker_id, version)
                return
            _set_model_metric(state)
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


# --------------------------------------------------------------------------------------
# the factory


def make_app(
    config: ApiConfig,
    encoder: Encoder,
    *,
    index_dir: str | Path | None = None,
    backend: RetrievalBackend | None = None,
    index_version: str | None = None,
    model_dir: str | Path | None = None,
    events_path: str | Path | None = None,
    events_config: EventsConfig | None = None,
    generator_factory: GeneratorFactory | None = None,
    features: Sequence[str] | None = None,
    group: WorkerGroup | None = None,
) -> web.Application:
    """Build the API over explicit resources.

    Give ``index_dir`` (a local index, opened here and swapped by /admin/reload) or an open
    ``backend`` (closed with the app). ``model_dir`` is a ltr.registry directory (the
    promoted model serves; none = RRF ranking). ``events_path`` is the SQLite event store
    (impressions, events, behavior aggregates); without it nothing is logged. ``group``
    makes this app one of several worker processes (search.workers).
    """
    config.validate()
    if (index_dir is None) == (backend is None):
        raise ValueError("give exactly one of index_dir or backend")
    events_config = events_config or EventsConfig()
    state = ServerState(
        config=config, events_config=events_config, metrics=ApiMetrics(), group=group
    )
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes)
    app[STATE] = state
    feats = tuple(features) if features else (config.features or DEFAULT_FEATURES)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        opened: RetrievalBackend
        version: str
        if index_dir is not None:
            from indexing.local import LocalBackend

            state.index_dir = Path(index_dir)
            lb = await asyncio.to_thread(
                LocalBackend.open, state.index_dir, encoder, inline=config.local_inline
            )
            opened, version = lb, lb.version
        else:
            assert backend is not None  # checked above; narrows the type for mypy
            opened = backend
            version = index_version or (await backend.info()).version
        if model_dir is not None:
            from ltr.registry import ModelRegistry

            state.registry = ModelRegistry(model_dir)
        if events_path is not None:
            state.store = await asyncio.to_thread(SqliteEventStore, events_path)
            state.aggregates = BehaviorAggregates.attach(
                state.store,
                half_life_s=events_config.half_life_s,
                exam_eta=events_config.exam_eta,
                exam_positions=events_config.exam_positions,
            )
            state.writer = ImpressionWriter(
                state.store,
                batch_size=config.impression_batch_size,
                flush_interval_s=config.impression_flush_ms / 1000.0,
                max_pending=config.impression_max_pending,
            )
            await state.writer.start()
        state.pipeline = Pipeline(
            opened,
            encoder,
            default_features=feats,
            index_version=version,
            aggregates=state.aggregates,
            config=PipelineConfig(
                candidates_timeout_ms=config.candidates_timeout_ms,
                model_timeout_ms=config.model_timeout_ms,
                body_chars=config.body_chars,
                max_k=config.max_k,
                max_offset=config.max_offset,
                rerank_depth=config.rerank_depth,
            ),
            generator_factory=generator_factory or default_generator_factory(),
            expected_featureset_id=config.featureset_id or None,
        )
        if state.registry is not None:
            try:
                model = await asyncio.to_thread(
                    state.registry.load, None, None, config.model_threads
                )
                state.pipeline.set_model(model)
            except ModelNotFoundError as e:
                log.warning("serving without a model (RRF ranking): %s", e)
            except (FeaturesetMismatchError, UnknownNameError) as e:
                log.error("promoted model refused, serving RRF: %s", e)
        state.metrics.index_info.set(1, version)
        _set_model_metric(state)
        tasks = []
        if state.index_dir is not None and config.index_poll_s > 0:
            tasks.append(asyncio.create_task(_index_poller(state, config.index_poll_s)))
        if state.aggregates is not None and config.aggregates_poll_s > 0:
            tasks.append(asyncio.create_task(_aggregates_poller(state, config.aggregates_poll_s)))
        if group is not None:
            p = state.pipeline
            group.versions.update(
                model_version=p.model.version if p.model is not None else None,
                index_version=p.index_version,
            )
            gen, payload = await asyncio.to_thread(group.current, "reload")
            if gen:  # a restarted worker serves what the group was told to, before serving
                await _follow_reload(state, group, gen, payload.get("model_version"))
            await asyncio.to_thread(group.report)
            tasks.append(asyncio.create_task(_follow_group(state)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.writer is not None:
                try:
                    await state.writer.close()
                except Exception:
                    log.exception("final impression flush failed")
            if state.store is not None:
                state.store.close()
            await state.pipeline.close()
            state.pipeline = None

    app.cleanup_ctx.append(resources)
    app.router.add_get("/search", search_get)
    app.router.add_post("/search", search_post)
    app.router.add_post("/events", post_events)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/model", get_model)
    app.router.add_post("/admin/reload", admin_reload)
    return app
