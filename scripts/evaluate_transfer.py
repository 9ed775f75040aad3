"""Leave-one-collection-out transfer of the reranker recipe across judged BEIR collections.

    python scripts/evaluate_transfer.py --dataset DIR --dataset DIR [--dataset DIR ...]
        --out REPORT.json [--work-dir DIR] [--features transfer|all]

For each collection: a prior trained on all judged queries of the OTHER collections
(ltr.train.fit_recipe, the default TrainConfig; base margin = linear fusion with the weight
fitted on those collections), scored on the held-out one against linear fusion with the
source weight and with equal weights, with paired tests. Measures whether a model trained
elsewhere could serve a catalog that has no judgments yet (docs/evaluation.md). Indexes are
built (or reused) as scripts/evaluate.py does. Exit codes: 0 ok, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# features whose values depend on the collection's scale (raw BM25, lengths, IDFs, catalog
# attributes): left out of a prior meant for another collection
RAW_SCALE = (
    "bm25",
    "dense",
    "bm25_title",
    "bm25_body",
    "bm25_fields_sum",
    "idf_overlap",
    "len_title",
    "len_body",
    "matched_idf_max",
    "matched_idf_min",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate_transfer", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", action="append", required=True, help="BEIR directory (>= 2)")
    p.add_argument("--out", required=True, help="where to write the JSON report")
    p.add_argument("--work-dir", default="var/eval", help="index root (one per dataset name)")
    p.add_argument("--features", choices=("transfer", "all"), default="transfer")
    p.add_argument("--quiet", action="store_true")
    return p


def transfer_table(data: dict[str, Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per held-out collection (``data``: name -> ltr.evaluation.EvalData)."""
    import numpy as np

    from ltr.config import TrainConfig
    from ltr.dataset import RankingData
    from ltr.evaluation import paired_tests
    from ltr.fusion import fit_linear, fusion_score
    from ltr.metrics import evaluate, rank_ids
    from ltr.train import fit_recipe

    cfg = TrainConfig()
    rows = []
    for target in data:
        src = [d for d in data if d != target]
        lin = fit_linear([(q.cs, q.qrels) for d in src for q in data[d].queries])
        params = {**lin, "scale": cfg.base_margin_scale}
        train = [
            (
                f"{d}:{q.qid}",
                data[d].columns(names, q),
                q.labels,
                q.cs.ids,
                fusion_score(q.cs, "linear", params),
            )
            for d in src
            for q in data[d].queries
        ]
        model = fit_recipe(RankingData.from_groups(train, names), cfg)
        runs: dict[str, dict[str, list[str]]] = {"linear_src": {}, "linear_equal": {}, "prior": {}}
        qrels = {}
        for q in data[target].queries:
            qrels[q.qid] = dict(q.qrels)
            m = fusion_score(q.cs, "linear", params)
            runs["linear_src"][q.qid] = rank_ids(q.cs.ids, m)
            runs["linear_equal"][q.qid] = rank_ids(q.cs.ids, fusion_score(q.cs, "linear", {}))
            s = model.predict(data[target].columns(names, q), m)
            runs["prior"][q.qid] = rank_ids(q.cs.ids, s)
        per = {k: evaluate(r, qrels, ["ndcg@10"])["ndcg@10"] for k, r in runs.items()}
        rows.append(
            {
                "held_out": target,
                "trained_on": src,
                **{k: float(np.mean(list(v.values()))) for k, v in per.items()},
                "source_weights": lin["weights"],
                "prior_trees": model.best_iteration + 1,
                "prior_vs_linear_src": paired_tests(per["prior"], per["linear_src"]),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    dirs = [Path(d) for d in args.dataset]
    if len(dirs) < 2:
        print("error: give at least two --dataset directories", file=sys.stderr)
        return 2
    for d in dirs:
        if not (d / "corpus.jsonl").exists():
            print(f"error: {d} is not a BEIR directory (no corpus.jsonl)", file=sys.stderr)
            return 2
    from indexing.config import EmbeddingConfig
    from indexing.encoders import load_encoder
    from indexing.loaders import load_beir
    from ltr import features as F
    from ltr.evaluation import EvalConfig, EvalData
    from scripts.evaluate import prepare_index
    from search.replay import replay_index, run_sync

    t0 = time.perf_counter()
    names = tuple(EvalConfig().features)
    if args.features == "transfer":
        names = tuple(n for n in names if n not in RAW_SCALE and n not in F.STATIC_FEATURES)
    encoder = load_encoder(EmbeddingConfig())
    data = {}
    for d in dirs:
        ds = load_beir(d)
        index = prepare_index(d, Path(args.work_dir) / d.resolve().name, ds.corpus, encoder, log)
        rep = run_sync(replay_index(index, encoder, ds.queries, ds.qrels, names))
        data[d.resolve().name] = EvalData.from_replay(rep)
        log(f"replayed {d}: {len(data[d.resolve().name].queries)} judged queries")
    rows = transfer_table(data, names)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"features": list(names), "rows": rows, "seconds": time.perf_counter() - t0}
    out.write_text(json.dumps(report, indent=2, allow_nan=True))
    print("| held out | linear (source weight) | linear (equal) | prior | prior - linear (t p) |")
    print("|---|---|---|---|---|")
    for r in rows:
        t = r["prior_vs_linear_src"]
        print(
            f"| {r['held_out']} | {r['linear_src']:.4f} | {r['linear_equal']:.4f} | "
            f"{r['prior']:.4f} | {t['mean_diff']:+.4f} ({t['t_p']:.2g}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
