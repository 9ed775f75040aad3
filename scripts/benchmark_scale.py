"""Scale benchmarks: fill a large catalog's embedding cache, and hnswlib vs usearch side by side.

    python -m scripts.benchmark_scale fill --docs 1000000 [--work-dir /work/wt/scale-var]
        [--base 3000]
    python -m scripts.benchmark_scale ann --docs 100000 [--work-dir ...] [--queries 300]
    python -m scripts.benchmark_scale build --docs 100000 [--work-dir ...] [--changed 100]
        [--steps full,changed,changed_full,back]

``fill``: embedding 1M product texts on 2 cores takes hours, so the benchmark's embedding
cache (``<work-dir>/emb-cache.db``, what scripts/benchmark_api.py's build reads) is filled
by the method docs/benchmarks.md documents for the 100K API catalog: ``--base`` products,
spread over every product type, are embedded for real with the default encoder; every
other product gets a near-duplicate of two real vectors of its own type
(0.8 a + 0.2 b + N(0, 0.02) per dimension, normalized), so kNN sees clustered data with a
realistic neighbour structure. The vectors are keyed by the real text hash and model id,
so an index build finds every document cached. Deterministic (seeded by row).

``ann``: over the vectors a build of that catalog would index (read from the cache), builds
hnswlib (the format-3 graph) and usearch (float32, float16, int8 storage), each in a fresh
process, and reports build time, kNN top-100 p50/p99 (after the float32 rescore the
Snapshot does), recall@100 against exact float32, file size and the RSS/PSS of a fresh
process that loads the index and runs the queries (what a server worker would hold).

``build``: reindexes from the cache (see BUILD_STEPS): from scratch, then incrementally with
``--changed`` documents' titles changed, that changed catalog from scratch beside it, and
back; each with its seconds per stage (indexing.build.Stages: compare, vectors, graph,
analysis, bm25, term_store, write, validate, publish).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


# --- one ANN variant in a fresh process ----------------------------------------------------
def _pss_mb() -> tuple[float, float]:
    rss = pss = float("nan")
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def _variant(kind: str, vec_path: str, q_path: str, out_dir: str, ef: int, k: int) -> None:
    """Build the ANN in this process, then load it in a second fresh one and query."""
    vectors = np.load(vec_path, mmap_mode="r")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"kind": kind}
    t0 = time.perf_counter()
    c0 = time.process_time()
    if kind == "hnswlib":
        import hnswlib

        from indexing.ann import HNSW_EF_CONSTRUCTION, HNSW_M

        idx = hnswlib.Index(space="ip", dim=vectors.shape[1])
        idx.init_index(len(vectors), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=42)
        idx.set_num_threads(2)
        idx.add_items(np.asarray(vectors), np.arange(len(vectors)), num_threads=2)
        idx.save_index(str(out / "ann.bin"))
        path = out / "ann.bin"
    else:
        from indexing.ann import build_usearch

        dtype = kind.split("-")[1]
        path = out / f"ann-{dtype}.usearch"
        build_usearch(path, np.asarray(vectors), np.arange(len(vectors)), dtype)
    rec["build_s"] = round(time.perf_counter() - t0, 1)
    rec["build_cpu_s"] = round(time.process_time() - c0, 1)
    rec["file_mb"] = round(path.stat().st_size / 2**20, 1)
    print(json.dumps(rec), flush=True)


def _query(kind: str, vec_path: str, q_path: str, out_dir: str, ef: int, k: int) -> None:
    out = Path(out_dir)
    vectors = np.load(vec_path, mmap_mode="r")
    queries = np.load(q_path)
    rss0, _ = _pss_mb()
    if kind == "hnswlib":
        import hnswlib

        idx = hnswlib.Index(space="ip", dim=vectors.shape[1])
        idx.load_index(str(out / "ann.bin"))
        idx.set_ef(ef)
        idx.set_num_threads(1)

        def search(v: np.ndarray) -> np.ndarray:
            return idx.knn_query(v, k=k, num_threads=1)[0][0].astype(np.int64)
    else:
        from usearch.index import Index

        from indexing.ann import RESCORE_OVERSAMPLE

        dtype = kind.split("-")[1]
        uidx: Any = Index.restore(str(out / f"ann-{dtype}.usearch"), view=True)
        assert uidx is not None
        uidx.expansion_search = ef
        over = 1 if dtype == "f32" else RESCORE_OVERSAMPLE  # as indexing.ann.AnnGraph

        def search(v: np.ndarray) -> np.ndarray:
            keys = np.asarray(uidx.search(v, k * over, threads=1).keys, dtype=np.int64)
            return keys[np.argsort(-(vectors[keys] @ v), kind="stable")[:k]]

    exact = []
    for q in queries:
        s = vectors @ q
        exact.append(set(np.argpartition(-s, k)[:k].tolist()))
    times: list[float] = []
    recalls: list[float] = []
    for _ in range(2):
        times = []
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            cand = search(q)
            s = vectors[np.sort(cand)] @ q  # the float32 rescore Snapshot.knn does
            times.append((time.perf_counter() - t0) * 1000)
            recalls.append(len(exact[i] & set(cand.tolist())) / k)
    rss1, pss1 = _pss_mb()
    a = np.asarray(times)
    r = np.asarray(recalls[len(queries) :])
    print(
        json.dumps(
            {
                "kind": kind,
                "ef": ef,
                "knn_p50_ms": round(float(np.percentile(a, 50)), 3),
                "knn_p99_ms": round(float(np.percentile(a, 99)), 3),
                "recall_mean": round(float(r.mean()), 4),
                "recall_min": round(float(r.min()), 3),
                "rss_mb_loaded": round(rss1, 1),
                "pss_mb_loaded": round(pss1, 1),
                "rss_mb_before_load": round(rss0, 1),
            }
        ),
        flush=True,
    )


def ann(work: Path, n_docs: int, n_queries: int, kinds: Sequence[str], ef: int) -> list[Any]:
    vecs = cached_vectors(work, n_docs)
    qv = query_vectors(work, n_docs, n_queries)
    vec_path = work / f"vectors-{n_docs}.npy"
    q_path = work / f"queries-{n_docs}-{n_queries}.npy"
    np.save(q_path, qv[:n_queries])
    del vecs
    out_dir = work / f"ann-{n_docs}"
    results = []
    for kind in kinds:
        row: dict[str, Any] = {}
        for fn in ("_variant", "_query"):
            code = (
                f"from scripts.benchmark_scale import {fn}; "
                f"{fn}({kind!r}, {str(vec_path)!r}, {str(q_path)!r}, {str(out_dir)!r}, {ef}, 100)"
            )
            p = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=False
            )
            if p.returncode != 0:
                raise SystemExit(f"{kind} {fn} failed: {p.stderr[-2000:]}")
            row.update(json.loads(p.stdout.strip().splitlines()[-1]))
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def _pct(xs: Sequence[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


def build(
    work: Path, n_docs: int, n_changed: int, n_queries: int, steps: Sequence[str] = BUILD_STEPS
) -> dict[str, Any]:
    """Reindex from the cache into <work>/index-<n_docs> (what benchmark_api serves), in
    ``steps`` (see BUILD_STEPS), each with its seconds per stage; then BM25 / kNN top-100
    latency and recall@100 over the served version."""
    import dataclasses
    import resource

    from indexing.build import build_local_index
    from indexing.config import EmbeddingConfig, IndexConfig
    from indexing.embedding_cache import EmbeddingCache
    from indexing.encoders import load_encoder
    from indexing.layout import current_version, index_versions
    from indexing.loaders import load_beir
    from indexing.local_store import Snapshot

    ds = load_beir(work / f"catalog-{n_docs}")
    docs = list(ds.corpus)
    enc = load_encoder(EmbeddingConfig())
    index = work / f"index-{n_docs}"
    cfg = IndexConfig()
    out: dict[str, Any] = {"docs": len(docs)}
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
    p.add_argument("step", choices=("fill", "ann", "build"))
    p.add_argument("--changed", type=int, default=100, help="build: documents changed")
    p.add_argument("--docs", type=int, default=1_000_000)
    p.add_argument("--work-dir", default="var/bench_api")
    p.add_argument("--base", type=int, default=3000, help="fill: products embedded for real")
    p.add_argument("--queries", type=int, default=300, help="ann: query vectors")
    p.add_argument("--ef", type=int, default=200, help="ann: search breadth")
    p.add_argument("--kinds", default="hnswlib,usearch-f32,usearch-f16,usearch-i8")
    p.add_argument(
        "--steps", default=",".join(BUILD_STEPS), help="build: which reindexes, in order"
    )
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    from indexing.encoders import cpu_description

    cpu = cpu_description()
    if args.step == "fill":
        res: Any = fill(work, args.docs, args.base)
    elif args.step == "build":
        steps = args.steps.split(",")
        if bad := sorted(set(steps) - set(BUILD_STEPS)):
            p.error(f"unknown build steps {bad}; choose from {', '.join(BUILD_STEPS)}")
        res = build(work, args.docs, args.changed, args.queries, steps)
    else:
        res = ann(work, args.docs, args.queries, args.kinds.split(","), args.ef)
    res = {"cpu": cpu, "load_avg_1m": os.getloadavg()[0], "result": res}
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
