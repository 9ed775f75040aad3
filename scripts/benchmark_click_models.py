"""Click models: fit speed at scale and parameter recovery on simulated logs, in one run.

Speed: encode + fit of every registered click model on N sessions (default 100K, 100
queries x 10 shown documents, PBM or DBN clicks). Recovery: over several seeds, the errors
of the fitted parameters against the simulator's true ones, on the same setup the tests
use (30 queries x 8 docs, 40K sessions, fully shuffled lists). Numbers go to
docs/benchmarks.md ("Click models") and docs/evaluation.md ("Click models").

    .venv/bin/python -m scripts.benchmark_click_models [--sessions 100000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from ltr.click_models import (
    CLICK_MODELS,
    DBN,
    PBM,
    SDBN,
    encode_sessions,
    make_click_model,
    select_best,
    simulate_dbn,
    simulate_pbm,
    simulate_sdbn,
)

EXAM8 = np.array([1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.25, 0.2])


def _world(n_queries: int, n_docs: int, seed: int) -> tuple[dict, dict, dict]:
    gen = np.random.default_rng(seed)
    rk = {f"q{i}": [f"q{i}d{j}" for j in range(n_docs)] for i in range(n_queries)}
    pairs = [(q, d) for q, ds in rk.items() for d in ds]
    attr = {p: float(a) for p, a in zip(pairs, gen.uniform(0.05, 0.95, len(pairs)), strict=True)}
    sat = {p: float(s) for p, s in zip(pairs, gen.uniform(0.1, 0.9, len(pairs)), strict=True)}
    return rk, attr, sat


def speed(n_sessions: int) -> dict[str, Any]:
    """Seconds to encode and fit each model on n_sessions sessions of 10 results.

    Wall-clock and process CPU time: the machine is shared, and numpy runs these loops on
    one thread, so CPU seconds are the better estimate of the time on an idle core.
    """
    rk, attr, sat = _world(100, 10, 0)
    exam = 1.0 / np.arange(1, 11) ** 0.7
    out: dict[str, Any] = {"sessions": n_sessions, "pairs": len(attr), "positions": 10}
    for kind in ("pbm", "dbn"):
        t0 = time.perf_counter()
        if kind == "pbm":
            sessions = simulate_pbm(rk, attr, exam, n_sessions, 1, shuffle=1.0)
        else:
            sessions = simulate_dbn(rk, attr, sat, 0.8, n_sessions, 1, shuffle=1.0)
        sim = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        encode_sessions(sessions)
        enc, enc_cpu = time.perf_counter() - t0, time.process_time() - c0
        row: dict[str, Any] = {
            "simulate_s": round(sim, 2),
            "encode_s": round(enc, 2),
            "encode_cpu_s": round(enc_cpu, 2),
        }
        for name in CLICK_MODELS:
            model = make_click_model(name)
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit(sessions)
            row[f"{name}_fit_s"] = round(time.perf_counter() - t0, 2)
            row[f"{name}_fit_cpu_s"] = round(time.process_time() - c0, 2)
            row[f"{name}_iters"] = getattr(model, "n_iter", None)
        out[f"{kind}_clicks"] = row
    return out


def _mae(fn: Any, truth: dict, pairs: list) -> tuple[float, float]:
    err = np.abs(np.array([fn(*p) for p in pairs]) - np.array([truth[p] for p in pairs]))
    return float(err.mean()), float(err.max())


def _bias(fn: Any, truth: dict, pairs: list) -> float:
    return float(np.mean([fn(*p) - truth[p] for p in pairs]))


def recovery(seeds: int) -> dict[str, Any]:
    """Parameter errors per seed on the tests' setup (see module docstring)."""
    rows = []
    for seed in range(seeds):
        rk, attr, sat = _world(30, 8, 100 + seed)
        pbm_s = simulate_pbm(rk, attr, EXAM8, 40_000, seed, shuffle=1.0)
        pbm = PBM().fit(pbm_s)
        dbn_s = simulate_dbn(rk, attr, sat, 0.8, 40_000, seed, shuffle=1.0)
        dbn = DBN().fit(dbn_s)
        enc = encode_sessions(dbn_s)
        clicks = dict(zip(enc.pairs, enc.click_counts().tolist(), strict=True))
        rich = [p for p in attr if clicks[p] >= 200]
        # SDBN on unshuffled lists of 6 + a sentinel that always satisfies (last click = sat).
        rk6 = {q: [*ds[:6], f"{q}END"] for q, ds in rk.items()}
        a6, s6 = dict(attr), dict(sat)
        for q in rk:
            a6[(q, f"{q}END")] = s6[(q, f"{q}END")] = 1.0
        sd_s = simulate_sdbn(rk6, a6, s6, 30_000, seed)
        sdbn = SDBN().fit(sd_s)
        enc6 = encode_sessions(sd_s)
        c6 = dict(zip(enc6.pairs, enc6.click_counts().tolist(), strict=True))
        rich6 = [(q, d) for q, ds in rk.items() for d in ds[:6] if c6[(q, d)] >= 100]
        # The same lists without the sentinel: SDBN's bias, and DBN EM with gamma = 1.
        rk6n = {q: ds[:6] for q, ds in rk.items()}
        nos = simulate_sdbn(rk6n, attr, sat, 30_000, seed)
        sdbn_n, dbn_n = SDBN().fit(nos), DBN(gamma=1.0).fit(nos)
        p6 = [(q, d) for q, ds in rk6n.items() for d in ds]
        rows.append(
            {
                "seed": seed,
                "pbm_attr_mae_max": _mae(pbm.relevance, attr, list(attr)),
                "pbm_exam_max_err": float(np.abs(pbm.examination - EXAM8).max()),
                "dbn_gamma": dbn.gamma,
                "dbn_attr_mae_max": _mae(dbn.attractiveness_of, attr, list(attr)),
                "dbn_sat_mae_max_200clicks": _mae(dbn.satisfaction_of, sat, rich),
                "n_pairs_200clicks": len(rich),
                "sdbn_attr_mae_100clicks": _mae(sdbn.attractiveness_of, attr, rich6),
                "sdbn_sat_mae_100clicks": _mae(sdbn.satisfaction_of, sat, rich6),
                "no_sentinel_sat_bias_sdbn": _bias(sdbn_n.satisfaction_of, sat, p6),
                "no_sentinel_sat_bias_dbn_g1": _bias(dbn_n.satisfaction_of, sat, p6),
            }
        )
    return {"recovery": rows}


def selection(seeds: int) -> dict[str, Any]:
    """Held-out perplexity of every model on PBM data (sorted lists, 30% shuffled) and on
    DBN data (shuffled), 15K train / 5K held-out sessions."""
    rows = []
    for seed in range(seeds):
        rk, attr, sat = _world(30, 8, 200 + seed)
        rk_sorted = {q: sorted(ds, key=lambda d, q=q: -attr[(q, d)]) for q, ds in rk.items()}  # type: ignore[misc]
        for kind in ("pbm", "dbn"):
            if kind == "pbm":
                s = simulate_pbm(rk_sorted, attr, EXAM8, 20_000, seed, shuffle=0.3)
            else:
                s = simulate_dbn(rk, attr, sat, 0.8, 20_000, seed, shuffle=1.0)
            best, table = select_best(None, s[:15_000], s[15_000:])
            rows.append(
                {
                    "seed": seed,
                    "data": kind,
                    "best": best.name,
                    **{r.name: round(r.perplexity, 4) for r in table},
                }
            )
    return {"selection": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    report = {**speed(args.sessions), **recovery(args.seeds), **selection(args.seeds)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
