"""Training data from the two sources the product has, and ``train``: a source in, a model out.

- ``ReplaySource``: a BEIR directory's judged queries replayed through the serving code
  (search.replay) on a local index, built from the corpus when the directory holds none,
  so the training rows are exactly what the API would compute;
- ``EventsSource``: the API's impression log (search.events): the click model (``auto`` =
  lowest held-out perplexity) grades the logged (query, doc) pairs and the grades join
  the EXACT served feature vectors. With an ``index_dir``, the log's queries are replayed
  through the serving path with the click history as it is now (``replay_log``): a sample
  of the requests is the drift reference of the NEW model (``log_reference``), whose top-k
  differs from the pages the previous model served, and candidates the log never showed
  join the training rows with grade 0 (``with_unshown``).

The run itself (split, fit, held-out report, registry save) is ltr.training_run, which
needs nothing of search; the sources live here because one replays through search's
candidate generation and the other reads the log search wrote. scripts/train.py is the
command line over ``train``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from indexing.config import EmbeddingConfig, IndexConfig
from indexing.documents import Document
from indexing.encoders import Encoder
from ltr.behavior import DEFAULT_HALF_LIFE_S
from ltr.config import RegistryConfig, TrainConfig
from ltr.dataset import RankingData
from ltr.errors import TrainingDataError
from ltr.features import featureset_id
from ltr.fusion import RRF_MARGIN_SCALE
from ltr.training_run import Log, TrainingSet, TrainResult, run_training, silent
from search.config import RetrievalConfig
from search.featurize import BehaviorSource
from search.replay import ReplayedQuery


@dataclass(frozen=True)
class ReplaySource:
    """Judged queries of a BEIR directory, replayed on the local index in ``index_dir``."""

    dataset: Path
    index_dir: Path
    features: tuple[str, ...]  # ltr.training_run.resolve_features
    split: str = "test"  # qrels/<split>.tsv
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)  # when the index is built here
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)  # bm25_k, knn_k


@dataclass(frozen=True)
class EventsSource:
    """The impression log of the API, graded by a click model."""

    db: Path
    click_model: str = "auto"  # "auto" or a name of ltr.click_models.CLICK_MODELS
    # the serving index: the log's queries are replayed on it for the drift reference
    # (None: the reference is the logged rows, i.e. the previous model's pages)
    index_dir: Path | None = None
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    half_life_s: float = DEFAULT_HALF_LIFE_S  # the server's events.half_life_s


def _encoder(cfg: EmbeddingConfig, log: Log) -> Encoder:
    import torch

    torch.set_num_threads(2)  # shared 2-core machine: deliberate and small
    from indexing.encoders import load_encoder

    t0 = time.perf_counter()
    enc = load_encoder(cfg)
    log(f"loaded encoder {enc.model_id} in {time.perf_counter() - t0:.1f}s")
    return enc


def _ensure_index(
    source: ReplaySource, corpus: Sequence[Document], encoder: Encoder, log: Log
) -> None:
    from indexing.build import build_local_index
    from indexing.embedding_cache import EmbeddingCache
    from indexing.layout import current_version

    index_dir = source.index_dir
    if current_version(index_dir):
        return
    log(f"no index in {index_dir}: building one from {len(corpus)} documents")
    index_dir.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache(index_dir.parent / f"{index_dir.name}.embeddings.sqlite")
    try:
        build_local_index(corpus, index_dir, encoder, source.index, cache)
    finally:
        cache.close()


def replay_dataset(
    source: ReplaySource, cfg: TrainConfig, log: Log = silent, encoder: Encoder | None = None
) -> TrainingSet:
    """Judged queries -> rows with the base margin of ``cfg.base_margin_spec()`` and the
    RRF baseline. ``encoder``: an already loaded one (else loaded from the source's
    embedding settings)."""
    from indexing.loaders import load_beir
    from ltr.fusion import fusion_score, minmax, retriever_scores
    from ltr.types import RETRIEVERS
    from search.replay import replay_index, run_sync

    ds = load_beir(source.dataset, split=source.split)
    if encoder is None:
        encoder = _encoder(source.embedding, log)
    _ensure_index(source, ds.corpus, encoder, log)
    t0 = time.perf_counter()
    rep = run_sync(
        replay_index(
            source.index_dir,
            encoder,
            ds.queries,
            ds.qrels,
            source.features,
            source.retrieval.bm25_k,
            source.retrieval.knn_k,
            extra_retrievers=source.retrieval.extra_retrievers,
        )
    )
    log(f"replayed {len(rep.queries)} judged queries in {time.perf_counter() - t0:.1f}s")
    groups = []
    rrf: list[np.ndarray] = []
    normed: dict[str, list[np.ndarray]] = {r: [] for r in RETRIEVERS}
    qrels: dict[str, dict[str, float]] = {}
    spec = cfg.base_margin_spec()
    for rq in rep.queries:
        if not rq.ids:
            continue
        # exactly what search.pipeline computes from the manifest's spec at serve time; a
        # linear margin is fitted on the training split by ltr.training_run from ``normed``
        margin = (
            None
            if spec is None or spec["name"] == "linear"
            else fusion_score(rq.cs, spec["name"], spec["params"])
        )
        groups.append((rq.query.id, rq.X, rq.labels, rq.ids, margin))
        rrf.append(fusion_score(rq.cs, "rrf"))
        for r in RETRIEVERS:
            normed[r].append(minmax(retriever_scores(rq.cs, r)))
        qrels[rq.query.id] = dict(rq.qrels)
    return TrainingSet(
        data=RankingData.from_groups(groups, source.features),
        qrels=qrels,
        # the RRF baseline of every row, aligned with ``data`` (kept beside it, by row)
        baseline=np.concatenate(rrf) if rrf else np.zeros(0),
        label_source="qrels",
        margin_inputs={r: np.concatenate(v) for r, v in normed.items()} if rrf else None,
        featureset_id=featureset_id(list(source.features)),
        source=str(source.dataset),
        info={"queries_replayed": len(rep.queries), "candidate_recall": rep.recall},
    )


def _margin_column(
    columns: Iterable[str], names: Sequence[str], cfg: TrainConfig, log: Log
) -> str | None:
    """The logged column the base margin comes from (None: train without one)."""
    if not cfg.use_base_margin:
        return None
    if "base_margin" in columns:
        return "base_margin"
    if cfg.base_margin == "linear" and {"bm25_minmax", "dense_minmax"} <= set(names):
        return None  # ltr.training_run fits the linear margin from those two columns
    if cfg.base_margin in ("rrf", "linear") and "rrf" in names:
        return "rrf"  # the logged RRF feature is the fusion score itself (k = 60)
    log(f"the log has no {cfg.base_margin!r} score: training without a base margin")
    return None


def _logged_margin(
    column: str | None, names: Sequence[str], cfg: TrainConfig, has_margin: bool
) -> Callable[[ReplayedQuery, np.ndarray], np.ndarray] | None:
    """The base margin of replayed candidates as the logged ``column`` holds it: the RRF
    feature x the scale events_dataset applies (None: no margin, or a logged margin column
    the replay cannot recompute)."""
    if not has_margin or column != "rrf":
        return None
    col, scale = list(names).index("rrf"), _rrf_scale(cfg)
    return lambda rq, idx: rq.X[idx, col].astype(np.float64) * scale


def _rrf_scale(cfg: TrainConfig) -> float:
    """The logged feature is raw RRF; the served margin is rrf * scale (base_margin_spec;
    standing in for a linear margin: ltr.fusion.RRF_MARGIN_SCALE, ltr.training_run)."""
    return cfg.base_margin_scale if cfg.base_margin == "rrf" else RRF_MARGIN_SCALE


def _grades_and_baseline(
    data: RankingData, names: Sequence[str]
) -> tuple[dict[str, dict[str, float]], np.ndarray]:
    """Per group (request) the grades of its served rows, and the RRF baseline per row."""
    qrels: dict[str, dict[str, float]] = {}
    for q, d, y in zip(data.qids, data.doc_ids, data.y, strict=True):  # type: ignore[arg-type]
        qrels.setdefault(str(q), {})[str(d)] = float(y)
    rrf = (
        data.X[:, list(names).index("rrf")].astype(np.float64)
        if "rrf" in names
        else np.nan_to_num(
            data.base_margin if data.base_margin is not None else np.zeros(len(data))
        )
    )
    return qrels, rrf


def replay_log(
    source: EventsSource,
    texts: Sequence[str],
    names: Sequence[str],
    log: Log = silent,
    encoder: Encoder | None = None,
) -> dict[str, ReplayedQuery]:
    """The log's query ``texts`` replayed through the serving code on ``source.index_dir``
    with the behavior aggregates of the event store decayed to now: whole candidate lists as
    the next model will score them once promoted. Keyed by text."""
    from ltr.types import Query
    from search.aggregates import BehaviorAggregates
    from search.events import SqliteEventStore
    from search.replay import replay_index, run_sync

    assert source.index_dir is not None
    store = SqliteEventStore(source.db, read_only=True)
    try:
        agg = BehaviorAggregates.read(store, source.half_life_s)
    finally:
        store.close()
    now = time.time()

    def history(text: str) -> BehaviorSource:
        return lambda cs: agg.arrays(text, cs.ids, now=now)

    texts = list(dict.fromkeys(texts))
    encoder = encoder or _encoder(source.embedding, log)
    t0 = time.perf_counter()
    rep = run_sync(
        replay_index(
            source.index_dir, encoder, [Query(f"q{i}", t) for i, t in enumerate(texts)], {},
            names, source.retrieval.bm25_k, source.retrieval.knn_k,
            only_judged=False, behavior=history,
            extra_retrievers=source.retrieval.extra_retrievers,
        )
    )  # fmt: skip
    log(
        f"replayed the log's {len(texts)} queries with the click history as it is now in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    return {rq.query.text: rq for rq in rep.queries}


def log_reference(
    frame: pd.DataFrame, replayed: Mapping[str, ReplayedQuery], names: Sequence[str],
    cfg: TrainConfig,
) -> Callable[[Mapping[str, Any] | None], RankingData]:  # fmt: skip
    """Whole candidate lists of a seeded sample of the log's requests (``replayed``,
    ``replay_log``), as a function of the base-margin spec the model is saved with (the
    margin as serving computes it, ltr.model.RankModel.margin); the registry keeps each
    request's top ``cfg.reference_top_k`` by the new model (ltr.registry). Sampling requests
    (not queries) weights each query by its traffic, as the served log does."""
    from ltr.fusion import fusion_score

    requests = frame.drop_duplicates("request_id")[["request_id", "query"]]
    want = max(1, -(-cfg.reference_rows // max(cfg.reference_top_k, 1)))
    if len(requests) > want:
        pick = np.random.default_rng(cfg.seed).choice(len(requests), want, replace=False)
        requests = requests.iloc[np.sort(pick)]
    rids, texts_of = requests["request_id"].astype(str), requests["query"].astype(str)
    pages = [(rid, replayed[t]) for rid, t in zip(rids, texts_of, strict=True)]

    def rows(spec: Mapping[str, Any] | None) -> RankingData:
        groups = []
        for rid, rq in pages:
            if not rq.ids:
                continue
            margin = (
                None
                if spec is None
                else fusion_score(rq.cs, str(spec["name"]), dict(spec.get("params") or {}))
            )
            groups.append((rid, rq.X, np.zeros(len(rq.ids)), rq.ids, margin))
        return RankingData.from_groups(groups, names)

    return rows


def with_unshown(
    data: RankingData,
    units: Mapping[str, str],
    replayed: Mapping[str, ReplayedQuery],
    shown: Mapping[str, set[str]],
    per_request: int,
    seed: int,
    margin_of: Callable[[ReplayedQuery, np.ndarray], np.ndarray] | None,
) -> RankingData:
    """The logged rows plus, per request, up to ``per_request`` candidates of its query that
    the log never showed for it (seeded), graded 0 and featurized by the replay.

    Why: the click model grades only what was shown; a model trained on the previous
    model's pages alone never saw the rest of the candidate list and, scoring all of it
    when served, ranked mostly never-shown documents into its top 10 (#18: 89% of them on
    the test scenario, judged NDCG@10 of its pages 0.64 -> 0.19), which then moved as they
    gathered impressions. Unshown = 0 is the pooled-judgment assumption the judged path
    (search.replay) makes for unjudged candidates. ``margin_of``: the base margin of the
    picked candidates as the logged margin column holds it (None: no base margin)."""
    rng = np.random.default_rng(seed)
    groups = []
    bm = data.base_margin
    sizes = data.group_sizes()
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    for start, size in zip(starts, sizes, strict=True):
        sl = slice(int(start), int(start + size))
        rid = str(data.qids[sl.start])
        text = units[rid]
        rq = replayed.get(text)
        seen = shown.get(text, set())
        pool = [i for i, d in enumerate(rq.ids) if d not in seen] if rq is not None else []
        n = min(per_request, len(pool))
        pick = np.sort(rng.choice(pool, n, replace=False)) if n else np.zeros(0, np.int64)
        X, y, ids = data.X[sl], data.y[sl], list(data.doc_ids[sl])  # type: ignore[index]
        margin = None if bm is None else bm[sl]
        if len(pick) and rq is not None:
            idx = pick.astype(np.int64)
            X = np.concatenate([X, rq.X[idx].astype(X.dtype)])
            y = np.concatenate([y, np.zeros(len(idx))])
            ids += [rq.ids[i] for i in idx]
            if margin is not None and margin_of is not None:
                margin = np.concatenate([margin, margin_of(rq, idx)])
        groups.append((rid, X, y, ids, margin))
    return RankingData.from_groups(groups, data.feature_names)


def events_dataset(
    source: EventsSource, cfg: TrainConfig, log: Log = silent, encoder: Encoder | None = None
) -> TrainingSet:
    """Impression log + click-model grades -> rows on the exact served vectors, trained on
    the featureset served last (the one the next model will serve)."""
    from ltr import click_models as cm
    from ltr.dataset import from_served_log
    from ltr.training_run import choose_click_model
    from search.errors import EventStoreError
    from search.events import SqliteEventStore

    db = source.db
    if not db.is_file():
        raise TrainingDataError(f"{db}: no such event store")
    try:
        store = SqliteEventStore(db, read_only=True)  # training never writes the log
    except EventStoreError as e:  # an empty or foreign file: not an event store
        raise TrainingDataError(str(e)) from None
    try:
        frame = store.served_features()
        sessions = store.sessions()
        if frame.empty or not sessions:
            raise TrainingDataError(f"{db}: the event store has no impressions to train on")
        fid = str(frame["featureset_id"].iloc[-1])
        names = tuple(store.feature_names(fid))
    finally:
        store.close()
    n_clicks = int(frame["clicked"].sum())
    log(f"{len(sessions)} sessions, {len(frame)} served rows, {n_clicks} clicked")
    if n_clicks == 0:
        raise TrainingDataError(f"{db}: no clicks logged; nothing to learn from")
    model = choose_click_model(sessions, source.click_model, cfg.seed, log)
    labels = {(j.query_id, j.doc_id): float(j.grade) for j in cm.labels(model)}
    log(f"click model {model.name}: {len(labels)} graded (query, doc) pairs")
    margin_col = _margin_column(frame.columns, names, cfg, log)
    data = from_served_log(
        frame, labels, key="query", feature_names=names, featureset_id=fid, margin_column=margin_col
    )
    if margin_col is not None and data.base_margin is None:
        log(f"logged {margin_col!r} has missing values: training without a base margin")
    elif margin_col == "rrf" and data.base_margin is not None:
        data = dataclasses.replace(data, base_margin=data.base_margin * _rrf_scale(cfg))
    served = frame[frame["featureset_id"] == fid]
    units = dict(zip(frame["request_id"].astype(str), frame["query"].astype(str), strict=True))
    reference, unshown = None, 0
    if source.index_dir is not None:
        replayed = replay_log(source, served["query"].astype(str), names, log, encoder)
        reference = log_reference(served, replayed, names, cfg)
        margin_of = _logged_margin(margin_col, names, cfg, data.base_margin is not None)
        if cfg.log_unshown > 0 and (data.base_margin is None or margin_of is not None):
            # shown under any featureset: what the log never showed for the query at all
            shown = frame.groupby("query")["doc_id"].agg(lambda d: set(d.astype(str)))
            before = len(data)
            data = with_unshown(
                data, units, replayed, shown.to_dict(), cfg.log_unshown, cfg.seed, margin_of
            )
            unshown = len(data) - before
            log(f"added {unshown} never-shown candidates as grade 0 (log_unshown)")
        elif cfg.log_unshown > 0:
            log(f"logged {margin_col!r} cannot be recomputed for unshown candidates: none added")
    qrels, rrf = _grades_and_baseline(data, names)
    return TrainingSet(
        data=data,
        qrels=qrels,
        baseline=rrf,
        label_source=f"clicks:{model.name}",
        featureset_id=fid,
        source=str(db),
        served=True,
        # groups are requests; split units are query texts (all requests of a query together)
        units=units,
        reference=reference,
        info={
            "click_model": model.name,
            "sessions": len(sessions),
            "featureset_id": fid,
            "margin_column": margin_col or "",
            "unshown_rows": unshown,
        },
    )


def train(
    source: ReplaySource | EventsSource,
    cfg: TrainConfig,
    model_dir: Path,
    registry: RegistryConfig | None = None,
    *,
    promote: bool = False,
    log: Log = silent,
    verbose: bool | int = 25,
    encoder: Encoder | None = None,
) -> TrainResult:
    """Train on ``source`` with ``cfg`` (the settings' ltr section), evaluate on the held-out
    queries, save to the registry at ``model_dir`` (promote with ``promote``).
    ``encoder``: reuse a loaded one (else loaded from the source's settings when needed)."""
    if isinstance(source, ReplaySource):
        ts = replay_dataset(source, cfg, log, encoder)
    else:
        ts = events_dataset(source, cfg, log, encoder)
    return run_training(ts, cfg, model_dir, registry, promote=promote, log=log, verbose=verbose)
