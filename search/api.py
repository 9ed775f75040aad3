"""The search HTTP API (aiohttp): its routes, their handlers and the app factory.

``make_app`` builds the app over explicit resources, so a test, ``scripts/serve.py`` and a
benchmark all build the same app; only scripts read settings. The handlers see validated
input and raise search.errors (search.http parses requests and maps errors to JSON); what
they share is search.server.ServerState, whose resources search.server opens and closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from indexing.backend import RetrievalBackend
from indexing.encoders import Encoder
from ltr.errors import CorruptModelError, FeaturesetMismatchError
from ltr.features import BEHAVIOR_FEATURES, STATIC_FEATURES, TEXT_FEATURES
from search import rollout
from search.config import ApiConfig, EventsConfig
from search.errors import (
    ConflictError,
    CorruptModelRefusedError,
    EventStoreError,
    InvalidParameterError,
    MalformedJSONError,
    NotFoundError,
    NotReadyError,
    UnknownFieldError,
    UnknownRequestIdError,
)
from search.experiments import ExperimentRuntime, Plan
from search.http import (
    REQUEST_ID,
    ErrorMiddleware,
    check_admin,
    handler_args,
    json_body,
    json_response,
    opt_str,
    parse_events,
    query_flag,
    search_request,
)
from search.metrics import CONTENT_TYPE, STAGES, ApiMetrics
from search.openapi import build_spec
from search.pipeline import (
    SERVING,
    GeneratorFactory,
    Pipeline,
    SearchRequest,
    SearchResult,
    default_generator_factory,
)
from search.server import (
    CLEANUP_CONTEXTS,
    STATE,
    ServerSpec,
    ServerState,
    degraded,
    load_model,
    reload_index,
    reload_outcome,
    reload_workers,
    update_gauges,
)
from search.version import package_version
from search.workbench import ReportSource, add_routes, ranking_model
from search.workers import WorkerGroup

log = logging.getLogger("search.api")

DEFAULT_FEATURES: tuple[str, ...] = (*TEXT_FEATURES, *STATIC_FEATURES, *BEHAVIOR_FEATURES)


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
    req = search_request(data, attrs)
    pipeline.validate(req, state.config.max_query_chars)
    rid = request[REQUEST_ID]
    plan = None
    if req.model is not None:  # the workbench's side by side: never in an experiment
        model = await ranking_model(request, req.model)
        result = await pipeline.search(req, request_id=rid, model=model)
    else:
        runtime = state.experiments
        if runtime is not None and not req.debug:
            plan = runtime.plan(pipeline, req.offset, req.client_id, rid)
        if plan is None:
            result = await pipeline.search(req, request_id=rid)
        else:
            assert runtime is not None
            result = await _experiment_search(pipeline, runtime, plan, req, rid)
    for stage, ms in result.timings_ms.items():
        if stage in STAGES:
            state.metrics.stage.observe(ms / 1000.0, stage)
    for r in result.degraded:
        state.metrics.degraded.inc(r)
    # a debug page (the workbench) or another model's ranking is not what a user was shown
    logged = not req.debug and req.model is None
    impression = result.impression
    if impression is not None and (plan is not None or req.client_id is not None):
        arm = plan.arm if plan is not None else None
        if arm == "interleave" and impression.teams is None:
            arm = "production"  # the candidate failed: production's page, not a duel
        impression = dataclasses.replace(
            impression,
            experiment_id=plan.experiment_id if plan is not None else None,
            arm=arm,
            client_id=req.client_id,
        )
    if impression is not None and state.writer is not None and logged:
        try:
            state.writer.submit(impression)
        except EventStoreError:  # shutting down: the page is served, not logged
            log.warning("impression not logged (writer closed)")
        state.metrics.impressions_pending.set(state.writer.pending)
    body = result.to_json()
    if plan is not None:
        body["experiment"] = {"experiment_id": plan.experiment_id, "arm": plan.arm}
        if impression is not None and impression.teams is not None:
            body["experiment"]["teams"] = list(impression.teams)
    if req.explain:
        note = _explain_note(result.model_version, len(result.hits), state.config)
        if note:
            body["explain"] = note
    return json_response(body)


async def _experiment_search(
    pipeline: Pipeline, runtime: ExperimentRuntime, plan: Plan, req: SearchRequest, rid: str
) -> SearchResult:
    """Serve one request of an experiment and count it for its arm's guardrails; a
    shadow candidate scores after the response (search.experiments)."""
    t0 = time.perf_counter()
    try:
        model = SERVING if plan.model is None else plan.model
        result = await pipeline.search(req, request_id=rid, model=model, interleave=plan.interleave)
    except Exception:
        runtime.observe(plan, (time.perf_counter() - t0) * 1000.0, 0, True)
        raise
    failed = result.candidate_failed or (plan.model is not None and "model" in result.degraded)
    runtime.observe(plan, result.took_ms, len(result.hits), failed)
    if plan.shadow is not None and result.scored is not None and result.hits:
        runtime.shadow(pipeline, plan, rid, result.scored)
    return result


def _explain_note(model_version: str | None, hits: int, config: ApiConfig) -> str | None:
    """Why some or all hits of an explain=true page carry no contributions."""
    if model_version is None:
        return "no model is serving: hits are ranked by RRF, no contributions"
    if config.explain_max_hits == 0:
        return "explain is disabled (api.explain_max_hits = 0): no contributions"
    if hits > config.explain_max_hits:
        n = config.explain_max_hits
        return f"contributions for the first {n} hits only (api.explain_max_hits)"
    return None


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
    data = await json_body(request, state.config)
    if not isinstance(data, dict):
        raise MalformedJSONError("expected a JSON object")
    return await _run_search(request, data)


async def post_events(request: web.Request) -> web.Response:
    """Store a batch of events; 202 only after the SQLite commit (WAL, synchronous=FULL).

    ``?debug=true`` (the workbench page): the batch is validated and dropped, never stored.
    """
    state = request.app[STATE]
    debug = query_flag(request, "debug")
    if state.store is None and not debug:
        raise EventStoreError("no event store is configured")
    data = await json_body(request, state.config, list_name="events")
    events = parse_events(data, max_events=state.config.max_events_per_batch)
    if debug or state.store is None:  # the workbench's clicks: validated, never stored
        return web.json_response({"accepted": 0, "debug": True}, status=202)
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
    uptime = round(time.time() - state.started, 3)
    return web.json_response({"status": "ok", "uptime_s": uptime, "version": package_version()})


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this server (search.openapi)."""
    return web.json_response(build_spec(request.app[STATE].config))


async def ready(request: web.Request) -> web.Response:
    """200 while searches are served as configured (503 with ``problems`` otherwise);
    ``degraded`` names what serves in a reduced way (a refused model replaced, event store
    writes failing, dropped impressions, workers restarting) without making it unready."""
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
    body["degraded"] = degraded(state)  # on the loop: a busy thread pool must not delay it
    fallback = state.model_fallback
    body["model_fallback"] = fallback.to_json() if fallback is not None else None
    return web.json_response(body, status=503 if problems else 200)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition (with --workers N: every worker's series, search.metrics)."""
    state = request.app[STATE]
    update_gauges(state)
    body = await asyncio.to_thread(state.metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


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
    fallback = state.model_fallback
    body["model_fallback"] = fallback.to_json() if fallback is not None else None
    body["experiment"] = await rollout.model_section(state)
    return json_response(body)  # a NaN offline metric is null (json.dumps would write NaN)


async def admin_reload(request: web.Request) -> web.Response:
    """Load the promoted (or a named) model and pick up a swapped index version.

    A model for another featureset is refused with 409, one with corrupt files (checksum,
    unreadable manifest or booster) with 422; the serving model stays. Every attempt is
    counted in ltrsearch_reloads_total by outcome.
    """
    state = request.app[STATE]
    check_admin(request, state.config.admin_token)
    version: str | None = None
    if request.can_read_body:
        data = await json_body(request, state.config)
        if not isinstance(data, dict):
            raise MalformedJSONError('expected a JSON object like {"version": "v3"}')
        unknown = set(data) - {"version"}
        if unknown:
            raise UnknownFieldError(sorted(unknown), ["version"])
        version = opt_str("version", data.get("version"))
    pipeline = _ready_pipeline(state)
    async with state.reload_lock:
        index_reloaded = await reload_index(state)
        previous = pipeline.model.version if pipeline.model is not None else None
        if state.registry is None:
            raise NotFoundError("no model directory is configured")
        try:
            model = await load_model(state, version)
        except Exception as e:
            state.metrics.reloads.inc(reload_outcome(e))
            if isinstance(e, FeaturesetMismatchError):
                raise ConflictError(f"{e}; still serving model {previous}") from None
            if isinstance(e, CorruptModelError):
                raise CorruptModelRefusedError(f"{e}; still serving model {previous}") from None
            raise
        state.metrics.reloads.inc("ok")
    log.info("model %s -> %s", previous, model.version, extra={"request_id": request[REQUEST_ID]})
    body: dict[str, Any] = {
        "model_version": model.version,
        "previous_model_version": previous,
        "featureset_id": model.featureset_id,
        "index_version": pipeline.index_version,
        "index_reloaded": index_reloaded,
    }
    if state.group is not None:  # the other workers load the same version before we answer
        body["workers"] = await reload_workers(state, state.group, model.version)
    return web.json_response(body)


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
    reports: ReportSource | None = None,
) -> web.Application:
    """Build the API over explicit resources (opened at startup by search.server).

    Give ``index_dir`` (a local index, opened here and swapped by /admin/reload) or an open
    ``backend`` (closed with the app). ``model_dir`` is a ltr.registry directory (the
    promoted model serves; none = RRF ranking). ``events_path`` is the SQLite event store
    (impressions, events, behavior aggregates); without it nothing is logged. ``group``
    makes this app one of several worker processes (search.workers). ``reports``: the drift
    reports the workbench page links to (search.workbench).
    """
    config.validate()
    if (index_dir is None) == (backend is None):
        raise ValueError("give exactly one of index_dir or backend")
    spec = ServerSpec(
        encoder=encoder,
        features=tuple(features) if features else (config.features or DEFAULT_FEATURES),
        generator_factory=generator_factory or default_generator_factory(),
        index_dir=Path(index_dir) if index_dir is not None else None,
        backend=backend,
        index_version=index_version,
        model_dir=model_dir,
        events_path=events_path,
    )
    state = ServerState(
        config=config,
        events_config=events_config or EventsConfig(),
        metrics=ApiMetrics(worker=group.worker_id if group is not None else None),
        spec=spec,
        group=group,
    )
    app = web.Application(
        middlewares=[ErrorMiddleware(config, state.metrics)],
        client_max_size=config.max_body_bytes,
        handler_args=handler_args(config),
    )
    app[STATE] = state
    app.cleanup_ctx.extend((*CLEANUP_CONTEXTS, rollout.experiments_ctx))
    app.router.add_get("/search", search_get)
    app.router.add_post("/search", search_post)
    app.router.add_post("/events", post_events)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/model", get_model)
    app.router.add_post("/admin/reload", admin_reload)
    app.router.add_get("/openapi.json", openapi_json)
    add_routes(app, reports)  # the workbench page, /model/card, /reports (read only)
    app.router.add_get("/admin/experiments", rollout.get_experiments)
    app.router.add_post("/admin/experiments", rollout.start_experiment)
    app.router.add_get("/admin/experiments/{experiment_id}", rollout.get_experiments)
    app.router.add_post("/admin/experiments/{experiment_id}/stop", rollout.stop_experiment)
    return app
