"""Measure embedding expansions of the query terms the index does not know (issue 13).

    python -m scripts.experiment_unknown_terms --dataset BEIR_DIR --out R.json
        [--work-dir DIR] [--variants base,unk_share,unk_share_free,exp_features,exp_bm25]

Why: the demo catalog's weakest queries use a word no product contains ("sneakers" for
running shoes: vocabulary mismatch). This script measures, with the protocol of
scripts/evaluate.py (same index, replay and ``ltr.evaluation.run_evaluation``, 5-fold CV,
seed 0), whether the reranker gains from knowing which query terms are unknown and from
their nearest index terms in MiniLM space. None of it is in the default recipe (see
docs/evaluation.md, "What was tried and rejected"); the serving code has none of it.

Variants (each one full cross-validated run; ``base`` is the default recipe):

- ``unk_share``: the opt-in feature ``unk_share`` (share of the query's terms the index
  does not know); ``unk_share_free``: the same with the monotone constraints off, so the
  trees could lower a candidate that BM25 likes when the query's noun is unknown.
- ``exp_features``: each unknown query term (not in the index, >= 2 characters) is
  replaced by its ``--k`` nearest index terms with cosine >= ``--min-cos``, among the
  ``--max-terms`` most frequent alphabetic terms with df >= 2 (one MiniLM vector per term,
  embedded from its most frequent surface form); two features: ``exp_cov`` (mean over the
  unknown terms of the best cosine of a neighbour the candidate holds) and ``exp_bm25``
  (BM25 of the neighbours, weighted by cosine, over the candidate's terms / the query max).
- ``exp_bm25``: the BM25 retriever searches the query with the neighbours appended (more
  candidates, and BM25 itself changes); the default features.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

VARIANTS = ("base", "unk_share", "unk_share_free", "exp_features", "exp_bm25")
K1, B = 1.2, 0.75  # BM25 parameters of exp_bm25 (the index's defaults)


@dataclass(frozen=True)
class Vocabulary:
    """The index's frequent terms, their surface forms, IDF and unit MiniLM vectors."""

    terms: list[str]
    forms: list[str]
    idf: dict[str, float]
    vectors: np.ndarray  # float32 [n, dim]
    seconds: float  # time to embed them


def build_vocabulary(
    corpus: Sequence[Any], analyzer: Any, encoder: Any, max_terms: int
) -> Vocabulary:
    """Terms of the documents' text fields with df >= 2, alphabetic, most frequent first."""
    df: collections.Counter[str] = collections.Counter()
    surface: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for doc in corpus:
        seen: set[str] = set()
        for text in doc.text_fields().values():
            for tok in analyzer.tokens(text):
                term = analyzer.term(tok)
                if term is not None:
                    surface[term][tok] += 1
                    seen.add(term)
        df.update(seen)
    terms = [t for t, c in df.most_common() if c >= 2 and t.isalpha()][:max_terms]
    forms = [surface[t].most_common(1)[0][0] for t in terms]
    n = len(corpus)
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in terms}
    t0 = time.perf_counter()
    vectors = np.asarray(encoder.encode(forms), dtype=np.float32)
    return Vocabulary(terms, forms, idf, vectors, time.perf_counter() - t0)


Expansions = dict[str, tuple[tuple[str, float, float], ...]]  # term -> (neighbour, cos, idf)


def expansions(
    query: str, known: Mapping[str, float], analyzer: Any, encoder: Any, vocab: Vocabulary,
    k: int, min_cos: float,
) -> Expansions:  # fmt: skip
    """Unknown analyzed term of ``query`` -> its nearest vocabulary terms (cosine >= min_cos)."""
    unknown: dict[str, str] = {}
    for tok in analyzer.tokens(query):
        term = analyzer.term(tok)
        if term is not None and term not in known and len(term) >= 2:
            unknown.setdefault(term, tok)
    if not unknown:
        return {}
    vecs = encoder.encode(list(unknown.values()))
    out: Expansions = {}
    for term, v in zip(unknown, vecs, strict=True):
        sims = vocab.vectors @ np.asarray(v, dtype=np.float32)
        top = np.argsort(-sims, kind="stable")[:k]
        out[term] = tuple(
            (vocab.terms[i], float(sims[i]), vocab.idf[vocab.terms[i]])
            for i in top
            if sims[i] >= min_cos and vocab.terms[i] != term
        )
    return out


# query text -> its expansions; the two features read it (set per dataset by main)
EXPANSIONS: dict[str, Expansions] = {}


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan, dtype=np.float64)


def _doc_terms(cs: Any, i: int) -> list[str]:
    return [t for f in cs.doc_terms.values() for t in f[i]]


def exp_cov(cs: Any) -> np.ndarray:
    """Mean over the unknown terms of the best cosine of a neighbour the candidate holds."""
    exp = EXPANSIONS.get(cs.query_text)
    if not exp:
        return _nan(len(cs.ids))
    out = np.zeros(len(cs.ids), dtype=np.float64)
    for i in range(len(cs.ids)):
        held = set(_doc_terms(cs, i))
        out[i] = sum(max((s for e, s, _ in ex if e in held), default=0.0) for ex in exp.values())
    return out / len(exp)


def exp_bm25(cs: Any) -> np.ndarray:
    """BM25 of the neighbours (weighted by cosine) over the candidate's terms / query max."""
    exp = EXPANSIONS.get(cs.query_text)
    if not exp:
        return _nan(len(cs.ids))
    tfs = [collections.Counter(_doc_terms(cs, i)) for i in range(len(cs.ids))]
    lens = np.array([sum(c.values()) for c in tfs], dtype=np.float64)
    avg = float(lens.mean()) if lens.size and lens.mean() > 0 else 1.0
    out = np.zeros(len(cs.ids), dtype=np.float64)
    for i, tf in enumerate(tfs):
        norm = K1 * (1 - B + B * lens[i] / avg)
        out[i] = sum(
            s * w * tf[e] * (K1 + 1) / (tf[e] + norm)
            for ex in exp.values()
            for e, s, w in ex
            if tf.get(e)
        )
    m = out.max() if out.size else 0.0
    return out / m if m > 0 else out


class RewritingBackend:
    """A retrieval backend whose combined-field BM25 searches the rewritten query text
    (the query with its unknown terms' neighbours appended); everything else delegates."""

    def __init__(self, inner: Any, rewrites: Mapping[str, str]) -> None:
        self.inner = inner
        self.rewrites = rewrites

    async def bm25(self, query: str, k: int, field: str | None = None, filters: Any = None) -> Any:
        text = self.rewrites.get(query, query) if field is None else query
        return await self.inner.bm25(text, k, field, filters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--work-dir", default=None, help="default var/eval/<dataset name>")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--min-cos", type=float, default=0.5)
    p.add_argument("--max-terms", type=int, default=20_000)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"error: unknown variant {bad}; valid: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if not (Path(args.dataset) / "corpus.jsonl").exists():
        print(f"error: {args.dataset} is not a BEIR directory (no corpus.jsonl)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from indexing.analysis import Analyzer
    from indexing.config import EmbeddingConfig
    from indexing.encoders import load_encoder
    from indexing.loaders import load_beir
    from indexing.local import LocalBackend
    from ltr import features as F
    from ltr.evaluation import EvalConfig, EvalData, run_evaluation
    from scripts.evaluate import prepare_index
    from search.candidates import CandidateGenerator
    from search.replay import REPLAY_TIMEOUTS_MS, replay, run_sync

    for name, fn in (("exp_cov", exp_cov), ("exp_bm25", exp_bm25)):
        F.FEATURES[name] = F.Feature(name, "text", fn, doc="experiment (issue 13)", monotone=1)
    dataset = Path(args.dataset)
    work = Path(args.work_dir or f"var/eval/{dataset.resolve().name}")
    ds = load_beir(dataset)
    encoder = load_encoder(EmbeddingConfig())
    index_dir = prepare_index(dataset, work, ds.corpus, encoder, print)
    analyzer = Analyzer()  # the index's default analyzer (IndexConfig())
    vocab = build_vocabulary(ds.corpus, analyzer, encoder, args.max_terms)
    print(f"vocabulary: {len(vocab.terms)} terms embedded in {vocab.seconds:.1f}s", flush=True)

    async def replay_with(rewrites: Mapping[str, str]) -> Any:
        backend = LocalBackend.open(index_dir, encoder)
        try:
            inner = RewritingBackend(backend, rewrites) if rewrites else backend
            gen = CandidateGenerator(
                cast(Any, inner), encoder, 100, 100, timeouts=REPLAY_TIMEOUTS_MS
            )
            return await replay(
                gen, ds.queries, ds.qrels, EvalConfig().features,
                encoder=encoder, query_cache=gen.query_cache,
            )  # fmt: skip
        finally:
            await backend.close()

    rep = run_sync(replay_with({}))
    t0 = time.perf_counter()
    for rq in rep.queries:
        EXPANSIONS[rq.cs.query_text] = expansions(
            rq.cs.query_text, rq.cs.idf, analyzer, encoder, vocab, args.k, args.min_cos
        )
    per_query_ms = 1000 * (time.perf_counter() - t0) / max(1, len(rep.queries))
    form = dict(zip(vocab.terms, vocab.forms, strict=True))
    rewrites = {
        q: q + " " + " ".join(form[e] for ex in exp.values() for e, _, _ in ex)
        for q, exp in EXPANSIONS.items()
        if any(exp.values())
    }
    report: dict[str, Any] = {
        "dataset": str(dataset),
        "vocabulary_terms": len(vocab.terms),
        "vocabulary_seconds": round(vocab.seconds, 2),
        "expansion_ms_per_query": round(per_query_ms, 2),
        "queries_with_unknown_terms": sum(bool(e) for e in EXPANSIONS.values()),
        "queries_expanded": len(rewrites),
        "expansions": {
            q: {t: [[e, round(s, 3)] for e, s, _ in ex] for t, ex in exp.items()}
            for q, exp in EXPANSIONS.items()
            if exp
        },
        "variants": {},
    }
    base = EvalConfig().features
    for v in variants:
        cfg = EvalConfig()
        data_rep = rep
        if v in ("unk_share", "unk_share_free"):
            train = replace(cfg.train, monotone=v == "unk_share")
            cfg = EvalConfig(features=(*base, "unk_share"), train=train)
        elif v == "exp_features":
            cfg = EvalConfig(features=(*base, "exp_cov", "exp_bm25"))
        elif v == "exp_bm25":
            data_rep = run_sync(replay_with(rewrites))
        t1 = time.perf_counter()
        res = run_evaluation(EvalData.from_replay(data_rep), cfg).report
        res["candidate_recall"] = data_rep.recall
        report["variants"][v] = res
        lin = res["vs_linear"]["ltr"]
        trees = [f["ltr_rounds"] for f in res["folds_detail"]]
        print(
            f"{v}: recall {data_rep.recall['union@100']:.4f} "
            + " ".join(f"{m} {res['methods'][m]['ndcg@10']:.4f}" for m in res["methods"])
            + f"; ltr vs linear {lin['mean_diff']:+.4f} (t p {lin['t_p']:.2g}); ltr / best "
            f"single {res['ltr_over_best_single']:.3f}; trees {trees}"
            f" ({time.perf_counter() - t1:.0f}s)",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, allow_nan=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
