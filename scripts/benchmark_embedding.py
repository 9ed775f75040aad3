"""Embedding backends side by side (torch, onnx, onnx-int8) on the same texts, in one run.

Per backend: single-query encode latency p50/p99, document throughput on the demo catalog's
product descriptions (~78 word-piece tokens), and dense-retrieval NDCG@10 on Cranfield
(exact cosine top-100 in numpy, NDCG by ir-measures). Once: the EmbeddingCache read rate over
100K cached vectors. The numbers go to docs/benchmarks.md ("Embedding backends"); the
fastest backend within 0.005 NDCG@10 of torch is the default of EmbeddingConfig.backend.

    HF_HUB_OFFLINE=1 .venv/bin/python -m scripts.benchmark_embedding [--docs 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from indexing.config import EmbeddingConfig
from indexing.demo_catalog import generate_products
from indexing.embedding_cache import EmbeddingCache, EmbedStats, embed_texts, text_key
from indexing.encoders import (
    BACKENDS,
    Encoder,
    cpu_description,
    default_model_path,
    load_encoder,
)
from indexing.loaders import load_beir

CRANFIELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield"


def product_texts(n: int) -> list[str]:
    """The descriptions of the demo catalog's first n products (indexing.demo_catalog, the one
    generator of the demo, the benchmarks and the tests), deterministic: about 78 word-piece
    tokens each. Runs recorded before 2026-12-04 embedded this script's own texts (59.5
    tokens), so their docs/s are not directly comparable (encoding cost grows with length)."""
    return [p.text for p in generate_products(max(n, 20))[:n]]  # the generator's minimum: 20


def mean_tokens(texts: list[str]) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path())
    return float(np.mean([len(ids) for ids in tok(texts)["input_ids"]]))


def query_latency_ms(
    encoder: Encoder, queries: list[str], warmup: int = 10
) -> tuple[float, float, float]:
    """(p50, p99) wall ms per single-query encode, and p50 process-CPU ms.

    CPU time is reported because this machine is shared: wall time then includes waiting
    for a core, CPU time (for one thread) does not.
    """
    for q in queries[:warmup]:
        encoder.encode([q])
    wall, cpu = [], []
    for q in queries:
        t0, c0 = time.perf_counter(), time.process_time()
        encoder.encode([q])
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return statistics.median(wall), float(np.percentile(wall, 99)), statistics.median(cpu)


def doc_throughput(encoder: Encoder, docs: list[str]) -> tuple[float, float]:
    """(docs per wall second, docs per process-CPU second), no cache."""
    encoder.encode(docs[:64])  # warm-up (allocations, first-call graph setup)
    t0, c0 = time.perf_counter(), time.process_time()
    embed_texts(encoder, docs)  # no cache: everything goes through the model
    return len(docs) / (time.perf_counter() - t0), len(docs) / (time.process_time() - c0)


def doc_thread_scaling(
    cfg: EmbeddingConfig, docs: list[str], counts: list[int]
) -> dict[str, list[float]]:
    """Docs per wall second with each thread count, two rounds in alternation (one
    encoder per count, loaded first): on a noisy machine the ratio between counts within a
    round is what says how embedding scales with cores."""
    encoders = {n: load_encoder(replace(cfg, threads=n)) for n in counts}
    out: dict[str, list[float]] = {str(n): [] for n in counts}
    for _ in range(2):
        for n, enc in encoders.items():
            out[str(n)].append(doc_throughput(enc, docs)[0])
    return out


def st_batch1_throughput(encoder: Encoder, docs: list[str]) -> tuple[float, float]:
    """The same texts through sentence-transformers' own encode, one text per batch.

    This was the int8 path before the parallel per-text runner; timing it in the same run
    gives the before/after ratio on equal machine load.
    """
    model = getattr(encoder, "_model")  # noqa: B009 - the wrapped SentenceTransformer
    kw = {"batch_size": 1, "normalize_embeddings": True, "convert_to_numpy": True}
    model.encode(docs[:16], **kw)
    t0, c0 = time.perf_counter(), time.process_time()
    model.encode(docs, **kw)
    return len(docs) / (time.perf_counter() - t0), len(docs) / (time.process_time() - c0)


def cranfield_ndcg(encoder: Encoder, data_dir: Path) -> dict[str, float]:
    """Exact cosine top-100; NDCG@10 (ir-measures), also without each query's near-copy."""
    import ir_measures
    from ir_measures import nDCG

    def ndcg10(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> float:
        per_q = {m.query_id: m.value for m in ir_measures.iter_calc([nDCG @ 10], qrels, run)}
        return sum(per_q.get(q, 0.0) for q in qrels) / len(qrels)  # an empty run scores 0

    ds = load_beir(data_dir)
    # Cranfield's text repeats the title at its start, so the body alone is the document.
    d = embed_texts(encoder, [doc.body or doc.title for doc in ds.corpus])
    q = embed_texts(encoder, [query.text for query in ds.queries])
    scores = q @ d.T
    top = np.argsort(-scores, axis=1)[:, :100]
    ids = [doc.id for doc in ds.corpus]
    qrels: dict[str, dict[str, int]] = {}
    zero: set[tuple[str, str]] = set()
    for j in ds.qrels:
        qrels.setdefault(j.query_id, {})[j.doc_id] = int(j.grade)
        if j.grade == 0:
            zero.add((j.query_id, j.doc_id))
    run = {
        query.id: {ids[k]: float(scores[i, k]) for k in top[i]}
        for i, query in enumerate(ds.queries)
        if query.id in qrels
    }
    filtered = {
        qid: {did: s for did, s in r.items() if (qid, did) not in zero} for qid, r in run.items()
    }
    return {
        "ndcg@10": ndcg10(qrels, run),
        "ndcg@10_no_near_copy": ndcg10(qrels, filtered),
    }


def cache_read_rate(encoder: Encoder, n: int) -> dict[str, float]:
    """embed_texts over n texts that are all cached (hash + SQLite read + assembly)."""
    texts = [f"cached product text number {i}" for i in range(n)]
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, encoder.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        with EmbeddingCache(Path(tmp) / "cache.sqlite") as cache:
            t0 = time.perf_counter()
            keys = [text_key(t) for t in texts]
            for s in range(0, n, 5000):
                cache.put_keys(encoder.model_id, keys[s : s + 5000], vecs[s : s + 5000])
            write_s = time.perf_counter() - t0
        with EmbeddingCache(Path(tmp) / "cache.sqlite") as cache:  # reopened: a cold handle
            stats = EmbedStats()
            t0, c0 = time.perf_counter(), time.process_time()
            out = embed_texts(encoder, texts, cache, stats=stats)
            read_s, read_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    if stats.embedded != 0 or not np.array_equal(out, vecs):
        raise RuntimeError("cache benchmark: the cache did not return the stored vectors")
    return {
        "cache_write_docs_per_s": n / write_s,
        "cache_read_docs_per_s": n / read_s,
        "cache_read_docs_per_cpu_s": n / read_cpu_s,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--docs", type=int, default=1000, help="product texts for throughput")
    ap.add_argument("--queries", type=int, default=200, help="single-query encodes to time")
    ap.add_argument("--cache-n", type=int, default=100_000)
    ap.add_argument("--cranfield", type=Path, default=CRANFIELD)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--export-dir", default="var/models")
    ap.add_argument(
        "--thread-sweep",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[1, 2],
        help="also time single queries with these thread counts (empty to skip)",
    )
    ap.add_argument(
        "--doc-thread-sweep",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[],
        help="also time document throughput with these thread counts, alternating twice "
        "(how embedding scales with cores; e.g. 1,2)",
    )
    ap.add_argument("--json", type=Path, default=Path("var/bench/embedding.json"))
    args = ap.parse_args(argv)

    docs = product_texts(args.docs)
    ds = load_beir(args.cranfield) if args.cranfield.exists() else None
    queries = [q.text for q in ds.queries][: args.queries] if ds else docs[: args.queries]
    results: dict[str, Any] = {
        "load_avg_start": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "cpu": cpu_description(),
        "doc_mean_tokens": mean_tokens(docs),
        "n_docs": len(docs),
        "n_queries": len(queries),
        "backends": {},
    }
    print(
        f"{len(docs)} product texts, mean {results['doc_mean_tokens']:.1f} tokens, "
        f"CPU {results['cpu']}"
    )
    first: Encoder | None = None
    for backend in args.backends.split(","):
        cfg = EmbeddingConfig(backend=backend, threads=args.threads, export_dir=args.export_dir)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        enc = load_encoder(cfg)
        load_s = time.perf_counter() - t0
        first = first or enc
        p50, p99, p50_cpu = query_latency_ms(enc, queries)
        docs_s, docs_cpu_s = doc_throughput(enc, docs)
        row: dict[str, Any] = {
            "model_id": enc.model_id,
            "load_s": load_s,
            "query_p50_ms": p50,
            "query_p99_ms": p99,
            "query_p50_cpu_ms": p50_cpu,
            "docs_per_s": docs_s,
            "docs_per_cpu_s": docs_cpu_s,
        }
        if backend == "onnx-int8":
            st_s, st_cpu_s = st_batch1_throughput(enc, docs)
            row["st_batch1_docs_per_s"], row["st_batch1_docs_per_cpu_s"] = st_s, st_cpu_s
            print(
                f"onnx-int8 docs/s: parallel per-text runner {docs_s:.0f} vs "
                f"sentence-transformers batch 1 {st_s:.0f} ({docs_s / st_s:.2f}x)"
            )
        if ds is not None:
            row.update(cranfield_ndcg(enc, args.cranfield))
        for n_threads in args.thread_sweep:
            sweep = load_encoder(replace(cfg, threads=n_threads))
            sweep_p50 = query_latency_ms(sweep, queries[:40])[0]
            row[f"query_p50_ms_threads{n_threads}"] = sweep_p50
            del sweep
        if args.doc_thread_sweep:
            row["docs_per_s_by_threads"] = doc_thread_scaling(cfg, docs, args.doc_thread_sweep)
        results["backends"][backend] = row
        print(
            backend,
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
        )
    if first is not None:
        results.update(cache_read_rate(first, args.cache_n))
        print(
            f"cache: write {results['cache_write_docs_per_s']:.0f}/s, "
            f"read {results['cache_read_docs_per_s']:.0f} docs/s "
            f"({results['cache_read_docs_per_cpu_s']:.0f} per CPU-s) over {args.cache_n}"
        )
    results["load_avg_end"] = os.getloadavg()[0]
    rows = results["backends"]
    if "torch" in rows and "ndcg@10" in rows["torch"]:
        ok = [b for b, r in rows.items() if r["ndcg@10"] >= rows["torch"]["ndcg@10"] - 0.005]
        results["recommended_default"] = max(ok, key=lambda b: rows[b]["docs_per_s"])
        print("fastest backend within 0.005 NDCG@10 of torch:", results["recommended_default"])
    print()
    print(
        "| backend | query p50 ms | p99 ms | p50 CPU ms | docs/s | docs/CPU-s "
        "| NDCG@10 | NDCG@10 w/o near-copy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for b, r in rows.items():
        nd, nd0 = r.get("ndcg@10", float("nan")), r.get("ndcg@10_no_near_copy", float("nan"))
        print(
            f"| {b} | {r['query_p50_ms']:.1f} | {r['query_p99_ms']:.1f} "
            f"| {r['query_p50_cpu_ms']:.1f} | {r['docs_per_s']:.0f} | {r['docs_per_cpu_s']:.0f} "
            f"| {nd:.4f} | {nd0:.4f} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
