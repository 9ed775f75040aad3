"""Hostile clients against a real server (issue 15): text that is not valid Unicode,
malformed bodies, implausible event times, explain as a load lever, slow clients and
oversized request heads. Each answer is a 4xx in the error shape, never a 500, and the
impression log keeps being written."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.api_support import ADMIN, raw_request
from tests.test_api import _app, _json, _state, serve

JSON = {"Content-Type": "application/json"}
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _error(body: Any) -> dict[str, Any]:
    """The error of an error response, checked to have the API's shape."""
    assert set(body) == {"error", "request_id"}, body
    err = body["error"]
    assert set(err) == {"code", "message"} and err["code"] and err["message"], body
    return dict(err)


async def _click_is_stored(c: Any) -> None:
    """A page served now is logged and a click on it is accepted: logging still works."""
    body = await _json(await c.get("/search", params={"q": "jet noise", "k": 3}))
    ev = {"type": "click", "request_id": body["request_id"], "doc_id": body["hits"][0]["id"]}
    r = await c.post("/events", json=[ev])
    assert r.status == 202, await r.text()
    writer = _state(c).writer
    await writer.flush()
    assert writer.pending == 0 and writer.dead_lettered == 0


# --------------------------------------------------------------------------------------
# defects 1 and 2: text that is not valid Unicode, malformed bodies


UNICODE_CASES = [
    ("/search", b'{"q": "wing", "query_id": "\\udfff"}', "query_id"),
    ("/search", b'{"q": "wing \\ud800 flutter"}', "q"),
    # raw bytes ED A0 80 (an encoded surrogate): json.loads turns them into U+D800
    ("/search", '{"q": "wing", "category": "\ud800"}'.encode("utf-8", "surrogatepass"), "category"),
    ("/search", b'{"q": "wing", "filters": {"\\udfff": {"gte": 1}}}', "filters"),
    (
        "/events",
        b'[{"type": "click", "request_id": "\\udfff", "doc_id": "1"}]',
        "events[0].request_id",
    ),
    (
        "/events",
        b'{"events": [{"type": "click", "request_id": "r", "doc_id": "\\ud800x"}]}',
        "events[0].doc_id",
    ),
    ("/events", b'[{"type": "\\udfff", "request_id": "r", "doc_id": "d"}]', "events[0].type"),
    (
        "/events",
        b'[{"type": "click", "request_id": "r", "doc_id": "d", "client_id": "\\udfff"}]',
        "events[0].client_id",
    ),
    ("/admin/reload", b'{"version": "\\udfff"}', "version"),
]


async def test_text_that_is_not_unicode_is_refused_naming_the_field(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "e.db"
    async with serve(_app(encoder, small_index, model_dir, db)) as c:
        for path, body, field in UNICODE_CASES:
            r = await c.post(path, data=body, headers={**JSON, **AUTH})
            assert r.status == 400, (path, body, await r.text())
            err = _error(await _json(r))
            assert err["code"] == "invalid_unicode", (body, err)
            assert err["message"].startswith(f"{field}:"), (body, err)
        await _click_is_stored(c)
        # a page that got past the edge anyway is dead-lettered, and counted in /metrics
        from search.pipeline import SearchRequest

        res = await _state(c).pipeline.search(SearchRequest(q="wing", query_id="\udfff"))
        _state(c).writer.submit(res.impression)
        await _state(c).writer.flush()
        text = await (await c.get("/metrics")).text()
        assert "ltrsearch_impressions_dead_lettered 1" in text
    from search.events import SqliteEventStore

    store = SqliteEventStore(db)
    assert store.counts()["requests"] == 1 and store.counts()["events"] == 1
    store.close()


def test_query_string_text_that_is_not_unicode_is_refused() -> None:
    """aiohttp decodes a query string's bytes with replacement characters, so the check of
    search_request only guards callers that build the mapping themselves."""
    from search.errors import InvalidUnicodeError
    from search.http import search_request

    for field in ("q", "category", "query_id"):
        with pytest.raises(InvalidUnicodeError) as err:
            search_request({"q": "wing", field: "x\udfff"}, ())
        assert err.value.name == field


DEEP = b"[" * 30_000 + b"]" * 30_000  # a RecursionError in json.loads
HUGE = b"1" * 5000  # an int literal json.loads refuses (over 4300 digits)
BIG = b"1" + b"0" * 400  # an int json parses but no float holds


def _malformed_cases(rid: str, doc: str) -> list[tuple[str, bytes]]:
    ev = f'"type": "click", "request_id": "{rid}", "doc_id": "{doc}"'.encode()
    return [
        ("/search", DEEP),
        ("/search", b'{"q": "wing", "filters": ' + DEEP + b"}"),
        ("/search", b'{"q": "wing", "k": ' + HUGE + b"}"),
        ("/search", b'{"q": "wing", "explain": ' + b"[" * 40 + b"]" * 40 + b"}"),
        ("/search", b'{"q": "wing", "filters": {"year": {"gte": ' + BIG + b"}}}"),
        ("/search", b'{"q": "\\udfff"}'),
        ("/events", DEEP),
        ("/events", b"[{" + ev + b', "ts": ' + HUGE + b"}]"),
        ("/events", b"[{" + ev + b', "ts": ' + BIG + b"}]"),
        ("/events", b'[{"type": "click", "request_id": "\\udfff", "doc_id": "1"}]'),
        ("/admin/reload", DEEP),
        ("/admin/reload", b'{"version": ' + HUGE + b"}"),
    ]


async def test_malformed_bodies_are_4xx_json_never_500(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path: Path
) -> None:
    async with serve(_app(encoder, small_index, model_dir, tmp_path / "e.db")) as c:
        body = await _json(await c.get("/search", params={"q": "wing", "k": 3}))
        for path, data in _malformed_cases(body["request_id"], body["hits"][0]["id"]):
            assert len(data) <= 65536
            r = await c.post(path, data=data, headers={**JSON, **AUTH})
            assert 400 <= r.status < 500, (path, data[:80], await r.text())
            _error(await _json(r))
        await _click_is_stored(c)


# --------------------------------------------------------------------------------------
# defect 5: event times are bounded by the page they name


async def test_event_time_before_its_page_was_served_is_refused(
    encoder: Any, small_index: Path, tmp_path: Path
) -> None:
    from search.events import EVENT_CLOCK_SKEW_S

    async with serve(_app(encoder, small_index, None, tmp_path / "e.db")) as c:
        body = await _json(await c.get("/search", params={"q": "wing", "k": 3}))
        rid, doc = body["request_id"], body["hits"][0]["id"]
        served = int(rid[:12], 16) / 1000.0  # the request id's time prefix, ms
        for ts in (1, served - EVENT_CLOCK_SKEW_S - 60):
            ev = {"type": "click", "request_id": rid, "doc_id": doc, "ts": ts}
            r = await c.post("/events", json=[ev])
            assert r.status == 400, await r.text()
            err = _error(await _json(r))
            assert err["code"] == "invalid_event" and "events[0].ts" in err["message"], err
            assert "before its page was served" in err["message"]
        ok = {"type": "click", "request_id": rid, "doc_id": doc, "ts": served - 1.0}
        assert (await c.post("/events", json=[ok])).status == 202  # clock skew is tolerated
        assert _state(c).store.counts()["events"] == 1


# --------------------------------------------------------------------------------------
# defect 6: explain is capped and off the event loop


async def test_explain_is_capped_and_computed_off_the_event_loop(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    async with serve(_app(encoder, small_index, model_dir, None, explain_max_hits=4)) as c:
        model = _state(c).pipeline.model
        loop_thread = threading.get_ident()
        calls: list[tuple[int, int]] = []
        inner = model.contributions

        def spy(X: np.ndarray, *a: Any, **kw: Any) -> np.ndarray:
            calls.append((threading.get_ident(), len(X)))
            return inner(X, *a, **kw)

        model.contributions = spy
        r = await c.get("/search", params={"q": "shock wave", "k": "30", "explain": "true"})
        body = await _json(r)
        assert r.status == 200 and len(body["hits"]) == 30
        assert all("contributions" in h for h in body["hits"][:4])
        assert not any("contributions" in h for h in body["hits"][4:])
        assert "first 4 hits" in body["explain"]
        assert calls and all(t != loop_thread and n <= 4 for t, n in calls), calls
    async with serve(_app(encoder, small_index, model_dir, None, explain_max_hits=0)) as c:
        body = await _json(await c.get("/search", params={"q": "wing", "explain": "1"}))
        assert not any("contributions" in h for h in body["hits"])
        assert "disabled" in body["explain"]


async def test_health_answers_while_explain_requests_compute(
    encoder: Any, small_index: Path, model_dir: Path
) -> None:
    """explain=true&k=100 requests hold their SHAP computation open; /health answers
    meanwhile. Were explain computed on the event loop, nothing could answer while one
    computes, so /health could only return once none was computing."""
    async with serve(_app(encoder, small_index, model_dir, None)) as c:
        model = _state(c).pipeline.model
        inner = model.contributions
        lock = threading.Lock()
        computing = [0]  # explains inside the model now
        release = threading.Event()

        def gated(X: np.ndarray, *a: Any, **kw: Any) -> np.ndarray:
            with lock:
                computing[0] += 1
            try:
                release.wait(timeout=2.0)  # bounded, whichever thread this blocks
                return inner(X, *a, **kw)
            finally:
                with lock:
                    computing[0] -= 1

        model.contributions = gated
        params = {"q": "boundary layer", "k": "100", "explain": "true"}
        explains = [asyncio.create_task(c.get("/search", params=params)) for _ in range(4)]
        try:
            deadline = time.monotonic() + 30.0
            while not computing[0]:
                assert time.monotonic() < deadline, "no explain started"
                await asyncio.sleep(0.01)
            r = await c.get("/health")
            with lock:
                assert r.status == 200 and computing[0] > 0
        finally:
            release.set()
            responses = await asyncio.gather(*explains)
        assert [r.status for r in responses] == [200] * 4


# --------------------------------------------------------------------------------------
# defect 7: slow clients and oversized request heads


async def test_a_client_slow_to_send_its_headers_is_disconnected(
    encoder: Any, small_index: Path
) -> None:
    app = _app(encoder, small_index, None, None, header_timeout_s=0.5)
    async with serve(app) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        t0 = time.monotonic()
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        try:
            assert await asyncio.wait_for(reader.read(), timeout=10.0) == b""  # closed
        finally:
            writer.close()
        assert 0.4 <= time.monotonic() - t0 < 10.0
        assert (await c.get("/health")).status == 200


async def test_a_client_slow_to_send_its_body_gets_408(encoder: Any, small_index: Path) -> None:
    app = _app(encoder, small_index, None, None, body_timeout_s=0.5)
    async with serve(app) as c:
        head = b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        status, headers, body = await raw_request(
            c.server.port, head + b'Content-Length: 100\r\n\r\n{"q": "wi'
        )
        assert status == 408 and headers["connection"].lower() == "close"
        assert _error(json.loads(body))["code"] == "request_timeout"


async def test_oversized_request_line_and_headers_get_the_json_error(
    encoder: Any, small_index: Path
) -> None:
    async with serve(_app(encoder, small_index, None, None)) as c:
        port = c.server.port
        long_q = b"GET /search?q=" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        status, headers, body = await raw_request(port, long_q)
        assert status == 414 and headers["content-type"].startswith("application/json")
        assert _error(json.loads(body))["code"] == "uri_too_long"
        big_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n"
        status, headers, body = await raw_request(port, big_header)
        assert status == 431 and headers["content-type"].startswith("application/json")
        assert "X-Big" in _error(json.loads(body))["message"]
        # past aiohttp's own parser limits (4x / 2x ours) the parser refuses the head
        # before any handler runs: the same JSON shape
        huge_q = b"GET /search?q=" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        status, headers, body = await raw_request(port, huge_q)
        assert status == 414 and headers["content-type"].startswith("application/json")
        assert _error(json.loads(body))["code"] == "uri_too_long"
        huge_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n"
        status, headers, body = await raw_request(port, huge_header)
        assert status == 431 and headers["content-type"].startswith("application/json")
        assert _error(json.loads(body))["code"] == "header_too_large"
        status, headers, body = await raw_request(port, b"GARBAGE\r\n\r\n")
        assert status == 400 and headers["content-type"].startswith("application/json")
        assert _error(json.loads(body))["code"] == "bad_request"
        assert (await c.get("/health")).status == 200
