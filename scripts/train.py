"""Train the LambdaMART reranker and save it to the model registry.

    python scripts/train.py --dataset BEIR_DIR --index-dir DIR --model-dir DIR
        [--settings F] [--features text,static|all|NAME,...] [--promote]
    python scripts/train.py --events DB --model-dir DIR [--click-model auto|pbm|...]
        [--settings F] [--promote]

``--dataset``: replays the judged queries through the serving code (search.replay), so the
training rows are exactly what the API would compute; the index is built from the corpus
when ``--index-dir`` holds none. ``--events``: trains on the impression log instead: fits
the click model (``auto`` = lowest held-out perplexity), grades the logged (query, doc)
pairs with it and joins the grades to the EXACT served feature vectors.

Training is ltr.train.fit_recipe with the settings' ltr section (TrainConfig defaults = the
recipe ltr.evaluation measured): ``test_fraction`` of the queries is held out (by query) for
the report; the number of rounds comes from ``inner_folds`` query-level folds of the rest
(validation curves averaged and smoothed), then one booster is trained on all of it, boosted
from ``base_margin`` x ``base_margin_scale`` (the manifest records that spec; serving applies
exactly it). With behavior features, training queries are added again with their query-level
click history withheld (cold copies). Prints the inner-CV and test NDCG@10 of the model
against RRF on the same queries, saves the version (promotes it with ``--promote``).
Exit codes: 0 ok, 2 bad input or failure (one line).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Log = Callable[[str], None]
GROUPS = ("text", "static", "behavior")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltrsearch-train", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="BEIR directory with judged queries (qrels)")
    src.add_argument("--events", help="SQLite event store: train from impressions + clicks")
    p.add_argument("--index-dir", help="local index directory (with --dataset)")
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
    """Bad input: printed as one line, exit code 2."""


def resolve_features(spec: str) -> tuple[str, ...]:
    """'text,static' / 'all' / explicit names -> ordered, de-duplicated feature names."""
    from ltr import features as F

    by_group = {
        "text": F.TEXT_FEATURES,
        "static": F.STATIC_FEATURES,
        "behavior": F.BEHAVIOR_FEATURES,
    }
    out: list[str] = []
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    if not tokens:
        raise CliError("--features is empty")
    for t in tokens:
        names = [n for g in GROUPS for n in by_group[g]] if t == "all" else by_group.get(t, (t,))
        F.resolve(names)  # unknown names -> UnknownNameError listing the valid ones
        out.extend(n for n in names if n not in out)
    return tuple(out)


# --- evaluation on held-out queries ----------------------------------------------------


def _ndcg(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, float]],
    exclude_zero: bool = False,
) -> float:
    """Mean NDCG@10 over queries with a relevant judgment. ``exclude_zero`` drops documents
    judged 0 from the rankings (Cranfield: each query's own source paper, see its README)."""
    from ltr.metrics import evaluate, summarize

    judged = {
        q: dict(r) for q, r in qrels.items() if q in rankings and any(g > 0 for g in r.values())
    }
    if not judged:
        return math.nan
    exclude = (
        {q: {d for d, g in r.items() if g <= 0} for q, r in judged.items()}
        if exclude_zero
        else None
    )
    return summarize(evaluate(rankings, judged, ["ndcg@10"], exclude=exclude))["ndcg@10"]


def _rank(ids: np.ndarray, scores: np.ndarray) -> list[str]:
    from ltr.metrics import rank_ids

    return rank_ids([str(i) for i in ids], scores)


def compare(
    model: Any,
    data: Any,
    baseline: np.ndarray | None,
    qrels: Mapping[str, Mapping[str, float]],
) -> dict[str, float]:
    """NDCG@10 of the model and of the baseline scores (NaN if none) on the same queries."""
    scores = model.predict_data(data)
    ours: dict[str, list[str]] = {}
    base: dict[str, list[str]] = {}
    sizes = data.group_sizes()
    start = 0
    for q, n in zip(data.query_ids, sizes, strict=True):
        sl = slice(start, start + int(n))
        ours[q] = _rank(data.doc_ids[sl], scores[sl])
        if baseline is not None:
            base[q] = _rank(data.doc_ids[sl], baseline[sl])
        start += int(n)
    out = {}
    for suffix, ex in (("", False), ("_nozero", True)):
        out[f"ndcg@10{suffix}"] = _ndcg(ours, qrels, ex)
        out[f"rrf_ndcg@10{suffix}"] = _ndcg(base, qrels, ex) if baseline is not None else math.nan
    return out


# --- data sources ------------------------------------------------------------------------


def _encoder(settings: Any, log: Log) -> Any:
    import torch

    torch.set_num_threads(2)  # shared 2-core machine: deliberate and small
    from indexing.encoders import load_encoder

    t0 = time.perf_counter()
    enc = load_encoder(settings.embedding)
    log(f"loaded encoder {enc.model_id} in {time.perf_counter() - t0:.1f}s")
    return enc


def _ensure_index(index_dir: Path, dataset: Any, settings: Any, encoder: Any, log: Log) -> None:
    from indexing.build import build_local_index
    from indexing.embedding_cache import EmbeddingCache
    from indexing.layout import current_version

    if current_version(index_dir):
        return
    log(f"no index in {index_dir}: building one from {len(dataset.corpus)} documents")
    index_dir.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache(index_dir.parent / f"{index_dir.name}.embeddings.sqlite")
    try:
        build_local_index(dataset.corpus, index_dir, encoder, settings.index, cache)
    finally:
        cache.close()


def replay_dataset(
    dataset_dir: Path,
    index_dir: Path,
    names: Sequence[str],
    settings: Any,
    split: str,
    log: Log,
    encoder: Any = None,
) -> tuple[Any, dict[str, dict[str, float]], dict[str, Any]]:
    """Judged queries -> RankingData (base margin = the settings' base_margin_spec) + qrels +
    info. ``encoder``: an already loaded one (else loaded from the settings)."""
    from indexing.loaders import load_beir
    from indexing.local import LocalBackend
    from ltr.dataset import RankingData
    from ltr.fusion import fusion_score
    from search.candidates import CandidateGenerator
    from search.replay import REPLAY_TIMEOUTS_MS, replay

    ds = load_beir(dataset_dir, split=split)
    if encoder is None:
        encoder = _encoder(settings, log)
    _ensure_index(index_dir, ds, settings, encoder, log)
    retrieval = getattr(settings, "retrieval", None)
    bm25_k = getattr(retrieval, "bm25_k", 100)
    knn_k = getattr(retrieval, "knn_k", 100)

    async def run() -> Any:
        backend = LocalBackend.open(index_dir, encoder)
        try:
            gen = CandidateGenerator(backend, encoder, bm25_k, knn_k, timeouts=REPLAY_TIMEOUTS_MS)
            return await replay(gen, ds.queries, ds.qrels, names, encoder=encoder)
        finally:
            await backend.close()

    t0 = time.perf_counter()
    rep = asyncio.run(run())
    log(f"replayed {len(rep.queries)} judged queries in {time.perf_counter() - t0:.1f}s")
    cfg = settings.ltr
    groups = []
    rrf: list[np.ndarray] = []
    qrels: dict[str, dict[str, float]] = {}
    for rq in rep.queries:
        if not rq.ids:
            continue
        spec = cfg.base_margin_spec()
        # exactly what search.pipeline computes from the manifest's spec at serve time
        margin = None if spec is None else fusion_score(rq.cs, spec["name"], spec["params"])
        groups.append((rq.query.id, rq.X, rq.labels, rq.ids, margin))
        rrf.append(fusion_score(rq.cs, "rrf"))
        qrels[rq.query.id] = dict(rq.qrels)
    data = RankingData.from_groups(groups, names)
    info = {"queries_replayed": len(rep.queries), "candidate_recall": rep.recall}
    # the RRF baseline of every row, aligned with ``data`` (kept beside it, by row)
    info["_rrf"] = np.concatenate(rrf) if rrf else np.zeros(0)
    return data, qrels, info


def events_dataset(
    db: Path, click_model: str, cfg: Any, log: Log
) -> tuple[Any, dict[str, dict[str, float]], dict[str, Any]]:
    """Impression log + click-model grades -> RankingData on the exact served vectors."""
    from ltr import click_models as cm
    from ltr.dataset import from_served_log
    from search.events import SqliteEventStore

    if not db.is_file():
        raise CliError(f"{db}: no such event store")
    store = SqliteEventStore(db)
    try:
        frame = store.served_features()
        sessions = store.sessions()
        if frame.empty or not sessions:
            raise CliError(f"{db}: the event store has no impressions to train on")
        # train on the featureset served last (the one the next model will serve)
        fid = str(frame["featureset_id"].iloc[-1])
        names = tuple(store.feature_names(fid))
    finally:
        store.close()
    n_clicks = int(frame["clicked"].sum())
    log(f"{len(sessions)} sessions, {len(frame)} served rows, {n_clicks} clicked")
    if n_clicks == 0:
        raise CliError(f"{db}: no clicks logged; nothing to learn from")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(sessions))
    cut = max(1, round(len(sessions) * 0.8))
    if click_model == "auto":
        fit_s = [sessions[i] for i in order[:cut]]
        held = [sessions[i] for i in order[cut:]]
        if not held:
            raise CliError("too few sessions to choose a click model by held-out perplexity")
        best, table = cm.select_best(None, fit_s, held)
        for s in table:
            log(f"click model {s.name}: held-out perplexity {s.perplexity:.4f}")
        name = best.name
    else:
        name = click_model
        cm.make_click_model(name)  # unknown names -> UnknownNameError
    model = cm.make_click_model(name).fit(sessions)  # the chosen model, on every session
    judgments = cm.labels(model)
    labels = {(j.query_id, j.doc_id): float(j.grade) for j in judgments}
    log(f"click model {name}: {len(labels)} graded (query, doc) pairs")
    margin_col = None
    if cfg.use_base_margin:
        if "base_margin" in frame.columns:
            margin_col = "base_margin"
        elif cfg.base_margin == "rrf" and "rrf" in names:
            margin_col = "rrf"  # the logged RRF feature is the fusion score itself (k = 60)
        else:
            log(f"the log has no {cfg.base_margin!r} score: training without a base margin")
    data = from_served_log(
        frame,
        labels,
        key="query",
        feature_names=names,
        featureset_id=fid,
        margin_column=margin_col,
    )
    if margin_col is not None and data.base_margin is None:
        log(f"logged {margin_col!r} has missing values: training without a base margin")
    elif margin_col == "rrf" and data.base_margin is not None:
        # the logged feature is raw RRF; the served margin is rrf * scale (base_margin_spec)
        data = dataclasses.replace(data, base_margin=data.base_margin * cfg.base_margin_scale)
    # qrels per group (request): the grades of its served rows
    qrels: dict[str, dict[str, float]] = {}
    for q, d, y in zip(data.qids, data.doc_ids, data.y, strict=True):  # type: ignore[arg-type]
        qrels.setdefault(str(q), {})[str(d)] = float(y)
    rrf = (
        data.X[:, names.index("rrf")].astype(np.float64)
        if "rrf" in names
        else np.nan_to_num(
            data.base_margin if data.base_margin is not None else np.zeros(len(data))
        )
    )
    # groups are requests; split units are query texts (all requests of a query together)
    units = dict(zip(frame["request_id"].astype(str), frame["query"].astype(str), strict=True))
    info = {
        "click_model": name,
        "sessions": len(sessions),
        "featureset_id": fid,
        "_rrf": rrf,
        "_units": units,
    }
    return data, qrels, info


# --- main ----------------------------------------------------------------------------------


def _promoted_booster(model_dir: Path, fid: str, log: Log) -> tuple[Any, str | None, bool]:
    """(booster, version, uses base margin) of the promoted model when it serves ``fid``."""
    import xgboost as xgb

    from ltr.errors import LTRError
    from ltr.registry import ModelRegistry

    if not model_dir.is_dir():
        return None, None, False
    registry = ModelRegistry(model_dir)
    version = registry.promoted()
    if version is None:
        return None, None, False
    try:
        model = registry.load(version, expected_featureset_id=fid)
    except LTRError as e:
        log(f"not continuing from {version}: {e}")
        return None, None, False
    booster = xgb.Booster()
    booster.load_model(bytearray(model.booster_bytes("ubj")))
    log(f"continuing from the promoted model {version} ({booster.num_boosted_rounds()} trees)")
    return booster, version, model.needs_base_margin


def _rows_of(data: Any, part: Any) -> np.ndarray:
    """Row indices in ``data`` of the rows of ``part`` (parts are built by take_queries)."""
    sizes = data.group_sizes()
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    where = {q: i for i, q in enumerate(data.query_ids)}
    return np.concatenate(
        [np.arange(starts[where[q]], starts[where[q]] + sizes[where[q]]) for q in part.query_ids]
    )


def run(args: argparse.Namespace, log: Log, encoder: Any = None) -> dict[str, Any]:
    """Train, evaluate on the held-out queries, save (and promote). ``encoder``: reuse a
    loaded one for --dataset (tests; else loaded from the settings)."""
    from ltr.dataset import split_by_query
    from ltr.features import BEHAVIOR_FEATURES, featureset_id
    from ltr.registry import ModelRegistry
    from ltr.train import add_cold_copies, fit_recipe
    from scripts.settings import load_settings

    settings = load_settings(args.settings)
    cfg = settings.ltr
    model_dir = Path(args.model_dir or settings.registry.dir)
    if args.dataset:
        if not args.index_dir:
            raise CliError("--index-dir is required with --dataset")
        dataset = Path(args.dataset)
        if not (dataset / "corpus.jsonl").is_file():
            raise CliError(f"{dataset} is not a BEIR directory (no corpus.jsonl)")
        names = resolve_features(args.features)
        data, qrels, info = replay_dataset(
            dataset, Path(args.index_dir), names, settings, args.qrels, log, encoder
        )
        label_source = "qrels"
    else:
        click_model = args.click_model or cfg.click_model
        data, qrels, info = events_dataset(Path(args.events), click_model, cfg, log)
        names = data.feature_names
        label_source = f"clicks:{info['click_model']}"
    rrf_all = info.pop("_rrf")
    units = info.pop("_units", None)
    n_units = data.n_queries if units is None else len(set(units.values()))
    if n_units < 3:
        raise CliError(f"need at least 3 queries to split train/test, got {n_units}")
    train, test = split_by_query(
        data, (1 - cfg.test_fraction, cfg.test_fraction), seed=cfg.seed, units=units
    )
    init_model, parent = None, None
    if args.events and cfg.continue_from_promoted:
        init_model, parent, data_bm = _promoted_booster(model_dir, info["featureset_id"], log)
        if init_model is not None:
            cfg = dataclasses.replace(cfg, num_boost_round=cfg.continue_rounds)
            if not data_bm:  # the parent was trained without a base margin: so is the child
                train = dataclasses.replace(train, base_margin=None)
                test = dataclasses.replace(test, base_margin=None)
            elif train.base_margin is None:
                raise CliError(
                    f"model {parent} boosts from a base margin the log does not hold; "
                    "set ltr.continue_from_promoted = false to train from scratch"
                )
    fit_data = add_cold_copies(train, BEHAVIOR_FEATURES, cfg.cold_share, cfg.seed)
    log(
        f"{len(names)} features; queries train/test = {train.n_queries}/{test.n_queries} "
        f"(+{fit_data.n_queries - train.n_queries} cold copies), rows {len(data)}"
    )
    t0 = time.perf_counter()
    trained = fit_recipe(
        fit_data, cfg, units=units, verbose=False if args.quiet else 25, init_model=init_model
    )
    fit_s = time.perf_counter() - t0
    log(
        f"trained {trained.best_iteration + 1} trees (rounds chosen on {cfg.inner_folds} "
        f"inner folds, smoothed CV NDCG@{cfg.eval_at} {trained.best_score:.4f}) in {fit_s:.1f}s"
    )
    metrics: dict[str, float] = {}
    base = None if rrf_all is None else rrf_all[_rows_of(data, test)]
    for key, value in compare(trained, test, base, qrels).items():
        metrics[f"test_{key}"] = value
    if init_model is not None:  # the parent on the same held-out rows: did the child improve?
        bm = test.base_margin if trained.uses_base_margin else None
        parent_scores = init_model.inplace_predict(
            test.X, predict_type="margin", missing=np.nan, base_margin=bm
        )
        par = compare(trained, test, np.asarray(parent_scores, dtype=np.float64), qrels)
        metrics["test_parent_ndcg@10"] = par["rrf_ndcg@10"]
    # XGBoost's own ndcg@10 (exp gain; a query without a positive label counts 1): the
    # round-choice criterion, not comparable with the test numbers (ltr.metrics)
    metrics["cv_xgb_ndcg@10"] = trained.best_score
    registry = ModelRegistry(
        model_dir,
        keep_versions=settings.registry.keep_versions,
        model_format=settings.registry.model_format,
    )
    fid = featureset_id(list(names)) if args.dataset else str(info["featureset_id"])
    sizes = {
        "train": {"queries": train.n_queries, "rows": len(train)},
        "cold_copies": {
            "queries": fit_data.n_queries - train.n_queries,
            "rows": len(fit_data) - len(train),
        },
        "test": {"queries": test.n_queries, "rows": len(test)},
    }
    version = registry.save(
        trained,
        featureset_id=fid,
        base_margin=cfg.base_margin_spec() if trained.uses_base_margin else None,
        metrics=metrics,
        data_sizes=sizes,
        label_source=label_source,
        extra={
            "source": str(args.dataset or args.events),
            "train_seconds": round(fit_s, 2),
            "rounds": trained.best_iteration + 1,
            "continued_from": parent,
            **{k: v for k, v in info.items() if isinstance(v, str | int | float | dict)},
        },
        # replayed judgments hold whole candidate lists: keep what the model would serve;
        # logged impressions (--events) are served rows already.
        reference_rows=(
            train.top_k_rows(trained.predict_data(train), cfg.reference_top_k)
            if args.dataset
            else train
        ),
        reference_max_rows=cfg.reference_rows,
        seed=cfg.seed,
    )
    if args.promote:
        registry.promote(version)
    return {
        "version": version,
        "promoted": bool(args.promote),
        "model_dir": str(model_dir),
        "featureset_id": fid,
        "label_source": label_source,
        "best_iteration": trained.best_iteration,
        "metrics": metrics,
        "data_sizes": sizes,
    }


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
        result = run(args, log)
    except (CliError, LTRError, IndexingError, SettingsError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    m = result["metrics"]
    print(
        f"model {result['version']} ({result['label_source']}) saved to {result['model_dir']}"
        f"{' and promoted' if result['promoted'] else ''}\n"
        f"  inner-CV NDCG@10 {m['cv_xgb_ndcg@10']:.4f} (XGBoost's metric: exp gain, "
        "judgment-less queries count 1; smoothed, at the chosen round)\n"
        f"  test  NDCG@10 {m['test_ndcg@10']:.4f} (RRF {m['test_rrf_ndcg@10']:.4f})"
    )
    if "test_parent_ndcg@10" in m:
        print(f"  previous model on the same test rows: NDCG@10 {m['test_parent_ndcg@10']:.4f}")
    if result["label_source"] == "qrels":  # explicit 0 judgments (Cranfield: source papers)
        print(
            f"  without 0-judged documents: test {m['test_ndcg@10_nozero']:.4f} "
            f"(RRF {m['test_rrf_ndcg@10_nozero']:.4f})"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2, allow_nan=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
