"""Session-scoped fixtures shared by every test module: real data, one real model load, one
embedding cache, and each index and model that several modules read built once per run.

Read-only users take these; a test that reindexes, rolls back, promotes or otherwise writes
builds (or copies) its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CRANFIELD = SHARED / "data" / "cranfield"


@pytest.fixture(scope="session")
def cranfield_dir() -> Path:
    """The real Cranfield collection beside the repo; tests that need it skip without it."""
    if not (CRANFIELD / "corpus.jsonl").exists():
        pytest.skip("../shared/data/cranfield is absent")
    return CRANFIELD


@pytest.fixture(scope="session")
def encoder():  # type: ignore[no-untyped-def]
    """The packaged MiniLM, loaded once per session with the default embedding settings."""
    from indexing.config import EmbeddingConfig
    from indexing.encoders import load_encoder

    return load_encoder(EmbeddingConfig())


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One EmbeddingCache per test run (in the session's temp dir, not pytest's cache
    plugin): every index built through it embeds each text once per run."""
    from indexing.embedding_cache import EmbeddingCache

    with EmbeddingCache(tmp_path_factory.getbasetemp() / "embeddings.sqlite") as cache:
        yield cache


@pytest.fixture(scope="session")
def contract_index(
    tmp_path_factory: pytest.TempPathFactory, encoder: Any, embedding_cache: Any
) -> Path:
    """tests.contract.CONTRACT_DOCS as a local index with the default settings (exact kNN)."""
    from indexing.build import build_local_index
    from indexing.config import IndexConfig
    from tests.contract import CONTRACT_DOCS

    root = tmp_path_factory.mktemp("contract-index")
    build_local_index(CONTRACT_DOCS, root, encoder, IndexConfig(), cache=embedding_cache)
    return root


@pytest.fixture(scope="session")
def cranfield_work(
    cranfield_dir: Path,
    encoder: Any,
    embedding_cache: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The whole Cranfield collection indexed once per run, laid out as the work directory
    of scripts/evaluate.py (``index/`` and its fingerprint), so ``--work-dir`` reuses it.
    Its embedding cache is the session's: the same texts embedded for another index
    (the Cranfield subsets) are not embedded again."""
    from indexing.loaders import load_beir
    from scripts.evaluate import prepare_index

    work = tmp_path_factory.mktemp("cranfield-work")
    (work / "embeddings.sqlite").symlink_to(embedding_cache.path)
    corpus = load_beir(cranfield_dir).corpus
    prepare_index(cranfield_dir, work, corpus, encoder, lambda _msg: None)
    return work


@pytest.fixture(scope="session")
def cranfield_index(cranfield_work: Path) -> Path:
    """The local index of the whole Cranfield collection (default settings)."""
    return cranfield_work / "index"


# --- search API fixtures (engineer F): a Cranfield subset with category/year, its local
# index and a promoted model trained through the serving pipeline (builders in
# tests/api_support.py). Session-scoped so test_api*.py and test_pipeline.py share them.


@pytest.fixture(scope="session")
def beir_small(cranfield_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.api_support import write_small_beir

    return write_small_beir(cranfield_dir, tmp_path_factory.mktemp("beir"))


@pytest.fixture(scope="session")
def small_index(
    beir_small: Path, encoder: Any, embedding_cache: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from tests.api_support import build_index

    d = tmp_path_factory.mktemp("index")
    build_index(beir_small, d, encoder, embedding_cache)
    return d


@pytest.fixture(scope="session")
def model_dir(
    small_index: Path, beir_small: Path, encoder, tmp_path_factory: pytest.TempPathFactory
) -> Path:  # type: ignore[no-untyped-def]
    """A registry with one promoted model over all features, boosted from RRF."""
    from tests.api_support import DEFAULT_FEATURES, build_model_sync

    d = tmp_path_factory.mktemp("models")
    build_model_sync(small_index, beir_small, d, encoder, DEFAULT_FEATURES)
    return d


@pytest.fixture(scope="session")
def two_models_dir(
    model_dir: Path,
    small_index: Path,
    beir_small: Path,
    encoder: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """``model_dir``'s registry plus a second model over the same features, trained the
    same way and promoted: for tests that switch between two versions (copy it first)."""
    from tests.api_support import DEFAULT_FEATURES, build_model_sync

    d = tmp_path_factory.mktemp("two-models") / "models"
    shutil.copytree(model_dir, d)
    build_model_sync(small_index, beir_small, d, encoder, DEFAULT_FEATURES)
    return d
