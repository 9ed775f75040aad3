"""Shared builders for the API tests (engineer F): a small real BEIR subset, a real local
index over it, a real LambdaMART model trained through the serving pipeline, and a real
server process with the tests' settings (scripts.serverproc).

Not a test module (no test functions); imported by tests/test_api*.py and test_pipeline.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexing.embedding_cache import EmbeddingCache
from indexing.encoders import Encoder
from indexing.loaders import load_beir
from ltr.config import TrainConfig
from ltr.dataset import RankingData
from ltr.features import BEHAVIOR_FEATURES, STATIC_FEATURES, TEXT_FEATURES, featureset_id
from ltr.fusion import fusion_score
from ltr.metrics import ndcg_at_k
from ltr.registry import ModelRegistry
from ltr.train import Trainer
from scripts.serverproc import start_server
from search.config import ApiConfig

# what the API serves without a model: every feature (text, static, behavior)
DEFAULT_FEATURES: tuple[str, ...] = (*TEXT_FEATURES, *STATIC_FEATURES, *BEHAVIOR_FEATURES)

ADMIN = "s3cret-admin-token"


def write_small_beir(cranfield: Path, out: Path, n_queries: int = 20, extra_docs: int = 40) -> Path:
    """A BEIR subset: the first judged queries, their judged docs and a few others.

    Adds a ``category`` (two values) and a numeric ``year`` to every document so filters
    and static attributes are exercised (Cranfield has neither).
    """
    qrels: dict[str, dict[str, int]] = {}
    lines = (cranfield / "qrels" / "test.tsv").read_text().splitlines()[1:]
    for line in lines:
        qid, did, grade = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(grade)
    queries = [json.loads(x) for x in (cranfield / "queries.jsonl").read_text().splitlines()]
    chosen = [q for q in queries if sum(g > 0 for g in qrels.get(q["_id"], {}).values()) >= 4]
    chosen = chosen[:n_queries]
    keep = {d for q in chosen for d in qrels[q["_id"]]}
    corpus = [json.loads(x) for x in (cranfield / "corpus.jsonl").read_text().splitlines()]
    others = [c for c in corpus if c["_id"] not in keep]
    rng = np.random.default_rng(0)
    for i in rng.choice(len(others), size=extra_docs, replace=False):
        keep.add(others[int(i)]["_id"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    with open(out / "corpus.jsonl", "w") as f:
        for c in corpus:
            if c["_id"] in keep:
                n = int(c["_id"])
                row: dict[str, Any] = dict(c)
                row.update(category="even" if n % 2 == 0 else "odd", year=1950 + n % 20)
                f.write(json.dumps(row) + "\n")
    with open(out / "queries.jsonl", "w") as f:
        for q in chosen:
            f.write(json.dumps(q) + "\n")
    with open(out / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in chosen:
            for d, g in qrels[q["_id"]].items():
                f.write(f"{q['_id']}\t{d}\t{g}\n")
    return out


def build_index(
    beir_dir: Path, index_dir: Path, encoder: Encoder, cache: EmbeddingCache | None = None
) -> str:
    from indexing.build import build_local_index

    ds = load_beir(beir_dir)
    return build_local_index(ds.corpus, index_dir, encoder, cache=cache)


def api_config(**kw: Any) -> ApiConfig:
    base: dict[str, Any] = {
        "admin_token": ADMIN,
        "impression_flush_ms": 60_000.0,  # long: tests must not depend on the timer flush
        "index_poll_s": 0.0,
        "access_log": False,
    }
    base.update(kw)
    return ApiConfig(**base)


def start_test_server(
    index_dir: Path,
    events: Path,
    port: int,
    log: Path,
    model_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    **env_extra: str,
) -> subprocess.Popen[bytes]:
    """``scripts/serve.py`` as its own process with the tests' settings (admin token ADMIN,
    no timer flush, no model required; ``env_extra``: more LTRSEARCH_* settings)."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LTRSEARCH_API__ADMIN_TOKEN": ADMIN,
        "LTRSEARCH_API__IMPRESSION_FLUSH_MS": "60000",  # acks must not rely on the timer
        "LTRSEARCH_API__REQUIRE_MODEL": "false",
        **env_extra,
    }
    return start_server(
        index_dir,
        port=port,
        log=log,
        events=events,
        model_dir=model_dir,
        extra_args=extra_args,
        env=env,
    )


async def train_model_via_pipeline(
    pipeline: Any,
    beir_dir: Path,
    model_dir: Path,
    feature_names: Sequence[str],
    promote: bool = True,
    rounds: int = 30,
) -> str:
    """Replay the judged queries through Pipeline.featurize (the serving path), train a
    small LambdaMART boosted from RRF, save it to a registry."""
    ds = load_beir(beir_dir)
    grades: dict[str, dict[str, float]] = {}
    for j in ds.qrels:
        grades.setdefault(j.query_id, {})[j.doc_id] = j.grade
    groups = []
    for q in ds.judged_queries():
        fz = await pipeline.featurize(q.text, feature_names=feature_names, query_id=q.id)
        y = np.array([grades[q.id].get(d, 0.0) for d in fz.cs.ids])
        bm = fusion_score(fz.cs, "rrf", {})
        groups.append((q.id, fz.X, y, fz.cs.ids, bm))
    data = RankingData.from_groups(groups, feature_names)
    cfg = TrainConfig(num_boost_round=rounds, early_stopping_rounds=0)
    trained = Trainer(cfg).fit(data)
    reg = ModelRegistry(model_dir)
    version = reg.save(
        trained,
        featureset_id=featureset_id(feature_names),
        base_margin={"name": "rrf", "params": {}},
        reference_rows=data,
        reference_top_k=10,  # served-like: the model's top 10 per query, as the API logs
    )
    if promote:
        reg.promote(version)
    return version


def ndcg10(run: dict[str, list[str]], qrels: dict[str, dict[str, float]]) -> float:
    """Mean NDCG@10 with ltr.metrics (checked against ranx in tests/test_metrics.py)."""
    vals = [ndcg_at_k(ids, qrels.get(qid, {}), 10) for qid, ids in run.items()]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def build_model_sync(
    index_dir: Path,
    beir_dir: Path,
    model_dir: Path,
    encoder: Encoder,
    feature_names: Sequence[str],
    promote: bool = True,
) -> str:
    """train_model_via_pipeline from synchronous (session-fixture) code."""
    import asyncio

    from indexing.local import LocalBackend
    from search.pipeline import Pipeline

    async def run() -> str:
        backend = LocalBackend.open(index_dir, encoder)
        p = Pipeline(backend, encoder, feature_names, index_version=backend.version)
        try:
            return await train_model_via_pipeline(p, beir_dir, model_dir, feature_names, promote)
        finally:
            await p.close()

    return asyncio.run(run())


async def serve_and_click(
    pipeline: Any, store: Any, q: str, k: int = 5, at: int = 3
) -> tuple[Any, str]:
    """Serve ``q``, log its page, then a click on the hit at position ``at``: the search
    result and the clicked id."""
    from search.events import Event
    from search.pipeline import SearchRequest

    res = await pipeline.search(SearchRequest(q=q, k=k))
    assert res.impression is not None
    store.add_impressions([res.impression])
    doc = str(res.hits[at - 1]["id"])
    store.add_events([Event("click", res.request_id, doc, res.impression.ts + 1)])
    return res, doc


async def raw_request(
    port: int, data: bytes, timeout_s: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` on a fresh connection and read the response until the server closes
    it (or Content-Length bytes of body): status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        n = int(headers.get("content-length", -1))
        body = await asyncio.wait_for(reader.readexactly(n) if n >= 0 else reader.read(), timeout_s)
        return status, headers, body
    finally:
        writer.close()
