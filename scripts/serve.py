"""Run the search API: ``ltrsearch-serve --index-dir DIR --model-dir DIR --events DB``.

Structured logs: one JSON object per line on stderr, with the request id when there is one.
Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for bad settings or arguments.

``--workers N`` (settings api.workers) runs N server processes on the port, each with its
own SO_REUSEPORT socket, under this process as supervisor: it restarts a worker that dies
after it was serving, stops them all on SIGTERM/SIGINT, and exits 2 if one cannot start.
The supervisor and how the workers stay consistent: search.workers; this module parses
the arguments, sets up logging and runs one server or the supervisor.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.workbench import ReportSource

# One BLAS thread: the server's matmuls (exact kNN) are small, and two OpenBLAS threads
# fight each other and the event loop for 2 cores (kNN 8-10 ms instead of 0.16 ms at 2K
# docs; docs/history/benchmarks-2026-11.md "Search API latency work"). Must be set before
# numpy loads.
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
    p.add_argument(
        "--workers", type=int, help="server processes on the port (default: settings api.workers)"
    )
    p.add_argument("--settings", help="TOML settings file (env LTRSEARCH_* overrides)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


async def build_app(
    args: argparse.Namespace, settings: Any, api: Any, encoder: Any, group: Any = None
) -> Any:
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
            group=group,
            reports=report_source(settings.monitoring.out_dir),
        )
    except BaseException:
        if backend is not None:
            await backend.close()
        raise


def report_source(out_dir: str) -> ReportSource:
    """The drift reports (monitoring.report's layout) the workbench page serves read only."""
    from pathlib import Path

    from monitoring.report import CONCEPT_HTML, FEATURES_HTML, REPORT_PREFIX, SUMMARY_FILE
    from search.workbench import ReportSource

    files = (FEATURES_HTML, CONCEPT_HTML, SUMMARY_FILE)
    return ReportSource(Path(out_dir), REPORT_PREFIX, files, summary=SUMMARY_FILE)


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
        if args.workers is not None:
            changes["workers"] = args.workers
        api = dataclasses.replace(api, **changes)
        api.validate()
    except (SettingsError, ValueError) as e:
        print(f"ltrsearch-serve: {e}", file=sys.stderr)
        return 2
    from search import workers

    group = workers.group_from_env()
    if group is None and api.workers > 1:
        try:
            workers.init_event_store(args.events)
        except Exception as e:
            print(f"ltrsearch-serve: {e}", file=sys.stderr)
            return 2
        try:
            socks = workers.listen(api.host, api.port, api.workers)
        except OSError as e:
            print(f"ltrsearch-serve: cannot listen on {api.host}:{api.port}: {e}", file=sys.stderr)
            return 2
        worker = [sys.executable, "-m", "scripts.serve", *(sys.argv[1:] if argv is None else argv)]
        return workers.supervise(api.host, socks, worker)

    import asyncio

    from indexing.encoders import load_encoder
    from indexing.errors import IndexingError
    from search.server import run_app

    t0 = time.perf_counter()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        encoder = load_encoder(settings.embedding)
        app = loop.run_until_complete(build_app(args, settings, api, encoder, group))
    except (IndexingError, ValueError, OSError) as e:
        print(f"ltrsearch-serve: {e}", file=sys.stderr)
        return 2
    app.on_startup.append(_tune_gc)  # after the cleanup contexts loaded index and model
    sock = None
    if group is not None:
        sock = workers.worker_socket()
        wid = str(group.worker_id)

        async def worker_header(request: Any, response: Any) -> None:
            response.headers["X-Worker"] = wid

        app.on_response_prepare.append(worker_header)
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
            "worker": group.worker_id if group is not None else None,
        },
    )
    try:
        run_app(
            app,
            loop,
            host=None if sock is not None else api.host,
            port=None if sock is not None else api.port,
            sock=sock,
            shutdown_timeout=10.0,
        )
    except IndexingError as e:  # raised by the cleanup context at startup (no index...)
        print(f"ltrsearch-serve: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # port in use, bad address
        print(f"ltrsearch-serve: cannot listen on {api.host}:{api.port}: {e}", file=sys.stderr)
        return 2
    return 0


async def _tune_gc(app: Any) -> None:
    """Freeze what startup allocated (index, model, caches) out of the cyclic GC, and
    collect the young generation less often: at 100K documents gen-2 passes over that heap
    cost ~1.1 ms per search and made the p99 (scripts/profile_search.py --gc-freeze)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


GC_GEN0_THRESHOLD = 50_000  # allocations between young collections (Python's default: 700)


if __name__ == "__main__":
    sys.exit(main())
