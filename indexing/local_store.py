"""Reading and writing one local index version's files, and its synchronous query engine.

The files and their meaning are named in indexing.layout. Here: the readers (FieldIndex
matrices, the ANN label map, the JSON-lines stores behind mmaps) and the small writers
the build shares with them (FieldIndex matrices, JSON lines with offsets), and
``Snapshot``: one loaded version answering retrieval and per-candidate lookups. The
format-3 term store is indexing.term_store; the BM25 engine is indexing.bm25.

``Snapshot`` answers queries synchronously; indexing.local.LocalBackend runs it off the
event loop. Everything here is read-only once written.
"""

from __future__ import annotations

import itertools
import json
import math
import mmap
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from indexing import layout
from indexing.analysis import Analyzer
from indexing.ann import AnnGraph, load_ann_rows, open_ann
from indexing.backend import Filters, Hits, Lookups, check_query_vector
from indexing.bm25 import BlockMax, FieldIndex, lucene_idf, top_k, top_matching
from indexing.documents import Document
from indexing.errors import IndexingError, IndexNotFoundError, InvalidRequestError
from indexing.prf import DEFAULT_RM3, Rm3Params, expand
from indexing.term_store import TermStore
from ltr.errors import unknown_name
from ltr.types import TermIds

# Formats 1-2: decoded terms.jsonl rows kept per snapshot (LRU; a hit skips the decode).
TERMS_CACHE_ROWS = 10_000
# Format 3: term references held by the decoded-sequence cache before it starts over. A
# decoded sequence is a tuple of the vocabulary's own str objects (8 bytes per term plus
# the tuple), so 6M references are ~50 MB: about what 10K rows of freshly decoded JSON
# strings took, while covering every row of a 100K-product catalog.
TERMS_CACHE_TERMS = 6_000_000


def link_or_copy(src: Path, dst: Path) -> None:
    """Give ``dst`` the content of a previous version's file: a hard link (version files
    are never changed once written, so both versions may share it), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def save_field_index(
    fi: FieldIndex, path: Path, block_max: bool = False, vocab_from: Path | None = None
) -> None:
    """Write a field's BM25 matrix in format 4 (``path``: layout.bm25_field, without
    suffixes): one .npy per array, so readers can memory-map them; with ``block_max``
    also its BlockMax bounds (what FieldIndex.top skips documents by). ``vocab_from``:
    the same field of a previous version whose vocab.json is exactly the one this would
    write (same vocabulary, num_docs and flags), hard-linked instead of encoded again."""
    version, field = path.parent.parent, path.name
    for name in layout.BM25_ARRAYS:
        np.save(layout.bm25_array(version, field, name), getattr(fi, name))
    meta: dict[str, Any] = {"num_docs": fi.num_docs, "vocab": fi.vocab}
    if fi.tf is not None:  # what the next incremental build recomputes the data from
        np.save(layout.bm25_array(version, field, layout.BM25_TF), fi.tf)
        meta["tf"] = True
    if block_max:
        bm = fi.block_max or BlockMax.build(fi)
        for name, arr in zip(
            layout.BM25_BLOCK_ARRAYS, (bm.indptr, bm.blocks, bm.maxima), strict=True
        ):
            np.save(layout.bm25_array(version, field, name), arr)
        meta["block_rows"] = bm.rows
    vocab_file = path.with_name(field + layout.BM25_VOCAB_SUFFIX)
    if vocab_from is not None:
        link_or_copy(vocab_from.with_name(vocab_from.name + layout.BM25_VOCAB_SUFFIX), vocab_file)
        return
    vocab_file.write_text(json.dumps(meta), "utf-8")


def load_field_index(path: Path) -> FieldIndex:
    """A field's BM25 matrix as save_field_index wrote it: memory-mapped arrays (format 4),
    or read from the npz of formats 1-3."""
    version, field = path.parent.parent, path.name
    meta = json.loads(path.with_name(field + layout.BM25_VOCAB_SUFFIX).read_text(encoding="utf-8"))
    n = int(meta["num_docs"])
    npz = path.with_name(field + layout.BM25_MATRIX_SUFFIX)
    if npz.is_file():
        with np.load(npz) as z:
            return FieldIndex(meta["vocab"], z["data"], z["indices"], z["indptr"], n)
    data, indices, indptr = (
        layout.load_mapped(layout.bm25_array(version, field, a)) for a in layout.BM25_ARRAYS
    )
    bm = None
    if "block_rows" in meta:  # versions written before BlockMax have none: dense top-k
        b_indptr, blocks, maxima = (
            layout.load_mapped(layout.bm25_array(version, field, a))
            for a in layout.BM25_BLOCK_ARRAYS
        )
        bm = BlockMax(int(meta["block_rows"]), b_indptr, blocks, maxima)
    return FieldIndex(meta["vocab"], data, indices, indptr, n, bm)


def read_line(raw: bytes) -> Any:
    """One stored document line: orjson (~4x faster), or json for what only json accepts
    (NaN, Infinity). orjson reads an integer beyond 64 bits as the nearest float, which is
    what Document.attrs (floats) holds either way."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


class LineStore:
    """JSON lines addressed by row through an offsets array, read from a read-only mmap.

    Not os.pread: a request reads ~150 rows, and every pread released and re-took the GIL,
    so under concurrent searches each row waited for the event-loop thread's switch
    interval (py-spy on the 100K server at 32 connections: 12% of samples in pread). A
    slice of the map is a memory copy under the GIL. Version files never change once
    written, so the map stays valid for the snapshot's life.
    """

    def __init__(self, path: Path) -> None:
        self.offsets = layout.load_mapped(layout.offsets_path(path))
        self._mm: mmap.mmap | None = None
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size > 0:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def raw(self, row: int) -> bytes:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        if self._mm is None:
            if start == end:
                return b""
            raise IndexingError("line store is closed")
        return self._mm[start:end]

    def get(self, row: int) -> Any:
        return read_line(self.raw(row))

    def view(self) -> memoryview | bytes:
        """Every stored byte, without a copy (b"" for an empty store)."""
        return b"" if self._mm is None else memoryview(self._mm)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __del__(self) -> None:  # a snapshot replaced by reload() is closed when dropped
        self.close()


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_line(obj: Any) -> str:
    """The compact JSON of one stored line (what every line store writes)."""
    return _ENCODE(obj)


def write_lines(path: Path, objs: Iterable[Any]) -> None:
    """Write JSON lines plus the byte offset of each line (offsets[-1] = file size)."""
    write_blobs(path, [json_line(obj).encode() + b"\n" for obj in objs])


def doc_line(doc: Document) -> bytes:
    """The stored line of a document (with its newline): what json.loads reads back as
    ``doc.to_json()``. orjson (~5x faster than the json encoder) unless an attribute is
    NaN or infinite (orjson would write null) or orjson refuses the document (an integer
    beyond 64 bits, a lone surrogate): then json_line, as before."""
    obj = doc.to_json()
    try:
        if all(map(math.isfinite, doc.attrs.values())):
            return orjson.dumps(obj) + b"\n"
    except (TypeError, orjson.JSONEncodeError):
        pass
    return json_line(obj).encode() + b"\n"


def join_lines(blobs: Sequence[bytes]) -> tuple[bytes, np.ndarray]:
    """Encoded lines (each ending in a newline) as one buffer plus the byte offset of each
    line (offsets[-1] = size): what write_joined writes."""
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)), out=offsets[1:])
    return b"".join(blobs), offsets


def write_joined(path: Path, data: bytes, offsets: np.ndarray) -> None:
    """Write join_lines' buffer (synced) and its offsets beside it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    np.save(layout.offsets_path(path), offsets)


def write_blobs(path: Path, blobs: Sequence[bytes]) -> None:
    """Write encoded lines (each ending in a newline) plus the byte offset of each line."""
    write_joined(path, *join_lines(blobs))


class Snapshot:
    """One loaded index version; every method is synchronous and thread-safe (read-only)."""

    def __init__(self, path: Path, ann_breadth: int | None = None, *, id_map: bool = True) -> None:
        """``id_map`` False: the id -> row dict (~0.6 s at 1M ids) is built on first use
        instead (a build's validation never looks ids up; a server does at once)."""
        manifest_path = path / layout.MANIFEST
        if not manifest_path.exists():
            raise IndexNotFoundError(f"{path}: no {layout.MANIFEST} (not a complete index version)")
        self.path = path
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        m = self.manifest
        if m.get("format") not in layout.READABLE_FORMATS:
            raise IndexingError(
                f"{path}: index format {m.get('format')!r}, "
                f"expected one of {layout.READABLE_FORMATS}"
            )
        self.version: str = m["version"]
        self.text_fields: tuple[str, ...] = tuple(m["text_fields"])
        self.attr_names: tuple[str, ...] = tuple(m["attr_names"])
        self.analyzer = Analyzer(m["analyzer"]["stopwords"], m["analyzer"]["stemmer"])
        self.ids: list[str] = json.loads((path / layout.IDS).read_text(encoding="utf-8"))
        self._row_of: dict[str, int] | None = self._id_rows() if id_map else None
        self.n = len(self.ids)
        self.fields = {f: load_field_index(layout.bm25_field(path, f)) for f in self.text_fields}
        self.combined = load_field_index(layout.bm25_field(path, layout.COMBINED))
        # memory-mapped: the worker processes of a server share one copy (page cache)
        self.vectors: np.ndarray = layout.load_mapped(path / layout.VECTORS)
        self.dim = int(m["dim"])
        self.attrs: np.ndarray = layout.load_mapped(path / layout.ATTRS)
        self.cat_codes: np.ndarray = layout.load_mapped(path / layout.CATEGORY)
        self.categories: list[str] = json.loads((path / layout.CATEGORIES).read_text("utf-8"))
        self._cat_index = {c: i for i, c in enumerate(self.categories)}
        self.ann: AnnGraph | None = None
        self.ann_rows: np.ndarray | None = None  # graph label -> row (None: label = row)
        if m["ann"]["enabled"]:
            self.ann_rows = load_ann_rows(path, m)
            self.ann = open_ann(path, m, self.dim, ann_breadth)
        self.docs = LineStore(path / layout.DOCS)
        # format 3: TermStore; formats 1-2: terms.jsonl rows behind an LRU
        self.term_store: TermStore | None = None
        self.terms: LineStore | None = None
        if m["format"] >= 3:
            self.term_store = TermStore(path, self.combined.vocab, TERMS_CACHE_TERMS)
        else:
            self.terms = LineStore(path / layout.TERMS)
        self._terms_cache: OrderedDict[int, tuple[tuple[str, ...], ...]] = OrderedDict()
        self._terms_lock = threading.Lock()
        self.terms_cache_rows = TERMS_CACHE_ROWS

    def close(self) -> None:
        self.docs.close()
        if self.terms is not None:
            self.terms.close()

    # --- helpers -------------------------------------------------------------------
    def _id_rows(self) -> dict[str, int]:
        return dict(zip(self.ids, itertools.count()))

    @property
    def row_of(self) -> dict[str, int]:
        """id -> row. Built on first use when opened with id_map=False; two threads may
        both build it then (the same dict; the last assignment wins)."""
        if self._row_of is None:
            self._row_of = self._id_rows()
        return self._row_of

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row per id, -1 for unknown ids."""
        return np.fromiter(
            map(self.row_of.get, ids, itertools.repeat(-1)), dtype=np.int64, count=len(ids)
        )

    def mask(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean [N]: documents passing the filters (None = no filter); Filters.matches rules."""
        if filters is None or filters.is_empty():
            return None
        m = np.ones(self.n, dtype=bool)
        if filters.category is not None:
            code = self._cat_index.get(filters.category)
            if code is None:
                return np.zeros(self.n, dtype=bool)
            m &= self.cat_codes == code
        for name, (lo, hi) in filters.ranges.items():
            if name not in self.attr_names:  # no document has it: nothing matches
                return np.zeros(self.n, dtype=bool)
            col = self.attrs[:, self.attr_names.index(name)]
            m &= ~np.isnan(col)
            if lo is not None:
                m &= col >= lo
            if hi is not None:
                m &= col <= hi
        return m

    def _field(self, field: str | None) -> FieldIndex:
        if field is None:
            return self.combined
        fi = self.fields.get(field)
        if fi is None:
            raise unknown_name("text field", field, self.text_fields)
        return fi

    def _vector(self, vector: np.ndarray) -> np.ndarray:
        return check_query_vector(vector, self.dim)

    @staticmethod
    def _check_k(k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidRequestError(f"k must be a positive integer, got {k!r}")

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> Hits:
        ids = self.ids.__getitem__
        return Hits(tuple(map(ids, rows.tolist())), np.asarray(scores, dtype=np.float64))

    # --- retrieval -----------------------------------------------------------------
    def bm25(
        self, query: str, k: int, field: str | None = None, filters: Filters | None = None
    ) -> Hits:
        self._check_k(k)
        fi = self._field(field)
        return self._hits(*fi.top(self.analyzer.terms(query), k, self.mask(filters)))

    def rm3(
        self,
        query: str,
        feedback: Hits,
        k: int,
        filters: Filters | None = None,
        params: Rm3Params = DEFAULT_RM3,
    ) -> Hits:
        """BM25 top-k of the RM3 expansion of ``query`` (indexing.prf) over the combined
        field, estimated from ``feedback`` (a first-pass BM25 run, best first)."""
        self._check_k(k)
        terms = self.analyzer.terms(query)
        rows = self.rows(list(feedback.ids[: params.fb_docs]))
        known = rows >= 0  # a feedback id this version lacks drops with its own score
        rows = rows[known]
        per_field = self._doc_terms(rows).values()
        docs = [tuple(t for f in per_field for t in f[i]) for i in range(len(rows))]
        weights = expand(
            terms, docs, feedback.scores[: len(known)][known].tolist(), self.combined.doc_freq,
            self.combined.num_docs, params,
        )  # fmt: skip
        scores = self.combined.weighted_scores(weights)
        return self._hits(*top_matching(scores, k, self.mask(filters)))

    def knn(self, vector: np.ndarray, k: int, filters: Filters | None = None) -> Hits:
        self._check_k(k)
        v = self._vector(vector)
        m = self.mask(filters)
        if m is None and self.ann is not None:
            cand = self.ann.search(v, min(k, self.n))
            if self.ann_rows is not None:
                cand = self.ann_rows[cand]  # deleted nodes are never returned: all >= 0
            s = self.vectors[cand] @ v  # exact cosine of the ANN's candidates
            order = np.lexsort((cand, -s))[:k]
            return self._hits(cand[order], s[order].astype(np.float64))
        if m is None:
            return self.knn_exact(v, k)
        rows = np.flatnonzero(m)
        if len(rows) == 0:
            return Hits((), np.zeros(0, dtype=np.float64))
        s = self.vectors[rows] @ v
        pos = top_k(s, k)
        return self._hits(rows[pos], s[pos].astype(np.float64))

    def knn_exact(self, vector: np.ndarray, k: int) -> Hits:
        """Exact top-k by brute-force matmul, ANN or not (the reference for ANN recall)."""
        self._check_k(k)
        v = self._vector(vector)
        s = self.vectors @ v
        best = top_k(s, k)
        return self._hits(best, s[best].astype(np.float64))

    # --- per-candidate lookups -----------------------------------------------------
    def fetch(self, ids: Sequence[str]) -> list[Document | None]:
        rows = self.rows(ids).tolist()  # Python ints: cheaper to compare and index with
        return [None if r < 0 else Document.from_json(self.docs.get(r)) for r in rows]

    def field_scores(self, query: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return self._field_scores(self.analyzer.terms(query), self.rows(ids))

    def _field_scores(self, terms: Sequence[str], rows: np.ndarray) -> dict[str, np.ndarray]:
        """FieldIndex.scores_for_ids of every field, in fewer NumPy calls (~15 (field,
        term) pairs of ~200 rows per search at 1M, each call ~1 us): the rows are cast
        once for every field, a field without query terms is one copy."""
        # the known rows in ascending order: binary searches for increasing keys stay in
        # the part of a posting column the previous key touched (~18% faster at 1M)
        known = np.flatnonzero(rows >= 0)
        order = known[np.argsort(rows[known], kind="stable")]
        ascending = rows[order]
        unmatched = np.full(len(rows), np.nan, dtype=np.float64)  # 0 for every known row
        unmatched[order] = 0.0
        keys_of: dict[np.dtype[Any], np.ndarray] = {}  # the rows as each column's dtype
        out: dict[str, np.ndarray] = {}
        for name, fi in self.fields.items():
            col = unmatched.copy()
            tids = fi.term_ids(terms)
            if tids and len(ascending):
                keys = keys_of.get(fi.indices.dtype)
                if keys is None:
                    keys = keys_of[fi.indices.dtype] = ascending.astype(fi.indices.dtype)
                col[order] = fi.scores_for_ids(tids, ascending, keys)
            out[name] = col
        return out

    def cosine(self, vector: np.ndarray, ids: Sequence[str]) -> np.ndarray:
        return self._cosine(self._vector(vector), self.rows(ids))

    def _cosine(self, v: np.ndarray, rows: np.ndarray) -> np.ndarray:
        known = rows >= 0
        out = np.full(len(rows), np.nan, dtype=np.float64)
        out[known] = self.vectors[rows[known]] @ v
        return out

    def term_row(self, row: int) -> tuple[tuple[str, ...], ...]:
        """Analyzed terms of every text field of one row (decoded once, then cached)."""
        if self.term_store is not None:
            return tuple(c[0] for c in self.term_store.columns(np.array([row], dtype=np.int64)))
        assert self.terms is not None
        with self._terms_lock:
            got = self._terms_cache.get(row)
            if got is not None:
                self._terms_cache.move_to_end(row)
                return got
        # Term rows are lists of plain strings, which orjson decodes ~3x faster than json
        # (interning them cost more than it saved once features map terms to ids).
        got = tuple(map(tuple, orjson.loads(self.terms.raw(row))))
        if self.terms_cache_rows > 0:
            with self._terms_lock:
                self._terms_cache[row] = got
                while len(self._terms_cache) > self.terms_cache_rows:
                    self._terms_cache.popitem(last=False)
        return got

    def doc_terms(self, ids: Sequence[str]) -> dict[str, tuple[tuple[str, ...], ...]]:
        return self._doc_terms(self.rows(ids))

    def _doc_terms(self, rows: np.ndarray) -> dict[str, tuple[tuple[str, ...], ...]]:
        if self.term_store is not None:
            return dict(zip(self.text_fields, self.term_store.columns(rows), strict=True))
        empty: tuple[tuple[str, ...], ...] = ((),) * len(self.text_fields)
        per_doc = [empty if r < 0 else self.term_row(r) for r in rows.tolist()]
        return {f: tuple(d[j] for d in per_doc) for j, f in enumerate(self.text_fields)}

    def _terms_and_ids(
        self, terms: Sequence[str], rows: np.ndarray
    ) -> tuple[dict[str, tuple[tuple[str, ...], ...]], TermIds | None]:
        """(_doc_terms(rows), the same as combined-vocabulary ids: format 3; None for
        formats 1-2), the rows' term sequences gathered once for both."""
        store = self.term_store
        if store is None:
            return self._doc_terms(rows), None
        seqs = store.sequences(rows)
        doc_terms = dict(zip(self.text_fields, store.columns_of(*seqs), strict=True))
        ids, lens = store.id_rows_of(*seqs)
        ids.flags.writeable = lens.flags.writeable = False  # a cached set shares them
        vocab = self.combined.vocab
        qids = {t: vocab[t] for t in terms if t in vocab}
        return doc_terms, TermIds(self.text_fields, ids, lens, qids, len(store.words))

    def idf(self, terms: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in terms:
            df = self.combined.doc_freq(t)
            if df > 0:
                out[t] = lucene_idf(df, self.combined.num_docs)
        return out

    def static_attrs(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Numeric attribute -> value per id (NaN where missing or the id is unknown)."""
        return self._static_attrs(self.rows(ids))

    def _static_attrs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        known = rows >= 0
        if known.all():  # one gather of the rows (attributes are contiguous per row)
            block = self.attrs.take(rows, axis=0)
            return {n: block[:, j].astype(np.float64) for j, n in enumerate(self.attr_names)}
        out: dict[str, np.ndarray] = {}
        for j, name in enumerate(self.attr_names):
            col = np.full(len(rows), np.nan, dtype=np.float64)
            col[known] = self.attrs[rows[known], j]
            out[name] = col
        return out

    def lookups(self, query: str, ids: Sequence[str], vector: np.ndarray | None) -> Lookups:
        """Every per-candidate lookup features need, in one synchronous call.

        The same values as the separate methods (cosine is NaN for every candidate when
        ``vector`` is None), with the query analyzed and the rows resolved once, plus the
        analyzed terms as vocabulary ids (format 3; None for formats 1-2).
        """
        terms = self.analyzer.terms(query)
        rows = self.rows(list(ids))
        if vector is None:
            cos = np.full(len(rows), np.nan, dtype=np.float64)
        else:
            cos = self._cosine(self._vector(vector), rows)
        distinct = list(dict.fromkeys(terms))
        doc_terms, term_ids = self._terms_and_ids(distinct, rows)
        return Lookups(
            query_terms=terms,
            field_bm25=self._field_scores(terms, rows),
            cosine=cos,
            doc_terms=doc_terms,
            idf=self.idf(distinct),
            static=self._static_attrs(rows),
            term_ids=term_ids,
        )
