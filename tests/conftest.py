"""Session-scoped fixtures shared by every test module: real data, one real model load, one
embedding cache, and each index and model that several modules read built once per run.

Read-only users take these; a test that reindexes, rolls back, promotes or otherwise writes
builds (or copies) its own.
"""

from __future__ import annotations

import os
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


# --- search API fixtures (engineer F): a Cranfield subset with category/year, its local
# index and a promoted model trained through the serving pipeline (builders in
# tests/api_support.py). Session-scoped so test_api*.py and test_pipeline.py share them.


@pytest.fixture(scope="session")
def beir_small(cranfield_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.api_support import write_small_beir

    return write_small_beir(cranfield_dir, tmp_path_factory.mktemp("beir"))


@pytest.fixture(scope="session")
def small_index(beir_small: Path, encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    from tests.api_support import build_index

    d = tmp_path_factory.mktemp("index")
    build_index(beir_small, d, encoder)
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
