"""Property-based fuzzing of the request parsers and the event parser (issue 15).

Arbitrary JSON and arbitrary Unicode (lone surrogates included, escaped or as raw bytes),
JSON nested thousands deep and integer literals of thousands of digits go to a real server
(aiohttp on 127.0.0.1, in a thread with its own event loop, over the real index, model and
event store). Every answer is a 2xx, or a 4xx in the API's error shape; never a 5xx. After
each endpoint's examples a page is served and clicked, and the impression writer has
written everything without a failure or a dead letter: nothing got past the edge.

Bounded and deterministic (derandomize, no example database), so it runs in ``make test``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.parse
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.events import EVENT_TYPES
from search.http import SEARCH_FIELDS
from search.server import STATE, ServerState
from tests.api_support import ADMIN
from tests.test_api import _app

FUZZ = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# every code point, lone surrogates included; half the texts hold at least one of those
SURROGATE = st.characters(categories=["Cs"])
TEXT = st.one_of(
    st.text(st.one_of(st.characters(), SURROGATE), max_size=24),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=8), SURROGATE, st.text(max_size=8)),
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(TEXT, kids, max_size=4)),
    max_leaves=12,
)


def _hostile_literals() -> st.SearchStrategy[bytes]:
    """JSON the stdlib parser chokes on: nesting past the recursion limit, integer
    literals over 4300 digits."""
    depth = st.integers(min_value=1, max_value=25_000)
    return st.one_of(
        depth.map(lambda n: b"[" * n + b"]" * n),
        depth.map(lambda n: b'{"a": ' * n + b"1" + b"}" * n),
        st.integers(min_value=4000, max_value=6000).map(lambda n: b"9" * n),
        st.integers(min_value=1, max_value=400).map(lambda n: b"1" + b"0" * n),
    )


def _encode(value: Any, raw: bool) -> bytes:
    """JSON bytes: surrogates as ``\\udfff`` escapes, or as raw (CESU-style) bytes."""
    if raw:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


def _body(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON bodies of ``values``, text escaped or raw."""
    return st.builds(_encode, values, st.booleans())


# (path, body before, body after) of a hostile literal in the place of a field's value
SPLICES = [
    ("/search", b"", b""),
    ("/search", b'{"q": "wing", "k": ', b"}"),
    ("/search", b'{"q": "wing", "filters": {"year": {"gte": ', b"}}}"),
    ("/search", b'{"q": "wing", "explain": ', b"}"),
    ("/events", b"", b""),
    ("/events", b'[{"type": "click", "request_id": "r", "doc_id": "d", "ts": ', b"}]"),
    ("/events", b'{"events": ', b"}"),
    ("/admin/reload", b"", b""),
    ("/admin/reload", b'{"version": ', b"}"),
]


def _search_fields() -> st.SearchStrategy[dict[str, Any]]:
    filters = st.dictionaries(
        st.one_of(st.just("year"), TEXT),
        st.one_of(st.dictionaries(st.sampled_from(["gte", "lte", "gt"]), NUMBERS), JSON),
        max_size=2,
    )
    fields = {
        "q": st.one_of(TEXT, st.sampled_from(["wing", "jet noise", "shock wave"]), JSON),
        "k": st.one_of(st.integers(min_value=-2, max_value=120), NUMBERS, TEXT, JSON),
        "offset": st.one_of(st.integers(min_value=-1, max_value=30), NUMBERS, TEXT),
        "category": st.one_of(st.sampled_from(["even", "odd"]), TEXT, JSON),
        "filters": st.one_of(filters, JSON),
        "explain": st.one_of(st.booleans(), TEXT, JSON),
        "query_id": st.one_of(TEXT, JSON),
    }
    return st.fixed_dictionaries({}, optional=fields)


class ThreadServer:
    """The API on 127.0.0.1 in a thread with its own event loop; blocking HTTP calls."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self) -> None:
        self.thread.start()
        self.run(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.run(site.start())
        self.port = self.runner.addresses[0][1]

    def stop(self) -> None:
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10.0)
        self.loop.close()

    @property
    def state(self) -> ServerState:
        return self.app[STATE]

    def request(
        self, method: str, target: str, body: bytes | None = None, auth: bool = False
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if auth:
            headers["Authorization"] = f"Bearer {ADMIN}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60.0)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def check(self, method: str, target: str, body: bytes | None = None, auth: bool = False) -> Any:
        """The request's JSON answer, asserted to be a 2xx or a 4xx error, never a 5xx."""
        status, raw = self.request(method, target, body, auth)
        assert status < 500, (method, target, (body or b"")[:200], raw[:500])
        answer = json.loads(raw)
        if status >= 400:
            assert set(answer) == {"error", "request_id"}, answer
            assert set(answer["error"]) == {"code", "message"}, answer
            assert answer["error"]["code"] and answer["error"]["message"], answer
        return answer

    def served_page(self) -> tuple[str, list[str]]:
        body = self.check("GET", "/search?q=wing&k=5")
        return body["request_id"], [h["id"] for h in body["hits"]]

    def assert_logging_works(self) -> None:
        """A page served now is accepted as clicked; the writer wrote everything, with no
        failure and no dead letter (no bad text reached it)."""
        rid, docs = self.served_page()
        click = _encode([{"type": "click", "request_id": rid, "doc_id": docs[0]}], raw=False)
        status, raw = self.request("POST", "/events", click)
        assert status == 202, raw
        writer = self.state.writer
        assert writer is not None
        self.run(writer.flush())
        assert writer.pending == 0 and writer.failures == 0 and writer.dead_lettered == 0


@pytest.fixture(scope="module")
def server(
    encoder: Any, small_index: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadServer]:
    db = tmp_path_factory.mktemp("fuzz") / "events.db"
    srv = ThreadServer(_app(encoder, small_index, model_dir, db))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _query(params: dict[str, str]) -> str:
    """A query string; a lone surrogate travels as the percent-encoded bytes ED A0 80."""
    return urllib.parse.urlencode(params, errors="surrogatepass")


def test_fuzz_get_search(server: ThreadServer) -> None:
    keys = st.one_of(st.sampled_from(SEARCH_FIELDS), TEXT)
    values = st.one_of(TEXT, st.integers(min_value=-2, max_value=120).map(str))
    base = st.fixed_dictionaries({"q": st.one_of(TEXT, st.just("wing"))})

    @FUZZ
    @given(base, st.dictionaries(keys, values, max_size=4))
    def check(params: dict[str, str], extra: dict[str, str]) -> None:
        server.check("GET", "/search?" + _query({**params, **extra}))

    check()
    server.assert_logging_works()


def test_fuzz_hostile_json(server: ThreadServer) -> None:
    @FUZZ
    @given(st.sampled_from(SPLICES), _hostile_literals())
    def check(splice: tuple[str, bytes, bytes], literal: bytes) -> None:
        path, before, after = splice
        server.check("POST", path, before + literal + after, auth=path == "/admin/reload")

    check()
    server.assert_logging_works()


def test_fuzz_post_search(server: ThreadServer) -> None:
    @FUZZ
    @given(_body(st.one_of(_search_fields(), _search_fields(), _search_fields(), JSON)))
    def check(body: bytes) -> None:
        server.check("POST", "/search", body)

    check()
    server.assert_logging_works()


def test_fuzz_post_events(server: ThreadServer) -> None:
    rid, docs = server.served_page()
    event = st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(st.sampled_from(EVENT_TYPES), TEXT, JSON),
            "request_id": st.one_of(st.just(rid), TEXT, JSON),
            "doc_id": st.one_of(st.sampled_from(docs), TEXT, JSON),
            "ts": st.one_of(NUMBERS, TEXT, JSON),
            "client_id": st.one_of(TEXT, JSON),
        },
    )
    valid = st.fixed_dictionaries(
        {
            "type": st.sampled_from(EVENT_TYPES),
            "request_id": st.just(rid),
            "doc_id": st.sampled_from(docs),
        },
        optional={"ts": NUMBERS, "client_id": st.text(min_size=1, max_size=8)},
    )
    batch = st.lists(st.one_of(valid, event, event, JSON), min_size=1, max_size=4)
    wrapped = batch.map(lambda evs: {"events": evs})

    @FUZZ
    @given(_body(st.one_of(batch, batch, wrapped, JSON)))
    def check(body: bytes) -> None:
        server.check("POST", "/events", body)

    check()
    server.assert_logging_works()


def test_fuzz_admin_reload(server: ThreadServer) -> None:
    version = st.one_of(TEXT, st.sampled_from(["v0001", "v1", "../v0001"]), JSON)
    reload_body = st.fixed_dictionaries({}, optional={"version": version, "other": JSON})

    @FUZZ
    @given(_body(st.one_of(reload_body, reload_body, JSON)))
    def check(body: bytes) -> None:
        server.check("POST", "/admin/reload", body, auth=True)

    check()
    server.assert_logging_works()
