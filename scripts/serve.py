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
    p.add_argument("--index-dir", required=True, help="local index directory (CURRENT + versions)")
    p.add_argument("--model-dir", help="model registry directory (promoted model serves)")
    p.add_argument("--events", help="SQLite event store (impressions, events, aggregates)")
    p.add_argument("--host", help="bind address (default: settings api.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: settings api.port)")
    p.add_argument("--settings", help="TOML settings file (env LTRSEARCH_* overrides)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


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

    from aiohttp import web

    from indexing.embedding import load_encoder
    from indexing.errors import IndexingError
    from search.api import make_app
    from search.pipeline import default_generator_factory

    t0 = time.perf_counter()
    try:
        encoder = load_encoder(settings.embedding)
        factory = default_generator_factory(getattr(settings, "retrieval", None))
        app = make_app(
            api,
            encoder,
            index_dir=args.index_dir,
            model_dir=args.model_dir,
            events_path=args.events,
            events_config=settings.events,
            generator_factory=factory,
        )
    except (IndexingError, ValueError, OSError) as e:
        print(f"ltrsearch-serve: {e}", file=sys.stderr)
        return 2
    log.info(
        "serving",
        extra={
            "host": api.host,
            "port": api.port,
            "index_dir": args.index_dir,
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
