"""`make demo`: the whole product on the embedded `local` backend, end to end.

0. size itself: a short calibration (embedding speed, one replayed query's time) picks the
   catalog size and traffic that fit ``--budget`` (default 5 minutes, scripts/demo_size.py);
1. generate the seeded demo catalog (at most 2,000 products by default, ``--products 20000``
   for the full one; at most 400 queries, graded judgments);
2. reindex it (embedding cache, versioned index, validated atomic swap);
3. show a few queries' hybrid candidates with each retriever's score and rank;
4. train a LambdaMART reranker from the judgments and compare it with the baselines;
5. serve it, simulate users clicking and retrain from the logged clicks (not promoted);
6. roll the retrained model out: shadow, then team-draft interleaving with simulated users
   until the gate promotes or rejects it (numbers printed, NDCG@10 before and after), and
   a deliberately bad model (inverted scores) rejected while serving only its share;
7. shift the traffic and show the drift report catching it;
8. leave the server running and print an example curl (Ctrl-C stops it).

Everything lands under --work-dir (default var/demo-run); a second run reuses the
embedding cache. Needs nothing outside the installed packages. The time of each phase is
printed beside its prediction at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scripts.demo_size import PhaseClock

if TYPE_CHECKING:
    from indexing.encoders import Encoder
    from ltr.training_run import TrainResult
    from scripts.settings import Settings

SAMPLE_QUERIES = ("running shoes", "wireless noise cancelling headphones", "couch", "hedphones")


def _banner(step: str) -> None:
    print(f"\n=== {step} ===", flush=True)


def _fmt(x: float) -> str:
    return "   -   " if math.isnan(x) else f"{x:7.3f}"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def show_candidates(
    index_dir: Path, encoder: Encoder, queries: Sequence[str], top: int = 5
) -> None:
    """Print each query's best hybrid candidates (by RRF) with every retriever's score/rank."""
    from indexing.local import LocalBackend
    from ltr.fusion import rrf
    from search.candidates import CandidateGenerator

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


def make_catalog(out: Path, products: int, queries: int) -> None:
    """The seeded demo catalog in BEIR layout (what scripts/make_demo_data.py writes)."""
    from indexing.demo_catalog import build_demo_catalog, write_beir

    t0 = time.perf_counter()
    catalog = build_demo_catalog(products, queries)
    write_beir(catalog, out)
    print(f"wrote {out}: {catalog.describe()} in {time.perf_counter() - t0:.1f} s")


def reindex(source: Path, index_dir: Path, settings: Settings, encoder: Encoder) -> None:
    """Load, embed (through the settings' embedding cache), build, validate and swap (what
    ``ltrsearch-reindex --source SOURCE --index-dir DIR`` does on the local backend)."""
    from indexing.build import build_local_index
    from indexing.embedding_cache import EmbeddingCache
    from indexing.loaders import load_documents

    result = load_documents(source, settings.loader)
    for err in result.skipped:
        _stderr(f"skipped {err}")
    docs = list(result.documents)
    cache = EmbeddingCache(settings.embedding.cache_path) if settings.embedding.cache else None
    try:
        t0 = time.perf_counter()
        version = build_local_index(
            docs, index_dir, encoder, settings.index, cache=cache, progress=True
        )
        seconds = time.perf_counter() - t0
    finally:
        if cache is not None:
            cache.close()
    rate = len(docs) / seconds if seconds > 0 else float("inf")
    print(
        f"indexed {len(docs)} documents in {seconds:.1f} s ({rate:.0f} docs/s), version {version}"
    )


def size_demo(
    args: argparse.Namespace, settings: Settings, encoder: Encoder, clock: PhaseClock
) -> dict[str, float]:
    """Step 0: calibrate, fill in the sizes the user did not give, print the plan line;
    returns the predicted seconds per phase."""
    from dataclasses import astuple

    from ltr.training_run import resolve_features
    from scripts.demo_size import DEFAULT, Sizes, calibrate, choose_sizes, predict, rate_scale

    rates = calibrate(encoder, settings.index, resolve_features("all"), rate_scale())
    spent = clock.elapsed()
    given = (args.products, args.queries, args.sessions)
    if any(given):  # the user's sizes (the rest: the default demo's), predicted, not sized
        sizes = Sizes(*(g or d for g, d in zip(given, astuple(DEFAULT), strict=True)))
        total = spent + sum(predict(sizes, rates).values())
        how = "given"
    else:
        sizes, total = choose_sizes(rates, args.budget, spent)
        how = f"sized for the {args.budget:g} s budget"
        if sizes != DEFAULT:
            how += f"; default {DEFAULT.products:,}/{DEFAULT.queries}/{DEFAULT.sessions:,}"
    args.products, args.queries, args.sessions = astuple(sizes)
    over = f", OVER the {args.budget:g} s budget" if total > args.budget else ""
    print(
        f"demo plan: CPU {rates.cpu}; {rates.line()}; {sizes.products:,} products, "
        f"{sizes.queries} queries, {sizes.sessions:,} sessions ({how}); predicted "
        f"{total:.0f} s in all, {spent:.0f} s of it spent starting and calibrating{over}",
        flush=True,
    )
    return {"startup": spent, **predict(sizes, rates)}


def prepare(
    args: argparse.Namespace, work: Path, settings: Settings, encoder: Encoder, clock: PhaseClock
) -> None:
    """Steps 1-4: catalog, index, candidates, a reranker trained from the judgments."""
    from ltr.training_run import resolve_features
    from search.training import ReplaySource, train

    data, index_dir = work / "catalog", work / "index"
    with clock.phase("catalog"):
        _banner("1. demo catalog")
        make_catalog(data, args.products, args.queries)
    with clock.phase("reindex"):
        _banner("2. reindex (local backend)")
        reindex(data, index_dir, settings, encoder)
    with clock.phase("candidates"):
        _banner("3. hybrid candidates")
        asyncio.run(show_candidates(index_dir, encoder, SAMPLE_QUERIES))
    with clock.phase("train"):
        _banner("4. train the reranker from the judgments")
        # all features, behavior included: they are NaN until users click, but then the
        # served log carries them and step 5's retraining can learn from the click history
        source = ReplaySource(
            data, index_dir, resolve_features("all"),
            embedding=settings.embedding, index=settings.index, retrieval=settings.retrieval,
        )  # fmt: skip
        result = train(
            source, settings.ltr, work / "models", settings.registry,
            promote=True, log=_stderr, encoder=encoder,
        )  # fmt: skip
        print(result.summary())


def learn_from_clicks(
    args: argparse.Namespace, work: Path, url: str, token: str, clock: PhaseClock
) -> bool:
    """Steps 5-7 against the running server: simulated users, a model retrained from their
    clicks, its rollout (shadow -> interleave -> the gate; scripts/demo_rollout.py, with a
    deliberately bad model rejected too), then the drift demo."""
    from scripts.demo_drift import demo_drift
    from scripts.demo_rollout import demo_rollout
    from scripts.simulate_traffic import SimError, SimOptions, load_judged, measure_ndcg, run
    from scripts.simulate_traffic import report as traffic_report

    data, model_dir, events = work / "catalog", work / "models", work / "events.db"
    opts = SimOptions(url=url, dataset=str(data), sessions=args.sessions, max_seconds=600.0)
    try:
        with clock.phase("clicks"):
            out = asyncio.run(run(opts))
            print(traffic_report(out))
            queries, qrels = load_judged(data)
            before = asyncio.run(measure_ndcg(url, queries, qrels))
            trained = train_from_clicks(events, model_dir, work / "index")
    except (SimError, OSError) as e:
        print(f"simulate_traffic: {e}", file=sys.stderr)
        return False
    print(trained.summary())
    _banner("6. roll the click-trained model out: estimate -> shadow -> interleave -> gate")
    from scripts.rollout import main as rollout_cli

    try:
        with clock.phase("rollout"):
            print("offline counterfactual estimate from the logged clicks "
                  "(ltrsearch-rollout estimate):")  # fmt: skip
            est = ["estimate", "--events", str(events), "--model-dir", str(model_dir)]
            rollout_cli([*est, "--candidate", trained.version])
            rollout = asyncio.run(demo_rollout(url, token, data, model_dir, trained.version))
            after = asyncio.run(measure_ndcg(url, queries, qrels))
    except Exception as e:  # a demo step: one line, not a traceback
        print(f"demo-rollout: error: {type(e).__name__}: {e}", file=sys.stderr)
        return False
    print(
        f"NDCG@10 on the {before['n']} judged queries: {before['ndcg@10']:.4f} (model "
        f"{before['model']}) -> {after['ndcg@10']:.4f} (model {after['model']})"
    )
    (work / "loop.json").write_text(
        json.dumps({"traffic": out, "rollout": rollout, "before": before, "after": after},
                   indent=2, default=str)
    )  # fmt: skip
    _banner("7. shift the traffic: the drift report catches it")
    try:
        with clock.phase("drift"):
            asyncio.run(demo_drift(url, events, model_dir, data, out_dir=work / "drift"))
    except Exception as e:  # a demo step: one line, not a traceback
        print(f"demo-drift: error: {type(e).__name__}: {e}", file=sys.stderr)
    return True


def train_from_clicks(events: Path, model_dir: Path, index_dir: Path) -> TrainResult:
    """search.training.train on the logged clicks, NOT promoted: the rollout decides. Its
    drift reference: the log's queries replayed on ``index_dir`` with the new model."""
    from scripts.settings import load_settings
    from scripts.train import events_source
    from search.training import train

    s = load_settings()
    source = events_source(s, events, index_dir)
    return train(source, s.ltr, model_dir, s.registry, promote=False, verbose=False)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ltrsearch-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="var/demo-run")
    ap.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="seconds the whole first run may take (default 300): the sizes not given are "
        "chosen from a calibration at the start to fit it (README)",
    )
    ap.add_argument(
        "--products",
        type=_positive,
        help="catalog size (default: sized to the budget, at most 2,000; 20000 for the full "
        "catalog): the first run's time is mostly embedding them",
    )
    ap.add_argument("--queries", type=_positive, help="judged queries (default: sized, <= 400)")
    ap.add_argument(
        "--sessions", type=_positive, help="simulated searches (default: sized, <= 1,500)"
    )
    ap.add_argument("--no-serve", action="store_true", help="stop after the drift step")
    args = ap.parse_args(argv)
    if not args.budget > 0:
        ap.error("--budget must be > 0 seconds")
    work = Path(args.work_dir)
    clock = PhaseClock()

    from indexing.errors import IndexingError
    from ltr.errors import LTRError
    from scripts import serverproc
    from scripts.settings import SettingsError

    try:
        from indexing.encoders import load_encoder
        from scripts.settings import load_settings

        with clock.phase("startup"):  # imports, the model (exported on a first run), step 0
            settings = load_settings()
            encoder = load_encoder(settings.embedding)
            predicted = size_demo(args, settings, encoder, clock)
        prepare(args, work, settings, encoder, clock)
    except (IndexingError, LTRError, SettingsError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"demo: error: {msg}", file=sys.stderr)
        return 1

    _banner("5. serve, simulate users, retrain from their clicks")
    port, token = serverproc.free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    with clock.phase("serve"):
        server = serverproc.start_server(
            work / "index",
            port=port,
            log=log,
            events=work / "events.db",
            model_dir=work / "models",
            env={"LTRSEARCH_API__ADMIN_TOKEN": token},
        )
    clock.watch(server.pid)
    try:
        with clock.phase("serve"):
            serverproc.wait_ready(url, server, log, timeout_s=300, interval_s=0.5)
        if not learn_from_clicks(args, work, url, token, clock):
            return 1
        print("\ntime per phase (seconds; CPU: the demo and its API server):")
        print(clock.table(predicted))
        print(
            f"demo finished in {clock.elapsed():.0f} s (predicted {sum(predicted.values()):.0f}"
            f" s, budget {args.budget:g} s)"
        )
        if args.no_serve:
            return 0
        _banner("8. the API is running (Ctrl-C stops it)")
        print(f"  curl '{url}/search?q=running+shoes&k=5'")
        print(f"  curl '{url}/search?q=couch&k=5&explain=true'")
        print(f"  curl {url}/metrics")
        print(f"  curl -X POST {url}/admin/reload -H 'Authorization: Bearer {token}'")
        print(f"  server log: {log}")
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
        return 0
    except serverproc.ServerStartError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        serverproc.stop_server(server, timeout_s=30, sig=signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
