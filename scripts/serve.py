"""Run the search API: ``ltrsearch-serve --index-dir DIR --model-dir DIR --events DB``.

Structured logs: one JSON object per line on stderr, with the request id when there is one.
Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for bad settings or arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

# One BLAS thread: the server's matmuls (exact kNN) are small, and two OpenBLAS threads
# fight each other and the event loop for 2 cores (kNN 8-10 ms instead of 0.16 ms at 2K
# docs; docs/benchmarks.md "Search API latency work"). Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ltrsearch-serve", description=__doc__.splitlines()[0])
    p.add_argument("--index-dir", help="local index directory (CURRENT + versions)")
    p.add_argument(
        "--backend",
        choices=("local", "elasticsearch"),
        help="retrieval backend (default: settings index.backend)",
    )
    p.add_argument("--es-url", help="Elasticsearch URL (default: settings elasticsearch.url)")
    p.add_argument("--alias", help="Elasticsearch alias (default: settings elasticsearch.alias)")
    p.add_argument("--model-dir", help="model registry directory (promoted model serves)")
    p.add_argument("--events", help="SQLite event store (impressions, events, aggregates)")
    p.add_argument("--host", help="bind address (default: settings api.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: settings api.port)")
    p.add_argument("--settings", help="TOML settings file (env LTRSEARCH_* overrides)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


async def build_app(args: argparse.Namespace, settings: Any, api: Any, encoder: Any) -> Any:
    """The app over the backend the settings/arguments name, built in the serving loop.

    The Elasticsearch client binds to the running event loop, so the backend is opened
    here, inside the loop that serves, not before it.
    """
    from search.api import make_app
    from search.pipeline import default_generator_factory

    backend_name = args.backend or settings.index.backend
    backend = None
    if backend_name == "elasticsearch":
        from indexing.elastic import ElasticBackend

        es = settings.elasticsearch
        changes = {k: v for k, v in (("url", args.es_url), ("alias", args.alias)) if v}
        backend = await ElasticBackend.open(dataclasses.replace(es, **changes), encoder)
    elif not args.index_dir:
        raise ValueError("--index-dir is required with the local backend")
    try:
        return make_app(
            api,
            encoder,
            index_dir=None if backend is not None else args.index_dir,
            backend=backend,
            model_dir=args.model_dir,
            events_path=args.events,
            events_config=settings.events,
            generator_factory=default_generator_factory(settings.retrieval),
        )
    except BaseException:
        if backend is not None:
            await backend.close()
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    log = logging.getLogger("ltrsearch.serve")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from scripts.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.settings)
        api = settings.api
        changes: dict[str, Any] = {}
        if args.host is not None:
            changes["host"] = args.host
        if args.port is not None:
            changes["port"] = args.port
        api = dataclasses.replace(api, **changes)
        api.validate()
    except (SettingsError, ValueError) as e:
        print(f"ltrsearch-serve: {e}", file=sys.stderr)
        return 2

    import asyncio

    from aiohttp import web

    from indexing.embedding import load_encoder
    from indexing.errors import IndexingError

    t0 = time.perf_counter()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        encoder = load_encoder(settings.embedding)
        app = loop.run_until_complete(build_app(args, settings, api, encoder))
    except (IndexingError, ValueError, OSError) as e:
        print(f"ltrsearch-serve: {e}", file=sys.stderr)
        return 2
    log.info(
        "serving",
        extra={
            "host": api.host,
            "port": api.port,
            "index_dir": args.index_dir,
            "backend": args.backend or settings.index.backend,
            "model_dir": args.model_dir,
            "events": args.events,
            "startup_s": round(time.perf_counter() - t0, 3),
        },
    )
    try:
        web.run_app(
            app,
            host=api.host,
            port=api.port,
            access_log=None,
            print=None,
            handle_signals=True,
            shutdown_timeout=10.0,
            loop=loop,
        )
    except IndexingError as e:  # raised by the cleanup context at startup (no index...)
        print(f"ltrsearch-serve: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # port in use, bad address
        print(f"ltrsearch-serve: cannot listen on {api.host}:{api.port}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
