"""Online experiments: a candidate registry version against the serving (production) model.

Three modes, one experiment at a time:

- ``shadow``: production serves; for a sampled ``share`` of requests the candidate also
  ranks the same scored candidates AFTER the response is built (on one dedicated thread),
  and its ranking is logged beside the served one with rank agreement, its latency and
  non-finite / outlier score counts (table ``shadow_log``).
- ``interleave``: for a ``share`` of first pages the two rankings are merged by team draft
  (ltr.interleaving); every position's team is logged with the impression and clicks credit
  the teams, so each query ends as a win, a loss or a tie for the candidate.
- ``split``: a sticky ``share`` (1-50 %) of users (``client_id``; a request without one is
  assigned alone) is served by the candidate (arm ``candidate``), the rest by production
  (arm ``control``).

In shadow and interleave mode the requests not sampled are counted as arm ``production``;
after a promotion every request is arm ``watch`` until the guardrail window closes. The
candidate's off-path scorings of a shadow experiment are counted as arm ``shadow_candidate``.

State lives in the event store (search.experiment_store) so every ``--workers`` process
agrees and a restart resumes.

The gate (search.rollout) decides from these tables; this module serves and records.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from search.experiment_store import ArmStats, Experiment, ExperimentStore

if TYPE_CHECKING:
    from ltr.model import RankModel
    from ltr.registry import ModelRegistry
    from search.events import SqliteEventStore
    from search.metrics import ApiMetrics
    from search.pipeline import Pipeline, Scored

log = logging.getLogger("search.api")


def bucket(salt: str, key: str) -> float:
    """A stable number in [0, 1) for ``key`` in one experiment (sticky split assignment)."""
    h = hashlib.sha256(f"{salt}:{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


@dataclass(frozen=True)
class Plan:
    """How one request takes part: the arm, and the model(s) the pipeline should use."""

    experiment_id: str
    arm: str  # control | candidate (split); production | interleave | shadow; watch
    model: RankModel | None = None  # serves instead of production (split candidate arm)
    interleave: RankModel | None = None
    shadow: RankModel | None = None


def shadow_row(
    experiment_id: str, request_id: str, scored: Scored, ranked: list[int], scores: np.ndarray,
    ms: float,
) -> tuple[Any, ...]:  # fmt: skip
    """One shadow_log row: the candidate's page beside the served one and how they agree."""
    served = list(scored.served)
    k = max(1, len(served))
    cand = [scored.cs.ids[i] for i in ranked[:k]]
    finite = scores[np.isfinite(scores)]
    nonfinite = int(len(scores) - len(finite))
    outliers = 0
    if len(finite) >= 4:  # scores farther than 10 IQRs from the median: a broken model
        q1, med, q3 = np.percentile(finite, [25, 50, 75])
        outliers = int(np.sum(np.abs(finite - med) > 10 * max(q3 - q1, 1e-9)))
    return (request_id, experiment_id, time.time(), json.dumps(served), json.dumps(cand),
            kendall_tau(served, cand), len(set(served) & set(cand)) / k, ms, nonfinite,
            outliers)  # fmt: skip


def kendall_tau(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Kendall's tau of the documents both pages hold, in their two orders (None: < 2)."""
    pos_b = {d: i for i, d in enumerate(b)}
    common = [pos_b[d] for d in a if d in pos_b]
    n = len(common)
    if n < 2:
        return None
    s = sum((1 if common[j] > common[i] else -1) for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


class ExperimentRuntime:
    """One server process's view: the live experiment, its loaded candidate, and the
    counts and shadow rows not yet written (flushed about every second)."""

    def __init__(
        self,
        store: SqliteEventStore,
        registry: ModelRegistry,
        metrics: ApiMetrics,
        nthread: int = 1,
    ) -> None:
        self.db = ExperimentStore(store)
        self.registry = registry
        self.metrics = metrics
        self.nthread = nthread
        self.process = uuid.uuid4().hex[:12]
        self.live: Experiment | None = None
        self.candidate: RankModel | None = None
        self._stats: dict[tuple[str, str], ArmStats] = {}
        self._shadows: list[tuple[Any, ...]] = []
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self.shadow_skipped = 0
        self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self._rng = random.Random()

    async def refresh(self) -> Experiment | None:
        """Read the live experiment from the store; load its candidate when it changed."""
        live = await asyncio.to_thread(self.db.live)
        if live is not None and live.status == "active":
            same = self.candidate is not None and self.candidate.version == live.candidate
            if not same:
                self.candidate = await asyncio.to_thread(
                    self.registry.load, live.candidate, None, self.nthread
                )
        else:
            self.candidate = None
        self.live = live
        self.metrics.experiment_info.clear()
        if live is not None:
            self.metrics.experiment_info.set(
                1, live.experiment_id, live.mode, live.candidate, live.status
            )
        return live

    def plan(self, pipeline: Pipeline, offset: int, client_id: str | None, rid: str) -> Plan | None:
        """This request's part in the live experiment (None: not in one)."""
        exp, cand = self.live, self.candidate
        if exp is None:
            return None
        eid = exp.experiment_id
        if exp.status == "watching":
            return Plan(eid, "watch")
        if cand is None:
            return None
        if exp.mode == "split":
            in_cand = bucket(exp.salt, client_id or rid) < exp.share
            return Plan(eid, "candidate", model=cand) if in_cand else Plan(eid, "control")
        # shadow and interleave score the production feature rows: same features only
        if cand.feature_names != pipeline.feature_names:
            return None
        if self._rng.random() >= exp.share or (exp.mode == "interleave" and offset != 0):
            return Plan(eid, "production")  # not sampled; team draft is for first pages
        if exp.mode == "shadow":
            return Plan(eid, "shadow", shadow=cand)
        return Plan(eid, "interleave", interleave=cand)

    def observe(self, plan: Plan, ms: float, hits: int, error: bool) -> None:
        """Count one served request (or one shadow scoring) of ``plan``'s arm."""
        key = (plan.experiment_id, plan.arm)
        if plan.arm != "shadow_candidate":
            self.metrics.experiment_requests.inc(plan.experiment_id, plan.arm)
        self._stats.setdefault(key, ArmStats()).add(ms, hits == 0, error)

    def shadow(self, pipeline: Pipeline, plan: Plan, rid: str, scored: Scored) -> None:
        """Score the candidate on ``scored`` in a background task, after the response."""
        if plan.shadow is None:
            return
        if len(self._shadow_tasks) >= 8:  # never let shadows queue behind serving
            self.shadow_skipped += 1
            return
        task = asyncio.create_task(self._shadow(pipeline, plan, rid, scored))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, pipeline: Pipeline, plan: Plan, rid: str, scored: Scored) -> None:
        """The whole second opinion (scoring, ranking, agreement) on this runtime's one
        shadow thread: the event loop only hands it over, so serving waits on nothing."""
        loop = asyncio.get_running_loop()
        row = await loop.run_in_executor(
            self._shadow_pool, self._shadow_blocking, pipeline, plan, rid, scored
        )
        scoring = Plan(plan.experiment_id, "shadow_candidate")  # its own arm: the candidate
        if row is None:
            self.observe(scoring, 0.0, 1, True)
            return
        self.observe(scoring, float(row[7]), 1, False)
        self._shadows.append(row)

    @staticmethod
    def _shadow_blocking(
        pipeline: Pipeline, plan: Plan, rid: str, scored: Scored
    ) -> tuple[Any, ...] | None:
        assert plan.shadow is not None
        t0 = time.perf_counter()
        try:
            ranked, scores = pipeline.rank_blocking(plan.shadow, scored.cs, scored.X)
        except Exception as e:
            log.error("shadow model %s failed: %s", plan.shadow.version, e)
            return None
        ms = (time.perf_counter() - t0) * 1000.0
        return shadow_row(plan.experiment_id, rid, scored, ranked, scores, ms)

    async def flush(self) -> None:
        """Write the counts and shadow rows gathered since the last flush."""
        stats, shadows = self._stats, self._shadows
        if not stats and not shadows:
            return
        self._stats, self._shadows = {}, []
        try:
            await asyncio.to_thread(self.db.add_stats, stats, shadows, self.process)
        except Exception:
            for k, s in stats.items():  # keep them for the next try
                mine = self._stats.setdefault(k, ArmStats())
                mine.requests += s.requests
                mine.zero_results += s.zero_results
                mine.errors += s.errors
                mine.latency = [a + b for a, b in zip(mine.latency, s.latency, strict=True)]
            self._shadows[:0] = shadows
            raise

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            with contextlib.suppress(Exception):
                await task
        self._shadow_pool.shutdown(wait=False)
        await self.flush()

    def describe(self) -> dict[str, Any] | None:
        return None if self.live is None else self.live.to_json()
