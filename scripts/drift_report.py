"""Scheduled drift report: served features of a window vs the promoted model's training sample.

    python scripts/drift_report.py --model-dir var/models --events var/events.db \
        --window 24h --out var/drift [--every 1h] [--settings F] [--webhook URL] [--now TS]

Exit codes (cron-friendly): 0 no drift, 3 drift (feature/covariate or concept), 2 error
(empty window, too few rows, missing model/reference/event log, bad settings) with a one-line
message on stderr and never a traceback. With --every it loops until SIGINT/SIGTERM (or
--max-runs): window ends advance by --every from --now (default: the current time), ends in
the past run back to back (backfill), later ones wait for their window to close; a failing
run is reported and the loop goes on; the exit code is that of the last run. On drift the
webhook gets the alert (the one-line summary, top features, action, then the summary);
the same cause again within alert_group is grouped in <out>/alerts.json, not resent.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitoring.config import MonitoringConfig, parse_duration
from monitoring.errors import MonitoringError, NotEnoughDataError, ReferenceNotFoundError
from monitoring.report import (
    EXIT_ERROR,
    EXIT_OK,
    Alert,
    DriftSummary,
    Window,
    alert_for,
    apply_retention,
    build_report,
    iso,
    post_webhook,
    select_featureset,
    write_report,
)

PROG = "drift-report"


class UsageError(Exception):
    """A bad command-line value (mapped to exit 2 with a message)."""


def parse_time(text: str) -> float:
    """Unix seconds, or ISO 8601 ('2026-11-23T10:00:00Z'; naive = UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--now: {text!r} is neither unix seconds nor an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ltrsearch-drift", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--model-dir", required=True, help="model registry directory")
    p.add_argument("--events", required=True, help="SQLite event store (impression log)")
    p.add_argument("--window", help="window length, e.g. 24h (default: settings)")
    p.add_argument("--out", help="report directory (default: settings monitoring.out_dir)")
    p.add_argument("--every", help="loop: run every DURATION until a signal (default: once)")
    p.add_argument("--settings", help="settings TOML file")
    p.add_argument("--webhook", help="POST the JSON summary here when drift is found")
    p.add_argument("--now", help="window end (unix seconds or ISO 8601; default: now)")
    p.add_argument("--model-version", help="model version (default: the promoted one)")
    p.add_argument("--max-runs", type=int, default=0, help="with --every: stop after N runs")
    p.add_argument("--no-html", action="store_true", help="write only the JSON summary")
    return p


def load_config(args: argparse.Namespace) -> MonitoringConfig:
    """Settings file + LTRSEARCH_MONITORING__* env, then command-line overrides."""
    from scripts.settings import SettingsError, load_settings

    try:
        cfg = load_settings(args.settings).monitoring
    except SettingsError as e:
        raise UsageError(str(e)) from None
    changes: dict[str, Any] = {}
    if args.window:
        changes["window"] = args.window
    if args.every:
        changes["every"] = args.every
    if args.out:
        changes["out_dir"] = args.out
    if args.webhook:
        changes["webhook_url"] = args.webhook
    if args.no_html:
        changes["html"] = False
    cfg = dataclasses.replace(cfg, **changes)
    cfg.validate()
    return cfg


def run_once(args: argparse.Namespace, cfg: MonitoringConfig, now: float) -> DriftSummary:
    """One report for the window ending at ``now``; raises on any error."""
    from ltr.registry import ModelRegistry
    from search.events import SqliteEventStore

    events = Path(args.events)
    if not events.is_file():
        raise ReferenceNotFoundError(f"no event store at {events}")
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise ReferenceNotFoundError(f"no model registry at {model_dir}")
    registry = ModelRegistry(model_dir)
    manifest = registry.manifest(args.model_version)
    window = Window(now - cfg.window_s, now)
    prev = window.previous()
    store = SqliteEventStore(events, read_only=True)  # a report never writes the store
    try:
        current = store.served_features(window.since, window.until)
        previous = store.served_features(prev.since, prev.until)
        # empty pages have no served rows: the zero-result signal counts requests
        pages = (
            store.first_pages(prev.since, prev.until),
            store.first_pages(window.since, window.until),
        )
    finally:
        store.close()
    if cfg.feature_reference == "training":
        reference = registry.reference_sample(manifest.version)
    else:
        reference, _ = select_featureset(previous, manifest.featureset_id)
        missing = [n for n in manifest.feature_names if n not in reference.columns]
        if reference.empty or missing:
            raise NotEnoughDataError(
                f"feature_reference is previous_window but {iso(prev.since)}..{iso(prev.until)} "
                f"has no rows of featureset {manifest.featureset_id[:12]}"
            )
    concept_ref: Any = (
        previous if cfg.concept_reference == "previous_window" else dict(manifest.metrics)
    )
    summary = build_report(
        reference,
        current,
        concept_ref,
        cfg,
        window=window,
        model_version=manifest.version,
        featureset_id=manifest.featureset_id,
        feature_names=list(manifest.feature_names),
        render=cfg.html,
        reference_info=(
            registry.reference_info(manifest.version)
            if cfg.feature_reference == "training"
            else {"kind": "previous_window"}
        ),
        first_pages=pages,
    )
    return write_report(summary, cfg.out_dir, html=cfg.html)


def _error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)


def run_and_report(args: argparse.Namespace, cfg: MonitoringConfig, now: float) -> int:
    """run_once + stdout line + webhook + retention; every failure -> a message and exit 2."""
    from ltr.errors import LTRError
    from search.errors import SearchError

    try:
        summary = run_once(args, cfg, now)
    except (MonitoringError, LTRError, SearchError, OSError) as e:
        _error(str(e))
        return EXIT_ERROR
    except Exception as e:  # last resort: cron wants a line, not a traceback
        _error(f"unexpected {type(e).__name__}: {e}")
        return EXIT_ERROR
    print(summary.line(), flush=True)
    if summary.drifted:
        try:
            alert = alert_for(summary, cfg.out_dir, cfg.alert_group_s)
        except OSError as e:
            print(f"{PROG}: warning: alert state not kept: {e}", file=sys.stderr, flush=True)
            alert = Alert(True, summary.cause(), 0, summary.window.until)
        if not alert.send:
            print(f"{PROG}: alert grouped: {alert.cause} seen {alert.grouped + 1} times since "
                  f"{iso(alert.first_seen)}, not resent", flush=True)  # fmt: skip
        elif cfg.webhook_url:
            try:
                post_webhook(cfg.webhook_url, alert.payload(summary), cfg.webhook_timeout_s)
            except MonitoringError as e:
                print(f"{PROG}: warning: {e}", file=sys.stderr, flush=True)
    try:
        apply_retention(cfg.out_dir, cfg.keep_reports, cfg.keep_days, now=now)
    except OSError as e:
        print(f"{PROG}: warning: retention failed: {e}", file=sys.stderr, flush=True)
    return summary.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args)
        now = parse_time(args.now) if args.now else None
        if args.max_runs < 0:
            raise UsageError("--max-runs must be >= 0")
    except (UsageError, MonitoringError) as e:
        _error(str(e))
        return EXIT_ERROR
    every = cfg.every_s
    if every is None:
        return run_and_report(args, cfg, time.time() if now is None else now)

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    # Window ends advance by --every from --now (default: now). Ends already in the past run
    # back to back (a backfill); then each run waits until its window has closed.
    code, runs = EXIT_OK, 0
    end = time.time() if now is None else now
    while not stop.is_set():
        code = run_and_report(args, cfg, end)
        runs += 1
        if args.max_runs and runs >= args.max_runs:
            break
        end += every
        wait = end - time.time()
        if wait > 0:
            stop.wait(wait)
    return code


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "parse_duration", "parse_time", "run_once"]
