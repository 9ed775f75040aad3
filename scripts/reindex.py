"""ltrsearch-reindex: load a catalog, embed it, build and publish a new index version.

    ltrsearch-reindex --source catalog.jsonl --index-dir var/index [--settings ltrsearch.toml]

The new version becomes current only after it validated; a failed or killed run leaves
the previous version serving. Expected failures (bad input, settings, validation) print
one line on stderr and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from indexing.errors import IndexingError
from ltr.errors import LTRError
from scripts.settings import Settings, SettingsError, load_settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "ltrsearch-reindex"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help=".jsonl / .csv catalog or a BEIR directory")
    p.add_argument("--index-dir", help="index directory (default: settings index.dir)")
    p.add_argument("--settings", help="TOML settings file (LTRSEARCH_* env overrides apply)")
    p.add_argument(
        "--backend",
        choices=("local", "elasticsearch"),
        help="where to index (default: settings index.backend)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not use the embedding cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    es = p.add_argument_group("elasticsearch (--backend elasticsearch)")
    es.add_argument("--es-url", help="server URL (default: settings elasticsearch.url)")
    es.add_argument(
        "--alias", help="alias to publish behind (default: settings elasticsearch.alias)"
    )
    return p.parse_args(argv)


def _load_inputs(args: argparse.Namespace, s: Settings) -> tuple[list[Any], Any, Any]:
    """Documents (skipped lines reported on stderr), the encoder and the embedding cache:
    the same for both backends, so both embed through the same cache."""
    from indexing.embedding_cache import EmbeddingCache
    from indexing.encoders import load_encoder
    from indexing.loaders import load_documents

    result = load_documents(args.source, s.loader)
    for err in result.skipped:
        print(f"{PROG}: skipped {err}", file=sys.stderr)
    encoder = load_encoder(s.embedding)
    use_cache = s.embedding.cache and not args.no_cache
    cache = EmbeddingCache(s.embedding.cache_path) if use_cache else None
    return list(result.documents), encoder, cache


def _reindex_local(args: argparse.Namespace, settings: Settings) -> str:
    """Load, embed (through the cache), build, validate and swap; returns the closing line."""
    from indexing.build import build_local_index

    s = settings
    index_dir = Path(args.index_dir or s.index.dir)
    progress = not args.quiet
    documents, encoder, cache = _load_inputs(args, s)
    try:
        t0 = time.perf_counter()
        version = build_local_index(
            documents, index_dir, encoder, s.index, cache=cache, progress=progress
        )
        seconds = time.perf_counter() - t0
    finally:
        if cache is not None:
            cache.close()
    n = len(documents)
    rate = n / seconds if seconds > 0 else float("inf")
    return f"indexed {n} documents in {seconds:.1f} s ({rate:.0f} docs/s), version {version}"


def _reindex_elasticsearch(args: argparse.Namespace, settings: Settings) -> str:
    """Load, embed (same cache), bulk-load a new versioned index, validate, swap the alias."""
    import asyncio
    import dataclasses

    from indexing.elastic import build_elastic_index

    s = settings
    overrides = {k: v for k, v in (("url", args.es_url), ("alias", args.alias)) if v}
    es_cfg = dataclasses.replace(s.elasticsearch, **overrides)
    try:
        es_cfg.validate()
    except ValueError as e:
        raise SettingsError(f"elasticsearch: {e}") from None
    documents, encoder, cache = _load_inputs(args, s)
    try:
        t0 = time.perf_counter()
        name = asyncio.run(
            build_elastic_index(
                documents, encoder, es_cfg, s.index, cache=cache, progress=not args.quiet
            )
        )
        seconds = time.perf_counter() - t0
    finally:
        if cache is not None:
            cache.close()
    n = len(documents)
    rate = n / seconds if seconds > 0 else float("inf")
    return (
        f"indexed {n} documents in {seconds:.1f} s ({rate:.0f} docs/s), "
        f"index {name} behind alias {es_cfg.alias} at {es_cfg.url}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.settings)
        backend = args.backend or settings.index.backend
        run = _reindex_elasticsearch if backend == "elasticsearch" else _reindex_local
        line = run(args, settings)
    except SettingsError as e:
        print(f"{PROG}: settings: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (IndexingError, LTRError, OSError) as e:
        print(f"{PROG}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the previous version is still current", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(line)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
