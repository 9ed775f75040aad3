"""Embedding backends (real MiniLM: torch, ONNX, int8) and the SQLite embedding cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from indexing.batch_encode import BatchPipeline, resolve_device
from indexing.config import EmbeddingConfig
from indexing.embedding_cache import EmbeddingCache, EmbedStats, embed_texts, text_key
from indexing.encoders import (
    BACKENDS,
    Encoder,
    SentenceTransformerEncoder,
    cpu_quantization,
    default_model_path,
    load_encoder,
)
from indexing.errors import EmbeddingError, IndexingError
from indexing.onnx_export import ensure_onnx_export, resolve_threads

REPO = Path(__file__).resolve().parents[1]
EXPORT_DIR = REPO / "var" / "models"  # persistent (gitignored): the export is made once

SENTENCES = [
    "How do swept wings behave at transonic speeds?",
    "Heat transfer in the laminar boundary layer of a flat plate.",
    "A red leather running shoe with a cushioned sole.",
    "Stainless steel kettle, 1.7 litres, automatic shut-off.",
    "The buckling of thin cylindrical shells under axial compression.",
]


@pytest.fixture(scope="module")
def backend_encoder(encoder: Encoder) -> Callable[[str], Encoder]:
    """Each backend loaded at most once in this module (the session encoder is reused)."""
    loaded: dict[str, Encoder] = {getattr(encoder, "backend", "torch"): encoder}

    def get(backend: str) -> Encoder:
        if backend not in loaded:
            loaded[backend] = load_encoder(
                EmbeddingConfig(backend=backend, export_dir=str(EXPORT_DIR))  # type: ignore[arg-type]
            )
        return loaded[backend]

    return get


def test_normalized_float32_and_dims(encoder: Encoder) -> None:
    v = encoder.encode(SENTENCES)
    assert isinstance(encoder, Encoder) and encoder.dim == 384
    assert v.shape == (len(SENTENCES), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Related texts are closer than unrelated ones (the model does something sensible).
    sims = v @ v.T
    assert sims[0, 4] > sims[0, 3]


def test_empty_and_bad_input(encoder: Encoder, tmp_path: Path) -> None:
    assert encoder.encode([]).shape == (0, 384)
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        out = embed_texts(encoder, [], cache)
        assert out.shape == (0, 384) and out.dtype == np.float32
        with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
            embed_texts(encoder, ["ok", None], cache)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not one string"):
        encoder.encode("one string")


def test_cache_embeds_only_new_or_changed_texts(encoder: Encoder, tmp_path: Path) -> None:
    path = tmp_path / "emb.sqlite"
    first = [*SENTENCES[:3], SENTENCES[0]]  # a duplicate is embedded once
    with EmbeddingCache(path) as cache:
        s1 = EmbedStats()
        v1 = embed_texts(encoder, first, cache, stats=s1)
        assert (s1.texts, s1.unique, s1.hits, s1.embedded) == (4, 3, 0, 3)
        np.testing.assert_array_equal(v1[0], v1[3])
        np.testing.assert_allclose(v1, encoder.encode(first), atol=1e-5)
        assert cache.count(encoder.model_id) == 3

        changed = SENTENCES[1] + " Revised."
        second = [SENTENCES[0], changed, SENTENCES[2], SENTENCES[1], SENTENCES[3]]
        s2 = EmbedStats()
        v2 = embed_texts(encoder, second, cache, stats=s2)
        assert (s2.hits, s2.embedded) == (3, 2)  # only the changed and the new text
        np.testing.assert_array_equal(v2[0], v1[0])  # hits are bit-identical
        np.testing.assert_array_equal(v2[3], v1[1])
        assert cache.count(encoder.model_id) == 5

    # Reopened from disk: same vectors; another model id sees none of them.
    with EmbeddingCache(path) as cache:
        got = cache.get_many(encoder.model_id, [SENTENCES[0], "never seen"])
        assert got[1] is None and got[0] is not None
        np.testing.assert_array_equal(got[0], v1[0])
        assert cache.get_many("other-model:torch", [SENTENCES[0]]) == [None]
        s3 = EmbedStats()
        embed_texts(encoder, second, cache, stats=s3)
        assert s3.embedded == 0 and s3.hits == 5
        mode = cache._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_length_sorted_chunks_restore_input_order(encoder: Encoder, tmp_path: Path) -> None:
    texts = ["short", SENTENCES[1] * 3, "mid length text here", SENTENCES[0], "x"]
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        out = embed_texts(encoder, texts, cache, chunk_size=2)
    np.testing.assert_allclose(out, encoder.encode(texts), atol=1e-5)


def test_progress_bar(encoder: Encoder, capsys: pytest.CaptureFixture[str]) -> None:
    embed_texts(encoder, SENTENCES[:2], None, progress=True)
    assert "embedding (" in capsys.readouterr().err


def test_cache_lookup_by_key_and_by_scan_agree(tmp_path: Path) -> None:
    """Few keys go through the primary key; most of a model's rows through one scan."""
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((40, 8)).astype(np.float32)
    texts = [f"text {i}" for i in range(40)]
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("m:torch", texts, vecs)
        cache.put_many("other:torch", texts[:5], vecs[:5] + 1)  # must never leak across
        few = cache.get_many("m:torch", ["text 7", "nope", "text 3"])  # by key
        assert few[1] is None
        np.testing.assert_array_equal(few[0], vecs[7])
        np.testing.assert_array_equal(few[2], vecs[3])
        everything = cache.get_many("m:torch", [*reversed(texts), "nope"])  # by scan
        assert everything[-1] is None
        np.testing.assert_array_equal(np.stack(everything[:-1]), vecs[::-1])  # type: ignore[arg-type]
        assert cache.count("m:torch") == 40 and cache.count() == 45
        # Replacing rows and repeating a key within one call keep the row count exact.
        cache.put_many("m:torch", [*texts[:10], "new", "new"], np.ones((12, 8), np.float32))
        assert cache.count("m:torch") == 41 and cache.count() == 46
        np.testing.assert_array_equal(cache.get_many("m:torch", ["text 0"])[0], np.ones(8))


def test_cache_opens_a_file_without_row_counts(tmp_path: Path) -> None:
    """A cache written by the first schema (no models.n) is upgraded, counts recomputed."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE models (id INTEGER PRIMARY KEY, model_id TEXT NOT NULL UNIQUE,"
        " dim INTEGER NOT NULL);"
        "CREATE TABLE vectors (mid INTEGER NOT NULL, key BLOB NOT NULL, vec BLOB NOT NULL,"
        " PRIMARY KEY (mid, key));"
    )
    db.execute("INSERT INTO models VALUES (1, 'm:torch', 2)")
    vec = np.array([0.6, 0.8], np.float32)
    db.execute("INSERT INTO vectors VALUES (1, ?, ?)", (text_key("a"), vec.tobytes()))
    db.commit()
    db.close()
    with EmbeddingCache(path) as cache:
        assert cache.count("m:torch") == 1
        np.testing.assert_array_equal(cache.get_many("m:torch", ["a"])[0], vec)


def test_cache_rejects_inconsistent_vectors(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("m:torch", ["a"], np.ones((1, 4), dtype=np.float32))
        with pytest.raises(EmbeddingError, match="has dim 4, got vectors of 3"):
            cache.put_many("m:torch", ["b"], np.ones((1, 3), dtype=np.float32))
        with pytest.raises(EmbeddingError, match="2 texts but vectors of shape"):
            cache.put_many("m:torch", ["b", "c"], np.ones((1, 4), dtype=np.float32))
        # A damaged row (wrong byte length) reads as a miss and is re-embedded, not served.
        cache._db.execute("UPDATE vectors SET vec = x'00'")
        assert cache.get_many("m:torch", ["a"]) == [None]


@pytest.mark.parametrize(("backend", "min_cos"), [("onnx", 0.9999), ("onnx-int8", 0.98)])
def test_onnx_backends_match_torch(
    backend_encoder: Callable[[str], Encoder], backend: str, min_cos: float
) -> None:
    torch_enc, other = backend_encoder("torch"), backend_encoder(backend)
    a, b = torch_enc.encode(SENTENCES), other.encode(SENTENCES)
    assert b.shape == a.shape and b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cos = (a * b).sum(axis=1)
    assert cos.min() > min_cos, cos
    # A different backend never shares cached vectors with torch.
    assert other.model_id != torch_enc.model_id
    assert other.model_id.split(":")[0] == torch_enc.model_id.split(":")[0]  # same weights


@pytest.mark.parametrize("backend", BACKENDS)
def test_vector_does_not_depend_on_batch(
    backend_encoder: Callable[[str], Encoder], backend: str
) -> None:
    """A text's vector is a function of the text (the cache and the index rely on it)."""
    enc = backend_encoder(backend)
    texts = [SENTENCES[0], "short", SENTENCES[1] * 4]
    batched = enc.encode(texts)
    alone = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_backend_cache_isolation(backend_encoder: Callable[[str], Encoder], tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        embed_texts(backend_encoder("torch"), SENTENCES, cache)
        stats = EmbedStats()
        embed_texts(backend_encoder("onnx-int8"), SENTENCES, cache, stats=stats)
        assert stats.embedded == len(SENTENCES) and stats.hits == 0


def test_int8_model_id_names_quantization(backend_encoder: Callable[[str], Encoder]) -> None:
    enc = backend_encoder("onnx-int8")
    assert isinstance(enc, SentenceTransformerEncoder)
    assert enc.model_id.endswith(f":onnx-int8-{cpu_quantization()}")
    assert enc.model_path.parent == EXPORT_DIR
    assert (enc.model_path / "onnx" / "model.onnx").is_file()


def test_threads_are_set_deliberately(encoder: Encoder) -> None:
    import torch

    expected = max(1, os.cpu_count() or 1)  # every core
    assert resolve_threads(0) == expected and resolve_threads(1) == 1
    assert getattr(encoder, "threads", expected) == expected
    assert torch.get_num_threads() <= expected
    with pytest.raises(EmbeddingError, match="threads must be >= 0"):
        resolve_threads(-1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_model_path(tmp_path: Path, backend: str) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(EmbeddingError, match="embedding model folder not found") as ei:
        load_encoder(EmbeddingConfig(model=str(missing), backend=backend))  # type: ignore[arg-type]
    assert isinstance(ei.value, IndexingError) and str(missing) in str(ei.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbeddingError, match="not a sentence-transformers model folder"):
        load_encoder(EmbeddingConfig(model=str(tmp_path / "empty"), backend=backend))  # type: ignore[arg-type]


def test_quantization_choice_is_known() -> None:
    assert cpu_quantization() in ("avx512_vnni", "avx512", "avx2", "arm64")


_EXPORT_CHILD = """
import sys
from indexing.encoders import default_model_path
from indexing.onnx_export import ensure_onnx_export
ensure_onnx_export(default_model_path(), sys.argv[1])
"""


@pytest.mark.slow
def test_killed_export_leaves_no_broken_cache(tmp_path: Path) -> None:
    """SIGKILL an export mid-way: no model folder appears; the next run cleans up and exports."""
    root = tmp_path / "models"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", _EXPORT_CHILD, str(root)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not list(root.glob(".tmp-*")) and time.monotonic() < deadline:
            assert child.poll() is None, "export finished before it could be interrupted"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    left = list(root.iterdir())
    assert left and all(p.name.startswith(".tmp-") for p in left)  # nothing half-made is final

    path, file_name = ensure_onnx_export(default_model_path(), root)
    assert file_name == "onnx/model.onnx" and (path / file_name).is_file()
    assert [p.name for p in root.iterdir()] == [path.name]  # the stale temp dir is gone
    mtime = (path / file_name).stat().st_mtime_ns
    again, _ = ensure_onnx_export(default_model_path(), root)  # reused, not re-exported
    assert again == path and (path / file_name).stat().st_mtime_ns == mtime


def test_int8_parallel_runner_equals_sentence_transformers(
    backend_encoder: Callable[[str], Encoder],
) -> None:
    """The per-text onnxruntime path gives sentence-transformers' own vectors.

    Tokenization (strip, truncation at max_seq_length, special tokens), mean pooling and
    normalization are done outside sentence-transformers for speed; this pins them to it,
    on one thread and on the parallel path alike.
    """
    enc = backend_encoder("onnx-int8")
    assert isinstance(enc, SentenceTransformerEncoder) and enc.threads == resolve_threads(0)
    texts = [*SENTENCES, "  padded  text  ", "x", "long " * 400, "Ünïcödé ✓ 東京", "UPPER lower"]
    texts += [f"{s} variant {i}" for i, s in enumerate(SENTENCES * 4)]
    reference = enc._model.encode(  # type: ignore[attr-defined]
        texts, batch_size=1, normalize_embeddings=True, convert_to_numpy=True
    )
    ours = enc.encode(texts)
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    one_by_one = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_array_equal(ours, one_by_one)  # parallel runs change nothing


# --- embedding.device and the batched pipeline (the GPU path, run on the CPU here) --------
def test_device_setting_resolves() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EmbeddingError, match="unknown embedding device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EmbeddingError, match="torch sees no CUDA device"):
            load_encoder(EmbeddingConfig(device="cuda"))
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        EmbeddingConfig(device="gpu").validate()  # type: ignore[arg-type]


def test_batched_pipeline_on_cpu_matches_sentence_transformers() -> None:
    """The GPU pipeline's code (length buckets, tokenizer thread, pooling) run on the CPU in
    float32: the same vectors as sentence-transformers' torch encode, in input order."""
    from sentence_transformers import SentenceTransformer

    from indexing.encoders import default_model_path

    texts = [*SENTENCES, "short", "", "a " * 300, *(s.upper() for s in SENTENCES)]
    reference = SentenceTransformer(default_model_path(), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64
    )
    model = SentenceTransformer(default_model_path(), device="cpu")
    pipe = BatchPipeline(model, "cpu", batch_size=3)  # several uneven batches
    got = pipe.encode(texts)
    assert got.shape == reference.shape and got.dtype == np.float32
    cos = np.sum(got * reference, axis=1)
    assert cos.min() >= 0.999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert pipe.encode([]).shape == (0, reference.shape[1])


def test_auto_backend_reads_the_cached_calibration(tmp_path: Path) -> None:
    """backend = "auto" on a machine already calibrated: the recorded choice, no measuring."""
    import json

    from indexing.encoders import CALIBRATION_FILE, calibrated_backend, cpu_description
    from indexing.onnx_export import model_fingerprint

    cfg = EmbeddingConfig(backend="auto", export_dir=str(tmp_path))
    key = (
        f"{cpu_description()} | threads {resolve_threads(0)} | "
        f"{model_fingerprint(default_model_path())[:16]}"
    )
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({key: {"backend": "onnx"}}))
    assert calibrated_backend(cfg) == "onnx"


@pytest.mark.slow
def test_auto_backend_calibrates_once() -> None:
    """The first use measures the three backends and records the fastest with its rates."""
    import json

    from indexing.encoders import CALIBRATION_FILE, calibrated_backend

    path = EXPORT_DIR / CALIBRATION_FILE
    path.unlink(missing_ok=True)
    cfg = EmbeddingConfig(backend="auto", export_dir=str(EXPORT_DIR))
    best = calibrated_backend(cfg)
    (rec,) = json.loads(path.read_text()).values()
    assert rec["backend"] == best == max(rec["docs_per_s"], key=rec["docs_per_s"].get)
    assert set(rec["docs_per_s"]) == set(BACKENDS)
    assert calibrated_backend(cfg) == best  # read back, not measured again
