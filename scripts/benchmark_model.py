"""Speed of the served model (RankModel) and of LambdaMART training.

    python scripts/benchmark_model.py [--rows 200] [--features 40] [--repeat 300]

Trains a model on synthetic graded data of the given width (the tree shapes, not the
data, set prediction cost), saves and loads it through the registry, then times
``predict`` (inplace, one request's candidates), ``contributions`` (SHAP, the ?explain
path) and registry load; also fit time and 8-thread concurrent predict throughput.
Numbers go to docs/benchmarks.md ("Reranker model" section).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ltr.config import TrainConfig
from ltr.dataset import RankingData
from ltr.registry import ModelRegistry
from ltr.train import Trainer


def _data(n_queries: int, n_docs: int, n_features: int, seed: int) -> RankingData:
    rng = np.random.default_rng(seed)
    n = n_queries * n_docs
    latent = rng.normal(size=n)
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    X[:, 0] = latent + rng.normal(scale=0.7, size=n)
    X[:, 1] = latent + rng.normal(scale=1.0, size=n)
    X[rng.random((n, n_features)) < 0.1] = np.nan
    y = np.clip(np.round(latent + 1), 0, 3)
    qids = np.repeat([f"q{i}" for i in range(n_queries)], n_docs)
    margin = latent + rng.normal(scale=1.5, size=n)
    names = tuple(f"f{i}" for i in range(n_features))
    return RankingData(qids, X, y, names, margin, np.arange(n).astype(str))


def _ms(fn, repeat: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark_model", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200, help="candidates per request")
    p.add_argument("--features", type=int, default=40)
    p.add_argument("--queries", type=int, default=300, help="training queries")
    p.add_argument("--repeat", type=int, default=300)
    args = p.parse_args(argv)

    data = _data(args.queries, args.rows, args.features, seed=0)
    cfg = TrainConfig(num_boost_round=300, early_stopping_rounds=30)
    t0, c0 = time.perf_counter(), time.process_time()
    trained = Trainer(cfg).fit(data)
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    with tempfile.TemporaryDirectory() as tmp:
        reg = ModelRegistry(tmp)
        t0 = time.perf_counter()
        v = reg.save(
            trained, featureset_id="bench", base_margin={"name": "rrf"}, reference_rows=data
        )
        save_s = time.perf_counter() - t0
        reg.promote(v)
        load_ms, _ = _ms(lambda: reg.load(), 20)
        model = reg.load()
        X, bm = data.X[: args.rows], data.base_margin[: args.rows]  # type: ignore[index]
        pred = _ms(lambda: model.predict(X, bm), args.repeat)
        contrib = _ms(lambda: model.contributions(X, bm), max(20, args.repeat // 10))
        page = _ms(lambda: model.contributions(X[:10], bm[:10]), 50)
        approx = _ms(lambda: model.contributions(X, bm, approximate=True), 50)

        def burst() -> None:
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda _: model.predict(X, bm), range(400)))

        t0 = time.perf_counter()
        burst()
        qps = 400 / (time.perf_counter() - t0)

    print(
        f"training: {len(data)} rows x {args.features} features, {args.queries} queries; "
        f"kept {trained.best_iteration + 1} of {trained.num_rounds_run} trees "
        f"(depth {cfg.max_depth}) in {fit_s:.2f}s, CPU {fit_cpu:.2f}s (nthread {cfg.nthread})"
    )
    print(
        f"registry save (booster + manifest + reference sample): {save_s * 1000:.0f} ms; "
        f"load: {load_ms:.1f} ms median"
    )
    print(f"predict {args.rows} rows: median {pred[0]:.3f} ms, p95 {pred[1]:.3f} ms")
    print(f"contributions {args.rows} rows: median {contrib[0]:.2f} ms, p95 {contrib[1]:.2f} ms")
    print(f"contributions 10 rows (a page): median {page[0]:.2f} ms, p95 {page[1]:.2f} ms")
    print(f"approximate contributions {args.rows} rows: median {approx[0]:.2f} ms")
    print(f"8 threads, 400 predict calls: {qps:.0f} calls/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
