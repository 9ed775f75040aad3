"""The BM25 side of a build in a second process: a fork that inherits the documents, or
(where fork is missing) a fresh interpreter fed a pickled job. Same files as inline; a
failed child is an IndexingError and nothing is published; cancel() kills it.

A child is made to die or hang by an at-fork hook of this test process (the kernel kills
a real child the same way, e.g. the OOM killer at 1M documents); the hook acts only
while a test arms it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexing.bm25_side import BM25Build
from indexing.build import build_local_index
from indexing.config import IndexConfig
from indexing.errors import IndexingError
from indexing.layout import current_version
from tests.contract import CONTRACT_DOCS

_ARMED: dict[str, str] = {}  # "child": "die" | "hang" while a test arms the hook


def _in_forked_child() -> None:
    what = _ARMED.get("child")
    if what == "die":
        os._exit(3)
    if what == "hang":
        time.sleep(120)
        os._exit(4)


os.register_at_fork(after_in_child=_in_forked_child)


@pytest.fixture()
def arm() -> Iterator[dict[str, str]]:
    yield _ARMED
    _ARMED.clear()


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_forked_child_writes_the_inline_files_byte_for_byte(tmp_path: Path) -> None:
    """Same process image, same hash seed: the fork's vocabulary order, matrices and term
    store are the inline build's to the byte."""
    out = {}
    for mode in ("inline", "fork"):
        path = tmp_path / mode
        path.mkdir()
        job = BM25Build(path, CONTRACT_DOCS, IndexConfig(), parallel=mode == "fork")
        assert job.in_child is (mode == "fork") and job.proc is None
        job.finish()
        assert set(job.times) >= {"analysis", "bm25", "term_store"}
        out[mode] = _files(path)
    assert out["fork"] == out["inline"]
    assert any(name.startswith("bm25") for name in out["fork"])


@pytest.mark.parametrize("fork", [True, False])
def test_failed_bm25_process_raises(tmp_path: Path, fork: bool) -> None:
    """A BM25 process that fails surfaces as IndexingError with its error text, and its
    job, error and times files are gone (the build then publishes nothing)."""
    (tmp_path / "bm25").mkdir()  # the child's mkdir of bm25/ fails: FileExistsError
    job = BM25Build(tmp_path, CONTRACT_DOCS[:5], IndexConfig(), parallel=True, fork=fork)
    assert (job.pid is not None) is fork and (job.proc is not None) is (not fork)
    with pytest.raises(
        IndexingError, match=r"(?s)BM25 build process exited with 1.*FileExistsError"
    ):
        job.finish()
    assert not list(tmp_path.glob(".bm25-job*"))


def test_killed_child_fails_the_build_and_publishes_nothing(
    tmp_path: Path, encoder: Any, embedding_cache: Any, arm: dict[str, str]
) -> None:
    root = tmp_path / "idx"
    first = build_local_index(
        CONTRACT_DOCS, root, encoder, IndexConfig(), embedding_cache, parallel=False
    )
    arm["child"] = "die"
    with pytest.raises(IndexingError, match="BM25 build process exited with 3"):
        build_local_index(
            CONTRACT_DOCS[:-1],
            root,
            encoder,
            IndexConfig(),
            embedding_cache,
            parallel=True,
            reuse_previous=False,
        )
    arm.clear()
    assert current_version(root) == first
    assert sorted(p.name for p in (root / "versions").iterdir()) == [first]


def test_cancel_kills_a_running_child(tmp_path: Path, arm: dict[str, str]) -> None:
    arm["child"] = "hang"
    job = BM25Build(tmp_path, CONTRACT_DOCS, IndexConfig(), parallel=True)
    arm.clear()
    pid = job.pid
    assert pid is not None
    t0 = time.perf_counter()
    job.cancel()
    assert time.perf_counter() - t0 < 10
    assert job.pid is None
    with pytest.raises(ChildProcessError):  # killed and reaped: no zombie left
        os.waitpid(pid, os.WNOHANG)
    job.cancel()  # twice is harmless


def test_forked_child_does_not_run_the_parents_signal_handlers() -> None:
    """A parent (a server) that handles SIGTERM itself: its forked BM25 child still dies
    on SIGTERM instead of running the parent's handler."""
    from indexing.bm25_side import _detach_signals

    before = signal.signal(signal.SIGTERM, lambda *_: None)  # the parent ignores it
    try:
        pid = os.fork()
        if pid == 0:
            try:
                _detach_signals()
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGTERM


def test_orphaned_child_exits_and_frees_the_build_lock(tmp_path: Path) -> None:
    """The building process dies (kill -9, OOM) while its forked BM25 child runs: the
    child inherited the build lock's descriptor, and it exits within a second or so, so
    the next build is not refused until the orphan's work is done."""
    from indexing.bm25_side import _exit_with_parent
    from ltr.versions import LockBusyError, exclusive_lock

    lock = tmp_path / ".lock"
    r, w = os.pipe()  # the child's pid, to the test
    started_r, started_w = os.pipe()  # the child runs, to the building process
    builder = os.fork()
    if builder == 0:  # the building process: takes the lock, forks the child, dies
        try:
            with exclusive_lock(lock, wait=False):
                me = os.getpid()
                if os.fork() == 0:  # the BM25 child: would work for a minute
                    try:
                        _exit_with_parent(me)
                        os.write(w, str(os.getpid()).encode())
                        os.write(started_w, b"1")
                        time.sleep(60)
                    finally:
                        os._exit(0)
                os.read(started_r, 1)
        finally:
            os._exit(0)
    os.close(started_w)
    os.close(started_r)
    os.close(w)
    child_pid = int(os.read(r, 32) or b"0")
    os.close(r)
    os.waitpid(builder, 0)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                with exclusive_lock(lock, wait=False):
                    break
            except LockBusyError:
                assert time.monotonic() < deadline, "the orphaned child still holds the lock"
                time.sleep(0.05)
    finally:
        if child_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
