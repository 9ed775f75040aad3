"""Schemathesis, a property-based fuzzer, against a real server from its own /openapi.json.

Valid requests (positive) and requests that break the document (negative) for every
operation, with the admin token so /admin/reload is reached too. Every response must be
documented (status, content type, body schema) and none may be a 5xx. Findings are
collected over the whole run and reported together (what it found: CHANGELOG.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.serverproc import free_port, stop_server, wait_ready
from tests.api_support import ADMIN, start_test_server

pytestmark = pytest.mark.slow

EXAMPLES = 150  # per generation mode over all operations (~1-2 min on 2 shared cores)


@pytest.fixture(scope="module")
def api(
    small_index: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    port, log = free_port(), tmp / "serve.log"
    proc = start_test_server(small_index, tmp / "events.db", port, log, model_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log, 240)
        yield url
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        stop_server(proc)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_5xx_and_no_undocumented_response(api: str, mode: str) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    findings: dict[str, str] = {}
    seen: dict[str, int] = {}
    strategy = schema.as_strategy(generation_mode=GenerationMode(mode))

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        label = f"{case.operation.method.upper()} {case.operation.path}"
        try:
            resp = case.call_and_validate(
                checks=checks, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
            )
            seen[f"{label} {resp.status_code}"] = seen.get(f"{label} {resp.status_code}", 0) + 1
        except Exception as e:  # a failed check: keep the first of each kind, go on
            findings.setdefault(f"{label}: {type(e).__name__}", str(e)[:1500])

    run()
    print(f"\n{mode}: responses by operation and status: {dict(sorted(seen.items()))}")
    assert not findings, "\n\n".join(f"{k}\n{v}" for k, v in findings.items())
    assert sum(seen.values()) >= EXAMPLES // 2  # the run reached the server
