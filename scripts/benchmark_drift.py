"""Benchmark: one drift report over 50K served rows x 30 features vs 50K reference rows.

    python scripts/benchmark_drift.py [--rows 50000] [--features 30] [--repeat 2] [--sqlite]

Times each stage of a report (Evidently feature drift, concept drift incl. score/retriever
drift, HTML + JSON writing) on synthetic feature rows with real feature names (so the
per-group methods of the default settings apply), plus per-method feature drift timings.
With --sqlite it also logs the window through the real SqliteEventStore and times
``served_features`` (what scripts/drift_report.py reads). Numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic(n: int, names: Sequence[str], seed: int, depth: int = 10) -> pd.DataFrame:
    """Impression-log-shaped rows: n // depth requests of depth positions, NaN-heavy columns."""
    rng = np.random.default_rng(seed)
    cols = {}
    for j, name in enumerate(names):
        kind = j % 5
        if kind == 0:
            v = rng.gamma(2.0, 3.0, n)
        elif kind == 1:
            v = rng.normal(0.4, 0.1, n)
        elif kind == 2:
            v = rng.integers(0, 5, n).astype(float)
        elif kind == 3:
            v = np.where(rng.random(n) < 0.6, np.nan, rng.beta(2, 8, n))
        else:
            v = np.log1p(rng.poisson(20, n)).astype(float)
        cols[name] = v.astype(np.float32)
    feats = pd.DataFrame(cols)
    req = np.repeat(np.arange(n // depth + 1), depth)[:n]
    score = feats[names[0]].to_numpy() * 0.1 + rng.normal(0, 1, n)
    meta = pd.DataFrame(
        {
            "request_id": [f"r{seed}-{i}" for i in req],
            "ts": 0.0,
            "query": "q",
            "query_id": None,
            "doc_id": [f"d{i}" for i in rng.integers(0, 10**6, n)],
            "position": np.tile(np.arange(1, depth + 1), n // depth + 1)[:n],
            "model_version": "v0001",
            "featureset_id": "fs",
            "score": score,
            "clicked": (
                rng.random(n) < 0.3 / np.sqrt(np.tile(np.arange(1, 11), n // 10 + 1)[:n])
            ).astype(int),
        }
    )
    return pd.concat([meta, feats], axis=1)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sqlite", action="store_true", help="also time the SQLite window read")
    ap.add_argument("--methods", default="wasserstein,psi,jensenshannon,ks")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    import evidently  # noqa: F401  (import cost reported separately)

    from ltr.features import FEATURES
    from monitoring.config import MonitoringConfig
    from monitoring.drift import feature_drift
    from monitoring.report import Window, build_report, write_report

    import_s = time.perf_counter() - t
    names = [n for n in FEATURES if n not in ("rating",)][: args.features]
    ref_log = synthetic(args.rows, names, seed=1)
    reference = ref_log[names]
    previous = synthetic(args.rows, names, seed=2)
    current = synthetic(args.rows, names, seed=3)
    cfg = MonitoringConfig()
    print(
        f"rows={args.rows} features={len(names)} cpus={os.cpu_count()} "
        f"load={os.getloadavg()[0]:.1f} evidently_import={import_s:.1f}s"
    )

    if args.sqlite:
        from search.events import Impression, SqliteEventStore

        with tempfile.TemporaryDirectory() as d:
            store = SqliteEventStore(Path(d) / "e.db")
            imps = []
            X = current[names].to_numpy(np.float32)
            for i, (rid, g) in enumerate(current.groupby("request_id", sort=False)):
                idx = g.index.to_numpy()
                imps.append(
                    Impression(rid, 1000.0 + i, "q", None, "v0001", "fs", tuple(names), 0,
                               tuple(g["doc_id"]), tuple(int(p) for p in g["position"]),
                               g["score"].to_numpy(np.float64), X[idx])
                )  # fmt: skip
            t = time.perf_counter()
            store.add_impressions(imps)
            write_s = time.perf_counter() - t
            t = time.perf_counter()
            got = store.served_features(0, 10**10)
            read_s = time.perf_counter() - t
            store.close()
        print(f"sqlite: log {len(got)} rows {write_s:.2f}s, served_features {read_s:.2f}s")

    window = Window(0.0, 86400.0)
    for rep in range(args.repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fd = feature_drift(reference, current, cfg, features=names)
        w1, c1 = time.perf_counter(), time.process_time()
        summary = build_report(
            reference, current, previous, cfg, window=window, model_version="v0001",
            featureset_id="fs", feature_names=names,
        )  # fmt: skip
        w2, c2 = time.perf_counter(), time.process_time()
        with tempfile.TemporaryDirectory() as d:
            write_report(summary, d, html=True)
            w3, c3 = time.perf_counter(), time.process_time()
        print(
            f"run {rep + 1} [wall s (cpu s)]: feature_drift alone {w1 - w0:.2f} ({c1 - c0:.2f}); "
            f"report = build_report {w2 - w1:.2f} ({c2 - c1:.2f}) (feature + concept drift) "
            f"+ write html/json {w3 - w2:.2f} ({c3 - c2:.2f}) = {w3 - w1:.2f} ({c3 - c1:.2f}); "
            f"drifted {len(fd.drifted_features)}/{len(fd.tested)}"
        )
    w0, c0 = time.perf_counter(), time.process_time()
    summary = build_report(
        reference, current, previous, cfg, window=window, model_version="v0001",
        featureset_id="fs", feature_names=names, render=False,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        write_report(summary, d, html=False)
    print(f"JSON-only report (render=False, html=false): {time.perf_counter() - w0:.2f} "
          f"({time.process_time() - c0:.2f})")  # fmt: skip
    for method in args.methods.split(","):
        th = 0.05 if method == "ks" else 0.1
        one = dataclasses.replace(
            cfg, text_method=method, static_method=method, behavior_method=method,
            default_method=method, text_threshold=th, static_threshold=th,
            behavior_threshold=th, default_threshold=th,
        )  # fmt: skip
        w0, c0 = time.perf_counter(), time.process_time()
        fd = feature_drift(reference, current, one, features=names)
        w1, c1 = time.perf_counter(), time.process_time()
        fast = feature_drift(reference, current, one, features=names, render=False)
        print(f"method {method}: feature_drift {w1 - w0:.2f} ({c1 - c0:.2f}), without "
              f"rendering {time.perf_counter() - w1:.2f} ({time.process_time() - c1:.2f}); "
              f"drifted {len(fd.drifted_features)}/{len(fd.tested)}, "
              f"{len(fast.drifted_features)}/{len(fast.tested)}")  # fmt: skip
    sampled = dataclasses.replace(cfg, max_rows=20_000)
    w0, c0 = time.perf_counter(), time.process_time()
    fd = feature_drift(reference, current, sampled, features=names)
    print(f"sampled to 20K rows: feature_drift {time.perf_counter() - w0:.2f} "
          f"({time.process_time() - c0:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
