"""ANN structures side by side on one vector set: build CPU, file size, recall@100, latency.

    python -m scripts.benchmark_ann --docs 100000 --work-dir W [--kinds faiss-ivf,usearch-i8]
        [--nprobe 8,16,32,64] [--ef 200,400,800] [--oversample 2] [--reuse]

Reads ``W/vectors-<docs>.npy`` and ``W/queries-<docs>.npy`` (scripts/benchmark_scale.py
``fill`` makes the vectors of a synthetic catalog: real embeddings of a base set and
near-duplicate variants; its ``cached_vectors`` / ``query_vectors`` write these files).
Each structure is built in a fresh process, then loaded in another (so its RSS is its
own) and queried at each search breadth, single-threaded as a server worker queries:

- ``faiss-ivf``: what indexing.ann builds (IVF with int8 residual codes, ann.ivf_cells
  cells), served from a memory map; breadth = nprobe.
- ``usearch-i8`` / ``usearch-f16`` / ``usearch-f32``: the usearch HNSW graph (M 16, ef
  construction 200) that versions built before the IVF have; breadth = ef.
- ``hnswlib``: the graph of formats 1-3 (float32, M 16, ef construction 200).

Every kind's candidates (oversample x k for reduced precision) are rescored with the
float32 vectors as indexing.local_store does, and recall@100 is against exact float32
top 100 (computed once per vector set and kept in W). ``--reuse`` skips the build when the
structure's file exists (build columns are then missing).
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

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

KINDS = ("faiss-ivf", "usearch-i8", "usearch-f16", "usearch-f32", "hnswlib")
HNSW_M = 16  # the graph parameters versions built before the IVF used
HNSW_EF_CONSTRUCTION = 200
K = 100


def _rss_pss_mb() -> tuple[float, float]:
    rss = pss = float("nan")
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Pss:"):
            pss = int(line.split()[1]) / 1024
    return rss, pss


def _file(kind: str, out: Path, n: int) -> Path:
    if kind == "faiss-ivf":
        from indexing.ann import ivf_cells

        return out / f"ann-ivf{ivf_cells(n)}.faiss"
    if kind == "hnswlib":
        return out / "ann.bin"
    return out / f"ann-{kind.split('-')[1]}.usearch"


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Exact float32 top k rows per query, in slices (no [N, Q] matrix at 1M)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(vectors), 100_000):
        sc = (np.asarray(vectors[s : s + 100_000], np.float32) @ queries.T).T
        part = np.argpartition(-sc, min(k, sc.shape[1] - 1), axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        best_i = np.concatenate([best_i, part + s], 1)
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(best_s, order, 1)
        best_i = np.take_along_axis(best_i, order, 1)
    return best_i


# --- one structure in a fresh process -----------------------------------------------------
def _build(kind: str, vec_path: str, out_dir: str) -> None:
    vectors = np.load(vec_path, mmap_mode="r")
    n, dim = vectors.shape
    path = _file(kind, Path(out_dir), n)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "faiss-ivf":
        from indexing.ann import build_ivf, ivf_cells

        build_ivf(path, vectors, np.arange(n), ivf_cells(n))
    elif kind == "hnswlib":
        import hnswlib

        idx = hnswlib.Index(space="ip", dim=dim)
        idx.init_index(n, ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=42)
        idx.add_items(np.asarray(vectors), np.arange(n), num_threads=os.cpu_count() or 1)
        idx.save_index(str(path))
    else:
        from usearch.index import Index

        u = Index(
            ndim=dim,
            metric="ip",
            dtype=kind.split("-")[1],
            connectivity=HNSW_M,
            expansion_add=HNSW_EF_CONSTRUCTION,
        )
        u.add(np.arange(n, dtype=np.uint64), np.asarray(vectors, np.float32))
        u.save(str(path))
    rec = {
        "build_s": round(time.perf_counter() - t0, 1),
        "build_cpu_s": round(time.process_time() - c0, 1),
    }
    print(json.dumps(rec), flush=True)


def _query(
    kind: str,
    vec_path: str,
    q_path: str,
    gt_path: str,
    out_dir: str,
    breadths: list[int],
    over: int,
) -> None:
    vectors = np.load(vec_path, mmap_mode="r")
    queries = np.load(q_path)
    exact = [set(r.tolist()) for r in np.load(gt_path)]
    path = _file(kind, Path(out_dir), len(vectors))
    rss0, _ = _rss_pss_mb()
    if kind == "faiss-ivf":
        import faiss

        index: Any = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)

        def set_breadth(b: int) -> None:
            index.nprobe = b

        def candidates(v: np.ndarray, m: int) -> np.ndarray:
            labels = index.search(v.reshape(1, -1), m)[1][0]
            return labels[labels >= 0]
    elif kind == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.load_index(str(path))
        index.set_num_threads(1)
        set_breadth = index.set_ef

        def candidates(v: np.ndarray, m: int) -> np.ndarray:
            return index.knn_query(v, k=m, num_threads=1)[0][0].astype(np.int64)
    else:
        from usearch.index import Index

        index = Index.restore(str(path), view=True)

        def set_breadth(b: int) -> None:
            index.expansion_search = b

        def candidates(v: np.ndarray, m: int) -> np.ndarray:
            return np.asarray(index.search(v, m, threads=1).keys, dtype=np.int64)

    m = K * (1 if kind in ("hnswlib", "usearch-f32") else over)
    rows = []
    for b in breadths:
        set_breadth(b)
        for _ in range(2):  # the second pass is measured (page cache warm)
            times, recalls = [], []
            for i, v in enumerate(queries):
                t0 = time.perf_counter()
                cand = candidates(v, m)
                top = cand[np.argsort(-(vectors[cand] @ v), kind="stable")[:K]]  # the rescore
                times.append((time.perf_counter() - t0) * 1000)
                recalls.append(len(exact[i] & set(top.tolist())) / K)
        a, r = np.asarray(times), np.asarray(recalls)
        rows.append(
            {
                "breadth": b,
                "knn_p50_ms": round(float(np.percentile(a, 50)), 3),
                "knn_p99_ms": round(float(np.percentile(a, 99)), 3),
                "recall_mean": round(float(r.mean()), 4),
                "recall_min": round(float(r.min()), 3),
            }
        )
    rss1, pss1 = _rss_pss_mb()
    rec = {
        "rows": rows,
        "rss_mb": round(rss1, 1),
        "pss_mb": round(pss1, 1),
        "rss_mb_before_load": round(rss0, 1),
    }
    print(json.dumps(rec), flush=True)


def _child(fn: str, *args: Any) -> dict[str, Any]:
    code = f"from scripts.benchmark_ann import {fn}; {fn}(*{args!r})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{fn}{args[:1]} failed: {p.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def run(
    work: Path,
    n_docs: int,
    n_queries: int,
    kinds: Sequence[str],
    breadths: dict[str, list[int]],
    over: int,
    reuse: bool,
) -> list[dict[str, Any]]:
    from scripts.benchmark_scale import cached_vectors, query_vectors

    vectors = cached_vectors(work, n_docs)
    qv = query_vectors(work, n_docs, n_queries)
    vec_path = work / f"vectors-{n_docs}.npy"
    q_path = work / f"queries-{n_docs}-{n_queries}.npy"
    np.save(q_path, qv[:n_queries])
    gt_path = work / f"exact-{n_docs}-{n_queries}.npy"
    if not gt_path.is_file():
        np.save(gt_path, exact_top(vectors, qv[:n_queries]))
    del vectors
    out_dir = work / f"ann-{n_docs}"
    results = []
    for kind in kinds:
        row: dict[str, Any] = {"kind": kind, "docs": n_docs}
        if not (reuse and _file(kind, out_dir, n_docs).is_file()):
            row.update(_child("_build", kind, str(vec_path), str(out_dir)))
        row["file_mb"] = round(_file(kind, out_dir, n_docs).stat().st_size / 2**20, 1)
        b = breadths["nprobe" if kind == "faiss-ivf" else "ef"]
        row.update(
            _child("_query", kind, str(vec_path), str(q_path), str(gt_path), str(out_dir), b, over)
        )
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark_ann", description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--work-dir", default="var/bench_api")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--kinds", default="faiss-ivf,usearch-i8")
    p.add_argument("--nprobe", default="8,16,32,64", help="faiss-ivf: cells scanned")
    p.add_argument("--ef", default="200,400,800", help="HNSW kinds: search breadth")
    p.add_argument("--oversample", type=int, default=2, help="candidates per k rescored")
    p.add_argument("--reuse", action="store_true", help="skip builds whose file exists")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)
    kinds = args.kinds.split(",")
    bad = sorted(set(kinds) - set(KINDS))
    if bad:
        print(f"benchmark_ann: unknown kind {bad[0]!r}, expected one of {KINDS}", file=sys.stderr)
        return 2
    try:
        breadths = {k: [int(x) for x in getattr(args, k).split(",")] for k in ("nprobe", "ef")}
    except ValueError:
        print("benchmark_ann: --nprobe and --ef take comma-separated integers", file=sys.stderr)
        return 2
    from indexing.encoders import cpu_description

    work = Path(args.work_dir)
    c0 = os.getloadavg()[0]
    res = run(work, args.docs, args.queries, kinds, breadths, args.oversample, args.reuse)
    out = {"cpu": cpu_description(), "load_avg_1m": [c0, os.getloadavg()[0]], "result": res}
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
