"""Session-scoped fixtures shared by every test module: real data, one real model load."""

from __future__ import annotations

import os
from pathlib import Path

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
    from indexing.embedding import load_encoder

    return load_encoder(EmbeddingConfig())
