"""The HTTP side of the search API: the error middleware, error mapping, request parsing.

Every error leaves as ``{"error": {"code", "message"}}`` with the status its class names
(search.errors, plus the indexing/ltr errors mapped in ``_status_of``); an unexpected
exception is a 500 whose body names the request id, never a traceback. Request bodies and
query strings become typed values here (SearchRequest, Events) or an InvalidParameterError
naming the parameter, so the handlers (search.api) see only validated input.

Hostile input stops here: a body that does not arrive in time (408), JSON nested deeper than
MAX_JSON_DEPTH or holding an integer literal Python refuses (400), text that is not valid
Unicode (lone surrogates: 400 naming the field), request lines and header fields over their
limits (414 / 431; ``handler_args`` gives aiohttp the same limits, with headroom, and the
timeout that closes a connection slow to send its request head). What aiohttp's own parser
refuses before any handler runs (a request line or header past its limit, a malformed
request head) gets the same JSON shape from ``JsonErrorRunner``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from indexing.errors import BackendError, IndexingError, IndexNotFoundError
from ltr.errors import (
    CorruptModelError,
    FeaturesetMismatchError,
    LTRError,
    ModelNotFoundError,
    UnknownNameError,
)
from search.config import ApiConfig
from search.errors import (
    BadRequestError,
    ForbiddenError,
    HeaderTooLargeError,
    InvalidEventError,
    InvalidParameterError,
    InvalidUnicodeError,
    MalformedJSONError,
    PayloadTooLargeError,
    RequestTimeoutError,
    SearchError,
    UnauthorizedError,
    UnknownFieldError,
    UnsupportedMediaTypeError,
    UriTooLongError,
)
from search.events import EVENT_CLOCK_SKEW_S, EVENT_TYPES, Event
from search.metrics import ApiMetrics
from search.pipeline import SearchRequest

_orjson: Any
try:  # not a declared dependency: used when installed (search responses are the hot path)
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

log = logging.getLogger("search.api")  # one logger for the API, whichever module logs

SEARCH_FIELDS = (
    "q",
    "k",
    "offset",
    "category",
    "filters",
    "explain",
    "query_id",
    "debug",
    "model",
    "client_id",
)
RANGE_OPS = ("gte", "lte")
MAX_JSON_DEPTH = 32  # the deepest body of the API nests 3 levels (filters.year.gte)
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a surrogate left in a str is unpaired

REQUEST_ID = web.RequestKey("ltrsearch_request_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------------------
# errors


def _status_of(exc: BaseException) -> tuple[int, str]:
    """HTTP status and error code for an exception of our packages."""
    if isinstance(exc, SearchError):
        return exc.status, exc.code
    if isinstance(exc, FeaturesetMismatchError):
        return 409, "featureset_mismatch"
    if isinstance(exc, ModelNotFoundError):
        return 404, "model_not_found"
    if isinstance(exc, CorruptModelError):
        return 422, "corrupt_model"
    if isinstance(exc, UnknownNameError):
        return 400, "unknown_name"
    if isinstance(exc, IndexNotFoundError):
        return 503, "index_not_found"
    if isinstance(exc, BackendError):
        return 503, "backend_unavailable"
    if isinstance(exc, IndexingError | LTRError):
        return 500, "internal_error"
    return 500, "internal_error"


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def handler_args(config: ApiConfig) -> dict[str, Any]:
    """aiohttp RequestHandler settings (``web.Application(handler_args=...)``).

    The keep-alive timeout closes a connection that has not sent a whole request head this
    long after it opened (or after its last response). The parser limits are 4x / 2x the
    API's own: a request line or header field between the two gets the JSON 414 / 431 of
    ``check_head``; past the parser's limit the parser refuses it before any handler runs,
    and ``JsonErrorRunner`` answers 414 / 431 / 400 in the same JSON shape and closes the
    connection.
    """
    return {
        "keepalive_timeout": config.header_timeout_s,
        "max_line_size": 4 * config.max_request_line_bytes,
        "max_field_size": 2 * config.max_header_bytes,
    }


def check_head(request: web.Request, config: ApiConfig) -> None:
    """Refuse a request line over ``max_request_line_bytes`` (414) or a header name or
    value over ``max_header_bytes`` (431)."""
    target = request.raw_path.encode("utf-8", "surrogateescape")
    line = len(request.method) + len(target) + len(" HTTP/1.1") + 1
    if line > config.max_request_line_bytes:
        raise UriTooLongError(
            f"the request line is {line} bytes, over {config.max_request_line_bytes}"
        )
    for name, value in request.raw_headers:
        if max(len(name), len(value)) > config.max_header_bytes:
            shown = name[:64].decode("latin-1")
            raise HeaderTooLargeError(
                f"header {shown}: name or value over {config.max_header_bytes} bytes"
            )


def error_response(status: int, code: str, message: str, request_id: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}, "request_id": request_id},
        status=status,
        headers={"X-Request-ID": request_id},
    )


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses in our error shape
    instead of its plain text (the middleware never sees those requests)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # aiohttp's own
        status, code, text = _parser_error(exc, message)
        rid = new_request_id()
        log.warning(  # one line, no traceback: a malformed head is the client's doing
            "refused request head",
            extra={"status": status, "code": code, "request_id": rid, "peer": request.remote},
        )
        resp = error_response(status, code, text, rid)
        resp.force_close()
        return resp


def _parser_error(exc: BaseException | None, message: str | None) -> tuple[int, str, str]:
    """Status, code and message for a request head aiohttp's parser refused.

    ``LineTooLong`` does not say which line: its first bytes do. A request target starts
    with ``/``, ``*`` or a scheme (the C parser reports the target, the Python one the
    whole request line, method first); anything else is a header field.
    """
    if isinstance(exc, LineTooLong):
        line, limit = exc.args[0], exc.args[1]
        head = bytes(line) if isinstance(line, bytes | bytearray) else str(line).encode()
        if _REQUEST_LINE_START.match(head):
            return 414, "uri_too_long", f"the request line is over {limit} bytes"
        return 431, "header_too_large", f"a header field is over {limit} bytes"
    return 400, "bad_request", f"malformed request: {str(message or exc or '')[:200]}"


_REQUEST_LINE_START = re.compile(rb"(?:[A-Z]+ )?(?:/|\*|[A-Za-z][A-Za-z0-9+.-]*://)")


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer parser errors in the JSON error shape.

    aiohttp has no public hook for the response to a request its parser refuses; this
    swaps in a ``RequestHandler`` subclass through the server factory (``scripts/serve.py``
    and the tests' server both run the app with it).
    """

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _JsonErrorServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def new_request_id() -> str:
    """32 hex chars: milliseconds since the epoch (12) + 80 random bits (20), like UUIDv7.

    Time-ordered so the event store's request-keyed B-trees (requests, impressions) grow
    at their right edge. With uuid4 every impression batch landed on random pages of an
    ever larger table, and a 10-minute soak at 32 connections lost ~25% of its throughput
    as the store grew past the page cache.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


class ErrorMiddleware:
    """aiohttp middleware: maps every exception to a JSON error, counts and logs every
    request (into ``metrics``; the body limit and access-log switch come from ``config``)."""

    __middleware_version__ = 1  # what @web.middleware marks: the (request, handler) form

    def __init__(self, config: ApiConfig, metrics: ApiMetrics) -> None:
        self.config = config
        self.metrics = metrics

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Map every exception to a JSON error; count and log every request."""
        rid = new_request_id()
        request[REQUEST_ID] = rid
        t0 = time.perf_counter()
        route = _route_of(request)
        status = 500
        try:
            check_head(request, self.config)
            resp = await handler(request)
            status = resp.status
            resp.headers.setdefault("X-Request-ID", rid)
            return resp
        except web.HTTPException as e:
            status = e.status
            if status < 400:
                raise
            code = _HTTP_CODES.get(status, "http_error")
            msg = e.text if e.text and not e.text.startswith(f"{status}:") else e.reason
            if status == 413:
                msg = f"the body is larger than {self.config.max_body_bytes} bytes"
            self.metrics.errors.inc(code)
            return error_response(status, code, msg or e.reason, rid)
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception as e:
            status, code = _status_of(e)
            self.metrics.errors.inc(code)
            if status >= 500:
                log.error(
                    "request failed: %s",
                    e,
                    exc_info=status == 500,
                    extra={"request_id": rid, "route": route},
                )
            if status == 500:
                msg = f"internal error (request id {rid}); see the server log"
            else:
                msg = e.message if isinstance(e, SearchError) else str(e)
            resp = error_response(status, code, msg, rid)
            if isinstance(e, RequestTimeoutError):
                resp.force_close()  # the rest of a slow body is not waited for
            return resp
        finally:
            dt = time.perf_counter() - t0
            self.metrics.requests.inc(route, str(status))
            self.metrics.latency.observe(dt, route)
            if self.config.access_log:
                log.info(
                    "%s %s %d",
                    request.method,
                    request.path,
                    status,
                    extra={"request_id": rid, "route": route, "status": status, "ms": dt * 1000.0},
                )


# --------------------------------------------------------------------------------------
# request parsing


async def json_body(request: web.Request, config: ApiConfig, list_name: str = "") -> Any:
    """The request's JSON body, refused when too large, too slow, not JSON, of another
    type, nested too deep or holding text that is not Unicode (``check_json``; the items
    of a top-level list are named ``list_name[i]``)."""
    max_bytes = config.max_body_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLargeError(f"the body is larger than {max_bytes} bytes")
    if request.content_type != "application/json":
        raise UnsupportedMediaTypeError(
            f"expected Content-Type application/json, got {request.content_type or 'none'}"
        )
    try:
        async with asyncio.timeout(config.body_timeout_s):
            raw = await request.read()  # client_max_size: 413 on a chunked oversized body
    except TimeoutError:
        raise RequestTimeoutError(
            f"the body did not arrive within {config.body_timeout_s:g} s"
        ) from None
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(f"the body is larger than {max_bytes} bytes")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise MalformedJSONError(f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an int over 4300 digits
        raise MalformedJSONError(f"the body is not valid JSON: {e}") from None
    check_json(data, list_name if isinstance(data, list) else "")
    return data


def check_json(value: Any, root: str = "") -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH (MalformedJSONError) or holding text
    that is not valid Unicode, in a key or a value (InvalidUnicodeError naming where:
    ``query_id``, ``filters.year``, ``events[0].request_id``)."""
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, str):
            text(path or "the body", v)
        elif isinstance(v, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise MalformedJSONError(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, list):
                stack.extend((x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v))
                continue
            for k, x in v.items():
                if _SURROGATE.search(k):
                    raise InvalidUnicodeError(f"{path}: a key" if path else "a field name")
                stack.append((x, f"{path}.{k}" if path else k, depth + 1))


def text(name: str, value: str) -> str:
    """``value``, refused (InvalidUnicodeError naming ``name``) when it holds a surrogate:
    an unpaired one from a ``\\ud800`` escape or raw ED A0 80 bytes, which json.loads
    and aiohttp's header and URL decoding let through and no encoder can write."""
    if _SURROGATE.search(value):
        raise InvalidUnicodeError(name)
    return value


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of a client's value for an error message."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r)} characters)"


def _finite(value: Any) -> float | None:
    """``value`` as a finite float; None when it is not a number (bool, str) or no float
    holds it (an int of hundreds of digits, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidParameterError(name, "expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidParameterError(name, f"expected an integer, got {_show(value)}")


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no", ""):
        return value.lower() in ("1", "true", "yes")
    raise InvalidParameterError(name, f"expected true or false, got {_show(value)}")


def opt_str(name: str, value: Any, max_len: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidParameterError(name, f"expected a string of at most {max_len} characters")
    return text(name, value)


def _filters(raw: Any, attr_names: Sequence[str]) -> dict[str, tuple[float | None, float | None]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidParameterError("filters", 'expected an object {attr: {"gte", "lte"}}')
    out: dict[str, tuple[float | None, float | None]] = {}
    for attr, spec in raw.items():
        if attr not in attr_names:
            valid = ", ".join(sorted(attr_names)) or "(the index has no numeric attributes)"
            raise InvalidParameterError(f"filters.{attr}", f"unknown attribute; valid: {valid}")
        if not isinstance(spec, dict) or not spec or set(spec) - set(RANGE_OPS):
            raise InvalidParameterError(
                f"filters.{attr}", 'expected an object with "gte" and/or "lte"'
            )
        bounds: list[float | None] = []
        for op in RANGE_OPS:
            v = spec.get(op)
            bound = None if v is None else _finite(v)
            if v is not None and bound is None:
                raise InvalidParameterError(f"filters.{attr}.{op}", "expected a finite number")
            bounds.append(bound)
        lo, hi = bounds
        if lo is not None and hi is not None and lo > hi:
            raise InvalidParameterError(f"filters.{attr}", "gte is greater than lte")
        out[attr] = (lo, hi)
    return out


def search_request(data: Mapping[str, Any], attr_names: Sequence[str]) -> SearchRequest:
    """A /search request from its JSON body or query string (``attr_names``: filterable)."""
    unknown = set(data) - set(SEARCH_FIELDS)
    if unknown:
        raise UnknownFieldError(sorted(unknown), SEARCH_FIELDS)
    q = data.get("q")
    if q is None:
        raise BadRequestError("q: the query is missing")
    if not isinstance(q, str):
        raise InvalidParameterError("q", "expected a string")
    return SearchRequest(
        q=text("q", q),
        k=_int("k", data.get("k", 10)),
        offset=_int("offset", data.get("offset", 0)),
        category=opt_str("category", data.get("category")),
        ranges=_filters(data.get("filters"), attr_names),
        explain=_bool("explain", data.get("explain", False)),
        query_id=opt_str("query_id", data.get("query_id")),
        debug=_bool("debug", data.get("debug", False)),
        model=opt_str("model", data.get("model"), max_len=64),
        client_id=opt_str("client_id", data.get("client_id")),
    )


def query_flag(request: web.Request, name: str) -> bool:
    """A true/false query-string parameter (absent = false), refused when it is not one."""
    return _bool(name, request.query.get(name, "false"))


def parse_events(raw: Any, now: float | None = None, max_events: int = 1000) -> list[Event]:
    """Validate a JSON batch (a list of objects, or {"events": [...]}) into Events.

    Raises InvalidEventError naming the index and the problem of the first bad event.
    """
    if isinstance(raw, dict) and set(raw) == {"events"}:
        raw = raw["events"]
    if not isinstance(raw, list):
        raise InvalidEventError('expected a JSON list of events (or {"events": [...]})')
    if not raw:
        raise InvalidEventError("the batch is empty")
    if len(raw) > max_events:
        raise InvalidEventError(f"too many events in one batch: {len(raw)} > {max_events}")
    now = time.time() if now is None else now
    allowed = {"type", "request_id", "doc_id", "ts", "client_id"}
    out = []
    for i, ev in enumerate(raw):
        where = f"events[{i}]"
        if not isinstance(ev, dict):
            raise InvalidEventError(f"{where}: expected an object, got {type(ev).__name__}")
        unknown = sorted(set(ev) - allowed)
        if unknown:
            raise InvalidEventError(
                f"{where}: unknown field(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(allowed))}"
            )
        typ = ev.get("type")
        if typ not in EVENT_TYPES:
            raise InvalidEventError(
                f"{where}.type: {_show(typ)} is not one of {', '.join(EVENT_TYPES)}"
            )
        for key in ("request_id", "doc_id"):
            val = ev.get(key)
            if not isinstance(val, str) or not val or len(val) > 200:
                raise InvalidEventError(f"{where}.{key}: expected a non-empty string")
            text(f"{where}.{key}", val)
        raw_ts = ev.get("ts", now)
        ts = _finite(raw_ts)
        if ts is None:
            raise InvalidEventError(f"{where}.ts: expected unix seconds, got {_show(raw_ts)}")
        # the lower bound is the time its page was served: SqliteEventStore.add_events
        if ts <= 0 or ts > now + EVENT_CLOCK_SKEW_S:
            raise InvalidEventError(f"{where}.ts: {ts!r} is not a plausible unix time")
        client = ev.get("client_id")
        if client is not None:
            if not isinstance(client, str) or not client or len(client) > 200:
                raise InvalidEventError(f"{where}.client_id: expected a non-empty string or null")
            text(f"{where}.client_id", client)
        out.append(Event(typ, ev["request_id"], ev["doc_id"], ts, client))
    return out


def check_admin(request: web.Request, token: str) -> None:
    """Refuse a request without ``Authorization: Bearer <token>`` (401) or a wrong one (403)."""
    header = request.headers.get("Authorization", "")
    if not header:
        raise UnauthorizedError("missing Authorization: Bearer <admin token>")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UnauthorizedError("expected Authorization: Bearer <admin token>")
    if not token:
        raise ForbiddenError("the admin API is disabled (no admin token configured)")
    # aiohttp decodes header bytes that are not UTF-8 to surrogates: encode them back
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode()):
        raise ForbiddenError("wrong admin token")


# --------------------------------------------------------------------------------------
# responses


def json_response(body: Any) -> web.Response:
    """web.json_response, encoded by orjson when it is installed (~10x faster than json
    for a page of hits; the same JSON except that a non-finite float becomes null)."""
    if _orjson is not None:
        try:
            data = _orjson.dumps(body)
        except TypeError:  # a type orjson does not encode: the standard encoder decides
            pass
        else:
            return web.Response(body=data, content_type="application/json", charset="utf-8")
    return web.json_response(body)
