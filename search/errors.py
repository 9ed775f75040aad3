"""Exception hierarchy of the search package.

Every error carries its HTTP status and a stable machine-readable ``code`` so that one
aiohttp middleware (search.http) can turn any of them into ``{"error": {"code", "message"}}``
without a lookup table drifting away from the classes.
"""

from __future__ import annotations

from collections.abc import Sequence


class SearchError(Exception):
    """Base class for every error raised by search; 500 unless a subclass says otherwise."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(SearchError):
    """The request is malformed or a parameter is out of range."""

    status = 400
    code = "bad_request"


class InvalidQueryError(BadRequestError):
    """Empty, whitespace-only or over-long query text."""

    code = "invalid_query"


class InvalidParameterError(BadRequestError):
    """A parameter (k, offset, filters, explain, ...) has a bad type or value."""

    code = "invalid_parameter"

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name


class InvalidUnicodeError(BadRequestError):
    """A text field holds code points that are not Unicode text (lone surrogates): they
    cannot be stored, encoded or tokenized, so they are refused where they come in."""

    code = "invalid_unicode"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name}: not valid Unicode text (an unpaired surrogate such as \\udfff, "
            "escaped or as raw bytes)"
        )
        self.name = name


class MalformedJSONError(BadRequestError):
    """The body is not valid JSON (or not the expected JSON shape)."""

    code = "malformed_json"


class UnknownFieldError(BadRequestError):
    """The JSON body names fields the endpoint does not know (typos must not be ignored)."""

    code = "unknown_field"

    def __init__(self, unknown: Sequence[str], valid: Sequence[str]) -> None:
        super().__init__(
            f"unknown field(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(valid))}"
        )
        self.unknown = tuple(sorted(unknown))


class InvalidEventError(BadRequestError):
    """An event of a batch is malformed; the message names its index and the problem."""

    code = "invalid_event"


class UnknownRequestIdError(SearchError):
    """Events reference request ids that were never served; nothing of the batch is stored."""

    status = 422
    code = "unknown_request_id"

    def __init__(self, request_ids: Sequence[str]) -> None:
        ids = sorted(set(request_ids))
        super().__init__(f"unknown request_id(s): {', '.join(ids)}")
        self.request_ids = tuple(ids)


class RequestTimeoutError(SearchError):
    """The client did not send its body within ``api.body_timeout_s``."""

    status = 408
    code = "request_timeout"


class PayloadTooLargeError(SearchError):
    status = 413
    code = "payload_too_large"


class UriTooLongError(SearchError):
    """The request line is longer than ``api.max_request_line_bytes``."""

    status = 414
    code = "uri_too_long"


class HeaderTooLargeError(SearchError):
    """A header name or value is longer than ``api.max_header_bytes``."""

    status = 431
    code = "header_too_large"


class UnsupportedMediaTypeError(SearchError):
    status = 415
    code = "unsupported_media_type"


class UnauthorizedError(SearchError):
    """No bearer token was given for an admin endpoint."""

    status = 401
    code = "unauthorized"


class ForbiddenError(SearchError):
    """A bearer token was given but it is wrong."""

    status = 403
    code = "forbidden"


class NotFoundError(SearchError):
    status = 404
    code = "not_found"


class ConflictError(SearchError):
    """The request conflicts with the serving state (e.g. a model for other features)."""

    status = 409
    code = "conflict"


class CorruptModelRefusedError(SearchError):
    """A model version's files are corrupt (checksum, manifest, booster); it was not loaded."""

    status = 422
    code = "corrupt_model"


class NotReadyError(SearchError):
    """The index or the model is not loaded (yet); retry later."""

    status = 503
    code = "not_ready"


class EventStoreError(SearchError):
    """The event store could not read or durably write."""

    status = 503
    code = "event_store_unavailable"


class ImpressionRejectedError(EventStoreError):
    """A served page the event store cannot keep (a value SQLite cannot bind, a request id
    already stored): retrying cannot help, so the impression writer dead-letters it."""

    status = 500
    code = "impression_rejected"


class WorkersNotConfirmedError(SearchError):
    """Some server workers did not confirm a change within the timeout (``--workers``)."""

    status = 503
    code = "workers_not_confirmed"
