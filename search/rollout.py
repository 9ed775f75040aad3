"""The rollout gate: promote, reject or keep running the live experiment, then watch.

One process looks (worker 0 with ``--workers``; the gate reads only the shared store, so
which one does not matter) every ``gate.every_s`` seconds:

- ``active`` experiment: guardrails on the candidate's arm (zero-result rate, p99
  latency, error rate; no verdict below ``guardrails.min_requests`` requests) and, for an
  interleave experiment, ltr.sequential.sign_test_gate on the candidate's wins, losses and
  ties. A breach or a "reject" stops it (``rejected``); "promote" makes the candidate the
  registry's promoted version, serves it on every worker (as /admin/reload does) and starts
  the guardrail window (``watching``). Shadow and split experiments have no paired outcome:
  the gate only guards them (a person promotes with /admin/reload).
- ``watching``: the same guardrails on every request the new model serves; a breach rolls
  the registry back to the previous version on every worker (``rolled_back``); the window
  passes after ``guardrails.watch_s`` seconds and ``watch_min_requests`` requests
  (``promoted``).

Every decision goes to the append-only ``experiment_log`` with its numbers; "continue"
is logged when the counts moved, at most every ten looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from ltr.errors import LTRError
from search.errors import ConflictError, EventStoreError, NotFoundError
from search.experiment_store import Experiment, ExperimentStore, parse_start
from search.experiments import ExperimentRuntime
from search.http import check_admin, json_body
from search.metrics import ApiMetrics
from search.server import STATE, ServerState, load_model, reload_workers

log = logging.getLogger("search.api")

ServeEverywhere = Callable[[str], Awaitable[None]]  # load a version on every worker
Notify = Callable[[], Awaitable[None]]  # every worker re-reads the live experiment

_GUARDED_ARM = {"interleave": "interleave", "split": "candidate", "shadow": "shadow_candidate"}


def breach(stats: Mapping[str, float] | None, exp: Experiment) -> str | None:
    """The first guardrail ``stats`` (one arm's arm_stats) break, or None (also when the
    arm has fewer than ``min_requests`` requests: no verdict yet)."""
    if stats is None or stats["requests"] < exp.guardrail("min_requests"):
        return None
    checks = (
        ("zero_result_rate", "max_zero_result_rate"),
        ("p99_ms", "max_p99_ms"),
        ("error_rate", "max_error_rate"),
    )
    for key, limit in checks:
        if stats[key] > exp.guardrail(limit):
            return f"{key} {stats[key]:.4g} > {limit} {exp.guardrail(limit):.4g}"
    return None


class Gate:
    """Looks at the live experiment and acts; ``tick`` is one look (returns the action)."""

    def __init__(
        self,
        db: ExperimentStore,
        registry: Any,
        serve_everywhere: ServeEverywhere,
        notify: Notify,
        metrics: ApiMetrics,
    ) -> None:
        self.db = db
        self.registry = registry
        self.serve_everywhere = serve_everywhere
        self.notify = notify
        self.metrics = metrics
        self._logged: tuple[str, Any] | None = None
        self._looks = 0

    async def run(self) -> None:
        while True:
            exp = None
            try:
                exp = await asyncio.to_thread(self.db.live)
                if exp is not None:
                    await self.tick(exp)
            except Exception:
                log.exception("the rollout gate failed; will look again")
            every = exp.gate("every_s") if exp is not None else 1.0
            await asyncio.sleep(max(0.1, every))

    async def tick(self, exp: Experiment) -> str:
        if exp.status == "watching":
            return await self._watch(exp)
        eid = exp.experiment_id
        stats = await asyncio.to_thread(self.db.arm_stats, eid)
        numbers: dict[str, Any] = {"arms": stats}
        bad = breach(stats.get(_GUARDED_ARM[exp.mode]), exp)
        outcome, reason = "continue", "guardrails only (no paired outcome in this mode)"
        if exp.mode == "shadow":
            shadow = await asyncio.to_thread(self.db.shadow_summary, eid)
            numbers["shadow"] = shadow
            if bad is None and (shadow["nonfinite_scores"] or 0) > 0:
                bad = f"{shadow['nonfinite_scores']} non-finite candidate scores"
        if exp.mode == "interleave":
            from ltr.sequential import sign_test_gate

            w, lo, t = await asyncio.to_thread(self.db.interleave_outcomes, eid)
            d = sign_test_gate(
                w, lo, t,
                alpha=exp.gate("alpha"), beta=exp.gate("beta"), effect=exp.gate("effect"),
                min_queries=int(exp.gate("min_queries")),
            )  # fmt: skip
            numbers["sign_test"] = dataclasses.asdict(d)
            outcome, reason = d.outcome, d.reason
            for name, value in (("wins", w), ("losses", lo), ("ties", t)):
                self.metrics.experiment_outcomes.set(value, eid, name)
            self.metrics.experiment_llr.set(d.statistic, eid)
        if bad is not None:
            outcome, reason = "reject", f"guardrail breached by the candidate: {bad}"
        if outcome == "promote":
            return await self._promote(exp, reason, numbers)
        if outcome == "reject":
            if await asyncio.to_thread(
                self.db.transition, eid, ("active",), "rejected", "reject", reason, numbers
            ):
                self._decided("reject")
                log.warning("experiment %s rejected %s: %s", eid, exp.candidate, reason)
                await self.notify()
            return "reject"
        await self._log_continue(exp, reason, numbers)
        return "continue"

    async def _promote(self, exp: Experiment, reason: str, numbers: dict[str, Any]) -> str:
        eid, cand = exp.experiment_id, exp.candidate
        until = time.time() + exp.guardrail("watch_s")
        moved = await asyncio.to_thread(
            self.db.transition, eid, ("active",), "watching", "promote", reason,
            {**numbers, "previous": exp.production}, until,
        )  # fmt: skip
        if not moved:
            return "continue"
        self._decided("promote")
        await asyncio.to_thread(self.registry.promote, cand)
        log.warning("experiment %s promoted %s (was %s): %s", eid, cand, exp.production, reason)
        await self.notify()
        await self.serve_everywhere(cand)
        return "promote"

    async def _watch(self, exp: Experiment) -> str:
        eid = exp.experiment_id
        stats = await asyncio.to_thread(self.db.arm_stats, eid)
        watch = stats.get("watch")
        numbers: dict[str, Any] = {"arms": stats}
        bad = breach(watch, exp)
        if bad is not None:
            target = await asyncio.to_thread(self.registry.rollback)
            reason = f"guardrail breached after promotion: {bad}; rolled back to {target}"
            numbers["rolled_back_to"] = target
            if await asyncio.to_thread(
                self.db.transition, eid, ("watching",), "rolled_back", "rollback", reason, numbers
            ):
                self._decided("rollback")
                self.metrics.rollbacks.inc()
                log.error("experiment %s: %s", eid, reason)
                await self.notify()
                await self.serve_everywhere(target)
            return "rollback"
        served = watch["requests"] if watch else 0
        if time.time() >= (exp.watch_until or 0) and served >= exp.guardrail("watch_min_requests"):
            reason = f"no guardrail breached over {served:g} requests of the watch window"
            if await asyncio.to_thread(
                self.db.transition, eid, ("watching",), "promoted", "watch_passed", reason, numbers
            ):
                self._decided("watch_passed")
                await self.notify()
            return "watch_passed"
        await self._log_continue(exp, "watching the promoted model", numbers)
        return "continue"

    async def _log_continue(self, exp: Experiment, reason: str, numbers: dict[str, Any]) -> None:
        """Log "continue" when the counts moved, at most every tenth look."""
        self._looks += 1
        moved = (exp.experiment_id, _counts(numbers))
        if moved == self._logged or (self._looks < 10 and self._logged is not None):
            return
        self._looks, self._logged = 0, moved
        await asyncio.to_thread(self.db.append_log, exp.experiment_id, "continue", reason, numbers)
        self._decided("continue")

    def _decided(self, outcome: str) -> None:
        self.metrics.experiment_decisions.inc(outcome)


def _counts(numbers: Mapping[str, Any]) -> tuple[float, ...]:
    arms = numbers.get("arms", {})
    reqs = tuple(float(a["requests"]) for _, a in sorted(arms.items()))
    test = numbers.get("sign_test") or {}
    return (*reqs, float(test.get("n", -1)))


# --------------------------------------------------------------------------------------
# the server side: the cleanup context, acting on every worker, the admin routes


async def experiments_ctx(app: web.Application) -> AsyncIterator[None]:
    """The experiment runtime (with an event store and a model registry): the live
    experiment read at startup, its counts flushed every second, the gate on one worker."""
    state = app[STATE]
    tasks: list[asyncio.Task[None]] = []
    if state.store is not None and state.registry is not None:
        runtime = ExperimentRuntime(
            state.store, state.registry, state.metrics, state.config.model_threads
        )
        state.experiments = runtime
        try:
            await runtime.refresh()
        except Exception as e:  # the candidate cannot load: serve production only
            log.error("the live experiment cannot run here: %s", e)
        tasks.append(asyncio.create_task(_flusher(runtime)))
        if state.group is None or state.group.worker_id == 0:
            gate = Gate(
                runtime.db,
                state.registry,
                lambda v: serve_everywhere(state, v),
                lambda: experiments_changed(state),
                state.metrics,
            )
            tasks.append(asyncio.create_task(gate.run()))
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if state.experiments is not None:
        try:
            await state.experiments.close()
        except Exception:
            log.exception("final experiment counts not written")


async def _flusher(runtime: ExperimentRuntime, every_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await runtime.flush()
        except Exception:
            log.exception("writing experiment counts failed; will retry")


async def experiments_changed(state: ServerState) -> None:
    """Every worker re-reads the live experiment (this one first)."""
    assert state.experiments is not None
    await state.experiments.refresh()
    group = state.group
    if group is not None:
        missing = await group.broadcast("experiment", state.config.workers_timeout_s, {})
        if missing:
            log.warning("experiment change not confirmed by workers %s", missing)


async def serve_everywhere(state: ServerState, version: str) -> None:
    """Serve registry ``version`` on every worker (what /admin/reload does)."""
    async with state.reload_lock:
        model = await load_model(state, version)
        state.metrics.reloads.inc("ok")
    log.info("model -> %s (rollout gate)", model.version)
    if state.group is not None:
        await reload_workers(state, state.group, model.version)


def _runtime(request: web.Request) -> tuple[ServerState, ExperimentRuntime]:
    state = request.app[STATE]
    check_admin(request, state.config.admin_token)
    if state.experiments is None:
        raise EventStoreError("experiments need an event store and a model directory")
    return state, state.experiments


async def start_experiment(request: web.Request) -> web.Response:
    """POST /admin/experiments {"candidate", "mode", "share"?, "gate"?, "guardrails"?}:
    start it on every worker; 409 while another one is live or for a candidate whose
    features differ from production's (shadow, interleave)."""
    state, rt = _runtime(request)
    spec = parse_start(await json_body(request, state.config))
    try:
        cand = await asyncio.to_thread(rt.registry.load, spec["candidate"], None, rt.nthread)
    except Exception as e:
        raise NotFoundError(f"candidate {spec['candidate']!r} cannot be loaded: {e}") from None
    pipeline = state.pipeline
    model = pipeline.model if pipeline is not None else None
    if pipeline is not None:
        try:
            pipeline.check_model(cand)
        except LTRError as e:  # a featureset this server cannot compute
            raise ConflictError(f"candidate {cand.version} cannot serve here: {e}") from None
        if spec["mode"] != "split" and cand.feature_names != pipeline.feature_names:
            raise ConflictError(
                f"{spec['mode']} scores production's feature rows: candidate "
                f"{cand.version} has other features ({cand.featureset_id}); use split"
            )
    if model is not None and model.version == cand.version:
        raise ConflictError(f"{cand.version} is the production model already")
    exp = await asyncio.to_thread(rt.db.start, spec, model.version if model else None)
    await experiments_changed(state)
    log.info("experiment %s started: %s", exp.experiment_id, exp.to_json())
    return web.json_response(exp.to_json(), status=201)


async def stop_experiment(request: web.Request) -> web.Response:
    """POST /admin/experiments/{id}/stop: production serves everyone again (logged)."""
    state, rt = _runtime(request)
    eid = request.match_info["experiment_id"]
    exp = await asyncio.to_thread(rt.db.get, eid)
    stats = await asyncio.to_thread(rt.db.arm_stats, eid)
    if not await asyncio.to_thread(
        rt.db.transition, eid, ("active", "watching"), "stopped", "stop", "stopped by an admin",
        {"arms": stats},
    ):  # fmt: skip
        raise ConflictError(f"experiment {eid} is {exp.status}, not live")
    await experiments_changed(state)
    return web.json_response((await asyncio.to_thread(rt.db.get, eid)).to_json())


async def get_experiments(request: web.Request) -> web.Response:
    """GET /admin/experiments[/{id}]: experiments with their numbers and decision log."""
    _, rt = _runtime(request)
    eid = request.match_info.get("experiment_id")
    exps = [await asyncio.to_thread(rt.db.get, eid)] if eid else rt.db.recent()
    return web.json_response({"experiments": [await report(rt.db, e) for e in exps]})


async def report(db: ExperimentStore, exp: Experiment, log_rows: int = 50) -> dict[str, Any]:
    """An experiment with its per-arm numbers, outcomes and the tail of its log."""
    eid = exp.experiment_id
    body = exp.to_json()
    body["arms"] = await asyncio.to_thread(db.arm_stats, eid)
    if exp.mode == "interleave":
        w, lo, t = await asyncio.to_thread(db.interleave_outcomes, eid)
        body["interleave"] = {"wins": w, "losses": lo, "ties": t}
    if exp.mode == "shadow":
        body["shadow"] = await asyncio.to_thread(db.shadow_summary, eid)
    body["log"] = await asyncio.to_thread(db.log_rows, eid, log_rows)
    return body


async def model_section(state: ServerState) -> dict[str, Any] | None:
    """/model's ``experiment``: the live (else the latest) experiment, its last decision."""
    rt = state.experiments
    if rt is None:
        return None
    recent = rt.live or next(iter(await asyncio.to_thread(rt.db.recent, 1)), None)
    if recent is None:
        return None
    body = recent.to_json()
    last = await asyncio.to_thread(rt.db.log_rows, recent.experiment_id, 1)
    body["last_decision"] = last[-1] if last else None
    return body
