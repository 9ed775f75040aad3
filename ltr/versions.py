"""Atomic versioned directories: the one mechanism under index versions and model versions.

A ``VersionedDir`` is a directory of immutable version directories plus a pointer file
that names the served one::

    <versions>/<name>/      complete versions (each holds its ``marker`` file)
    <pointer>               the served version's name (replaced atomically)
    .lock                   flock serialising the writers
    <staging_prefix>*/      versions being written: renamed into place only when complete
    .trash-*/               versions being deleted: renamed away first, then removed

A version is written into a staging directory, fsynced and renamed into place, so it
appears complete or not at all; the pointer is swapped with a temp file, fsync,
``os.replace`` and a directory fsync. indexing (indexing.layout) and ltr.registry both
use it; each keeps its own policy (which version to roll back to, which to prune).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".lock"
TRASH_PREFIX = ".trash-"


class LockBusyError(Exception):
    """Another process holds the lock (raised only when not waiting for it)."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (durable before it is published)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a temp file, fsync, os.replace, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def exclusive_lock(path: Path, *, wait: bool = True) -> Iterator[None]:
    """flock on ``path`` (created if missing); the kernel drops it if the process dies.

    ``wait=False`` raises LockBusyError at once when another process holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusyError(str(path)) from None
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class VersionedDir:
    """The versions, pointer, lock and staging directories under one ``root``.

    Names are ``<numbered><NNNN>`` counting up when ``numbered`` is set (e.g. "v" for
    v0001, v0002, ...), else UTC timestamps; either way they sort in creation order.
    """

    root: Path
    pointer: str  # file under root naming the served version
    staging_prefix: str  # hidden directories under root holding versions being written
    subdir: str = ""  # versions live in root / subdir
    marker: str = "manifest.json"  # written last: a version without it is incomplete
    numbered: str | None = None
    staging_mode: int = 0o777  # permissions of a new version directory (before umask)

    @property
    def versions_dir(self) -> Path:
        return self.root / self.subdir if self.subdir else self.root

    @property
    def _pattern(self) -> re.Pattern[str] | None:
        return (
            None
            if self.numbered is None
            else re.compile(rf"^{re.escape(self.numbered)}(\d{{4,}})$")
        )

    # --- reading -------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Complete versions, oldest first (staging and trash directories are invisible)."""
        vdir = self.versions_dir
        if not vdir.is_dir():
            return []
        pattern = self._pattern
        if pattern is None:
            return sorted(p.name for p in vdir.iterdir() if (p / self.marker).is_file())
        found = []
        for p in vdir.iterdir():
            m = pattern.match(p.name)
            if m and p.is_dir() and (p / self.marker).is_file():
                found.append((int(m.group(1)), p.name))
        return [name for _, name in sorted(found)]

    def current(self) -> str | None:
        """The version the pointer names (None when there is none); one small file read."""
        try:
            return (self.root / self.pointer).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def path(self, name: str) -> Path:
        return self.versions_dir / name

    def is_name(self, name: str) -> bool:
        """Whether ``name`` has the form of a version name (numbered ones only; a
        timestamp name is any plain directory name)."""
        pattern = self._pattern
        if pattern is None:
            return bool(name) and name == Path(name).name and not name.startswith(".")
        return pattern.match(name) is not None

    # --- writing -------------------------------------------------------------------------
    def lock(self, *, wait: bool = True) -> contextlib.AbstractContextManager[None]:
        """The writers' lock (see exclusive_lock); creates ``root`` if needed."""
        self.root.mkdir(parents=True, exist_ok=True)
        return exclusive_lock(self.root / LOCK_FILE, wait=wait)

    def point_to(self, name: str) -> None:
        """Make ``name`` the served version (atomic pointer swap)."""
        write_atomic(self.root / self.pointer, name + "\n")

    def new_name(self) -> str:
        """A name that sorts after every existing version (caller holds the lock)."""
        pattern = self._pattern
        if pattern is None:
            # a UTC timestamp; if the clock went backwards, the newest name plus a suffix
            existing = self.names()
            name = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
            if existing and name <= existing[-1]:
                name = existing[-1] + ".1"
            return name
        nums = [0]
        for p in self.versions_dir.iterdir():
            m = pattern.match(p.name)
            if m:
                nums.append(int(m.group(1)))
        return f"{self.numbered}{max(nums) + 1:04d}"

    def stage(self) -> Path:
        """A new empty staging directory to write a version into."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{self.staging_prefix}{uuid.uuid4().hex}"
        path.mkdir(mode=self.staging_mode)
        return path

    def publish(self, staged: Path, name: str) -> Path:
        """fsync a complete staging directory and rename it into place as version ``name``.

        The version appears complete or not at all; the pointer is not touched.
        """
        fsync_tree(staged)
        final = self.path(name)
        os.rename(staged, final)
        fsync_dir(final.parent)
        return final

    def discard(self, name: str) -> None:
        """Delete a version: renamed away first (it disappears atomically), then removed."""
        trash = self.root / f"{TRASH_PREFIX}{name}-{uuid.uuid4().hex}"
        os.rename(self.path(name), trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clear_stale(self, staging_older_than_s: float | None = None) -> list[Path]:
        """Remove trash and staging directories left by killed processes (caller holds the
        lock): every trash directory, and staging ones older than ``staging_older_than_s``
        (None: all of them)."""
        now = time.time()
        removed = []
        for p in self.root.iterdir():
            stale = p.name.startswith(TRASH_PREFIX)
            if p.name.startswith(self.staging_prefix):
                with contextlib.suppress(OSError):
                    age = now - p.stat().st_mtime
                    stale = staging_older_than_s is None or age > staging_older_than_s
            if stale and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed
