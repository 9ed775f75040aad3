"""Exception hierarchy of the indexing package."""


class IndexingError(Exception):
    """Base class for every error raised by indexing."""


class LoaderError(IndexingError):
    """Malformed input; the message names the file and line."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = path, line, reason


class ValidationError(IndexingError):
    """A freshly built index failed validation; it was not made current."""


class IndexNotFoundError(IndexingError):
    """No current index version (never built, or the directory is wrong)."""


class BackendError(IndexingError):
    """A retrieval backend failed (connection, timeout, server error)."""


class BackendTimeoutError(BackendError):
    """A retrieval backend did not answer in time."""


class InvalidRequestError(IndexingError, ValueError):
    """A backend call got a bad argument (k < 1, a query vector of the wrong shape, ...)."""


class EmbeddingError(IndexingError):
    """An embedding model could not be loaded, exported or run (the message says which)."""
