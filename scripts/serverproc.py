"""Start ``scripts/serve.py`` as a child process and wait until it answers: the one helper
the demo, the API benchmark and the process-level tests share.

``start_server`` runs ``python -m scripts.serve`` from the repository root with its output
appended to a log file; ``wait_ready`` polls ``/ready`` (or another path) until it answers
200, and fails with the log's tail when the process exits first or the time is up;
``stop_server`` signals it and waits, killing it if it does not stop in time.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ServerStartError(RuntimeError):
    """The server exited before it was ready, or was not ready in time (message: why and
    the tail of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_server(
    index_dir: str | Path,
    *,
    port: int,
    log: Path,
    events: str | Path | None = None,
    model_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``scripts/serve.py`` over the local index in ``index_dir``, as its own process.

    ``env``: variables set on top of this process's environment (LTRSEARCH_* settings);
    ``extra_args``: more command-line arguments (``--workers 2``). stdout and stderr are
    appended to ``log``. Returns at once: ``wait_ready`` waits for it.
    """
    cmd = [sys.executable, "-m", "scripts.serve", "--index-dir", str(index_dir)]
    if events is not None:
        cmd += ["--events", str(events)]
    if model_dir is not None:
        cmd += ["--model-dir", str(model_dir)]
    cmd += ["--host", host, "--port", str(port), *extra_args]
    full_env = {**os.environ, **(env or {})}
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = 300.0,
    path: str = "/ready",
    interval_s: float = 0.3,
) -> None:
    """Poll ``url + path`` until it answers 200 (blocking; from async code run it in a
    thread). Raises ServerStartError when ``proc`` exits first or after ``timeout_s``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"the server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with opener.open(f"{url}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, http.client.HTTPException):  # not listening yet, 503 not ready
            pass
        time.sleep(interval_s)
    raise ServerStartError(f"the server was not ready within {timeout_s:.0f} s:\n{_tail(log)}")


def stop_server(
    proc: subprocess.Popen[bytes], timeout_s: float = 30.0, sig: int = signal.SIGTERM
) -> int:
    """Send ``sig`` (if it still runs) and wait ``timeout_s``; kill it after that. Returns
    the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
