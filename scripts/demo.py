"""`make demo`: the whole product on the embedded `local` backend, end to end.

1. generate the seeded demo catalog (20,000 products, 400 queries, graded judgments);
2. reindex it (embedding cache, versioned index, validated atomic swap);
3. show a few queries' hybrid candidates with each retriever's score and rank;
4. train a LambdaMART reranker from the judgments and compare it with the baselines;
5. serve it, simulate users clicking, retrain from the logged clicks, hot-reload the model
   and print the measured NDCG@10 gain;
6. shift the traffic and show the drift report catching it;
7. leave the server running and print an example curl (Ctrl-C stops it).

Everything lands under --work-dir (default var/demo-run); a second run reuses the
embedding cache. Needs nothing outside the installed packages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

SAMPLE_QUERIES = ("running shoes", "wireless noise cancelling headphones", "couch", "hedphones")


def _banner(step: str) -> None:
    print(f"\n=== {step} ===", flush=True)


def _fmt(x: float) -> str:
    return "   -   " if math.isnan(x) else f"{x:7.3f}"


async def show_candidates(index_dir: Path, queries: Sequence[str], top: int = 5) -> None:
    """Print each query's best hybrid candidates (by RRF) with every retriever's score/rank."""
    from indexing.config import EmbeddingConfig
    from indexing.encoders import load_encoder
    from indexing.local import LocalBackend
    from ltr.fusion import rrf
    from search.candidates import CandidateGenerator

    encoder = load_encoder(EmbeddingConfig())
    backend = LocalBackend.open(index_dir, encoder)
    try:
        gen = CandidateGenerator(backend, encoder)
        for q in queries:
            cs, degraded = await gen.generate(q)
            fused = rrf(cs)
            order = sorted(range(len(cs)), key=lambda i: -fused[i])[:top]
            docs = await backend.fetch([cs.ids[i] for i in order])
            note = f", degraded: {','.join(degraded)}" if degraded else ""
            print(f"\nquery: {q!r}  ({len(cs)} candidates{note})")
            print(f"  {'id':<9} {'bm25':>7} {'rank':>5} {'dense':>7} {'rank':>5}  title")
            for i, doc in zip(order, docs, strict=True):
                b, br = float(cs.scores["bm25"][i]), float(cs.ranks["bm25"][i])
                d, dr = float(cs.scores["dense"][i]), float(cs.ranks["dense"][i])
                title = doc.title if doc else "?"
                print(
                    f"  {cs.ids[i]:<9} {_fmt(b)} {'-' if math.isnan(br) else int(br):>5} "
                    f"{_fmt(d)} {'-' if math.isnan(dr) else int(dr):>5}  {title[:60]}"
                )
    finally:
        await backend.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    index_dir: Path, model_dir: Path, events: Path, port: int, token: str, log: Path
) -> subprocess.Popen[bytes]:
    """scripts/serve.py in a child process; returns once /ready answers 200."""
    env = dict(os.environ, LTRSEARCH_API__ADMIN_TOKEN=token)
    cmd = [sys.executable, "-m", "scripts.serve", "--index-dir", str(index_dir),
           "--model-dir", str(model_dir), "--events", str(events),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"the server was not ready within 300 s; see {log}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ltrsearch-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="var/demo-run")
    ap.add_argument("--products", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--sessions", type=int, default=1500, help="simulated searches")
    ap.add_argument("--no-serve", action="store_true", help="stop after the drift step")
    args = ap.parse_args(argv)
    work = Path(args.work_dir)
    data, index_dir = work / "catalog", work / "index"
    t0 = time.perf_counter()

    from scripts import make_demo_data, reindex

    _banner("1. demo catalog")
    if (
        make_demo_data.main(
            ["--out", str(data), "--products", str(args.products), "--queries", str(args.queries)]
        )
        != 0
    ):
        return 1
    _banner("2. reindex (local backend)")
    if reindex.main(["--source", str(data), "--index-dir", str(index_dir)]) != 0:
        return 1
    _banner("3. hybrid candidates")
    asyncio.run(show_candidates(index_dir, SAMPLE_QUERIES))

    from scripts import demo_drift, simulate_traffic, train

    model_dir, events = work / "models", work / "events.db"
    _banner("4. train the reranker from the judgments")
    # all features, behavior included: they are NaN until users click, but then the served
    # log carries them and step 5's retraining can learn from the click history
    if train.main(["--dataset", str(data), "--index-dir", str(index_dir),
                   "--model-dir", str(model_dir), "--features", "all",
                   "--promote"]) != 0:  # fmt: skip
        return 1

    _banner("5. serve, simulate users, retrain from their clicks, hot-reload")
    port, token = _free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    server = start_server(index_dir, model_dir, events, port, token, log)
    try:
        rc = simulate_traffic.main([
            "--url", url, "--dataset", str(data), "--sessions", str(args.sessions),
            "--max-seconds", "600", "--train", "--events", str(events),
            "--model-dir", str(model_dir), "--admin-token", token,
            "--out", str(work / "loop.json"),
        ])  # fmt: skip
        if rc != 0:
            return 1
        _banner("6. shift the traffic: the drift report catches it")
        demo_drift.main(["--url", url, "--events", str(events), "--model-dir", str(model_dir),
                         "--dataset", str(data), "--out", str(work / "drift")])  # fmt: skip
        print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
        if args.no_serve:
            return 0
        _banner("7. the API is running (Ctrl-C stops it)")
        print(f"  curl '{url}/search?q=running+shoes&k=5'")
        print(f"  curl '{url}/search?q=couch&k=5&explain=true'")
        print(f"  curl {url}/metrics")
        print(f"  curl -X POST {url}/admin/reload -H 'Authorization: Bearer {token}'")
        print(f"  server log: {log}")
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
