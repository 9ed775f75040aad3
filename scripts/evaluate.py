"""Cross-validated evaluation of the reranker against every baseline on a BEIR directory.

    python scripts/evaluate.py --dataset BEIR_DIR --folds 5 --out REPORT.json
        [--work-dir DIR] [--clicks N] [--seed S]

Builds what it needs in the work directory (a local index with the embedding cache; reused
when the corpus and settings have not changed), replays the judged queries through the
serving code path (search.replay), runs query-level k-fold CV (ltr.evaluation) and writes
the JSON report; prints a markdown table. Exit codes: 0 ok, 2 bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_WORK_DIR = "var/eval"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltrsearch-evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="BEIR directory (corpus/queries/qrels)")
    p.add_argument("--folds", type=int, default=5, help="query-level CV folds (>= 2)")
    p.add_argument("--out", required=True, help="where to write the JSON report")
    p.add_argument(
        "--work-dir",
        default=DEFAULT_WORK_DIR,
        help=f"index + embedding cache (default {DEFAULT_WORK_DIR}/<dataset>)",
    )
    p.add_argument(
        "--clicks",
        type=int,
        default=0,
        help="simulated PBM sessions per query (adds ltr_behavior methods)",
    )
    p.add_argument(
        "--extra-retrievers",
        default=None,
        help="comma list of extra candidate retrievers (rm3, title); default: the "
        "retrieval.extra_retrievers default; '' for none",
    )
    p.add_argument(
        "--add-features", default="", help="comma list of features added to the default set"
    )
    p.add_argument(
        "--drop-features", default="", help="comma list of features dropped from the default set"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _fingerprint(dataset: Path, extra: dict[str, Any]) -> str:
    """Content hash of the corpus file plus the index-relevant settings."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for name in ("corpus.jsonl",):
        path = dataset / name
        if path.exists():
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def prepare_index(dataset: Path, work: Path, corpus: Any, encoder: Any, log: Any) -> Path:
    """The local index for this corpus in ``work`` (rebuilt only when the corpus changed)."""
    from indexing.build import build_local_index
    from indexing.config import IndexConfig
    from indexing.embedding_cache import EmbeddingCache
    from indexing.layout import current_version

    cfg = IndexConfig()
    index_dir = work / "index"
    stamp = work / "index.fingerprint"
    fp = _fingerprint(dataset, {"index": repr(cfg), "model": encoder.model_id})
    if current_version(index_dir) and stamp.exists() and stamp.read_text() == fp:
        log(f"reusing index {index_dir}")
        return index_dir
    work.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache(work / "embeddings.sqlite")
    try:
        t0 = time.perf_counter()
        build_local_index(corpus, index_dir, encoder, cfg, cache)
        log(f"built index of {len(corpus)} docs in {time.perf_counter() - t0:.1f}s")
    finally:
        cache.close()
    stamp.write_text(fp)
    return index_dir


def _names(arg: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if arg is None:
        return default
    return tuple(n.strip() for n in arg.split(",") if n.strip())


def _features(default: tuple[str, ...], add: str, drop: str) -> tuple[str, ...]:
    """The default feature list with ``add`` appended and ``drop`` removed (ValueError on
    an unknown name, which main reports as a one-line error)."""
    from ltr.features import FEATURES

    added, dropped = _names(add, ()), set(_names(drop, ()))
    for n in (*added, *dropped):
        if n not in FEATURES:
            raise ValueError(f"unknown feature {n!r}")
    return tuple(n for n in (*default, *added) if n not in dropped)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    from indexing.errors import IndexingError
    from ltr.errors import LTRError

    dataset = Path(args.dataset)
    if not (dataset / "corpus.jsonl").exists():
        print(f"error: {dataset} is not a BEIR directory (no corpus.jsonl)", file=sys.stderr)
        return 2
    if args.folds < 2:
        print(f"error: --folds must be >= 2, got {args.folds}", file=sys.stderr)
        return 2
    if args.clicks < 0:
        print(f"error: --clicks must be >= 0, got {args.clicks}", file=sys.stderr)
        return 2
    try:
        import torch

        torch.set_num_threads(2)  # shared machine: deliberate, small
        from indexing.config import EmbeddingConfig
        from indexing.encoders import load_encoder
        from indexing.loaders import load_beir
        from ltr.evaluation import EvalConfig, EvalData, markdown_table, run_evaluation
        from search.config import RetrievalConfig
        from search.replay import replay_index, run_sync

        t0 = time.perf_counter()
        ds = load_beir(dataset)
        work = Path(args.work_dir)
        if args.work_dir == DEFAULT_WORK_DIR:
            work = work / dataset.resolve().name
        encoder = load_encoder(EmbeddingConfig())
        index_dir = prepare_index(dataset, work, ds.corpus, encoder, log)
        features = _features(EvalConfig().features, args.add_features, args.drop_features)
        extra = _names(args.extra_retrievers, RetrievalConfig().extra_retrievers)
        RetrievalConfig(extra_retrievers=extra).validate()
        rep = run_sync(
            replay_index(index_dir, encoder, ds.queries, ds.qrels, features, extra_retrievers=extra)
        )
        log(
            f"replayed {len(rep.queries)} queries in {time.perf_counter() - t0:.1f}s; "
            f"candidate recall {rep.recall}"
        )
        data = EvalData.from_replay(rep)
        cfg = EvalConfig(folds=args.folds, seed=args.seed, clicks=args.clicks, features=features)
        result = run_evaluation(data, cfg)
    except (LTRError, IndexingError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {
        "dataset": str(dataset),
        **result.report,
        "candidate_recall": rep.recall,
        "extra_retrievers": list(extra),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, allow_nan=True))
    print(markdown_table(report))
    sig = report["significance"].get("ltr", {})
    print(
        f"\nltr vs {sig.get('against')}: mean diff {sig.get('mean_diff', float('nan')):+.4f}, "
        f"paired t p={sig.get('t_p', float('nan')):.4g}, "
        f"randomization p={sig.get('rand_p', float('nan')):.4g}"
    )
    lin = report["vs_linear"].get("ltr", {})
    rounds = [f["ltr_rounds"] for f in report["folds_detail"]]
    etas = [f["ltr_eta"] for f in report["folds_detail"]]
    print(
        f"ltr vs linear: mean diff {lin.get('mean_diff', float('nan')):+.4f}, "
        f"paired t p={lin.get('t_p', float('nan')):.4g}; "
        f"ltr / best single retriever {report['ltr_over_best_single']:.3f}; "
        f"goal {report['goal']}; trees per fold {rounds} (0 = the linear fusion alone), "
        f"eta per fold {etas} (chosen on the inner folds)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
