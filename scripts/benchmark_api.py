"""Load-test the search API on loopback: latency per stage, throughput, and a soak run.

    python scripts/benchmark_api.py [--docs 100000] [--queries 500] [--requests 3000]
        [--concurrency 32] [--soak-seconds 0] [--work-dir var/bench_api] [--out F.json]

Builds (once, cached in the work dir) the demo product catalog of ``--docs`` documents, its
local index (embeddings cached) and a LambdaMART model over all features (search.training
on the catalog's judgments, as ``scripts/train.py --features all``), starts
``scripts/serve.py`` as a separate process on 127.0.0.1 (scripts.serverproc) with an event
store, and drives it with ``--concurrency`` keep-alive connections: searches
drawn Zipf-like from the catalog's queries (so the query-vector LRU sees a realistic mix of
repeats), explain off, k=10. Reports end-to-end client latency p50/p99, the server's
per-stage timings (embed, bm25, knn, candidates, features, model, total) p50/p99 from the
responses, requests/s, errors. ``--soak-seconds S`` then keeps the load on for S seconds and
samples errors, requests/s and the server's RSS every ``--sample-seconds``.

Bounded: ``--requests`` and ``--max-seconds`` cap the measured run. The client shares the
2 cores with the server, so the numbers are pessimistic for a server on its own cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from scripts import serverproc

STAGES = ("embed", "bm25", "knn", "candidates", "features", "model", "total")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark_api", description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=500, help="distinct catalog queries")
    p.add_argument("--requests", type=int, default=3000, help="measured searches")
    p.add_argument("--warmup", type=int, default=300, help="searches before measuring")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="server processes (serve --workers)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="cap of the measured run")
    p.add_argument("--soak-seconds", type=float, default=0.0)
    p.add_argument("--sample-seconds", type=float, default=30.0)
    p.add_argument("--work-dir", default="var/bench_api")
    p.add_argument("--port", type=int, default=0, help="0 = a free port")
    p.add_argument("--no-model", action="store_true", help="serve RRF only (no reranker)")
    p.add_argument(
        "--candidate-cache",
        type=int,
        default=-1,
        help="server retrieval.candidate_cache_size (-1 = settings; 0 = off: every search "
        "pays retrieval)",
    )
    p.add_argument(
        "--blas-threads",
        type=int,
        default=0,
        help="OPENBLAS_NUM_THREADS for the server (0 = inherit). 1 is the serving setting: "
        "per-query matrix-vector products gain nothing from BLAS threads, which only "
        "contend for the cores",
    )
    p.add_argument("--out", help="write the results as JSON")
    return p


def prepare(work: Path, n_docs: int, n_queries: int, with_model: bool) -> dict[str, Any]:
    """Catalog -> index -> model, each step skipped when its output already exists."""
    from indexing.build import build_local_index
    from indexing.config import EmbeddingConfig
    from indexing.demo_catalog import build_demo_catalog, write_beir
    from indexing.embedding_cache import EmbeddingCache
    from indexing.encoders import load_encoder
    from indexing.layout import current_version
    from indexing.loaders import load_beir

    data = work / f"catalog-{n_docs}"
    index = work / f"index-{n_docs}"
    models = work / f"models-{n_docs}"
    info: dict[str, Any] = {}
    if not (data / "corpus.jsonl").is_file():
        t0 = time.perf_counter()
        write_beir(build_demo_catalog(n_products=n_docs, n_queries=n_queries), data)
        info["catalog_s"] = round(time.perf_counter() - t0, 1)
    if current_version(index) is None:
        ds = load_beir(data)
        enc = load_encoder(EmbeddingConfig())
        t0 = time.perf_counter()
        build_local_index(ds.corpus, index, enc, cache=EmbeddingCache(work / "emb-cache.db"))
        info["index_s"] = round(time.perf_counter() - t0, 1)
    if with_model and not (models / "PROMOTED").is_file():
        from ltr.training_run import resolve_features
        from scripts.settings import load_settings
        from search.training import ReplaySource, train

        t0 = time.perf_counter()
        s = load_settings()
        source = ReplaySource(
            data, index, resolve_features("all"), "test", s.embedding, s.index, s.retrieval
        )
        train(source, s.ltr, models, s.registry, promote=True, verbose=False)
        info["train_s"] = round(time.perf_counter() - t0, 1)
    info.update(data=str(data), index=str(index), models=str(models) if with_model else None)
    return info


def _tree(pid: int) -> list[int]:
    """The process and its children (the workers of ``serve --workers N``)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid, *(int(k) for k in kids)]


def rss_mb(pid: int) -> float:
    """Resident memory of the server: the process plus its worker processes."""
    return sum(_rss_mb(p) for p in _tree(pid))


def pss_mb(pid: int) -> float:
    """Proportional set size of the server and its workers: pages shared between them (the
    memory-mapped index files, the page cache's one copy) counted once in total, where
    summing RSS counts them once per process."""
    total = 0.0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024.0
        except OSError:
            return float("nan")
    return total


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the server so far (with its workers; Linux /proc)."""
    return sum(_cpu_seconds(p) for p in _tree(pid))


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def start_server(
    info: dict[str, Any],
    events: Path,
    port: int,
    log: Path,
    blas_threads: int = 0,
    workers: int = 1,
    candidate_cache: int = -1,
) -> subprocess.Popen[bytes]:
    """The server under test (scripts.serverproc) with the benchmark's settings."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LTRSEARCH_API__REQUIRE_MODEL": "false",
        "LTRSEARCH_API__ACCESS_LOG": "false",  # one log line per request would dominate
    }
    if blas_threads > 0:
        env["OPENBLAS_NUM_THREADS"] = str(blas_threads)
    if candidate_cache >= 0:
        env["LTRSEARCH_RETRIEVAL__CANDIDATE_CACHE_SIZE"] = str(candidate_cache)
    log.write_bytes(b"")  # this run's log only
    return serverproc.start_server(
        info["index"],
        port=port,
        log=log,
        events=events,
        model_dir=info.get("models"),
        extra_args=["--workers", str(workers)],
        env=env,
    )


class Recorder:
    def __init__(self) -> None:
        self.client_ms: list[float] = []
        self.client_ms_cached: list[float] = []  # candidates from the server's cache
        self.client_ms_retrieved: list[float] = []  # BM25 + kNN + lookups ran
        self.stages: dict[str, list[float]] = {s: [] for s in STAGES}
        self.errors = 0
        self.degraded = 0
        self.done = 0


async def drive(
    url: str,
    queries: Sequence[str],
    n: int,
    concurrency: int,
    max_seconds: float,
    rec: Recorder,
    seed: int,
) -> float:
    """Send up to n searches over `concurrency` connections; returns elapsed seconds."""
    import aiohttp
    import orjson
    from yarl import URL

    # The generator's own CPU sits on the measured path (it shares the 2 cores and, at one
    # connection, runs between the server's turns): the URLs are encoded once, not per
    # request, and bodies are parsed with orjson (~0.1 ms less per request each).
    urls = [URL(f"{url}/search?q={quote(q, safe='')}&k=10", encoded=True) for q in queries]
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, len(queries) + 1, dtype=np.float64)
    p = 1.0 / ranks**1.1
    picks = rng.choice(len(queries), size=n, p=p / p.sum())
    counter = iter(range(n))
    deadline = time.monotonic() + max_seconds
    conn = aiohttp.TCPConnector(limit=concurrency)

    async def worker(s: aiohttp.ClientSession) -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                async with s.get(urls[int(picks[i])]) as r:
                    body = orjson.loads(await r.read())
                    ok = r.status == 200
            except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
                ok, body = False, {}
            dt = (time.perf_counter() - t0) * 1000.0
            if not ok:
                rec.errors += 1
                continue
            rec.done += 1
            rec.client_ms.append(dt)
            if "bm25" in body.get("timings_ms", {}):  # else no retrieval ran: a cache hit
                rec.client_ms_retrieved.append(dt)
            else:
                rec.client_ms_cached.append(dt)
            if body.get("degraded"):
                rec.degraded += 1
            for stage, ms in body.get("timings_ms", {}).items():
                if stage in rec.stages:
                    rec.stages[stage].append(ms)

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=conn) as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return time.perf_counter() - t0


def _pct(xs: Sequence[float]) -> dict[str, float | int]:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs)
    return {
        "n": len(xs),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from indexing.loaders import load_beir

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    info = await asyncio.to_thread(prepare, work, args.docs, args.queries, not args.no_model)
    queries = [q.text for q in load_beir(Path(info["data"])).queries]
    events = work / f"events-{os.getpid()}.db"
    port = args.port or serverproc.free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "serve.log"
    t_start = time.perf_counter()
    proc = start_server(
        info, events, port, log, args.blas_threads, args.workers, args.candidate_cache
    )
    out: dict[str, Any] = {
        "docs": args.docs,
        "workers": args.workers,
        "queries": len(queries),
        "prepare": info,
        "blas_threads": args.blas_threads,
    }
    try:
        try:
            await asyncio.to_thread(serverproc.wait_ready, url, proc, log, 600.0, "/health", 0.5)
        except serverproc.ServerStartError as e:
            raise SystemExit(f"benchmark_api: {e}") from None
        first = Recorder()
        await drive(url, queries[:1], 1, 1, 60.0, first, 0)
        # cold start: server start to the first answered search (index, model, encoder)
        out["cold_start_s"] = round(time.perf_counter() - t_start, 2) if first.done else None
        out["rss_mb_start"] = round(rss_mb(proc.pid), 1)
        out["pss_mb_start"] = round(pss_mb(proc.pid), 1)
        await drive(url, queries, args.warmup, args.concurrency, args.max_seconds, Recorder(), 1)
        rec = Recorder()
        load_before = os.getloadavg()[0]
        srv0, cli0 = cpu_seconds(proc.pid), time.process_time()
        secs = await drive(url, queries, args.requests, args.concurrency, args.max_seconds, rec, 2)
        srv_cpu, cli_cpu = cpu_seconds(proc.pid) - srv0, time.process_time() - cli0
        out["run"] = {
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "concurrency": args.concurrency,
            "requests": rec.done,
            "errors": rec.errors,
            "degraded": rec.degraded,
            "seconds": round(secs, 2),
            "req_per_s": round(rec.done / secs, 1) if secs > 0 else None,
            "client_ms": _pct(rec.client_ms),
            "client_ms_candidates_cached": _pct(rec.client_ms_cached),
            "client_ms_candidates_retrieved": _pct(rec.client_ms_retrieved),
            # CPU per request: the load-independent cost (wall latency on a shared machine
            # is mostly waiting for a core); the load generator's share of the cores too
            "server_cpu_ms_per_request": round(1000 * srv_cpu / max(rec.done, 1), 2),
            "client_cpu_ms_per_request": round(1000 * cli_cpu / max(rec.done, 1), 2),
            "server_stage_ms": {s: _pct(v) for s, v in rec.stages.items()},
            "rss_mb": round(rss_mb(proc.pid), 1),
            "pss_mb": round(pss_mb(proc.pid), 1),
        }
        if args.soak_seconds > 0:
            samples = []
            t_end = time.monotonic() + args.soak_seconds
            k = 0
            while time.monotonic() < t_end:
                left = max(1.0, min(args.sample_seconds, t_end - time.monotonic()))
                srec = Recorder()
                secs = await drive(url, queries, 10**7, args.concurrency, left, srec, 100 + k)
                k += 1
                samples.append(
                    {
                        "t_s": round(args.soak_seconds - (t_end - time.monotonic()), 1),
                        "requests": srec.done,
                        "errors": srec.errors,
                        "req_per_s": round(srec.done / secs, 1),
                        "p99_ms": _pct(srec.client_ms).get("p99"),
                        "rss_mb": round(rss_mb(proc.pid), 1),
                        "pss_mb": round(pss_mb(proc.pid), 1),
                    }
                )
                print(json.dumps(samples[-1]), file=sys.stderr)
            out["soak"] = samples
    finally:
        out["server_exit"] = serverproc.stop_server(proc, timeout_s=60)
    return out


def _markdown(out: dict[str, Any]) -> str:
    r = out["run"]
    lines = [
        f"docs={out['docs']} concurrency={r['concurrency']} requests={r['requests']} "
        f"errors={r['errors']} degraded={r['degraded']} workers={out.get('workers', 1)} "
        f"-> {r['req_per_s']} req/s "
        f"(blas_threads={out.get('blas_threads')}, load avg {r.get('load_avg_1m')})",
        f"CPU per request: server {r.get('server_cpu_ms_per_request')} ms, "
        f"load generator {r.get('client_cpu_ms_per_request')} ms",
        "",
        "| stage | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| client end-to-end | {r['client_ms'].get('p50')} | {r['client_ms'].get('p99')} |",
    ]
    for key, label in (
        ("client_ms_candidates_retrieved", "retrieval ran"),
        ("client_ms_candidates_cached", "candidates cached"),
    ):
        st = r.get(key) or {}
        lines.append(f"| client, {label} (n={st.get('n')}) | {st.get('p50')} | {st.get('p99')} |")
    for s in STAGES:
        st = r["server_stage_ms"][s]
        lines.append(f"| server {s} (n={st.get('n')}) | {st.get('p50')} | {st.get('p99')} |")
    lines.append(
        f"\nserver RSS (sum over processes): start {out.get('rss_mb_start')} MB, after run "
        f"{r['rss_mb']} MB; PSS (shared pages once): {out.get('pss_mb_start')} -> "
        f"{r.get('pss_mb')} MB; cold start to the first answered search "
        f"{out.get('cold_start_s')} s"
    )
    if out.get("soak"):
        s0, s1 = out["soak"][0], out["soak"][-1]
        errs = sum(x["errors"] for x in out["soak"])
        lines.append(
            f"soak: {len(out['soak'])} samples, errors {errs}, req/s {s0['req_per_s']} -> "
            f"{s1['req_per_s']}, RSS {s0['rss_mb']} -> {s1['rss_mb']} MB"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.docs < 100 or args.concurrency < 1 or args.requests < 1:
        print("benchmark_api: --docs >= 100, --concurrency >= 1, --requests >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out = asyncio.run(run(args))
    print(_markdown(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
