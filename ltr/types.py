"""Frozen dataclasses and schemas that pass between packages.

CandidateSet is columnar on purpose: every feature is a vectorized function over all the
candidates of one query at once (numpy arrays aligned with ``ids``). Missing is NaN, never 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Query:
    id: str
    text: str


@dataclass(frozen=True)
class Judgment:
    """A graded relevance label (explicit qrels or derived from clicks)."""

    query_id: str
    doc_id: str
    grade: float


# Retriever names used as keys of CandidateSet.scores / .ranks.
BM25 = "bm25"  # combined-field BM25
DENSE = "dense"  # kNN over sentence embeddings
RETRIEVERS: tuple[str, ...] = (BM25, DENSE)
# Optional retrievers that only add candidates (fusion, the base margin and RRF stay on
# RETRIEVERS): RM3 query expansion of the BM25 run (indexing.prf) and BM25 on the title
# field alone. search.config.RetrievalConfig.extra_retrievers switches them on.
RM3 = "rm3"
TITLE = "title"
EXTRA_RETRIEVERS: tuple[str, ...] = (RM3, TITLE)

# The served log's fixed columns, in order (search.events writes them, ltr.dataset trains
# from them, monitoring.drift compares windows of them): one row per served hit, followed
# by one column per feature the model scored.
SERVED_LOG_COLUMNS: tuple[str, ...] = (
    "request_id",
    "ts",
    "query",
    "query_id",
    "doc_id",
    "position",
    "model_version",
    "featureset_id",
    "score",
    "clicked",
)
# Non-feature columns a served-log frame may carry: the fixed ones and a base margin column
# a caller added (ltr.dataset.from_served_log's default margin_column).
SERVED_META_COLUMNS: tuple[str, ...] = (*SERVED_LOG_COLUMNS, "base_margin")


@dataclass(frozen=True)
class TermIds:
    """CandidateSet.doc_terms as int ids of one index vocabulary, as a format-3 local index
    stores them: features then skip mapping ~12K term strings to ids per request.

    Ids mean something only within one TermIds (they are never compared with another
    vocabulary's). Rows are (field, candidate) pairs, field-major, in doc_terms' order.
    """

    fields: tuple[str, ...]  # == tuple(doc_terms)
    ids: np.ndarray  # int32: the terms of every row, concatenated
    lengths: np.ndarray  # int64 [len(fields) * n]: terms per row
    # query term -> id; a term absent from it occurs in no document of the vocabulary
    query_ids: Mapping[str, int]
    bound: int  # every id is < bound


@dataclass(frozen=True)
class CandidateSet:
    """Everything the feature functions may read for one query's candidates.

    Built by search.candidates (the same code at serving time and in offline replay), so
    the features are computed identically in both places.
    """

    query_text: str
    query_terms: tuple[str, ...]  # analyzed with the index's analyzer (stemmed, stopwords off)
    ids: tuple[str, ...]
    # retriever name -> score / 1-based rank per candidate; NaN where that retriever did not
    # return the candidate in its top-N.
    scores: Mapping[str, np.ndarray]
    ranks: Mapping[str, np.ndarray]
    # text field -> BM25 score of the query against that field, for EVERY candidate (0 = no match).
    field_bm25: Mapping[str, np.ndarray]
    # cosine(query, doc) for every candidate (vectors are L2-normalized).
    dense_cosine: np.ndarray
    # text field -> analyzed terms of that field, per candidate.
    doc_terms: Mapping[str, tuple[tuple[str, ...], ...]]
    # query term -> IDF in the combined-field index (terms unknown to the index are absent).
    idf: Mapping[str, float]
    # numeric document attribute -> value per candidate (NaN where the document has none).
    static: Mapping[str, np.ndarray]
    # behavior aggregate -> value per candidate (see ltr.features for the names); empty
    # mapping or NaN where there is no click history.
    behavior: Mapping[str, np.ndarray] = field(default_factory=dict)
    query_id: str | None = None
    # doc_terms as vocabulary ids when the backend has them (None: features encode the
    # strings). Whoever replaces doc_terms must replace or drop these too.
    term_ids: TermIds | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def with_behavior(self, behavior: Mapping[str, np.ndarray]) -> CandidateSet:
        """Same candidates with behavior aggregates attached (serve time or replay)."""
        from dataclasses import replace

        return replace(self, behavior=dict(behavior))
