"""Train the LambdaMART reranker and save it to the model registry.

    python scripts/train.py --dataset BEIR_DIR --index-dir DIR --model-dir DIR
        [--settings F] [--features text,static|all|NAME,...] [--promote]
    python scripts/train.py --events DB --model-dir DIR [--click-model auto|pbm|...]
        [--index-dir DIR] [--settings F] [--promote]

``--dataset``: replays the judged queries through the serving code (search.replay), so the
training rows are exactly what the API would compute; the index is built from the corpus
when ``--index-dir`` holds none. ``--events``: trains on the impression log instead: fits
the click model (``auto`` = lowest held-out perplexity), grades the logged (query, doc)
pairs with it and joins the grades to the EXACT served feature vectors; with ``--index-dir``
(the serving index) a sample of the logged requests is replayed there with the new model as
its drift reference (search.training.log_reference), else the reference is the logged rows,
the previous model's pages.

Argument parsing and printing only: the sources are search.training (``train``), the run
ltr.training_run, the recipe ltr.train.fit_recipe with the settings' ltr section
(TrainConfig defaults = the recipe ltr.evaluation measured): ``test_fraction`` of the
queries is held out (by query) for the report; the number of rounds and the learning
rate (from ``eta_grid``) come from ``inner_folds`` query-level folds of the rest
(validation curves averaged and smoothed),
then one booster is trained on all of it, boosted from ``base_margin`` x
``base_margin_scale`` (default: the linear fusion, its BM25/dense weight fitted on the
training split; zero trees when the inner folds show no gain; the manifest records the
spec with the fitted weights and serving applies exactly it). With
behavior features, training queries are added again with their query-level click history
withheld (cold copies). Prints the inner-CV and test NDCG@10 of the model against RRF on
the same queries, saves the version (promotes it with ``--promote``).
Exit codes: 0 ok, 2 bad input or failure (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ltr.training_run import Log, TrainResult
    from scripts.settings import Settings
    from search.training import EventsSource


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltrsearch-train", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="BEIR directory with judged queries (qrels)")
    src.add_argument("--events", help="SQLite event store: train from impressions + clicks")
    p.add_argument(
        "--index-dir",
        help="local index directory (--dataset: required; --events: the serving index, "
        "replayed for the new model's drift reference)",
    )
    p.add_argument("--model-dir", help="model registry directory (default: settings registry.dir)")
    p.add_argument("--settings", help="TOML settings file (LTRSEARCH_* env overrides apply)")
    p.add_argument(
        "--features",
        default="text,static",
        help="comma list of groups (text, static, behavior), 'all', or feature names "
        "(--dataset; --events trains on the featureset the log served)",
    )
    p.add_argument(
        "--click-model", help="auto or a click model name (--events; default: ltr.click_model)"
    )
    p.add_argument("--qrels", default="test", help="qrels/<NAME>.tsv to train on (--dataset)")
    p.add_argument("--promote", action="store_true", help="serve the new version")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", dest="json_out", help="also write the metrics here as JSON")
    return p


class CliError(Exception):
    """Bad arguments: printed as one line, exit code 2."""


def events_source(
    settings: Settings, events: Path, index_dir: Path | None = None, click_model: str | None = None
) -> EventsSource:
    """The impression log as a training source with the settings the server ran with (click
    model, embedding and retrieval for the replay, the behavior half-life): one construction
    for this command, scripts/simulate_traffic --train and the demo."""
    from search.training import EventsSource

    return EventsSource(
        events, click_model or settings.ltr.click_model, index_dir=index_dir,
        embedding=settings.embedding, retrieval=settings.retrieval,
        half_life_s=settings.events.half_life_s,
    )  # fmt: skip


def _train(args: argparse.Namespace, log: Log) -> TrainResult:
    """The source the arguments name, trained with the settings (search.training.train)."""
    from ltr.training_run import resolve_features
    from scripts.settings import load_settings
    from search.training import ReplaySource, train

    settings = load_settings(args.settings)
    model_dir = Path(args.model_dir or settings.registry.dir)
    source: ReplaySource | EventsSource
    if args.dataset:
        if not args.index_dir:
            raise CliError("--index-dir is required with --dataset")
        dataset = Path(args.dataset)
        if not (dataset / "corpus.jsonl").is_file():
            raise CliError(f"{dataset} is not a BEIR directory (no corpus.jsonl)")
        source = ReplaySource(
            dataset,
            Path(args.index_dir),
            resolve_features(args.features),
            args.qrels,
            settings.embedding,
            settings.index,
            settings.retrieval,
        )
    else:
        index_dir = Path(args.index_dir) if args.index_dir else None
        if index_dir is not None and not index_dir.is_dir():
            raise CliError(f"--index-dir {index_dir}: no such directory")
        source = events_source(settings, Path(args.events), index_dir, args.click_model)
    return train(
        source,
        settings.ltr,
        model_dir,
        settings.registry,
        promote=args.promote,
        log=log,
        verbose=False if args.quiet else 25,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    from indexing.errors import IndexingError
    from ltr.errors import LTRError
    from scripts.settings import SettingsError

    try:
        result = _train(args, log)
    except (CliError, LTRError, IndexingError, SettingsError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(result.summary())
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result.as_dict(), indent=2, allow_nan=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
