"""The RetrievalBackend contract, one mixin per method: a test suite every backend passes.

Modelled on Haystack's per-method document-store test mixins: ``InfoContract``,
``BM25Contract``, ``KnnContract``, ``FetchContract``, ``FieldScoresContract``,
``CosineContract``, ``AnalyzeContract``, ``DocTermsContract``, ``IdfContract``,
``StaticAttrsContract`` and ``LookupsContract`` each check one method (using others only to
derive expected values); ``BackendContract`` is all of them. Subclass the ones a backend
implements in a module whose class name starts with ``Test`` and provide an async
``backend`` fixture that indexes ``CONTRACT_DOCS`` (embedding each document's
``indexing.documents.embedding_text`` with the session ``encoder``). The expected values come
from the corpus itself (brute force over ``Filters.matches``, Lucene IDF from document
frequencies), are read off the rows (``MATCHING``, ``DF``) or come from consistency between
methods, so the same file checks any backend.
The tests run on the session event loop (``loop_scope="session"``): declare the fixture with
``@pytest_asyncio.fixture(loop_scope="session")`` so a loop-bound client (aiohttp) works.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from indexing.backend import Filters, Hits, IndexInfo, Lookups, RetrievalBackend
from indexing.documents import Document, embedding_text
from indexing.errors import InvalidRequestError
from ltr.errors import UnknownNameError

_ROWS: list[tuple[str, str, str, str | None, dict[str, float], dict[str, str]]] = [
    # id, title, body, category, attrs, extra
    (
        "d01",
        "Lightweight laptop for travel",
        "A thin laptop with long battery life and a bright screen.",
        "laptops",
        {"price": 999.0, "rating": 4.5},
        {"brand": "Acme"},
    ),
    (
        "d02",
        "Gaming laptop with fast graphics",
        "Powerful graphics card, fast processor and a loud cooling fan.",
        "laptops",
        {"price": 1899.0, "rating": 4.7},
        {"brand": "Zento"},
    ),
    (
        "d03",
        "Budget laptop for students",
        "Affordable laptop for homework, browsing and video calls.",
        "laptops",
        {"price": 449.0, "rating": 3.9},
        {"brand": "Acme"},
    ),
    (
        "d04",
        "Laptop stand aluminium",
        "Raise your laptop screen to eye level; folds flat for travel.",
        "accessories",
        {"price": 39.0},
        {"brand": "Deskly"},
    ),
    (
        "d05",
        "Wireless mouse",
        "Quiet wireless mouse with a long battery life.",
        "accessories",
        {"price": 25.0, "rating": 4.2},
        {"brand": "Clicko"},
    ),
    (
        "d06",
        "Mechanical keyboard",
        "Tactile switches, aluminium frame and backlit keys for typing.",
        "accessories",
        {"price": 129.0, "rating": 4.6},
        {"brand": "Clicko"},
    ),
    (
        "d07",
        "Smartphone with great camera",
        "Phone with a triple camera, night mode and fast charging.",
        "phones",
        {"price": 799.0, "rating": 4.4},
        {"brand": "Zento"},
    ),
    (
        "d08",
        "Rugged phone for hiking",
        "Waterproof phone that survives drops; huge battery for long hikes.",
        "phones",
        {"price": 399.0, "rating": 4.0},
        {"brand": "Trailer"},
    ),
    (
        "d09",
        "Phone case leather",
        "Slim leather case protects your phone from scratches.",
        "accessories",
        {"price": 19.0, "rating": 3.5},
        {},
    ),
    (
        "d10",
        "USB-C charger 65W",
        "Fast charger for laptop and phone with two ports.",
        "accessories",
        {"price": 45.0, "rating": 4.3},
        {"brand": "Voltix"},
    ),
    (
        "d11",
        "Noise cancelling headphones",
        "Over-ear headphones that block noise on flights and trains.",
        "audio",
        {"price": 299.0, "rating": 4.8},
        {"brand": "Hush"},
    ),
    (
        "d12",
        "Bluetooth speaker waterproof",
        "Portable speaker with deep bass, waterproof for the beach.",
        "audio",
        {"price": 79.0, "rating": 4.1},
        {"brand": "Hush"},
    ),
    (
        "d13",
        "Wireless earbuds",
        "Small earbuds with a charging case and clear calls.",
        "audio",
        {"price": 149.0},
        {"brand": "Zento"},
    ),
    (
        "d14",
        "Cookbook of Italian pasta",
        "Recipes for fresh pasta, sauces and classic Italian dinners.",
        "books",
        {"price": 29.0, "rating": 4.9},
        {},
    ),
    (
        "d15",
        "Guide to hiking trails",
        "Maps and advice for mountain hiking trails and camping.",
        "books",
        {"price": 24.0, "rating": 4.2},
        {},
    ),
    (
        "d16",
        "History of aviation",
        "From the first powered flight to jet engines and supersonic aircraft.",
        "books",
        {"price": 35.0, "rating": 4.4},
        {},
    ),
    (
        "d17",
        "Learning Python programming",
        "An introduction to Python programming with exercises.",
        "books",
        {"price": 42.0, "rating": 4.6},
        {},
    ),
    (
        "d18",
        "Espresso machine",
        "Brew espresso and cappuccino at home with a milk frother.",
        "kitchen",
        {"price": 549.0, "rating": 4.5},
        {"brand": "Barista"},
    ),
    (
        "d19",
        "Electric kettle",
        "Boils water fast; keep warm function for tea.",
        "kitchen",
        {"price": 49.0, "rating": 4.0},
        {"brand": "Voltix"},
    ),
    (
        "d20",
        "Chef knife steel",
        "Sharp steel knife for slicing vegetables and meat.",
        "kitchen",
        {"price": 89.0},
        {},
    ),
    (
        "d21",
        "Cast iron pan",
        "Heavy pan for searing steak; oven safe.",
        "kitchen",
        {"price": 59.0, "rating": 4.7},
        {},
    ),
    (
        "d22",
        "Tent for two people",
        "Lightweight camping tent, waterproof, packs small for hiking.",
        "outdoor",
        {"price": 219.0, "rating": 4.3},
        {"brand": "Trailer"},
    ),
    (
        "d23",
        "Sleeping bag warm",
        "Down sleeping bag rated for cold mountain nights.",
        "outdoor",
        {"price": 179.0, "rating": 4.5},
        {"brand": "Trailer"},
    ),
    (
        "d24",
        "Hiking boots",
        "Waterproof leather boots with grip for rocky trails.",
        "outdoor",
        {"price": 159.0, "rating": 4.6},
        {"brand": "Trailer"},
    ),
    (
        "d25",
        "Water bottle insulated",
        "Keeps drinks cold for a day of hiking or cycling.",
        "outdoor",
        {"price": 29.0},
        {},
    ),
    (
        "d26",
        "Road bike carbon",
        "Carbon frame road bike with light wheels for fast rides.",
        "sports",
        {"price": 2499.0, "rating": 4.8},
        {"brand": "Velo"},
    ),
    (
        "d27",
        "Yoga mat",
        "Non-slip mat for yoga and stretching at home.",
        "sports",
        {"price": 35.0, "rating": 4.1},
        {},
    ),
    (
        "d28",
        "Running shoes",
        "Light running shoes with cushioning for long runs.",
        "sports",
        {"rating": 4.4},
        {"brand": "Velo"},
    ),
    (
        "d29",
        "Desk lamp LED",
        "Adjustable LED lamp with warm and cold light for the desk.",
        None,
        {"price": 59.0, "rating": 4.0},
        {},
    ),
    ("d30", "Gift card", "A gift card for any product in the store.", None, {}, {}),
]

CONTRACT_DOCS: list[Document] = [
    Document(id=i, title=t, body=b, extra=x, category=c, attrs=a) for i, t, b, c, a, x in _ROWS
]
DOCS_BY_ID = {d.id: d for d in CONTRACT_DOCS}
QUERIES = ["laptop battery", "waterproof hiking", "fast phone charger", "italian pasta recipes"]
FILTERS = [
    Filters(category="laptops"),
    Filters(category="accessories", ranges={"price": (20.0, 100.0)}),
    Filters(ranges={"rating": (4.4, None)}),
    Filters(ranges={"price": (None, 60.0), "rating": (4.0, 4.5)}),
    Filters(category="no-such-category"),
    Filters(ranges={"weight": (0.0, None)}),  # an attribute no document has: nothing matches
]
N = len(CONTRACT_DOCS)
# Read off the rows above (any text field, after stemming and stopwords): the documents each
# query shares a term with, and the document frequency of a few terms.
MATCHING = {
    "laptop battery": {"d01", "d02", "d03", "d04", "d05", "d08", "d10"},
    "waterproof hiking": {"d08", "d12", "d15", "d22", "d24", "d25"},
    "fast phone charger": {"d02", "d07", "d08", "d09", "d10", "d19", "d26"},
    "italian pasta recipes": {"d14"},
}
DF = {"laptop": 5, "waterproof": 4, "hike": 5, "espresso": 1}


def lucene_idf(df: int, n: int) -> float:
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def assert_same_columns(got: Any, want: Any) -> None:
    """Two name -> per-id column mappings hold the same names and values (NaN == NaN)."""
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))


def assert_ranked(hits: Hits, k: int) -> None:
    """Scores descending, at most k, aligned with ids, no duplicates."""
    assert isinstance(hits, Hits)
    assert len(hits.ids) == len(hits.scores) <= k
    assert len(set(hits.ids)) == len(hits.ids)
    assert np.all(np.diff(np.asarray(hits.scores, dtype=np.float64)) <= 1e-9)


def assert_same_ranking(got: Hits, want_ids: list[str], want_scores: list[float]) -> None:
    """Equal scores position by position; ids equal except where scores tie."""
    assert len(got) == len(want_ids)
    np.testing.assert_allclose(got.scores, want_scores, rtol=1e-5, atol=1e-6)
    for i, (g, w) in enumerate(zip(got.ids, want_ids, strict=True)):
        if g != w:  # allowed only inside a block of tied scores
            tied = [
                want_ids[j]
                for j in range(len(want_ids))
                if abs(want_scores[j] - want_scores[i]) < 1e-5
            ]
            assert g in tied, f"position {i}: got {g}, want {w}"


@pytest.mark.asyncio(loop_scope="session")
class _Contract:
    """What every per-method contract shares: the session event loop and the helpers."""

    @staticmethod
    async def all_scores(backend: Any, query: str, field: str | None = None) -> dict[str, float]:
        hits = await backend.bm25(query, N, field)
        return dict(zip(hits.ids, map(float, hits.scores), strict=True))


class InfoContract(_Contract):
    """``info()``, and that the backend is a ``RetrievalBackend`` at all."""

    async def test_is_a_retrieval_backend(self, backend: Any) -> None:
        assert isinstance(backend, RetrievalBackend)

    async def test_info(self, backend: Any, encoder: Any) -> None:
        info = await backend.info()
        assert isinstance(info, IndexInfo)
        assert info.doc_count == N
        assert info.text_fields[:2] == ("title", "body") and "brand" in info.text_fields
        assert set(info.attr_names) == {"price", "rating"}
        assert info.dim == encoder.dim
        assert info.version


class BM25Contract(_Contract):
    """``bm25()``: ranking, k, field restriction, empty and unknown queries, filters."""

    @pytest.mark.parametrize("query", QUERIES)
    async def test_bm25_ordering_and_k(self, backend: Any, query: str) -> None:
        full = await backend.bm25(query, N)
        assert_ranked(full, N)
        assert set(full.ids) == MATCHING[query] and np.all(full.scores > 0)
        for k in (1, 3):
            top = await backend.bm25(query, k)
            assert_ranked(top, k)
            assert len(top) == min(k, len(full))
            np.testing.assert_allclose(top.scores, full.scores[:k], rtol=1e-6)

    async def test_bm25_only_matching_documents(self, backend: Any) -> None:
        hits = await backend.bm25("espresso", N)
        assert hits.ids == ("d18",)

    async def test_bm25_field_restriction(self, backend: Any) -> None:
        terms = set(await backend.analyze("leather"))
        terms_by_doc = await backend.doc_terms([d.id for d in CONTRACT_DOCS])
        for field in ("title", "body"):
            hits = await backend.bm25("leather", N, field=field)
            want = {
                d.id
                for d, dt in zip(CONTRACT_DOCS, terms_by_doc[field], strict=True)
                if terms & set(dt)
            }
            assert set(hits.ids) == want
        assert set((await backend.bm25("leather", N, field="title")).ids) == {"d09"}
        assert set((await backend.bm25("leather", N, field="body")).ids) == {"d09", "d24"}
        assert set((await backend.bm25("acme", N, field="brand")).ids) == {"d01", "d03"}
        assert len(await backend.bm25("acme", N, field="title")) == 0

    async def test_bm25_unknown_field(self, backend: Any) -> None:
        with pytest.raises(UnknownNameError, match="valid"):
            await backend.bm25("laptop", 5, field="no_such_field")

    @pytest.mark.parametrize("query", ["", "   ", "the and of", "!!! ???"])
    async def test_bm25_empty_query(self, backend: Any, query: str) -> None:
        hits = await backend.bm25(query, 10)
        assert len(hits) == 0 and len(hits.scores) == 0

    async def test_bm25_unknown_terms(self, backend: Any) -> None:
        assert len(await backend.bm25("zzzzqqq xyzzy", 10)) == 0

    @pytest.mark.parametrize("k", [0, -1])
    async def test_bad_k(self, backend: Any, k: int) -> None:
        with pytest.raises(InvalidRequestError):
            await backend.bm25("laptop", k)

    @pytest.mark.parametrize("filters", FILTERS, ids=lambda f: repr(f))
    @pytest.mark.parametrize("query", QUERIES[:3])
    async def test_bm25_filters_vs_brute_force(
        self, backend: Any, query: str, filters: Filters
    ) -> None:
        full = await self.all_scores(backend, query)
        want = [(d, s) for d, s in full.items() if filters.matches(DOCS_BY_ID[d])]
        for k in (2, N):
            got = await backend.bm25(query, k, filters=filters)
            assert_ranked(got, k)
            assert_same_ranking(got, [d for d, _ in want[:k]], [s for _, s in want[:k]])


class KnnContract(_Contract):
    """``knn()``: self-retrieval, semantics, filters, k and bad vectors."""

    async def test_knn_self_retrieval(self, backend: Any, encoder: Any) -> None:
        docs = CONTRACT_DOCS[::7]
        vectors = encoder.encode([embedding_text(d) for d in docs])
        for doc, v in zip(docs, vectors, strict=True):
            hits = await backend.knn(v, 5)
            assert_ranked(hits, 5)
            assert len(hits) == 5
            assert hits.ids[0] == doc.id
            assert hits.scores[0] == pytest.approx(1.0, abs=1e-4)

    async def test_knn_semantic(self, backend: Any, encoder: Any) -> None:
        v = encoder.encode(["a notebook computer to take on trips"])[0]
        hits = await backend.knn(v, 3)
        assert "d01" in hits.ids

    @pytest.mark.parametrize("filters", FILTERS, ids=lambda f: repr(f))
    async def test_knn_filters_vs_brute_force(
        self, backend: Any, encoder: Any, filters: Filters
    ) -> None:
        v = encoder.encode(["waterproof gear for the outdoors"])[0]
        ids = [d.id for d in CONTRACT_DOCS]
        cos = np.asarray(await backend.cosine(v, ids))
        order = sorted(range(N), key=lambda i: (-cos[i], i))
        want = [(ids[i], float(cos[i])) for i in order if filters.matches(CONTRACT_DOCS[i])]
        for k in (3, N):
            got = await backend.knn(v, k, filters=filters)
            assert_ranked(got, k)
            assert_same_ranking(got, [d for d, _ in want[:k]], [s for _, s in want[:k]])

    async def test_knn_k_larger_than_corpus(self, backend: Any, encoder: Any) -> None:
        v = encoder.encode(["anything"])[0]
        hits = await backend.knn(v, N + 50)
        assert len(hits) == N

    async def test_knn_bad_vector(self, backend: Any, encoder: Any) -> None:
        with pytest.raises(InvalidRequestError):
            await backend.knn(np.zeros(encoder.dim + 1, dtype=np.float32), 3)
        bad = np.full(encoder.dim, np.nan, dtype=np.float32)
        with pytest.raises(InvalidRequestError):
            await backend.knn(bad, 3)


class FetchContract(_Contract):
    """``fetch()``: documents in the order asked, ``None`` for unknown ids."""

    async def test_fetch_order_and_unknown(self, backend: Any) -> None:
        ids = ["d05", "nope", "d01", "d30", "d05"]
        got = await backend.fetch(ids)
        assert len(got) == len(ids)
        assert got[1] is None
        for i in (0, 2, 3, 4):
            assert got[i] == DOCS_BY_ID[ids[i]]
        assert await backend.fetch([]) == []


class FieldScoresContract(_Contract):
    """``field_scores()``: per-field BM25 aligned with the ids asked."""

    @pytest.mark.parametrize("query", QUERIES)
    async def test_field_scores_alignment(self, backend: Any, query: str) -> None:
        info = await backend.info()
        ids = ["d03", "unknown-id", "d14", "d01", "d22", "d09"]
        got = await backend.field_scores(query, ids)
        assert set(got) == set(info.text_fields)
        for field in info.text_fields:
            ref = await self.all_scores(backend, query, field)
            col = np.asarray(got[field])
            assert col.shape == (len(ids),)
            assert math.isnan(col[1])
            want = [ref.get(i, 0.0) for i in ids if i != "unknown-id"]
            np.testing.assert_allclose(np.delete(col, 1), want, rtol=1e-5, atol=1e-6)

    async def test_field_scores_empty_query(self, backend: Any) -> None:
        got = await backend.field_scores("the", ["d01", "d02"])
        for col in got.values():
            np.testing.assert_array_equal(col, [0.0, 0.0])


class CosineContract(_Contract):
    """``cosine()``: aligned with the ids asked, equal to the dot product."""

    async def test_cosine_alignment(self, backend: Any, encoder: Any) -> None:
        v = encoder.encode(["fast laptop"])[0]
        hits = await backend.knn(v, 6)
        ids = [*reversed(hits.ids), "unknown-id"]
        cos = np.asarray(await backend.cosine(v, ids))
        np.testing.assert_allclose(cos[:-1], list(reversed(hits.scores)), rtol=1e-5, atol=1e-6)
        assert math.isnan(cos[-1])
        doc_vecs = encoder.encode([embedding_text(DOCS_BY_ID[i]) for i in ids[:-1]])
        np.testing.assert_allclose(cos[:-1], doc_vecs @ v, atol=1e-4)


class AnalyzeContract(_Contract):
    """``analyze()``: stopwords out, stems in."""

    async def test_analyze(self, backend: Any) -> None:
        terms = await backend.analyze("The Running DOGS of the hiking trails")
        assert "the" not in terms and "of" not in terms
        assert "run" in terms and "dog" in terms and "hike" in terms and "trail" in terms
        assert await backend.analyze("") == ()


class DocTermsContract(_Contract):
    """``doc_terms()``: each field's analyzed terms, aligned with the ids asked."""

    async def test_doc_terms(self, backend: Any) -> None:
        info = await backend.info()
        ids = ["d02", "unknown-id", "d30"]
        got = await backend.doc_terms(ids)
        assert set(got) == set(info.text_fields)
        for field in info.text_fields:
            assert len(got[field]) == len(ids)
            assert got[field][1] == ()
        for i in (0, 2):
            doc = DOCS_BY_ID[ids[i]]
            for field, text in doc.text_fields().items():
                assert got[field][i] == await backend.analyze(text)
        assert got["brand"][2] == ()  # d30 has no brand


class IdfContract(_Contract):
    """``idf()``: Lucene IDF from document frequencies."""

    async def test_idf(self, backend: Any) -> None:
        combined = [
            set(await backend.analyze(" ".join(d.text_fields().values()))) for d in CONTRACT_DOCS
        ]
        got = await backend.idf([*DF, "no-such-term-xyz"])
        assert "no-such-term-xyz" not in got
        for t, df in DF.items():
            assert sum(t in c for c in combined) == df
            assert got[t] == pytest.approx(lucene_idf(df, N), rel=1e-6)
        assert got["espresso"] > got["laptop"] > 0


class StaticAttrsContract(_Contract):
    """``static_attrs()``: numeric attributes, NaN where absent."""

    async def test_static_attrs(self, backend: Any) -> None:
        info = await backend.info()
        ids = ["d28", "d30", "unknown-id", "d01", "d28"]
        got = await backend.static_attrs(ids)
        assert set(got) == set(info.attr_names)
        for name in info.attr_names:
            want = [
                DOCS_BY_ID[i].attrs.get(name, math.nan) if i in DOCS_BY_ID else math.nan
                for i in ids
            ]
            np.testing.assert_array_equal(np.asarray(got[name], dtype=np.float64), want)
        empty = await backend.static_attrs([])
        assert set(empty) == set(info.attr_names) and all(len(c) == 0 for c in empty.values())


class LookupsContract(_Contract):
    """``lookups()``: every per-candidate lookup at once, equal to the separate methods."""

    @pytest.mark.parametrize("query", [*QUERIES[:2], "the"])
    async def test_lookups_equal_the_separate_methods(
        self, backend: Any, encoder: Any, query: str
    ) -> None:
        ids = ["d03", "unknown-id", "d14", "d01", "d22", "d01"]
        v = encoder.encode([query])[0]
        got = await backend.lookups(query, ids, v)
        assert isinstance(got, Lookups)
        terms = await backend.analyze(query)
        assert got.query_terms == terms
        assert_same_columns(got.field_bm25, await backend.field_scores(query, ids))
        np.testing.assert_array_equal(np.asarray(got.cosine), await backend.cosine(v, ids))
        assert got.doc_terms == await backend.doc_terms(ids)
        assert got.idf == await backend.idf(list(dict.fromkeys(terms)))
        assert_same_columns(got.static, await backend.static_attrs(ids))
        if got.term_ids is not None:  # vocabulary ids of doc_terms, where the index has them
            assert got.term_ids.fields == tuple(got.doc_terms)
            assert len(got.term_ids.lengths) == len(got.doc_terms) * len(ids)
            for j, field in enumerate(got.term_ids.fields):
                lengths = got.term_ids.lengths[j * len(ids) : (j + 1) * len(ids)]
                assert list(lengths) == [len(t) for t in got.doc_terms[field]]

    async def test_lookups_without_a_query_vector(self, backend: Any) -> None:
        """A degraded dense retriever: cosine is unknown (NaN), not 0; the rest as usual."""
        ids = ["d01", "unknown-id", "d05"]
        got = await backend.lookups("laptop battery", ids, None)
        assert np.asarray(got.cosine).shape == (3,) and np.isnan(got.cosine).all()
        assert_same_columns(got.field_bm25, await backend.field_scores("laptop battery", ids))


class BackendContract(
    InfoContract,
    BM25Contract,
    KnnContract,
    FetchContract,
    FieldScoresContract,
    CosineContract,
    AnalyzeContract,
    DocTermsContract,
    IdfContract,
    StaticAttrsContract,
    LookupsContract,
):
    """Every RetrievalBackend method's contract over CONTRACT_DOCS."""
