"""Scale benchmarks: fill a large catalog's embedding cache, then reindex and query it.

    python -m scripts.benchmark_scale fill --docs 1000000 [--work-dir /work/wt/scale-var]
        [--base 3000]
    python -m scripts.benchmark_scale build --docs 100000 [--work-dir ...] [--changed 100]
        [--steps full,changed,changed_full,back] [--parallel auto|on|off]

``fill``: embedding 1M product texts on 2 cores takes hours, so the benchmark's embedding
cache (``<work-dir>/emb-cache.db``, what scripts/benchmark_api.py's build reads) is filled
by the method docs/benchmarks.md documents for the 100K API catalog: ``--base`` products,
spread over every product type, are embedded for real with the default encoder; every
other product gets a near-duplicate of two real vectors of its own type
(0.8 a + 0.2 b + N(0, 0.02) per dimension, normalized), so kNN sees clustered data with a
realistic neighbour structure. The vectors are keyed by the real text hash and model id,
so an index build finds every document cached. Deterministic (seeded by row).

``build``: reindexes from the cache (see BUILD_STEPS): from scratch, then incrementally with
``--changed`` documents' titles changed, that changed catalog from scratch beside it, and
back; each with its seconds per stage (indexing.bm25_side.Stages: compare, vectors, graph,
analysis, bm25, term_store, write, validate, publish).

The ANN structures themselves are compared by scripts/benchmark_ann.py, over the vectors
``cached_vectors`` / ``query_vectors`` write here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

NOISE = 0.02
# build: a full reindex from scratch; the same with --changed titles changed, reusing the
# previous version (incremental); that changed catalog again from scratch (side by side);
# the original catalog again, incremental
BUILD_STEPS = ("full", "changed", "changed_full", "back")
MIX = 0.8


def _catalog(work: Path, n_docs: int, n_queries: int = 500) -> Path:
    from indexing.demo_catalog import build_demo_catalog, write_beir

    data = work / f"catalog-{n_docs}"
    if not (data / "corpus.jsonl").is_file():
        write_beir(build_demo_catalog(n_products=n_docs, n_queries=n_queries), data)
    return data


def derive_vectors(
    base_rows: np.ndarray, base_vecs: np.ndarray, groups: np.ndarray, n: int, dim: int
) -> np.ndarray:
    """Near-duplicate vectors for every row: 0.8 a + 0.2 b + N(0, 0.02), normalized, with a
    and b real vectors of base rows in the same group (a row's own vector if it is a base
    row). Seeded per call: the same inputs give the same vectors."""
    rng = np.random.default_rng(17)
    out = np.empty((n, dim), dtype=np.float32)
    by_group: dict[int, np.ndarray] = {}
    for g in np.unique(groups[base_rows]):
        by_group[int(g)] = np.flatnonzero(groups[base_rows] == g)
    all_base = np.arange(len(base_rows))
    step = 100_000
    for s in range(0, n, step):
        rows = np.arange(s, min(n, s + step))
        g = groups[rows]
        a = np.empty(len(rows), dtype=np.int64)
        b = np.empty(len(rows), dtype=np.int64)
        for gi in np.unique(g):
            sel = np.flatnonzero(g == gi)
            pool = by_group.get(int(gi), all_base)
            a[sel] = pool[rng.integers(0, len(pool), len(sel))]
            b[sel] = pool[rng.integers(0, len(pool), len(sel))]
        v = MIX * base_vecs[a] + (1 - MIX) * base_vecs[b]
        v += rng.normal(0.0, NOISE, size=v.shape).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[rows] = v
    is_base = np.zeros(n, dtype=bool)
    is_base[base_rows] = True
    out[base_rows] = base_vecs
    return out


def fill(work: Path, n_docs: int, n_base: int) -> dict[str, Any]:
    """Fill work/emb-cache.db for catalog-<n_docs> (see the module docstring)."""
    from indexing.config import EmbeddingConfig
    from indexing.documents import embedding_text
    from indexing.embedding_cache import EmbeddingCache, embed_texts, text_key
    from indexing.encoders import load_encoder
    from indexing.loaders import load_beir

    data = _catalog(work, n_docs)
    t0 = time.perf_counter()
    docs = load_beir(data).corpus
    texts = [embedding_text(d) for d in docs]
    types = [str(d.extra.get("type", d.category)) for d in docs]
    del docs
    load_s = time.perf_counter() - t0
    codes = {t: i for i, t in enumerate(sorted(set(types)))}
    groups = np.fromiter((codes[t] for t in types), dtype=np.int64, count=len(types))
    # base rows: round-robin over the types so every type has real vectors
    per_type: dict[int, list[int]] = {}
    for r, g in enumerate(groups.tolist()):
        per_type.setdefault(g, []).append(r)
    base: list[int] = []
    k = 0
    while len(base) < min(n_base, len(texts)):
        added = False
        for rows in per_type.values():
            if k < len(rows) and len(base) < n_base:
                base.append(rows[k])
                added = True
        if not added:
            break
        k += 1
    base_rows = np.asarray(sorted(base), dtype=np.int64)
    enc = load_encoder(EmbeddingConfig())
    cache = EmbeddingCache(work / "emb-cache.db")
    t0 = time.perf_counter()
    base_vecs = embed_texts(enc, [texts[r] for r in base_rows], cache=cache)
    embed_s = time.perf_counter() - t0
    vecs = derive_vectors(base_rows, base_vecs, groups, len(texts), enc.dim)
    t0 = time.perf_counter()
    keys = [text_key(t) for t in texts]
    for s in range(0, len(keys), 20_000):
        cache.put_keys(enc.model_id, keys[s : s + 20_000], vecs[s : s + 20_000])
    write_s = time.perf_counter() - t0
    cache.close()
    out = {
        "docs": len(texts),
        "base_embedded": len(base_rows),
        "types": len(codes),
        "model_id": enc.model_id,
        "method": f"{MIX} a + {1 - MIX:.1f} b + N(0, {NOISE}), a, b real vectors of the same type",
        "load_s": round(load_s, 1),
        "base_embed_s": round(embed_s, 1),
        "cache_write_s": round(write_s, 1),
    }
    (work / f"fill-{n_docs}.json").write_text(json.dumps(out, indent=2))
    return out


def cached_vectors(work: Path, n_docs: int) -> np.ndarray:
    """The vectors a build of catalog-<n_docs> indexes (all from the cache)."""
    from indexing.config import EmbeddingConfig
    from indexing.documents import embedding_text
    from indexing.embedding_cache import EmbeddingCache, EmbedStats, embed_texts
    from indexing.encoders import load_encoder
    from indexing.loaders import load_beir

    npy = work / f"vectors-{n_docs}.npy"
    if npy.is_file():
        return np.load(npy, mmap_mode="r")
    docs = load_beir(work / f"catalog-{n_docs}").corpus
    enc = load_encoder(EmbeddingConfig())
    stats = EmbedStats()
    with EmbeddingCache(work / "emb-cache.db") as cache:
        vecs = embed_texts(enc, [embedding_text(d) for d in docs], cache=cache, stats=stats)
    if stats.embedded:
        print(f"note: {stats.embedded} texts were not cached and were embedded", file=sys.stderr)
    np.save(npy, vecs)
    return vecs


def query_vectors(work: Path, n_docs: int, n: int) -> np.ndarray:
    """Real query vectors of the catalog's queries (embedded once, saved)."""
    npy = work / f"queries-{n_docs}.npy"
    if npy.is_file():
        return np.load(npy)[:n]
    from indexing.config import EmbeddingConfig
    from indexing.encoders import load_encoder
    from indexing.loaders import load_beir

    qs = [q.text for q in load_beir(work / f"catalog-{n_docs}").queries]
    vecs = load_encoder(EmbeddingConfig()).encode(qs)
    np.save(npy, vecs)
    return vecs[:n]


def _pct(xs: Sequence[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


def build(
    work: Path,
    n_docs: int,
    n_changed: int,
    n_queries: int,
    steps: Sequence[str] = BUILD_STEPS,
    parallel: bool | None = None,
) -> dict[str, Any]:
    """Reindex from the cache into <work>/index-<n_docs> (what benchmark_api serves), in
    ``steps`` (see BUILD_STEPS), each with its seconds per stage; then BM25 / kNN top-100
    latency and recall@100 over the served version. ``parallel``: the build's BM25 child
    process (None: the build decides by size and load average)."""
    import dataclasses
    import resource

    from indexing.build import build_local_index
    from indexing.config import EmbeddingConfig, IndexConfig
    from indexing.embedding_cache import EmbeddingCache
    from indexing.encoders import load_encoder
    from indexing.layout import current_version, index_versions
    from indexing.loaders import load_beir
    from indexing.local_store import Snapshot

    t0, c0 = time.perf_counter(), time.process_time()
    ds = load_beir(work / f"catalog-{n_docs}")
    docs = list(ds.corpus)
    read = {
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_s": round(time.process_time() - c0, 1),
    }
    enc = load_encoder(EmbeddingConfig())
    index = work / f"index-{n_docs}"
    cfg = IndexConfig()
    out: dict[str, Any] = {"docs": len(docs), "catalog_read": read}
    step = max(1, len(docs) // max(n_changed, 1))
    changed_rows = set(range(0, len(docs), step)[:n_changed])  # spread over the catalog
    changed = [
        dataclasses.replace(d, title=d.title + " (new)") if i in changed_rows else d
        for i, d in enumerate(docs)
    ]
    batches = {"full": docs, "changed": changed, "changed_full": changed, "back": docs}
    with EmbeddingCache(work / "emb-cache.db") as cache:
        for label in steps:
            batch = batches[label]
            stages: dict[str, float] = {}
            t0, c0 = time.perf_counter(), time.process_time()
            load0 = os.getloadavg()[0]
            version = build_local_index(
                batch,
                index,
                enc,
                cfg,
                cache=cache,
                reuse_previous=label in ("changed", "back"),
                stages=stages,
                parallel=parallel,
            )
            secs = time.perf_counter() - t0
            m = json.loads((index_versions(index).path(version) / "manifest.json").read_text())
            out[label] = {
                "seconds": round(secs, 1),
                "cpu_s_this_process": round(time.process_time() - c0, 1),
                "docs_per_s": round(len(batch) / secs),
                "load_avg_1m_before_after": [round(load0, 1), round(os.getloadavg()[0], 1)],
                "stages_s": {k: round(v, 2) for k, v in stages.items()},
                "bm25_child_process": m["bm25_child_process"],
                "ann": {k: m["ann"].get(k) for k in ("build", "kept", "added", "deleted")},
                "peak_rss_mb_this_process": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                ),
            }
            print(label, json.dumps(out[label]), file=sys.stderr, flush=True)
    del docs
    served = current_version(index)
    assert served is not None
    t0 = time.perf_counter()
    snap = Snapshot(index_versions(index).path(served))
    out["snapshot_open_s"] = round(time.perf_counter() - t0, 2)
    queries = [q.text for q in ds.queries][:n_queries]
    qv = query_vectors(work, n_docs, n_queries)
    for _ in range(2):  # second pass measured: page cache warm, as in a serving worker
        bm = []
        for q in queries:
            t = time.perf_counter()
            snap.bm25(q, 100)
            bm.append((time.perf_counter() - t) * 1000)
        kn, rec = [], []
        for v in qv:
            t = time.perf_counter()
            hits = snap.knn(v, 100)
            kn.append((time.perf_counter() - t) * 1000)
            exact = snap.knn_exact(v, 100)
            rec.append(len(set(hits.ids) & set(exact.ids)) / 100)
    out["bm25_top100"] = _pct(bm)
    out["knn_top100"] = _pct(kn)
    out["recall_at_100"] = {"mean": round(float(np.mean(rec)), 4), "min": round(min(rec), 3)}
    out["ann_manifest"] = snap.manifest["ann"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark_scale", description=__doc__.split("\n")[0])
    p.add_argument("step", choices=("fill", "build"))
    p.add_argument("--changed", type=int, default=100, help="build: documents changed")
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--work-dir", default="var/bench_api")
    p.add_argument("--base", type=int, default=3000, help="fill: products embedded for real")
    p.add_argument("--queries", type=int, default=300, help="build: queries")
    p.add_argument(
        "--steps", default=",".join(BUILD_STEPS), help="build: which reindexes, in order"
    )
    p.add_argument(
        "--parallel",
        choices=("auto", "on", "off"),
        default="auto",
        help="build: BM25 side in a child process (auto: by size and load average)",
    )
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    from indexing.encoders import cpu_description

    cpu = cpu_description()
    if args.step == "fill":
        res: Any = fill(work, args.docs, args.base)
    else:
        steps = args.steps.split(",")
        if bad := sorted(set(steps) - set(BUILD_STEPS)):
            p.error(f"unknown build steps {bad}; choose from {', '.join(BUILD_STEPS)}")
        par = {"auto": None, "on": True, "off": False}[args.parallel]
        res = build(work, args.docs, args.changed, args.queries, steps, par)
    res = {"cpu": cpu, "load_avg_1m": os.getloadavg()[0], "result": res}
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
