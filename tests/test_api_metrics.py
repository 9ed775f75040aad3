"""search.metrics over prometheus_client, one process and several (--workers N mode).

The multiprocess case runs real processes: each records as a worker into one shared
directory, as the supervisor sets up, and another renders what they wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from search.metrics import MULTIPROC_ENV, ApiMetrics

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import sys
from search.metrics import ApiMetrics
m = ApiMetrics(worker=int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    m.requests.inc("/search", "200")
    m.stage.observe(0.004, "bm25")
m.model_info.set(1, "v1", "fs")
m.model_info.clear()  # replaced: v1 must not be shown
m.model_info.set(1, "v2", "fs")
m.impressions_pending.set(int(sys.argv[2]))
print(__import__("os").getpid())
"""

RENDER = "import sys; from search.metrics import ApiMetrics; " + (
    "sys.stdout.write(ApiMetrics(worker=0).render().decode())"
)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _py(code: str, *args: str, env: dict[str, str]) -> str:
    got = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return got.stdout


def test_one_process_keeps_the_names_and_drops_a_replaced_info_series() -> None:
    m = ApiMetrics()
    m.requests.inc("/search", "200")
    m.model_info.set(1, "v1", "fs")
    m.model_info.clear()
    m.model_info.set(1, "v2", "fs")
    got = _samples(m.render().decode())
    assert got[("ltrsearch_http_requests_total", (("route", "/search"), ("status", "200")))] == 1
    info = [k for k in got if k[0] == "ltrsearch_model_info"]
    assert info == [("ltrsearch_model_info", (("featureset_id", "fs"), ("version", "v2")))]
    assert not any(name.endswith("_created") for name, _ in got)


def test_workers_share_one_exposition_and_a_restarted_worker_adds_up(tmp_path: Path) -> None:
    env = {MULTIPROC_ENV: str(tmp_path)}
    # worker 0, then its replacement (a new pid), then worker 1
    first = int(_py(WORKER, "0", "3", env=env))
    _py(WORKER, "0", "2", env=env)
    _py(WORKER, "1", "4", env=env)
    got = _samples(_py(RENDER, env=env))
    req = "ltrsearch_http_requests_total"
    assert got[(req, (("route", "/search"), ("status", "200"), ("worker", "0")))] == 5
    assert got[(req, (("route", "/search"), ("status", "200"), ("worker", "1")))] == 4
    count = "ltrsearch_search_stage_duration_seconds_count"
    assert got[(count, (("stage", "bm25"), ("worker", "1")))] == 4
    info = sorted(k[1] for k in got if k[0] == "ltrsearch_model_info")
    assert info == [(("featureset_id", "fs"), ("version", "v2"), ("worker", w)) for w in ("0", "1")]
    # a gauge of an exited process counts until the supervisor marks it dead (livesum)
    pending = {k[1]: v for k, v in got.items() if k[0] == "ltrsearch_impressions_pending"}
    assert pending == {(("worker", "0"),): 5.0, (("worker", "1"),): 4.0}
    mark_process_dead(first, str(tmp_path))  # what search.workers does before a restart
    text = _py(RENDER, env=env)
    got = _samples(text)
    pending = {k[1]: v for k, v in got.items() if k[0] == "ltrsearch_impressions_pending"}
    assert pending == {(("worker", "0"),): 2.0, (("worker", "1"),): 4.0}
    assert got[(req, (("route", "/search"), ("status", "200"), ("worker", "0")))] == 5
    assert text.count("# TYPE ltrsearch_http_requests_total counter") == 1
    assert "# HELP ltrsearch_http_requests_total HTTP requests by route and status." in text
