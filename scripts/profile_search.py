"""CPU per search, in process: a loop of Pipeline.search over catalog queries.

    python scripts/profile_search.py [--index-dir var/demo-run/index]
        [--model-dir var/demo-run/models] [--events var/demo-run/events.db]
        [--queries var/demo-run/catalog/queries.jsonl] [--n 300] [--rounds 2]
        [--cache-miss] [--candidate-cache] [--profile out.prof] [--top 30] [--gc-freeze]
        [--json]

Why: on the shared 2-core machine wall-clock latency is mostly other people's load;
``time.process_time`` per search (this process's CPU, all threads) and per-stage timers
are what a code change moves. Builds the same Pipeline the API serves (LocalBackend,
the promoted model, behavior aggregates from a COPY of the event store), warms every query
once (query-vector LRU filled), then measures ``--rounds`` passes over ``--n`` queries.
``--cache-miss`` clears the query-vector cache before every search (the embedding cost).
``--profile`` writes cProfile stats of the measured passes and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the serving setting (scripts/serve.py)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="profile_search", description=__doc__.split("\n")[0])
    p.add_argument("--index-dir", default="var/demo-run/index")
    p.add_argument("--model-dir", default="var/demo-run/models", help="'' = RRF, no model")
    p.add_argument("--events", default="var/demo-run/events.db", help="'' = no aggregates")
    p.add_argument("--queries", default="var/demo-run/catalog/queries.jsonl")
    p.add_argument("--n", type=int, default=300, help="distinct queries")
    p.add_argument("--rounds", type=int, default=2, help="measured passes over the queries")
    p.add_argument("--cache-miss", action="store_true", help="clear the query-vector LRU")
    p.add_argument("--profile", help="write cProfile stats here and print the top")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--sort", default="tottime", help="pstats sort key for --profile")
    p.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after startup")
    p.add_argument("--gc-gen0", type=int, default=0, help="gen0 GC threshold (0 = keep)")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (if installed)")
    p.add_argument("--bm25-k", type=int, default=0, help="candidates from BM25 (0 = settings)")
    p.add_argument("--knn-k", type=int, default=0, help="candidates from kNN (0 = settings)")
    p.add_argument("--qrels", help="BEIR qrels TSV: also report NDCG@10 of the served first pages")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--candidate-cache",
        action="store_true",
        help="keep the settings' candidate cache (default: off, so every measured search "
        "pays retrieval and lookups; the warm-up pass would fill it)",
    )
    return p


def _queries_with_ids(path: str, n: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                q = json.loads(line)
                out.append((str(q["_id"]), q["text"]))
            if len(out) >= n:
                break
    return out


def _queries(path: str, n: int) -> list[str]:
    return [t for _, t in _queries_with_ids(path, n)]


def _qrels(path: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if (i == 0 and parts[0] == "query-id") or len(parts) < 3:
                continue
            out.setdefault(parts[0], {})[parts[1]] = float(parts[2])
    return out


async def _build(args: argparse.Namespace, tmp: Path) -> Any:
    from indexing.local import LocalBackend
    from ltr.features import FEATURES
    from scripts.settings import load_settings
    from search.aggregates import BehaviorAggregates
    from search.events import SqliteEventStore
    from search.pipeline import Pipeline, PipelineConfig, default_generator_factory

    settings = load_settings(None)
    from indexing.encoders import load_encoder

    rcfg = settings.retrieval
    if not args.candidate_cache:
        rcfg = dataclasses.replace(rcfg, candidate_cache_size=0)
    if args.bm25_k > 0 or args.knn_k > 0:
        rcfg = dataclasses.replace(
            rcfg, bm25_k=args.bm25_k or rcfg.bm25_k, knn_k=args.knn_k or rcfg.knn_k
        )

    encoder = load_encoder(settings.embedding)
    backend = await asyncio.to_thread(LocalBackend.open, Path(args.index_dir), encoder)
    aggregates = None
    if args.events:
        copy = tmp / "events.db"
        shutil.copy(args.events, copy)
        store = SqliteEventStore(copy)
        aggregates = BehaviorAggregates.attach(store, half_life_s=settings.events.half_life_s)
    pipe = Pipeline(
        backend,
        encoder,
        default_features=tuple(FEATURES),
        index_version=backend.version,
        aggregates=aggregates,
        config=PipelineConfig(candidates_timeout_ms=60_000, model_timeout_ms=60_000),
        generator_factory=default_generator_factory(rcfg),
    )
    if args.model_dir:
        from ltr.registry import ModelRegistry

        pipe.set_model(ModelRegistry(args.model_dir).load(None, None, 1))
    return pipe


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from search.pipeline import SearchRequest

    queries = _queries(args.queries, args.n)
    with tempfile.TemporaryDirectory() as td:
        pipe = await _build(args, Path(td))
        gen = pipe._index.generator
        for q in queries:  # warm: every query vector cached, every term row decoded
            await pipe.search(SearchRequest(q=q))
        gc.collect()
        if args.gc_freeze:
            gc.freeze()
        if args.gc_gen0 > 0:
            gc.set_threshold(args.gc_gen0, *gc.get_threshold()[1:])
        ndcg: list[float] = []
        if args.qrels:
            from ltr.metrics import ndcg_at_k

            judged = _qrels(args.qrels)
            for qid, q in _queries_with_ids(args.queries, args.n):
                if qid in judged:
                    res = await pipe.search(SearchRequest(q=q))
                    v = ndcg_at_k([h["id"] for h in res.hits], judged[qid], 10)
                    if v == v:  # NaN: no relevant document
                        ndcg.append(v)
        cpu: list[float] = []
        wall: list[float] = []
        stages: dict[str, list[float]] = {}
        n_cands: list[int] = []
        prof = cProfile.Profile() if args.profile else None
        gc0 = sum(s["collections"] for s in gc.get_stats())
        gc_s = [0.0, 0.0]  # total pause, start of the current collection

        def gc_timer(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                gc_s[1] = time.perf_counter()
            else:
                gc_s[0] += time.perf_counter() - gc_s[1]

        gc.callbacks.append(gc_timer)
        c_all, w_all, m_all = time.process_time(), time.perf_counter(), time.thread_time()
        for _ in range(args.rounds):
            for q in queries:
                if args.cache_miss:
                    gen.query_cache._data.clear()
                c0, w0 = time.process_time(), time.perf_counter()
                if prof is not None:
                    prof.enable()
                res = await pipe.search(SearchRequest(q=q))
                if prof is not None:
                    prof.disable()
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - w0)
                n_cands.append(res.candidates)
                for k, v in res.timings_ms.items():
                    stages.setdefault(k, []).append(v)
        m_all = time.thread_time() - m_all
        c_all, w_all = time.process_time() - c_all, time.perf_counter() - w_all
        gc.callbacks.remove(gc_timer)
        gcs = sum(s["collections"] for s in gc.get_stats()) - gc0
        await pipe.close()
    n = len(cpu)
    out: dict[str, Any] = {
        "searches": n,
        "cpu_ms_per_search": round(1000 * c_all / n, 3),
        "main_thread_cpu_ms_per_search": round(1000 * m_all / n, 3),
        "cpu_ms_p50": round(1000 * _pct(cpu, 50), 3),
        "cpu_ms_p99": round(1000 * _pct(cpu, 99), 3),
        "wall_ms_p50": round(1000 * _pct(wall, 50), 3),
        "wall_ms_p99": round(1000 * _pct(wall, 99), 3),
        "gc_collections": gcs,
        "gc_ms_per_search": round(1000 * gc_s[0] / n, 3),
        "stages_ms_p50": {k: round(_pct(v, 50), 3) for k, v in stages.items()},
        "stages_ms_mean": {k: round(float(np.mean(v)), 3) for k, v in stages.items()},
        "load_avg": os.getloadavg()[0],
    }
    if args.qrels:
        out["ndcg@10"] = round(float(np.mean(ndcg)), 4) if ndcg else None
        out["ndcg_queries"] = len(ndcg)
    out["candidates_mean"] = round(float(np.mean(n_cands)), 1) if n_cands else None
    if prof is not None:
        prof.dump_stats(args.profile)
        st = pstats.Stats(args.profile)
        st.sort_stats(args.sort).print_stats(args.top)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            out = runner.run(_run(args))
    else:
        out = asyncio.run(_run(args))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
