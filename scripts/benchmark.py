"""Retrieval and reindex speed of the local backend on a synthetic product catalog.

    HF_HUB_OFFLINE=1 .venv/bin/python -m scripts.benchmark [--docs 100000] [--embed-docs 1000]

The catalog is the demo catalog's (indexing.demo_catalog, the one generator of the demo,
the benchmarks and the tests): its products as title + description documents (~65 words)
with category, price and rating, and its queries of every type. Runs recorded before
2026-12-04 used this benchmark's own generator (~63 words per document, six categories,
queries of a product type plus 1-2 qualifiers): same sizes, not the same documents.

Measures, on that catalog:
- reindex throughput: a cold build that embeds (real MiniLM, ``--embed-docs`` documents,
  because embedding 100K texts on a shared 2-core CPU takes hours), the same build again
  from the embedding cache, and cached builds of the whole ``--docs`` catalog: exact kNN
  only (BM25 side in a second process, and all in one process), with the ANN graph
  from scratch, the same documents again (graph reused), 2% of the documents changed,
  2% removed and 2% added (graph extended), and back to the original catalog. CPU
  seconds include the BM25 child process;
- BM25 top-100 latency p50/p99: ours (bm25s Lucene scores, Snapshot.bm25) and the same
  through LocalBackend (asyncio.to_thread), against rank-bm25's BM25Okapi on a subsample
  of queries (it scores every document in Python and is slow);
- kNN top-100 latency p50/p99, exact (numpy matmul + argpartition) vs the ANN graph, and the
  ANN's recall@100 against exact, for a few search breadths (IVF nprobe).

The vectors of the full catalog are *composed*, not embedded: every attribute word of the
catalog (and every query word) is embedded with the real model once, a document's vector
is the normalized weighted sum of its words' vectors plus noise, and those vectors are put
in the embedding cache under the model's id. This keeps the clustered structure of real
embeddings (what ANN recall depends on) without hours of encoding; it is said so wherever
the numbers are reported.
Prints a JSON report (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from indexing.bm25 import top_k
from indexing.build import build_local_index
from indexing.config import EmbeddingConfig, IndexConfig
from indexing.demo_catalog import (
    Product,
    attribute_vocabulary,
    generate_products,
    generate_queries,
    tokens,
)
from indexing.documents import Document, embedding_text
from indexing.embedding_cache import EmbeddingCache
from indexing.encoders import Encoder, load_encoder
from indexing.local import LocalBackend
from indexing.local_store import Snapshot


# --- the catalog: the demo catalog's products (indexing.demo_catalog) -----------------------
def document(p: Product) -> Document:
    """A product as this benchmark indexes it: title, description, category, price and rating
    (the corpus rows' attribute text fields are left out: ~65 words per document, like the
    catalog this benchmark measured before it used the demo catalog)."""
    attrs = {"price": p.price}
    if p.rating is not None:
        attrs["rating"] = p.rating
    return Document(id=p.id, title=p.title, body=p.text, category=p.category, attrs=attrs)


def catalog(n: int, n_queries: int) -> tuple[list[Document], list[str]]:
    """n documents and n_queries distinct query texts (every demo query type: head, torso,
    tail, misspelled, synonym), identical for a given (n, n_queries)."""
    products = generate_products(n)
    queries = [q.text for q in generate_queries(products, n_queries)]
    return [document(p) for p in products], queries


class Composer:
    """Vectors composed from real word embeddings (see the module docstring): the catalog's
    attribute words, plus the query words (misspellings, sizes) so no query is empty."""

    def __init__(self, encoder: Encoder, queries: Sequence[str], seed: int = 2) -> None:
        vocab = sorted(set(attribute_vocabulary()) | {w for q in queries for w in tokens(q)})
        self.words = {w: i for i, w in enumerate(vocab)}
        self.table = encoder.encode(vocab)
        self.rng = np.random.default_rng(seed)

    def __call__(self, texts: Sequence[str], noise: float = 0.02) -> np.ndarray:
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        for i, text in enumerate(texts):
            head, _, tail = text.partition("\n")
            for w in tokens(head):
                j = self.words.get(w)
                if j is not None:
                    out[i] += 2.0 * self.table[j]
            for w in tokens(tail):
                j = self.words.get(w)
                if j is not None:
                    out[i] += 0.3 * self.table[j]
        out += noise * self.rng.standard_normal(out.shape).astype(np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


# --- timing helpers -------------------------------------------------------------------------
def latencies(fn: Callable[[Any], Any], inputs: Sequence[Any]) -> dict[str, Any]:
    """Per-call wall ms p50/p99/mean over inputs (after one warm-up call), plus CPU ms/call."""
    fn(inputs[0])
    times = []
    cpu0 = time.process_time()
    for x in inputs:
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1000)
    cpu = (time.process_time() - cpu0) * 1000 / len(inputs)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "cpu_ms_per_call": round(cpu, 3),
        "n": len(times),
    }


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children (the BM25 build
    process of a large reindex)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed_build(
    docs: list[Document],
    root: Path,
    encoder: Encoder,
    cfg: IndexConfig,
    cache: EmbeddingCache | None,
    **kwargs: Any,
) -> dict[str, Any]:
    load = load_average()
    t, c, child = time.perf_counter(), cpu_seconds(), os.times()
    version = build_local_index(docs, root, encoder, cfg, cache=cache, **kwargs)
    wall, cpu = time.perf_counter() - t, cpu_seconds() - c
    child_end = os.times()
    child_cpu = (child_end.children_user + child_end.children_system) - (
        child.children_user + child.children_system
    )
    out: dict[str, Any] = {
        "docs": len(docs),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "docs_per_s": round(len(docs) / wall, 1),
        "docs_per_cpu_s": round(len(docs) / cpu, 1),
        "cpu_s_bm25_process": round(child_cpu, 2),  # in cpu_s; runs beside the parent
        "load_avg": load,
        "version": version,
    }
    manifest = json.loads((root / "versions" / version / "manifest.json").read_text())
    out["bm25_child_process"] = manifest.get("bm25_child_process", False)
    ann = manifest["ann"]
    if ann["enabled"]:
        out["hnsw"] = {k: ann.get(k) for k in ("build", "kept", "added", "deleted")}
    return out


def changed_catalog(docs: list[Document], every: int = 50) -> list[Document]:
    """A reindex's input after a day of catalog edits: 1/every of the documents get a new
    body (so a new vector), 1/every are removed and 1/every new ones are added."""
    n = len(docs)
    fresh = [document(p) for p in generate_products(n + n // every, seed=7)[n:]]
    out = []
    for i, d in enumerate(docs):
        if i % every == 1:
            continue
        if i % every == 0:
            d = Document(
                id=d.id,
                title=d.title,
                body=d.body + " refreshed",
                extra=d.extra,
                category=d.category,
                attrs=d.attrs,
            )
        out.append(d)
    new = [
        Document(id="n" + d.id, title=d.title, body=d.body, category=d.category, attrs=d.attrs)
        for d in fresh
    ]
    return out + new


def load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


# --- the benchmark ----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(2)
    report: dict[str, Any] = {
        "docs": args.docs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_start": load_average(),
        },
    }
    encoder = load_encoder(EmbeddingConfig(backend=args.embedding_backend, threads=args.threads))
    report["model_id"] = encoder.model_id
    docs, queries = catalog(args.docs, args.queries)
    words = [len((d.title + " " + d.body).split()) for d in docs[:1000]]
    report["mean_tokens_per_doc"] = round(statistics.fmean(words), 1)
    work = Path(tempfile.mkdtemp(prefix="ltrsearch-bench-"))
    print(f"workdir {work}", flush=True)

    # 1. reindex with real embedding, then again from the cache
    sub = docs[: args.embed_docs]
    with EmbeddingCache(work / "real.sqlite") as cache:
        cold = timed_build(sub, work / "embed-idx", encoder, IndexConfig(), cache)
        warm = timed_build(sub, work / "embed-idx", encoder, IndexConfig(), cache)
    report["reindex_embedding"] = {"cold_embed": cold, "warm_cache": warm}
    print("reindex (embedding):", json.dumps(report["reindex_embedding"]), flush=True)
    if args.embed_only:
        report["machine"]["load_avg_end"] = load_average()
        return report

    # 2. the whole catalog from a cache filled with composed vectors
    composer = Composer(encoder, queries)
    changed = changed_catalog(docs)
    texts = [embedding_text(d) for d in docs]
    all_texts = list(dict.fromkeys(texts + [embedding_text(d) for d in changed]))
    cache = EmbeddingCache(work / "composed.sqlite")
    for i in range(0, len(all_texts), 10_000):
        chunk = all_texts[i : i + 10_000]
        cache.put_many(encoder.model_id, chunk, composer(chunk))
    ann_cfg = IndexConfig(ann_threshold=min(50_000, args.docs - 1), keep_versions=10)
    exact_cfg = IndexConfig(ann_threshold=args.docs + 1)
    cached: dict[str, Any] = {}
    for label, root, cfg, batch, kwargs in [
        ("exact_only", "exact-idx", exact_cfg, docs, {"parallel": True}),
        ("exact_only_one_process", "exact1-idx", exact_cfg, docs, {"parallel": False}),
        ("with_hnsw", "ann-idx", ann_cfg, docs, {}),
        ("with_hnsw_same_docs_again", "ann-idx", ann_cfg, docs, {}),
        ("with_hnsw_2pct_changed_removed_added", "ann-idx", ann_cfg, changed, {}),
        ("with_hnsw_back_to_the_catalog", "ann-idx", ann_cfg, docs, {}),
    ]:
        cached[label] = timed_build(batch, work / root, encoder, cfg, cache, **kwargs)
        print(f"cached build, {label}:", json.dumps(cached[label]), flush=True)
    cache.close()
    report["reindex_cached"] = cached
    if args.reindex_only:
        report["machine"]["load_avg_end"] = load_average()
        return report

    # latencies and recall below: the from-scratch graph (the later versions reuse it)
    backend = LocalBackend.open(work / "ann-idx", version=cached["with_hnsw"]["version"])
    snap: Snapshot = backend._state()

    # 3. BM25 top-100
    bm25: dict[str, dict[str, Any]] = {
        "ours_snapshot": latencies(lambda q: snap.bm25(q, 100), queries)
    }

    async def through_backend() -> dict[str, float]:
        times = []
        await backend.bm25(queries[0], 100)
        for q in queries:
            t = time.perf_counter()
            await backend.bm25(q, 100)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        return {
            "p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[int(0.99 * len(times))], 3),
            "n": len(times),
        }

    bm25["ours_local_backend_async"] = asyncio.run(through_backend())
    print("bm25 ours:", json.dumps(bm25), flush=True)
    from rank_bm25 import BM25Okapi

    analyzer = snap.analyzer
    corpus_terms = [list(analyzer.terms(t)) for t in texts]
    t = time.perf_counter()
    ref = BM25Okapi(corpus_terms, k1=1.2, b=0.75)
    ref_build = time.perf_counter() - t
    sample = queries[: args.rank_bm25_queries]
    bm25["rank_bm25_okapi"] = latencies(
        lambda q: top_k(np.asarray(ref.get_scores(list(analyzer.terms(q)))), 100), sample
    )
    bm25["rank_bm25_okapi"]["index_build_s"] = round(ref_build, 1)
    bm25["rank_bm25_okapi"]["note"] = f"first {len(sample)} queries only (pure-Python scoring)"
    report["bm25_top100"] = bm25
    print("bm25 rank-bm25:", json.dumps(bm25["rank_bm25_okapi"]), flush=True)

    # 4. kNN top-100: exact vs the ANN graph, recall@100
    qv = composer([q + "\n" for q in queries[: args.knn_queries]], noise=0.0)
    knn: dict[str, Any] = {"exact": latencies(lambda v: snap.knn_exact(v, 100), list(qv))}
    exact_ids = [set(snap.knn_exact(v, 100).ids) for v in qv]
    assert snap.ann is not None
    for ef in args.breadth:
        snap.ann.set_breadth(ef)
        stats = latencies(lambda v: snap.knn(v, 100), list(qv))
        rec = [len(set(snap.knn(v, 100).ids) & e) / 100 for v, e in zip(qv, exact_ids, strict=True)]
        stats["recall_at_100"] = round(float(np.mean(rec)), 4)
        stats["recall_at_100_min"] = round(float(np.min(rec)), 4)
        knn[f"ann_breadth{ef}"] = stats
        print(f"knn ann breadth={ef}:", json.dumps(stats), flush=True)
    report["knn_top100"] = knn
    report["hnsw"] = dict(snap.manifest["ann"])
    report["machine"]["load_avg_end"] = load_average()
    asyncio.run(backend.close())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=100_000, help="catalog size")
    p.add_argument("--embed-docs", type=int, default=1000, help="documents embedded for real")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--rank-bm25-queries", type=int, default=20)
    p.add_argument("--knn-queries", type=int, default=500)
    p.add_argument("--breadth", type=int, nargs="+", default=[16, 32, 64], help="ANN nprobe values")
    p.add_argument(
        "--embedding-backend",
        default=EmbeddingConfig().backend,
        choices=["torch", "onnx", "onnx-int8"],
        help="default: the settings default",
    )
    p.add_argument("--threads", type=int, default=0, help="encoder threads (0 = settings default)")
    p.add_argument("--embed-only", action="store_true", help="only the embedding reindex (step 1)")
    p.add_argument(
        "--reindex-only", action="store_true", help="only the reindex builds (steps 1-2)"
    )
    p.add_argument("--out", type=Path, default=Path("var/benchmark_retrieval.json"))
    args = p.parse_args(argv)
    if args.docs < 100 or args.embed_docs < 10:
        p.error("--docs must be >= 100 and --embed-docs >= 10")
    args.embed_docs = min(args.embed_docs, args.docs)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
