"""What an online experiment costs /search: no experiment, shadow, interleave, side by side.

    python -m scripts.benchmark_experiments [--docs 20000] [--requests 400] [--rounds 3]
        [--concurrency 1] [--candidate-cache -1] [--work-dir var/bench_api] [--out F.json]

One server (scripts.serverproc) over the demo catalog of ``--docs`` documents with its
LambdaMART model (built and cached by scripts/benchmark_api.prepare), an event store and an
admin token. The candidate is the production model with its leaf values negated
(scripts/demo_rollout.invert_model: same features, same trees, so the same scoring cost).
Each round measures ``--requests`` searches (benchmark_api.drive: Zipf-drawn catalog
queries, k=10) with no experiment, then with a shadow experiment (share 1.0: every request
scored again after its response), then with an interleave experiment (share 1.0: both
models score every first page before it is sent), all three over the same query draw;
an unmeasured pass of that draw comes first, so no mode pays the draw's query-vector and
candidate-cache misses for the others (with the default cache every measured search is then
a candidate-cache hit; ``--candidate-cache 0`` makes every one pay retrieval), and rounds
rotate which mode goes first so drift on a shared machine hits all three alike. The gate is kept
from deciding (no clicks; a huge minimum sample). Reports client p50/p99 per mode, pooled
over rounds and per round, and how many of each mode's searches hit the candidate cache.

At 100K documents embedding every text for real takes hours on 2 cores, so fill the work
dir's embedding cache first (``scripts.benchmark_scale fill``: 2,000 real vectors, the rest
near-duplicates, the method of docs/benchmarks.md); ``fill`` writes ``<work-dir>/catalog-N``
and ``<work-dir>/emb-cache.db``, the paths prepare reads, so the index build finds every
document cached::

    python -m scripts.benchmark_scale fill --docs 100000 --base 2000 --work-dir W
    python -m scripts.benchmark_experiments --docs 100000 --requests 300 --rounds 3 --work-dir W
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts import serverproc
from scripts.benchmark_api import Recorder, _pct, drive, prepare
from scripts.demo_rollout import admin, invert_model

MODES = ("none", "shadow", "interleave")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from indexing.loaders import load_beir

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    info = await asyncio.to_thread(prepare, work, args.docs, 500, True)
    print(json.dumps({"prepared": info}), file=sys.stderr)  # *_s: steps built in this run
    models = Path(info["models"])
    candidate = await asyncio.to_thread(invert_model, models)
    queries = [q.text for q in load_beir(Path(info["data"])).queries]
    port, token = serverproc.free_port(), secrets.token_hex(8)
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LTRSEARCH_API__ACCESS_LOG": "false",
        "LTRSEARCH_API__ADMIN_TOKEN": token,
    }
    if args.candidate_cache >= 0:
        env["LTRSEARCH_RETRIEVAL__CANDIDATE_CACHE_SIZE"] = str(args.candidate_cache)
    url, log = f"http://127.0.0.1:{port}", work / "serve-rollout.log"
    log.write_bytes(b"")
    proc = serverproc.start_server(
        info["index"],
        port=port,
        log=log,
        events=work / f"events-rollout-{os.getpid()}.db",
        model_dir=models,
        env=env,
    )
    pooled: dict[str, list[float]] = {m: [] for m in MODES}
    rounds: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(serverproc.wait_ready, url, proc, log, 600.0, "/health", 0.5)
        await drive(url, queries, args.warmup, args.concurrency, 300.0, Recorder(), 1)
        for r in range(args.rounds):
            # rotate which mode goes first: every mode of a round replays the same query
            # draw, so the first one pays the candidate-cache misses of that draw
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            row: dict[str, Any] = {"order": list(order)}
            # one unmeasured pass of the round's draw first, so every mode then meets the
            # same warm query-vector LRU and candidate cache, not the first one cold
            await drive(url, queries, args.requests, args.concurrency, 600.0, Recorder(), 10 + r)
            for mode in order:
                eid = None
                if mode != "none":
                    spec = {"candidate": candidate, "mode": mode, "share": 1.0,
                            "gate": {"min_queries": 10**9, "every_s": 5.0}}  # fmt: skip
                    eid = (await admin(url, token, "POST", "/admin/experiments", spec))[
                        "experiment_id"
                    ]
                rec = Recorder()
                await drive(url, queries, args.requests, args.concurrency, 600.0, rec, 10 + r)
                if eid is not None:
                    await admin(url, token, "POST", f"/admin/experiments/{eid}/stop")
                pooled[mode].extend(rec.client_ms)
                row[mode] = {
                    **_pct(rec.client_ms),
                    "errors": rec.errors,
                    "cache_hits": len(rec.client_ms_cached),  # no retrieval ran
                }
            rounds.append(row)
            print(json.dumps({"round": r, **row}), file=sys.stderr)
    finally:
        code = serverproc.stop_server(proc, timeout_s=60)
    return {
        "docs": args.docs,
        "prepare": info,
        "concurrency": args.concurrency,
        "candidate_cache": args.candidate_cache,
        "requests_per_mode_per_round": args.requests,
        "rounds": rounds,
        "pooled": {m: _pct(v) for m, v in pooled.items()},
        "server_exit": code,
    }


def _markdown(out: dict[str, Any]) -> str:
    base = out["pooled"]["none"]
    lines = [
        f"docs={out['docs']} concurrency={out['concurrency']} "
        f"candidate_cache={out['candidate_cache']} "
        f"{out['requests_per_mode_per_round']} requests x {len(out['rounds'])} rounds per mode",
        "",
        "| experiment | n | p50 ms | p99 ms | p50 vs none | p99 vs none | per-round p50 "
        "| cache hits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in MODES:
        p = out["pooled"][m]
        per = ", ".join(str(r[m].get("p50")) for r in out["rounds"])
        r50 = p["p50"] / base["p50"] if base.get("p50") else float("nan")
        r99 = p["p99"] / base["p99"] if base.get("p99") else float("nan")
        hits = sum(r[m]["cache_hits"] for r in out["rounds"])
        lines.append(
            f"| {m} | {p['n']} | {p['p50']} | {p['p99']} | {r50:.3f} | {r99:.3f} | {per} | {hits} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmark_experiments", description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--requests", type=int, default=400, help="measured searches per mode/round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--work-dir", default="var/bench_api")
    ap.add_argument(
        "--candidate-cache",
        type=int,
        default=-1,
        help="server retrieval.candidate_cache_size (-1 = settings; 0 = off: every search "
        "pays retrieval)",
    )
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args(argv)
    if args.docs < 100 or args.requests < 1 or args.rounds < 1 or args.concurrency < 1:
        print("benchmark_experiments: --docs >= 100, --requests/--rounds/--concurrency >= 1",
              file=sys.stderr)  # fmt: skip
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
