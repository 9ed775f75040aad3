"""RM3 pseudo-relevance feedback: the expanded, weighted query of a first-pass BM25 run.

Why: a reranker cannot rank a relevant document that no retriever returned. RM3 adds the
terms the top first-pass documents share, so documents that use the collection's words
for the query's topic (not the query's own words) become candidates too.

The estimate follows Anserini's ``Rm3Reranker`` (Lucene, the usual reference for RM3):

- each feedback document is a term -> frequency vector over the analyzed combined field,
  keeping terms of 2-20 characters of [a-z0-9] whose document frequency is at most
  ``max_df_ratio`` (10%) of the collection, pruned to its ``fb_terms`` most frequent terms;
- P(w | R) is proportional to sum_d tf(w, d) / |d|_pruned * score(d) (score: the raw
  first-pass BM25), pruned to the ``fb_terms`` heaviest terms and L1-normalized;
- the final query is ``orig_weight`` * the L1-normalized original query plus
  (1 - ``orig_weight``) * P(w | R), each term a BM25 clause boosted by its weight.

Defaults are Anserini's: fb_docs 10, fb_terms 10, original query weight 0.5. Pure
functions here; indexing.local_store runs the weighted search.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_TERM = re.compile(r"[a-z0-9]{2,20}")


@dataclass(frozen=True)
class Rm3Params:
    """RM3's parameters (Anserini's defaults)."""

    fb_docs: int = 10
    fb_terms: int = 10
    orig_weight: float = 0.5
    max_df_ratio: float = 0.1  # feedback terms in more documents than this share are dropped

    def validate(self) -> None:
        if self.fb_docs < 1 or self.fb_terms < 1:
            raise ValueError(
                f"fb_docs and fb_terms must be >= 1, got {self.fb_docs}, {self.fb_terms}"
            )
        if not 0.0 <= self.orig_weight <= 1.0:
            raise ValueError(f"orig_weight must be in [0, 1], got {self.orig_weight}")
        if not 0.0 < self.max_df_ratio <= 1.0:
            raise ValueError(f"max_df_ratio must be in (0, 1], got {self.max_df_ratio}")


DEFAULT_RM3 = Rm3Params()


def _top(weights: Mapping[str, float], n: int) -> dict[str, float]:
    """The n heaviest entries; ties by term (deterministic, where Lucene's order is not)."""
    best = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return dict(best)


def _l1(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()} if total > 0 else {}


def relevance_model(
    docs: Sequence[Sequence[str]],
    scores: Sequence[float],
    doc_freq: Callable[[str], int],
    num_docs: int,
    params: Rm3Params = DEFAULT_RM3,
) -> dict[str, float]:
    """P(w | R) over the feedback documents' analyzed terms (L1-normalized, pruned)."""
    vectors: list[dict[str, float]] = []
    for terms in docs[: params.fb_docs]:
        tf = Counter(t for t in terms if _TERM.fullmatch(t))
        kept = {t: float(c) for t, c in tf.items() if doc_freq(t) <= params.max_df_ratio * num_docs}
        vectors.append(_top(kept, params.fb_terms))
    rm: dict[str, float] = {}
    for vec, score in zip(vectors, scores, strict=False):
        norm = sum(vec.values())
        if norm <= 0.001:
            continue
        for t, w in vec.items():
            rm[t] = rm.get(t, 0.0) + w / norm * float(score)
    return _l1(_top(rm, params.fb_terms))


def expand(
    query_terms: Sequence[str],
    docs: Sequence[Sequence[str]],
    scores: Sequence[float],
    doc_freq: Callable[[str], int],
    num_docs: int,
    params: Rm3Params = DEFAULT_RM3,
) -> dict[str, float]:
    """Term -> weight of the RM3 query: the original terms mixed with the feedback model.

    With no usable feedback (no documents, or only frequent terms) the result is the
    original query alone, L1-normalized.
    """
    q = _l1({t: float(c) for t, c in Counter(query_terms).items()})
    rm = relevance_model(docs, scores, doc_freq, num_docs, params)
    if not rm:
        return q
    a = params.orig_weight
    return {t: a * q.get(t, 0.0) + (1.0 - a) * rm.get(t, 0.0) for t in {**q, **rm}}
