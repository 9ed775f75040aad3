"""Speed of ltr.features.compute on synthetic candidate sets (a micro-benchmark).

    python scripts/benchmark_features.py [--n 200] [--repeats 50]

``synthetic_candidate_set`` draws a realistic random CandidateSet (titles ~10, bodies ~150
Zipf-distributed terms, ranks with misses, half the candidates with click history); the
feature tests use it too. Numbers go to docs/benchmarks.md ("Features" section).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ltr.behavior import AGGREGATE_KEYS
from ltr.features import FEATURES, compute
from ltr.types import BM25, DENSE, CandidateSet


def synthetic_candidate_set(n: int = 200, seed: int = 0, behavior: bool = True) -> CandidateSet:
    """A realistic random CandidateSet (title ~10, body ~150 terms) for benchmarks."""
    rng = np.random.default_rng(seed)
    vocab = [f"t{i}" for i in range(3000)]
    qterms = tuple(vocab[i] for i in rng.choice(300, size=6, replace=False))

    def terms(k: int) -> tuple[str, ...]:
        return tuple(vocab[i] for i in rng.zipf(1.3, size=k) % len(vocab))

    ranks_b = rng.permutation(n).astype(np.float64) + 1
    ranks_d = rng.permutation(n).astype(np.float64) + 1
    ranks_b[rng.random(n) < 0.3] = np.nan
    ranks_d[np.isfinite(ranks_b) & (rng.random(n) < 0.3)] = np.nan
    beh: dict[str, np.ndarray] = {}
    if behavior:
        imp = np.where(rng.random(n) < 0.5, rng.integers(1, 50, n).astype(np.float64), np.nan)
        for key in AGGREGATE_KEYS:
            beh[key] = imp * rng.random(n)
    return CandidateSet(
        query_text=" ".join(qterms),
        query_terms=qterms,
        ids=tuple(f"d{i}" for i in range(n)),
        scores={BM25: 20 / ranks_b, DENSE: 1 / ranks_d},
        ranks={BM25: ranks_b, DENSE: ranks_d},
        field_bm25={"title": rng.random(n) * 5, "body": rng.random(n) * 15},
        dense_cosine=rng.random(n),
        doc_terms={
            "title": tuple(terms(10) for _ in range(n)),
            "body": tuple(terms(150) for _ in range(n)),
        },
        idf={t: float(rng.random() * 8) for t in qterms},
        static={"rating": rng.random(n) * 5, "review_count": rng.integers(0, 1000, n) * 1.0},
        behavior=beh,
    )


def benchmark_compute(n: int = 200, repeats: int = 50) -> dict[str, float]:
    """Median wall time of compute() over every registered feature for ``n`` candidates.

    Each call gets a fresh CandidateSet so the per-set cache does not flatter the number.
    """
    names = tuple(FEATURES)
    sets = [synthetic_candidate_set(n, seed=i) for i in range(repeats)]
    times, cpu = [], []
    for cs in sets:
        t0, c0 = time.perf_counter(), time.process_time()
        compute(cs, names)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "n": float(n),
        "features": float(len(names)),
        "ms_per_call": 1000 * float(np.median(times)),
        "ms_p90": 1000 * float(np.percentile(times, 90)),
        "cpu_ms_per_call": 1000 * float(np.mean(cpu)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark_features", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="candidates per set")
    p.add_argument("--repeats", type=int, default=50, help="sets (one compute() each)")
    args = p.parse_args(argv)
    res = benchmark_compute(args.n, args.repeats)
    print(
        f"{int(res['features'])} features x {int(res['n'])} candidates: "
        f"median {res['ms_per_call']:.2f} ms, p90 {res['ms_p90']:.2f} ms, "
        f"CPU {res['cpu_ms_per_call']:.2f} ms per compute()"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
