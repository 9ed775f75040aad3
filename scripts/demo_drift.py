"""Demo step: shift live traffic and show the drift report catching it.

    python -m scripts.demo_drift --url http://127.0.0.1:8080 --events var/events.db \
        --model-dir var/models --dataset BEIR_DIR [--sessions 500] [--out var/drift-demo]

Against a running API (scripts/serve.py) whose impression log is --events, three phases of
simulated users (scripts/simulate_traffic.simulate: PBM clicks from graded judgments):

1. ``baseline``: the collection's judged queries, users click what the judgments call
   relevant;
2. ``query_mix``: a new query mix -- every query cut to its first two words (short head
   queries: other lengths, coverage, BM25 and cosine), same users;
3. ``clicks_changed``: the baseline queries again, but users now click what the judgments
   call irrelevant (unjudged documents most, the best ones least).

Phases last seconds, not hours, so the reports are built with the library on each phase's
exact time range (monitoring.report.build_report), not by the scheduled command. Each
shifted phase is compared with the baseline phase: served features against served features
(like with like), quality and scores against the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from monitoring.config import MonitoringConfig
from monitoring.report import DriftSummary, Window, build_report, select_featureset, write_report

WORDS = {"no_drift": "no drift", "covariate_drift": "covariate drift",
         "concept_drift": "concept drift"}  # fmt: skip


@dataclass(frozen=True)
class Phase:
    name: str
    since: float
    until: float
    stats: Mapping[str, Any]


class _Inverted(dict):  # type: ignore[type-arg]
    """Judgments as the changed users see them: grade g -> max - g, unjudged -> max."""

    def __init__(self, grades: Mapping[str, float], top: float) -> None:
        super().__init__(grades)
        self.top = top

    def get(self, key: Any, default: Any = None) -> Any:
        return self.top - float(super().get(key, 0.0))


# Searches per phase. With 150, a demo sized down for a slow CPU (840 products / 207 judged
# queries, 1,200 / 260) read "covariate drift" for its unchanged baseline (13-15 of 49
# features at effect 0.15-0.17): 150 draws over ~200 queries is too few distinct queries to
# hold the query-level features' sampling noise under min_effect. With 500 both read no
# drift (2-4 of 49) and the shifted phases still read covariate / concept drift (measured
# 2026-12-06, Intel Xeon AVX-512 VNNI, 2 cores, quiet), for ~10 s more on that machine.
SESSIONS = 500


def shorten(text: str, words: int = 2) -> str:
    """A head query: the first ``words`` words of the original."""
    return " ".join(text.split()[:words]) or text


async def run_phase(
    name: str,
    url: str,
    queries: Sequence[tuple[str, str]],
    qrels: Mapping[str, dict[str, float]],
    sessions: int,
    seed: int,
) -> Phase:
    """Simulated users for one phase; its [since, until) covers every request it served."""
    from scripts.simulate_traffic import simulate

    since = time.time()
    stats = await simulate(
        url, queries, dict(qrels), sessions, max_seconds=900.0, concurrency=2, k=10,
        noise=0.0, exam_eta=1.0, seed=seed,
    )  # fmt: skip
    await asyncio.sleep(0.05)
    return Phase(name, since, time.time(), stats)


async def drive(url: str, dataset: Path, sessions: int = SESSIONS, seed: int = 0) -> list[Phase]:
    """The three phases (baseline, query_mix, clicks_changed) against a running API."""
    from scripts.simulate_traffic import load_judged

    queries, qrels = load_judged(dataset)
    top = max((g for r in qrels.values() for g in r.values()), default=1.0) or 1.0
    inverted = {q: _Inverted(r, top) for q, r in qrels.items()}
    short = [(qid, shorten(text)) for qid, text in queries]
    return [
        await run_phase("baseline", url, queries, qrels, sessions, seed),
        await run_phase("query_mix", url, short, qrels, sessions, seed + 1),
        # the baseline's seed: the same query sequence, only the clicks differ
        await run_phase("clicks_changed", url, queries, inverted, sessions, seed),
    ]


def reports(
    phases: Sequence[Phase],
    events_db: Path,
    model_dir: Path,
    out_dir: Path | None = None,
    cfg: MonitoringConfig | None = None,
    with_training: bool = True,
) -> dict[str, DriftSummary]:
    """Each phase after the first against the first: {phase name: DriftSummary}; with
    ``with_training`` also "<first>_vs_training": the first phase against the model's
    served-like reference sample (features only), what the scheduled report compares."""
    from ltr.registry import ModelRegistry
    from search.events import SqliteEventStore

    cfg = cfg or MonitoringConfig()
    registry = ModelRegistry(model_dir)
    manifest = registry.manifest()
    store = SqliteEventStore(events_db)
    try:
        rows = {p.name: store.served_features(p.since, p.until) for p in phases}
        pages = {p.name: store.first_pages(p.since, p.until) for p in phases}
    finally:
        store.close()
    base = phases[0]
    base_rows, _ = select_featureset(rows[base.name], manifest.featureset_id)
    names = list(manifest.feature_names)
    out: dict[str, DriftSummary] = {}
    if with_training:
        # the scheduled report's comparison: the baseline's served rows against the model's
        # served-like reference sample (its top 10 per training query, ltr.registry)
        out[f"{base.name}_vs_training"] = build_report(
            registry.reference_sample(manifest.version), rows[base.name], None, cfg,
            window=Window(base.since, base.until), model_version=manifest.version,
            featureset_id=manifest.featureset_id, feature_names=names, render=False,
            reference_info=registry.reference_info(manifest.version),
        )  # fmt: skip
    for p in phases[1:]:
        summary = build_report(
            base_rows[names], rows[p.name], base_rows, cfg,
            window=Window(p.since, p.until), model_version=manifest.version,
            featureset_id=manifest.featureset_id, feature_names=names,
            render=out_dir is not None and cfg.html, first_pages=(pages[base.name], pages[p.name]),
        )  # fmt: skip
        if out_dir is not None:
            summary = write_report(summary, out_dir / p.name, html=cfg.html)
        out[p.name] = summary
    return out


async def demo_drift(
    url: str,
    events_db: str | Path,
    model_dir: str | Path,
    dataset: str | Path,
    *,
    sessions: int = SESSIONS,
    out_dir: str | Path | None = None,
    cfg: MonitoringConfig | None = None,
    seed: int = 0,
    settle_s: float = 1.5,
    echo: Callable[[str], None] = print,
) -> dict[str, DriftSummary]:
    """Shift the traffic of a running API and show the drift report catching each shift.

    ``settle_s``: wait for the API's impression writer to flush (its impression_flush_ms)
    before reading the log.
    """
    phases = await drive(url, Path(dataset), sessions, seed)
    for p in phases:
        echo(f"phase {p.name}: {p.stats.get('searches')} searches, "
             f"{p.stats.get('clicks')} clicks in {p.until - p.since:.1f} s")  # fmt: skip
    await asyncio.sleep(settle_s)
    cfg = cfg or MonitoringConfig()
    # a demo phase is ~100 requests: fewer labelled requests than a day of traffic
    cfg = replace(cfg, min_queries=min(cfg.min_queries, 20))
    out = await asyncio.to_thread(
        reports, phases, Path(events_db), Path(model_dir),
        Path(out_dir) if out_dir is not None else None, cfg,
    )  # fmt: skip
    for name, summary in out.items():
        label = name.replace("_vs_", " vs ") if "_vs_" in name else f"{name} vs baseline"
        echo(f"{label}: {WORDS[summary.decision]}: {summary.line()}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo-drift", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="base URL of the running API")
    ap.add_argument("--events", required=True, help="the API's SQLite event store")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--dataset", required=True, help="BEIR directory (queries + qrels)")
    ap.add_argument("--sessions", type=int, default=SESSIONS, help="searches per phase")
    ap.add_argument("--out", help="write each phase's report here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        from scripts.simulate_traffic import check_loopback

        check_loopback(args.url)
        out = asyncio.run(
            demo_drift(args.url, args.events, args.model_dir, args.dataset,
                       sessions=args.sessions, out_dir=args.out, seed=args.seed)
        )  # fmt: skip
    except Exception as e:  # a demo step: one line, not a traceback
        print(f"demo-drift: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 3 if any(s.drifted for n, s in out.items() if "_vs_" not in n) else 0


if __name__ == "__main__":
    sys.exit(main())
