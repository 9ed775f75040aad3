"""Rollout of a retrained model, offline part: estimate a candidate before it sees traffic.

    ltrsearch-rollout estimate --events DB --model-dir DIR --candidate VERSION
        [--production VERSION] [--k 10] [--since TS] [--until TS] [--json PATH]

Reads the impression log read-only (served feature vectors, positions, clicks), scores the
logged first pages with the candidate (and the production model: the promoted version by
default) from the registry, fits the position-based model's examination curve by
regression-EM and prints IPS / SNIPS estimates of clicks@k and first-click reciprocal rank
with 95% intervals, beside the ranking that was actually served (ltr.counterfactual).
Exit codes: 0 ok, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltrsearch-rollout", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("estimate", help="counterfactual IPS/SNIPS estimate from the log")
    e.add_argument("--events", required=True, help="SQLite event store (impression log)")
    e.add_argument("--model-dir", required=True, help="model registry directory")
    e.add_argument("--candidate", required=True, help="candidate model version, e.g. v0002")
    e.add_argument("--production", help="production version (default: the promoted one)")
    e.add_argument("--k", type=int, default=10, help="cutoff of clicks@k and the RR (10)")
    e.add_argument("--since", type=float, help="only requests at or after (unix seconds)")
    e.add_argument("--until", type=float, help="only requests before (unix seconds)")
    e.add_argument("--json", dest="json_out", help="also write the report here as JSON")
    return p


class CliError(Exception):
    """Bad arguments: printed as one line, exit code 2."""


def estimate_from_store(args: argparse.Namespace) -> dict[str, Any]:
    """Open the log (read-only) and the registry, and run ltr.counterfactual.offline_report."""
    from ltr.counterfactual import offline_report
    from ltr.model import RankModel
    from ltr.registry import ModelRegistry
    from search.events import SqliteEventStore

    if args.k < 1:
        raise CliError(f"--k must be >= 1, got {args.k}")
    registry = ModelRegistry(Path(args.model_dir))
    models: dict[str, RankModel] = {}
    production = args.production or registry.promoted()
    if production is not None and production != args.candidate:
        models["production"] = registry.load(production)
    models["candidate"] = registry.load(args.candidate)
    if not Path(args.events).is_file():
        raise CliError(f"{args.events}: no event store (no such file)")
    store = SqliteEventStore(args.events, read_only=True)
    try:
        frame = store.served_features(args.since, args.until)
    finally:
        store.close()
    if frame.empty:
        raise CliError(f"{args.events}: no impressions in the window")
    return offline_report(frame, models, k=args.k)


def format_report(report: dict[str, Any]) -> str:
    """A few aligned lines: the examination curve, then one row per ranker and estimator."""
    ex = report["examination"]
    lines = [
        f"{report['pages']} logged first pages, {report['rows']} rows, {report['clicks']} clicks "
        f"(featureset {report['featureset_id']})",
        f"examination ({ex['method']}, {ex['em_iterations']} EM iterations"
        f"{'' if ex['converged'] else ', NOT converged'}): "
        + " ".join(f"{t:.3f}" for t in ex["theta"]),
        f"{'ranker':<22}{'estimator':<10}{'clicks@' + str(report['k']):>26}{'first-click RR':>26}",
    ]
    for label, r in report["rankers"].items():
        name = f"{label} {r['version']}" if r["version"] else label
        by: dict[str, dict[str, Any]] = {}
        for e in r["estimates"]:
            by.setdefault(e["estimator"], {})[e["metric"]] = e
        for est, metrics in by.items():
            cells = [
                f"{m['value']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"
                for m in (metrics["clicks@k"], metrics["rr"])
            ]
            lines.append(f"{name:<22}{est:<10}{cells[0]:>26}{cells[1]:>26}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ltr.errors import LTRError
    from search.errors import SearchError

    try:
        report = estimate_from_store(args)
    except (CliError, LTRError, SearchError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
