"""The installed ltrsearch version, read from the package metadata (one place: /health,
/openapi.json and ``ltrsearch --version`` report it; pyproject.toml sets it)."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache
def package_version() -> str:
    """The installed version ("0+unknown" when run from a tree that was never installed)."""
    try:
        return metadata.version("ltrsearch")
    except metadata.PackageNotFoundError:
        return "0+unknown"
