"""Lexical engine side by side: our BM25 (indexing.bm25) vs tantivy, on one corpus.

    python -m scripts.benchmark_lexical --data DIR [--queries 300] [--work-dir W] [--lean]
        [--engines ours,tantivy,tantivy-terms] [--out F]

DIR is a BEIR directory (a demo catalog from indexing.demo_catalog, or Cranfield). Each
engine is built and then queried in fresh processes (so RSS is its own), over the same
text: every text field of a document (title, body, extra fields) concatenated, which is
what our combined field indexes.

- ``ours``: indexing.bm25_side.write_bm25 (what a reindex runs for the BM25 side: analysis,
  per-field and combined matrices, term store), or with ``--lean`` only the combined
  matrix (from streamed text: a 1M catalog fits in memory); queried as Snapshot.bm25
  queries the combined field (memory-mapped .npy matrices).
- ``tantivy``: tantivy with its own analyzer (simple tokenizer, lowercase, tantivy's
  English stop words, English Snowball stemmer), BM25 k1 1.2 b 0.75, a disjunction of the
  query's terms; positions off (``freq``), like our matrices.
- ``tantivy-terms``: tantivy over our analyzer's terms (whitespace tokenizer), so ranking
  differences left are the engines' own (tantivy's 1-byte field-norm, score ties).

Reported per engine: build wall/CPU s, index MB on disk, top-100 p50/p99 ms and CPU ms per
query (second pass), RSS of the query process, overlap@10/@100 with ``ours``, and NDCG@10
when the corpus has judgments (rank-bm25's BM25Okapi over our analyzer's terms is the
outside check, on corpora up to 20K documents).

    python -m scripts.benchmark_lexical --topk INDEX_DIR --data DIR [--queries 500]
        [--block-rows 16,32] [--out F]

``--topk``: our top-100 two ways over a built index (its serving version, read only, the
combined field memory-mapped), side by side per query: the dense pass over every document
(FieldIndex.scores + top_matching) and the block-max top-k (FieldIndex.top_blocks with
BlockMax bounds computed here from the mapped matrix for each ``--block-rows``, finishing
with the dense pass when it gives up, as FieldIndex.top does at >= BLOCK_MIN_DOCS),
without and with a filter (the query's category). Reports CPU ms per query p50 / p99 /
mean of each, how many queries fell back to the dense pass, the bounds' MB, and checks
that both return the same rows and scores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ENGINES = ("ours", "tantivy", "tantivy-terms")
K = 100
_WORDS = re.compile(r"\w+")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _corpus(data: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """(ids, per-field texts, field names) as indexing.build reads them."""
    from indexing.bm25_side import field_texts, text_field_names
    from indexing.loaders import load_beir

    docs = load_beir(data).corpus
    fields = text_field_names(docs)
    return [d.id for d in docs], field_texts(docs, fields), list(fields)


def _joined(data: Path) -> Iterator[str]:
    """Every document's text fields concatenated (title, body, extra fields by name), streamed
    (a 1M catalog's Documents are not all held at once)."""
    from indexing.loaders import iter_documents

    for d in iter_documents(data):
        yield " ".join([d.title, d.body, *(d.extra[k] for k in sorted(d.extra))])


def _queries(data: Path, n: int) -> list[tuple[str, str]]:
    out = []
    with open(data / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            out.append((str(q["_id"]), str(q["text"])))
    return out[:n]


def _tantivy_index(engine: str, path: Path, create: bool) -> Any:
    import tantivy

    sb = tantivy.SchemaBuilder()
    tok = "whitespace" if engine == "tantivy-terms" else "ours_like"
    sb.add_text_field("text", tokenizer_name=tok, index_option="freq")
    sb.add_unsigned_field("row", fast=True)
    index = tantivy.Index(sb.build(), path=str(path), reuse=not create)
    analyzer = (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )
    index.register_tokenizer("ours_like", analyzer)
    return index


# --- one engine in a fresh process -------------------------------------------------------
def _build(engine: str, data: str, out_dir: str, lean: bool) -> None:
    """Build one engine's index of ``data`` under out_dir/engine. ``lean``: ours builds only
    the combined field's matrix (what a BM25 query reads; the same matrix write_bm25 makes)
    from streamed text, so a 1M catalog fits in memory."""
    from indexing import layout
    from indexing.analysis import Analyzer
    from indexing.config import IndexConfig

    out = Path(out_dir) / engine
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = IndexConfig()
    t0, c0 = time.perf_counter(), time.process_time()
    if engine == "ours" and lean:
        from indexing.bm25 import FieldIndex
        from indexing.local_store import save_field_index

        a = Analyzer(cfg.stopwords, cfg.stemmer)
        fi = FieldIndex.build([a.terms(t) for t in _joined(Path(data))], cfg.k1, cfg.b)
        (out / layout.BM25_DIR).mkdir()
        save_field_index(fi, layout.bm25_field(out, layout.COMBINED))
        n_docs = fi.num_docs
    elif engine == "ours":
        from indexing.bm25_side import write_bm25

        ids, texts, fields = _corpus(Path(data))
        write_bm25(out, texts, fields, cfg.k1, cfg.b, cfg.stopwords, cfg.stemmer)
        n_docs = len(ids)
    else:
        import tantivy

        terms = Analyzer().terms if engine == "tantivy-terms" else None
        index = _tantivy_index(engine, out, create=True)
        writer = index.writer(heap_size=256_000_000, num_threads=0)
        n_docs = 0
        for row, text in enumerate(_joined(Path(data))):
            if terms is not None:
                text = " ".join(terms(text))
            n_docs += 1
            doc = tantivy.Document()
            doc.add_text("text", text)
            doc.add_unsigned("row", row)  # Document(row=...) would be i64: the field is u64
            writer.add_document(doc)
        writer.commit()
        writer.wait_merging_threads()
    rec = {
        "engine": engine,
        "docs": n_docs,
        "build_s": round(time.perf_counter() - t0, 2),
        "build_cpu_s": round(time.process_time() - c0, 2),
        "index_mb": round(_du_mb(out), 1),
    }
    if engine == "ours":  # what a BM25 query reads: the combined field's matrix + vocabulary
        field = layout.bm25_field(out, layout.COMBINED)
        files = [layout.bm25_array(out, layout.COMBINED, a) for a in layout.BM25_ARRAYS]
        files.append(field.with_name(field.name + layout.BM25_VOCAB_SUFFIX))
        rec["search_mb"] = round(sum(f.stat().st_size for f in files) / 2**20, 1)
    print(json.dumps(rec), flush=True)


def _query(engine: str, data: str, out_dir: str, n_queries: int) -> None:
    """Top-100 of every query, twice; the second pass is timed (page cache warm)."""
    from indexing.analysis import Analyzer
    from indexing.bm25 import top_k

    out = Path(out_dir) / engine
    queries = [q for _, q in _queries(Path(data), n_queries)]
    rss0 = _rss_mb()
    analyzer = Analyzer()
    if engine == "ours":
        from indexing import layout
        from indexing.local_store import load_field_index

        fi = load_field_index(layout.bm25_field(out, layout.COMBINED))

        def search(q: str) -> list[int]:
            scores = fi.scores(analyzer.terms(q))
            rows = np.flatnonzero(scores > 0)
            return rows[top_k(scores[rows], K)].tolist()  # as Snapshot.bm25
    else:
        import tantivy

        index = _tantivy_index(engine, out, create=False)
        index.reload()
        searcher = index.searcher()
        schema = index.schema

        def search(q: str) -> list[int]:
            if engine == "tantivy-terms":
                clauses = [
                    (tantivy.Occur.Should, tantivy.Query.term_query(schema, "text", t))
                    for t in analyzer.terms(q)
                ]
                if not clauses:
                    return []
                query = tantivy.Query.boolean_query(clauses)
            else:
                words = " ".join(_WORDS.findall(q.lower()))
                if not words:
                    return []
                query = index.parse_query(words, ["text"])
            hits = searcher.search(query, K, count=False).hits
            return list(searcher.fast_field_values("row", [a for _, a in hits]))

    for _ in range(2):
        times, ranks = [], []
        c0 = time.process_time()
        for q in queries:
            t = time.perf_counter()
            ranks.append(search(q))
            times.append((time.perf_counter() - t) * 1000)
        cpu = time.process_time() - c0
    a = np.asarray(times)
    (Path(out_dir) / f"ranks-{engine}.json").write_text(json.dumps(ranks))
    rec: dict[str, Any] = {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "cpu_ms_per_query": round(cpu * 1000 / len(queries), 3),
        "rss_mb": round(_rss_mb(), 1),
        "rss_mb_before_load": round(rss0, 1),
    }
    if engine != "ours":
        rec["segments"] = searcher.num_segments
    print(json.dumps(rec), flush=True)


# --- dense vs block-max top-k over a built index ------------------------------------------
def _cpu_stats(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
    }


def topk_side_by_side(
    index: Path, data: Path, n_queries: int, block_rows: Sequence[int]
) -> dict[str, Any]:
    """Dense vs block-max top-100 CPU per query over the serving version of ``index``."""
    import dataclasses

    from indexing import layout
    from indexing.backend import Filters
    from indexing.bm25 import BLOCK_MIN_DOCS, BlockMax, top_matching
    from indexing.local_store import Snapshot

    version = layout.current_version(index)
    if version is None:
        raise SystemExit(f"benchmark_lexical: {index}: no serving version")
    snap = Snapshot(layout.index_versions(index).path(version))
    fi = snap.combined
    queries = []
    with open(data / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            queries.append((snap.analyzer.terms(q["text"]), Filters(category=q.get("category"))))
    queries = queries[:n_queries]
    out: dict[str, Any] = {"docs": fi.num_docs, "postings": len(fi.data), "queries": len(queries)}
    for rows_per in block_rows:
        t0 = time.process_time()
        bm = BlockMax.build(fi, rows_per)
        build_s = time.process_time() - t0
        fb = dataclasses.replace(fi, block_max=bm)
        rec: dict[str, Any] = {
            "bounds_build_cpu_s": round(build_s, 2),
            "bounds_mb": round((bm.indptr.nbytes + bm.blocks.nbytes + bm.maxima.nbytes) / 2**20, 1),
        }
        for label, filtered in (("unfiltered", False), ("category_filter", True)):
            for _ in range(2):  # the second pass is measured (page cache warm)
                dense, block, fell = [], [], 0
                for terms, flt in queries:
                    mask = snap.mask(flt) if filtered else None
                    c = time.process_time()
                    want = top_matching(fi.scores(terms), K, mask)
                    dense.append((time.process_time() - c) * 1000)
                    c = time.process_time()  # top() without its size gate: the block
                    ids = fi.term_ids(terms)  # path, the dense pass when it gives up
                    got = fb.top_blocks(ids, K, mask) if ids else None
                    if got is None:
                        fell += bool(ids)
                        got = top_matching(fi.scores_of_ids(ids), K, mask)
                    block.append((time.process_time() - c) * 1000)
                    if got[0].tolist() != want[0].tolist() or not np.array_equal(got[1], want[1]):
                        raise SystemExit(f"benchmark_lexical: top-k differs for {terms}")
            rec[label] = {
                "dense_cpu_ms": _cpu_stats(dense),
                "block_cpu_ms": _cpu_stats(block),
                "fell_back": fell,
            }
        rec["top_uses_blocks_at_this_size"] = fi.num_docs >= BLOCK_MIN_DOCS
        out[f"block_rows_{rows_per}"] = rec
        print(rows_per, json.dumps(rec), file=sys.stderr, flush=True)
    snap.close()
    return out


# --- the parent: runs each engine, compares rankings -------------------------------------
def _child(fn: str, *args: Any) -> dict[str, Any]:
    code = f"from scripts.benchmark_lexical import {fn}; {fn}(*{args!r})"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{fn}{args[:1]} failed: {p.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return result


def _overlap(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]], k: int) -> float:
    vals = [
        len(set(x[:k]) & set(y[:k])) / max(1, min(k, len(x))) for x, y in zip(a, b, strict=True)
    ]
    return round(float(np.mean(vals)), 4)


def _judged(data: Path, n_queries: int) -> tuple[list[str], dict[str, dict[str, float]]] | None:
    qrels_path = data / "qrels" / "test.tsv"
    if not qrels_path.is_file():
        return None
    qrels: dict[str, dict[str, float]] = {}
    for line in qrels_path.read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, g = line.split("\t")
        qrels.setdefault(qid, {})[did] = float(g)
    return [qid for qid, _ in _queries(data, n_queries)], qrels


def _rank_bm25(data: Path, n_queries: int) -> list[list[int]]:
    """rank-bm25's BM25Okapi (k1 1.2, b 0.75) over our analyzer's terms of the same text."""
    from rank_bm25 import BM25Okapi

    from indexing.analysis import Analyzer

    a = Analyzer()
    _, texts, _ = _corpus(data)
    bm = BM25Okapi([a.terms(" ".join(p)) for p in zip(*texts, strict=True)], k1=1.2, b=0.75)
    out = []
    for _, q in _queries(data, n_queries):
        s = bm.get_scores(list(a.terms(q)))
        out.append([int(i) for i in np.argsort(-s, kind="stable")[:K] if s[i] > 0])
    return out


def run(
    data: Path, work: Path, n_queries: int, engines: Sequence[str], lean: bool = False
) -> dict[str, Any]:
    from ltr.metrics import ndcg_at_k

    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for e in engines:
        rows[e] = {**_child("_build", e, str(data), str(work), lean)}
        rows[e].update(_child("_query", e, str(data), str(work), n_queries))
    ranks = {e: json.loads((work / f"ranks-{e}.json").read_text()) for e in engines}
    judged = _judged(data, n_queries)
    ids: list[str] = []
    if judged is not None:
        with open(data / "corpus.jsonl", encoding="utf-8") as f:
            ids = [json.loads(line)["_id"] for line in f]
        if len(ids) <= 20_000:
            rows["rank-bm25"] = {"engine": "rank-bm25"}
            ranks["rank-bm25"] = _rank_bm25(data, n_queries)
    for e, r in ranks.items():
        if "ours" in ranks and e != "ours":
            rows[e]["overlap@10_vs_ours"] = _overlap(ranks["ours"], r, 10)
            rows[e]["overlap@100_vs_ours"] = _overlap(ranks["ours"], r, K)
        if judged is not None:
            qids, qrels = judged
            vals = [
                ndcg_at_k([ids[i] for i in rank], qrels[q], 10)
                for q, rank in zip(qids, r, strict=True)
                if q in qrels
            ]
            rows[e]["ndcg@10"] = round(float(np.mean(vals)), 4)
            rows[e]["judged_queries"] = len(vals)
    return {"data": str(data), "queries": n_queries, "engines": list(rows.values())}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmark_lexical", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a BEIR directory")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--work-dir", default="var/bench_lexical")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument(
        "--lean", action="store_true", help="ours: build only the combined field (large corpora)"
    )
    p.add_argument("--out", help="write the results as JSON")
    p.add_argument("--topk", metavar="INDEX_DIR", help="dense vs block-max top-k over this index")
    p.add_argument("--block-rows", default="16,32", help="--topk: BlockMax rows per block")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "corpus.jsonl").is_file():
        print(
            f"benchmark_lexical: {data}: no corpus.jsonl (expected a BEIR directory)",
            file=sys.stderr,
        )
        return 2
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        print(
            f"benchmark_lexical: unknown engine {unknown[0]!r}, expected {ENGINES}", file=sys.stderr
        )
        return 2
    from indexing.encoders import cpu_description

    res: dict[str, Any]
    if args.topk:
        load0 = os.getloadavg()[0]
        rows = [int(r) for r in args.block_rows.split(",")]
        topk = topk_side_by_side(Path(args.topk), data, args.queries, rows)
        res = {"cpu": cpu_description(), "load_avg_1m_before_after": [load0, os.getloadavg()[0]]}
        res.update(topk)
    else:
        res = run(data, Path(args.work_dir), args.queries, engines, args.lean)
        res = {"cpu": cpu_description(), "load_avg_1m": os.getloadavg()[0], **res}
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
