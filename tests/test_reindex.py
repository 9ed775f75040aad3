"""Versioned builds, atomic swap, validation failures, rollback, pruning and the CLI."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexing.build import build_local_index, rollback
from indexing.config import IndexConfig
from indexing.documents import Document
from indexing.embedding_cache import EmbeddingCache
from indexing.errors import IndexingError, IndexNotFoundError, ValidationError
from indexing.layout import current_version, list_versions
from indexing.local import LocalBackend
from scripts.reindex import main
from tests.contract import CONTRACT_DOCS

REPO = Path(__file__).resolve().parents[1]
DOCS = CONTRACT_DOCS[:12]


class BrokenEncoder:
    """The real encoder whose output is corrupted (NaN row) or that dies midway."""

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner, self.mode = inner, mode

    @property
    def model_id(self) -> str:
        return f"{self.inner.model_id}-broken-{self.mode}"

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if self.mode == "raise":
            raise RuntimeError("encoder died midway")
        out = np.array(self.inner.encode(texts), dtype=np.float32)
        out[len(out) // 2] = np.nan
        return out


def docs_v(n: int) -> list[Document]:
    """A recognisable corpus per build: document 'extra-<n>' exists only in build n."""
    return [*DOCS, Document(id=f"extra-{n}", title=f"Version marker {n}", body="marker doc")]


_CACHE: list[EmbeddingCache] = []


@pytest.fixture(scope="module", autouse=True)
def emb_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One embedding cache for this module's builds: only new texts are embedded."""
    cache = EmbeddingCache(tmp_path_factory.mktemp("emb") / "cache.sqlite")
    _CACHE.append(cache)
    yield cache
    _CACHE.remove(cache)
    cache.close()


def build(root: Path, encoder: Any, n: int, **cfg: Any) -> str:
    return build_local_index(docs_v(n), root, encoder, IndexConfig(**cfg), cache=_CACHE[0])


def served_ids(root: Path) -> set[str]:
    return set(json.loads((root / "versions" / current_version(root) / "ids.json").read_text()))  # type: ignore[operator]


def no_build_dirs(root: Path) -> bool:
    return not list(root.glob(".building-*"))


@pytest.mark.asyncio(loop_scope="session")
async def test_build_swap_and_reload(tmp_path: Path, encoder: Any) -> None:
    assert current_version(tmp_path) is None
    with pytest.raises(IndexNotFoundError):
        LocalBackend.open(tmp_path)
    v1 = build(tmp_path, encoder, 1)
    assert current_version(tmp_path) == v1 and list_versions(tmp_path) == [v1]
    old = LocalBackend.open(tmp_path, encoder)
    assert (await old.bm25("marker", 5)).ids == ("extra-1",)

    v2 = build(tmp_path, encoder, 2)
    assert v2 > v1 and current_version(tmp_path) == v2
    assert list_versions(tmp_path) == [v1, v2]
    # an already-open backend keeps serving its version until it reloads
    assert (await old.bm25("marker", 5)).ids == ("extra-1",)
    assert await old.reload() is True
    assert old.version == v2 and (await old.info()).version == v2
    assert (await old.bm25("marker", 5)).ids == ("extra-2",)
    assert await old.reload() is False
    await old.close()
    assert no_build_dirs(tmp_path)


@pytest.mark.parametrize("mode", ["nan", "raise"])
def test_failed_build_keeps_previous(tmp_path: Path, encoder: Any, mode: str) -> None:
    v1 = build(tmp_path, encoder, 1)
    expected = ValidationError if mode == "nan" else RuntimeError
    with pytest.raises(expected):
        build_local_index(docs_v(2), tmp_path, BrokenEncoder(encoder, mode), IndexConfig())
    assert current_version(tmp_path) == v1
    assert list_versions(tmp_path) == [v1]
    assert no_build_dirs(tmp_path)
    assert "extra-1" in served_ids(tmp_path)


def test_invalid_input_refused(tmp_path: Path, encoder: Any) -> None:
    v1 = build(tmp_path, encoder, 1)
    with pytest.raises(ValidationError, match="duplicate document id 'd01'"):
        build_local_index([*DOCS, DOCS[0]], tmp_path, encoder)
    with pytest.raises(ValidationError, match="no documents"):
        build_local_index([], tmp_path, encoder)
    with pytest.raises(IndexingError, match="keep_versions"):
        build_local_index(DOCS, tmp_path, encoder, IndexConfig(keep_versions=0))
    assert current_version(tmp_path) == v1 and list_versions(tmp_path) == [v1]


def test_rollback(tmp_path: Path, encoder: Any) -> None:
    v1, v2, v3 = (build(tmp_path, encoder, n) for n in (1, 2, 3))
    assert rollback(tmp_path) == v2 and current_version(tmp_path) == v2
    assert "extra-2" in served_ids(tmp_path)
    assert rollback(tmp_path) == v1
    with pytest.raises(IndexNotFoundError, match="no version older"):
        rollback(tmp_path)
    assert rollback(tmp_path, v3) == v3
    with pytest.raises(IndexNotFoundError, match="available"):
        rollback(tmp_path, "no-such-version")
    assert current_version(tmp_path) == v3
    assert LocalBackend.open(tmp_path).version == v3
    with pytest.raises(IndexNotFoundError):
        rollback(tmp_path / "never-built")


def test_keep_versions_prunes_oldest_never_current(tmp_path: Path, encoder: Any) -> None:
    v1, v2, v3 = (build(tmp_path, encoder, n, keep_versions=2) for n in (1, 2, 3))
    assert list_versions(tmp_path) == [v2, v3]
    v4 = build(tmp_path, encoder, 4, keep_versions=1)
    assert list_versions(tmp_path) == [v4] and current_version(tmp_path) == v4
    assert v1 not in list_versions(tmp_path)


def test_stale_building_dir_removed(tmp_path: Path, encoder: Any) -> None:
    stale = tmp_path / ".building-killed"
    stale.mkdir(parents=True)
    (stale / "vectors.npy").write_bytes(b"half written")
    build(tmp_path, encoder, 1)
    assert not stale.exists()


def test_concurrent_build_refused(tmp_path: Path, encoder: Any) -> None:
    v1 = build(tmp_path, encoder, 1)
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(IndexingError, match="another build is running"):
            build(tmp_path, encoder, 2)
        with pytest.raises(IndexingError, match="another build is running"):
            rollback(tmp_path, v1)  # would race with the build's pruning
    finally:
        os.close(fd)
    assert current_version(tmp_path) == v1


def test_cached_rebuild_reuses_embeddings(tmp_path: Path, encoder: Any) -> None:
    with EmbeddingCache(tmp_path / "emb.sqlite") as cache:
        build_local_index(docs_v(1), tmp_path / "idx", encoder, cache=cache)
        assert cache.count(encoder.model_id) == len(docs_v(1))
        build_local_index(docs_v(1), tmp_path / "idx", encoder, cache=cache)
        assert cache.count(encoder.model_id) == len(docs_v(1))
    a, b = (
        np.load(tmp_path / "idx" / "versions" / v / "vectors.npy")
        for v in list_versions(tmp_path / "idx")
    )
    np.testing.assert_array_equal(a, b)


# --- the command --------------------------------------------------------------------------
def write_jsonl(path: Path, docs: Sequence[Document]) -> Path:
    path.write_text("".join(json.dumps(d.to_json() | {"extra": None}) + "\n" for d in docs))
    return path


def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LTRSEARCH_EMBEDDING__CACHE_PATH", str(tmp_path / "emb.sqlite"))


def test_cli_reindex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    cli_env(tmp_path, monkeypatch)
    src = write_jsonl(tmp_path / "catalog.jsonl", DOCS)
    idx = tmp_path / "idx"
    assert main(["--source", str(src), "--index-dir", str(idx), "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    v = current_version(idx)
    assert out.startswith(f"indexed {len(DOCS)} documents in ") and out.endswith(f"version {v}")
    assert "docs/s" in out
    assert LocalBackend.open(idx).manifest["doc_count"] == len(DOCS)


def test_cli_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cli_env(tmp_path, monkeypatch)
    idx = str(tmp_path / "idx")
    assert main(["--source", str(tmp_path / "missing.jsonl"), "--index-dir", idx]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.jsonl" in err and "Traceback" not in err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "title": "ok"}\n{not json\n')
    assert main(["--source", str(bad), "--index-dir", idx]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jsonl:2" in err

    monkeypatch.setenv("LTRSEARCH_INDEX__K1", "-1")
    src = write_jsonl(tmp_path / "catalog.jsonl", DOCS)
    assert main(["--source", str(src), "--index-dir", idx]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "k1" in err
    assert current_version(idx) is None


def test_cli_hostile_catalog_lines_follow_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A lone surrogate escape and JSON nested 5,000 deep: exit 1 with one line naming the
    file and line (on_error fail), or skipped and reported while the rest is indexed."""
    cli_env(tmp_path, monkeypatch)
    idx = str(tmp_path / "idx")
    good = "".join(json.dumps({"id": d.id, "title": d.title, "body": d.body}) + "\n" for d in DOCS)
    for name, line in (
        ("surrogate", '{"id": "x", "title": "wing \\ud800 flutter"}\n'),
        ("deep", '{"id": "x", "title": "t", "body": ' + "[" * 5000 + "]" * 5000 + "}\n"),
    ):
        src = tmp_path / f"{name}.jsonl"
        src.write_text(good[: good.index("\n") + 1] + line + good[good.index("\n") + 1 :])
        assert main(["--source", str(src), "--index-dir", idx, "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{name}.jsonl:2: " in err, err
        assert "Traceback" not in err
    assert current_version(idx) is None
    monkeypatch.setenv("LTRSEARCH_LOADER__ON_ERROR", "skip")
    assert main(["--source", str(src), "--index-dir", idx, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"ltrsearch-reindex: skipped {src}:2: invalid JSON: nested too deep"
    ]
    assert f"indexed {len(DOCS)} documents" in captured.out


def synthetic_docs(n: int) -> list[Document]:
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(3000)]
    return [
        Document(
            id=f"s{i}", title=" ".join(rng.choice(words, 6)), body=" ".join(rng.choice(words, 120))
        )
        for i in range(n)
    ]


@pytest.mark.slow
def test_kill_9_midway_keeps_previous_version(tmp_path: Path, encoder: Any) -> None:
    idx = tmp_path / "idx"
    v1 = build(idx, encoder, 1)
    src = write_jsonl(tmp_path / "big.jsonl", synthetic_docs(3000))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LTRSEARCH_EMBEDDING__CACHE": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scripts.reindex",
            "--source",
            str(src),
            "--index-dir",
            str(idx),
            "--quiet",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while no_build_dirs(idx):  # wait until the new version is being written
            assert proc.poll() is None, "reindex ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not no_build_dirs(idx)  # the half-written build is left behind ...
    assert current_version(idx) == v1 and list_versions(idx) == [v1]
    backend = LocalBackend.open(idx, encoder)  # ... and the old version still serves
    assert backend.version == v1
    import asyncio

    assert asyncio.run(backend.bm25("marker", 3)).ids == ("extra-1",)
    v2 = build(idx, encoder, 2)  # the next build cleans up
    assert no_build_dirs(idx) and current_version(idx) == v2


def test_docs_roundtrip_through_store(tmp_path: Path, encoder: Any) -> None:
    docs = [replace(DOCS[0], extra={"brand": "Acme", "color": "silver"}), *DOCS[1:]]
    build_local_index(docs, tmp_path, encoder, cache=_CACHE[0])
    b = LocalBackend.open(tmp_path)
    import asyncio

    got = asyncio.run(b.fetch([d.id for d in docs]))
    assert got == docs


def test_version_names_sort_after_existing_even_if_clock_is_behind(
    tmp_path: Path, encoder: Any
) -> None:
    v1 = build(tmp_path, encoder, 1)
    future = tmp_path / "versions" / "29991231-235959-999999"
    os.rename(tmp_path / "versions" / v1, future)  # a version from "the future"
    v2 = build(tmp_path, encoder, 2)
    assert v2 == "29991231-235959-999999.1"
    assert list_versions(tmp_path)[-1] == v2 == current_version(tmp_path)


def test_duplicate_id_named_first_repeat() -> None:
    """check_unique_ids' set shortcut still names the first id that repeats."""
    from indexing.documents import check_unique_ids

    docs = [*DOCS, DOCS[2], DOCS[1]]
    with pytest.raises(ValidationError, match=f"duplicate document id {DOCS[2].id!r}"):
        check_unique_ids(docs)
    check_unique_ids(DOCS)  # no repeat: no error


def test_snapshot_id_map_on_first_use(tmp_path: Path, encoder: Any) -> None:
    """A Snapshot opened with id_map=False (a build's validation) answers rows() exactly
    as the eager one does, building the id -> row map only when first asked."""
    from indexing.local_store import Snapshot

    v = build(tmp_path, encoder, 1)
    path = tmp_path / "versions" / v
    eager, lazy = Snapshot(path), Snapshot(path, id_map=False)
    try:
        assert lazy._row_of is None
        ids = [*reversed(eager.ids), "nope", eager.ids[3]]
        want = [len(eager.ids) - 1 - i for i in range(len(eager.ids))] + [-1, 3]
        assert eager.rows(ids).tolist() == want
        assert lazy.rows(ids).tolist() == want
        assert lazy.row_of == eager.row_of and len(lazy.row_of) == len(eager.ids)
    finally:
        eager.close()
        lazy.close()
