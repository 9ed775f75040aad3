"""The on-disk layout of a local index: the one place that names its files.

Under ``index_dir`` (a ltr.versions.VersionedDir)::

    CURRENT                  the serving version's name (replaced atomically)
    versions/<version>/      complete, validated, immutable versions
    .building-<random>/      a build in progress; renamed into versions/ only when complete
    .lock                    flock held by the one running build or rollback

A version directory holds everything one immutable index needs:

- ``manifest.json``: format, version, created, doc_count, text_fields, attr_names,
  analyzer, model_id, dim, bm25 params, ann settings (written last by the builder).
- ``ids.json``: document ids by row.
- ``bm25/<field>.{data,indices,indptr}.npy`` + ``bm25/<field>.vocab.json``: bm25s
  (method="lucene") score matrices in CSC form (indexing.bm25.FieldIndex), one per text
  field plus ``_all`` (all text fields concatenated). Formats 1-3: one ``bm25/<field>.npz``
  (a zip: it cannot be memory-mapped). The combined field also has
  ``bm25/_all.{block_indptr,block_ids,block_max}.npy`` (indexing.bm25.BlockMax: per term,
  the largest contribution in each block of rows; ``block_rows`` in its vocab.json), which
  let a top-k skip documents; versions without them score every document. Every field
  also has ``bm25/<field>.tf.npy`` (the term frequency of each entry; ``"tf": true`` in
  its vocab.json), read only by the next build to update the matrices incrementally.
- ``vectors.npy``: L2-normalized float32 [N, dim] (memory-mapped by every reader, so the
  worker processes of a server share one copy in the page cache).
- the ANN index (optional; manifest ``ann.library``): format 4 ``ann.faiss``, a faiss IVF
  with int8 codes (indexing.ann), or, in format 4 versions built before it, ``ann.usearch``,
  a usearch HNSW graph with its own reduced-precision copy of the vectors (``ann.dtype``);
  both served from a read-only memory map. Formats 1-3 ``ann.bin``, an hnswlib graph
  (loaded into each process's own memory). ``ann_rows.npy``: label -> row (-1 = removed; a
  reindex extends the previous index, so labels are not rows; format 1 had no such file:
  label = row).
- ``attrs.npy``: float64 [N, A], NaN where a document has no value; ``category.npy`` int32
  codes into ``categories.json`` (-1 = none).
- ``docs.jsonl`` with ``docs.offsets.npy``: the stored Document of each row.
- the analyzed terms per field of each row. Format 3: ``term_seqs.npy`` int32 [fields, N]
  = id of the row's term sequence in that field; distinct sequences are slices
  ``term_ids[term_offsets[s]:term_offsets[s + 1]]`` of int32 ids into the combined
  field's vocabulary (``bm25/_all.vocab.json``). Formats 1-2: ``terms.jsonl`` (one JSON
  line of lists per row) with ``terms.offsets.npy``.

indexing.build writes these files, indexing.local_store reads them; every ``.npy`` is
opened through ``load_mapped``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltr.versions import VersionedDir

# --- the index directory ---------------------------------------------------------------
CURRENT = "CURRENT"
VERSIONS = "versions"
BUILDING_PREFIX = ".building-"

# --- a version directory ---------------------------------------------------------------
# 2: the hnswlib graph's labels are no longer rows (a reindex reuses the previous graph);
# ``ann_rows.npy`` maps them. Format 1 versions (labels = rows) still load.
# 3: analyzed terms as int32 vocabulary ids of deduplicated sequences (TermStore) instead
# of terms.jsonl. Formats 1 and 2 still load.
# 4: BM25 matrices as plain .npy arrays and the ANN graph as usearch (ann.usearch), so
# that every array and the graph are memory-mapped and shared between worker processes.
# Formats 1-3 still load (npz matrices and the hnswlib graph read into memory).
FORMAT_VERSION = 4
READABLE_FORMATS = (1, 2, 3, 4)

MANIFEST = "manifest.json"
IDS = "ids.json"
VECTORS = "vectors.npy"
ANN = "ann.bin"  # formats 1-3: hnswlib
ANN_USEARCH = "ann.usearch"  # format 4, built before the IVF
ANN_FAISS = "ann.faiss"  # format 4: faiss IVF (indexing.ann)
ANN_ROWS = "ann_rows.npy"
ATTRS = "attrs.npy"
CATEGORY = "category.npy"
CATEGORIES = "categories.json"
DOCS = "docs.jsonl"
TERMS = "terms.jsonl"  # formats 1-2
TERM_SEQS = "term_seqs.npy"
TERM_IDS = "term_ids.npy"
TERM_OFFSETS = "term_offsets.npy"
BM25_DIR = "bm25"
COMBINED = "_all"  # name of the combined-field BM25 index
BM25_MATRIX_SUFFIX = ".npz"  # formats 1-3
BM25_ARRAYS = ("data", "indices", "indptr")  # format 4: bm25/<field>.<array>.npy
BM25_BLOCK_ARRAYS = ("block_indptr", "block_ids", "block_max")  # BlockMax, optional
# uint16/uint32 term frequency of each entry (builds read it; "tf": true in vocab.json)
BM25_TF = "tf"
BM25_VOCAB_SUFFIX = ".vocab.json"
OFFSETS_SUFFIX = ".offsets.npy"  # beside a JSON-lines file: the byte offset of each line
# transient files of a build in progress (never in a published version)
MANIFEST_TMP = "manifest.json.tmp"
BM25_JOB = ".bm25-job.pickle"
BM25_JOB_ERR = ".bm25-job.err"
BM25_JOB_TIMES = ".bm25-job.times.json"


def index_versions(index_dir: str | Path) -> VersionedDir:
    """The versions, CURRENT pointer, lock and build directories of ``index_dir``."""
    return VersionedDir(
        Path(index_dir),
        pointer=CURRENT,
        staging_prefix=BUILDING_PREFIX,
        subdir=VERSIONS,
        marker=MANIFEST,
        staging_mode=0o700,
    )


def current_version(index_dir: str | Path) -> str | None:
    """The serving version's name (None before the first build); one small file read."""
    return index_versions(index_dir).current()


def list_versions(index_dir: str | Path) -> list[str]:
    """Complete versions on disk, oldest first (names sort by build time)."""
    return index_versions(index_dir).names()


def bm25_field(version: Path, field: str) -> Path:
    """The path of a field's BM25 files, without their suffixes."""
    return version / BM25_DIR / field


def offsets_path(lines: Path) -> Path:
    """The offsets file beside a JSON-lines file."""
    return lines.with_suffix(OFFSETS_SUFFIX)


def bm25_array(version: Path, field: str, array: str) -> Path:
    """Format 4: the path of one array (layout.BM25_ARRAYS) of a field's BM25 matrix."""
    return version / BM25_DIR / f"{field}.{array}.npy"


def load_mapped(path: Path) -> np.ndarray:
    """A version's .npy array as a read-only memory map (a plain ndarray view of it): the
    page cache holds one copy for every process. An empty array cannot be mapped and is
    read instead."""
    try:
        return np.asarray(np.load(path, mmap_mode="r"))
    except ValueError:  # zero bytes of data
        return np.load(path)
