"""The worker group's state files are replaced atomically even when several threads of one
worker write the same file at once (concurrent /events flush requests each report)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from search.workers import _read_json, _write_json


def test_concurrent_writers_of_one_state_file_never_fail(tmp_path: Path) -> None:
    path = tmp_path / "state-1.json"
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(i: int) -> None:
        start.wait()
        try:
            for n in range(300):
                _write_json(path, {"writer": i, "n": n})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _read_json(path)["n"] == 299  # the last write of some writer, whole
    assert json.loads(path.read_text())["writer"] in range(8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-1.json"]  # no temp left
