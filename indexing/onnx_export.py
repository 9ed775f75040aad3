"""The ONNX export of a sentence-transformers model: made once, reused after, never half-written.

Exports are made from the local weights (never downloaded) into ``EmbeddingConfig.export_dir``,
in a folder named by the source model's fingerprint (changed weights get a new export),
through a temporary directory renamed into place, so a killed export never leaves a
half-written model that a later run would load; a killed run's temp dir is removed by the
next one. The int8 variant is a dynamically quantized copy of that graph, in the same folder.

Also owns what the encoders share with the export: the model folder check, the model's
content fingerprint (the key of ``Encoder.model_id``), the thread count and the
onnxruntime session options.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from indexing.errors import EmbeddingError

__all__ = [
    "check_model_dir",
    "ensure_onnx_export",
    "model_fingerprint",
    "resolve_threads",
    "session_options",
]

log = logging.getLogger(__name__)

_EXPORT_MARKER = "ltrsearch-export.txt"


def resolve_threads(threads: int) -> int:
    """0 = one per core (os.cpu_count()): the int8 runner runs that many single-threaded
    texts at once, torch and fp32 ONNX use that many intra-op threads."""
    if threads < 0:
        raise EmbeddingError(f"threads must be >= 0, got {threads}")
    return threads or max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- model files

# Exported ONNX graphs and docs do not change what the model computes.
_FINGERPRINT_SKIP = ("onnx", "openvino", "README.md", _EXPORT_MARKER)


def _model_files(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.relative_to(path).parts[0] not in _FINGERPRINT_SKIP
    )


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the model's files (weights, configs, tokenizer): its content identity."""
    root = Path(path).resolve()
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _model_files(root))
    return _fingerprint(root, stamp)


@lru_cache(maxsize=16)
def _fingerprint(root: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _size, _mtime in stamp:
        p = Path(name)
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_model_dir(path: Path) -> None:
    if not path.exists():
        raise EmbeddingError(
            f"embedding model folder not found: {path} "
            '(EmbeddingConfig.model; "" = the packaged all-MiniLM-L6-v2)'
        )
    if not path.is_dir() or not any((path / f).is_file() for f in ("modules.json", "config.json")):
        raise EmbeddingError(
            f"not a sentence-transformers model folder: {path} (no modules.json or config.json)"
        )


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_tmp(root: Path) -> None:
    """Remove temp dirs left by killed exports (their process is gone)."""
    for p in root.glob(".tmp-*"):
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _tmp_dir(root: Path) -> Path:
    return root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def ensure_onnx_export(
    model_path: str | Path,
    export_dir: str | Path,
    quantization: str | None = None,
    threads: int = 0,
) -> tuple[Path, str]:
    """Export the model to ONNX (and int8 when ``quantization`` is given) once; reuse after.

    Returns (exported model folder, ONNX file name relative to it). The folder is named by
    the source model's fingerprint, so changed weights get a new export. Each step writes
    to a temp dir and is renamed into place (a directory for the export, a file for the
    quantized graph): readers only ever see complete files.
    """
    src = Path(model_path).resolve()
    check_model_dir(src)
    root = Path(export_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root)
    final = root / f"{src.name}-{model_fingerprint(src)[:16]}"
    so = session_options(resolve_threads(threads))
    if not (final / "onnx" / "model.onnx").is_file():
        _export(src, root, final, so)
    if not quantization:
        return final, "onnx/model.onnx"

    existing = sorted((final / "onnx").glob(f"model_*int8_{quantization}.onnx"))
    if existing:
        return final, f"onnx/{existing[0].name}"
    return final, _quantize(root, final, quantization, so)


def _export(src: Path, root: Path, final: Path, so: Any) -> None:
    """The ONNX export of ``src``, written to a temp dir renamed to ``final``."""
    from sentence_transformers import SentenceTransformer

    tmp = _tmp_dir(root)
    try:
        tmp.mkdir()  # claims the work under our pid: a killed run's leftover is removable
        log.info("exporting %s to ONNX in %s (once)", src, final)
        model = SentenceTransformer(
            str(src),
            device="cpu",
            backend="onnx",
            model_kwargs={"session_options": so, "export": True},
        )
        model.save_pretrained(str(tmp))
        (tmp / _EXPORT_MARKER).write_text(f"source={src}\nfingerprint={model_fingerprint(src)}\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "onnx" / "model.onnx").is_file():
                raise
            # another process finished the same export first; theirs is identical
    except EmbeddingError:
        raise
    except Exception as e:
        raise EmbeddingError(f"ONNX export of {src} failed: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _quantize(root: Path, final: Path, quantization: str, so: Any) -> str:
    """The int8 graph of the export in ``final``, moved into its onnx/ folder; its file name."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    tmp = _tmp_dir(root)
    try:
        log.info("quantizing %s to int8 (%s) (once)", final, quantization)
        model = SentenceTransformer(
            str(final),
            device="cpu",
            backend="onnx",
            model_kwargs={"session_options": so, "file_name": "onnx/model.onnx"},
        )
        export_dynamic_quantized_onnx_model(model, quantization, str(tmp))  # type: ignore[arg-type]
        made = sorted((tmp / "onnx").glob(f"model_*int8_{quantization}.onnx"))
        if not made:
            raise EmbeddingError(f"int8 quantization wrote no model_*int8_{quantization}.onnx")
        os.replace(made[0], final / "onnx" / made[0].name)
        return f"onnx/{made[0].name}"
    except EmbeddingError:
        raise
    except Exception as e:
        raise EmbeddingError(f"int8 quantization ({quantization}) of {final} failed: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
