"""Calibrate the drift alarms: false-alarm rate on stable windows, detection rate per shift.

    python -m scripts.calibrate_drift [--requests 1000] [--reference 2000] [--stable 50]
        [--runs 20] [--sizes 0.05,0.1,0.15,0.2,0.3] [--json out.json]

On the seeded simulated log of monitoring.simulate (Zipf query traffic, ten served rows per
request, two retrievers, catalog attributes, click history, PBM clicks), with the default
settings (or --settings), each window is reported exactly as the scheduled report does
(training-like served reference sample for the features, the previous window for quality
and the ranking signals, the zero-result rate from both windows' page counts; JSON only, no
HTML):

- stable windows: same query mix and users, another seed -> the false-alarm rate;
- each shift kind at each size -> the alarm (detection) rate: the curve of alarm rate vs
  shift size that docs/monitoring.md records.

An alarm = a decision other than no_drift. Prints one table row per (kind, size).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from monitoring.config import MonitoringConfig
from monitoring.report import DriftSummary, Window, build_report
from monitoring.simulate import SHIFT_KINDS, SIM_FEATURES, Shift, World


def report(
    world: World,
    reference: Any,
    n_requests: int,
    seed: int,
    shift: Shift,
    cfg: MonitoringConfig,
) -> DriftSummary:
    """One window (seed) against its previous window (another seed) and the reference; the
    zero-result signal from both windows' (first pages, empty ones)."""
    previous, before = world.window_pages(n_requests, 2 * seed + 1)
    current, now = world.window_pages(n_requests, 2 * seed + 2, shift)
    names = list(SIM_FEATURES)
    return build_report(
        reference[names], current, previous, cfg, window=Window(0.0, 1.0),
        model_version="sim", featureset_id="sim", feature_names=names, render=False,
        first_pages=(before, now),
    )  # fmt: skip


def alarm_rate(
    world: World,
    reference: Any,
    n_requests: int,
    shift: Shift,
    runs: int,
    cfg: MonitoringConfig,
    first_seed: int = 0,
) -> tuple[float, dict[str, int]]:
    """Share of ``runs`` seeded windows that alarm, and the decisions counted."""
    counts: dict[str, int] = {}
    for i in range(runs):
        d = report(world, reference, n_requests, first_seed + i, shift, cfg).decision
        counts[d] = counts.get(d, 0) + 1
    return 1.0 - counts.get("no_drift", 0) / runs, counts


def make_world(seed: int = 0, reference_requests: int = 2000) -> tuple[World, Any]:
    """The simulated world and its served-like reference sample (a stable window)."""
    world = World(seed=seed)
    return world, world.window(reference_requests, 10_000)


def example_reports(
    world: World, reference: Any, n_requests: int, cfg: MonitoringConfig, out: str
) -> int:
    """The reports docs/monitoring.md shows: a covariate and a concept drift window."""
    from pathlib import Path

    from monitoring.report import write_report

    names = list(SIM_FEATURES)
    day = 86400.0
    for i, (kind, size) in enumerate((("query_mix", 0.3), ("clicks", 0.5))):
        previous = world.window(n_requests, 2 * i + 1)
        current = world.window(n_requests, 2 * i + 2, Shift(kind, size))
        summary = build_report(
            reference[names], current, previous, cfg,
            window=Window(1_764_000_000.0 + i * day, 1_764_000_000.0 + (i + 1) * day),
            model_version="v0001", featureset_id="sim", feature_names=names,
        )  # fmt: skip
        done = write_report(summary, Path(out) / kind)
        print(done.line())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=1000, help="requests per window")
    ap.add_argument("--reference", type=int, default=2000, help="requests in the reference")
    ap.add_argument("--stable", type=int, default=50, help="stable windows")
    ap.add_argument("--runs", type=int, default=20, help="windows per shift size")
    ap.add_argument("--sizes", default="0.05,0.1,0.15,0.2,0.3")
    ap.add_argument("--kinds", default=",".join(SHIFT_KINDS))
    ap.add_argument("--settings", help="settings TOML file (default: the defaults)")
    ap.add_argument("--json", help="write the rates here")
    ap.add_argument(
        "--reports",
        help="instead: write two example reports with HTML here (query_mix 0.3, clicks 0.5)",
    )
    args = ap.parse_args(argv)
    cfg = MonitoringConfig()
    if args.settings:
        from scripts.settings import load_settings

        cfg = load_settings(args.settings).monitoring
    world, reference = make_world(reference_requests=args.reference)
    if args.reports:
        return example_reports(world, reference, args.requests, cfg, args.reports)
    t0 = time.perf_counter()
    print(f"requests/window={args.requests} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    rate, counts = alarm_rate(world, reference, args.requests, Shift(), args.stable, cfg, 1000)
    out: dict[str, Any] = {"requests": args.requests, "stable": {"windows": args.stable,
                           "alarm_rate": rate, "decisions": counts}, "shifts": {}}  # fmt: skip
    print(f"stable: {rate:.0%} false alarms over {args.stable} windows {counts}", flush=True)
    for kind in args.kinds.split(","):
        for size in (float(s) for s in args.sizes.split(",")):
            rate, counts = alarm_rate(world, reference, args.requests, Shift(kind, size),
                                      args.runs, cfg, 2000)  # fmt: skip
            out["shifts"].setdefault(kind, {})[str(size)] = {
                "alarm_rate": rate,
                "decisions": counts,
            }
            print(f"{kind} {size:g}: {rate:.0%} alarms over {args.runs} windows {counts}",
                  flush=True)  # fmt: skip
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
