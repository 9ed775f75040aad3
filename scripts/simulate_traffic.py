"""Drive a running search API with simulated users and (optionally) close the learning loop.

    python scripts/simulate_traffic.py --url http://127.0.0.1:8080 --dataset BEIR_DIR
        [--sessions 2000] [--max-seconds 120] [--concurrency 4] [--k 10] [--noise 0.1]
        [--exam-eta 1.0] [--seed 0]
        [--train --events DB --model-dir DIR --admin-token T [--index-dir DIR]]
        [--holdout 0.2] [--out F.json]

Users pick a judged query, search, examine position p with probability 1 / p**eta and
click an examined hit with the attractiveness of its graded judgment (ltr.click_models:
``noise + (1 - noise) * (2**g - 1) / (2**max - 1)``, so irrelevant hits get noise clicks),
then the clicks are POSTed to /events. Bounded by ``--sessions`` and ``--max-seconds``.
Only loopback servers are accepted: this is a test tool, never pointed at production.

With ``--train``: NDCG@10 of the served ranking is measured on every judged query, the
traffic runs, search.training.train (what ``scripts/train.py --events DB --promote`` runs)
trains on the logged impressions, ``POST /admin/reload`` loads the new model, and NDCG@10
is measured again, separately on the queries that had traffic and on ``--holdout`` queries
that had none. ``--index-dir`` (the server's index): the new model's drift reference is the
log's queries replayed on it (search.training.log_reference), not the previous model's pages.
Exit codes: 0 ok, 2 bad input or a failure (one line on stderr).
The demo and the tests call ``run(SimOptions(...))``, the demo drift step ``simulate``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np


class SimError(Exception):
    """Bad input or a failed step: one line, exit 2."""


def check_loopback(url: str) -> str:
    """The URL without a trailing slash; refuses any host that is not a loopback address."""
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise SimError(f"--url must be http://HOST:PORT, got {url!r}")
    try:
        infos = socket.getaddrinfo(u.hostname, u.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise SimError(f"cannot resolve {u.hostname!r}: {e}") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise SimError(
                f"refusing non-loopback host {u.hostname!r} ({info[4][0]}): "
                "simulated traffic only goes to 127.0.0.1 / ::1"
            )
    return url.rstrip("/")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simulate_traffic", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="the API, e.g. http://127.0.0.1:8080")
    p.add_argument("--dataset", required=True, help="BEIR directory (queries + graded qrels)")
    p.add_argument("--sessions", type=int, default=2000, help="search sessions to simulate")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop after this long")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--k", type=int, default=10, help="hits shown per search")
    p.add_argument("--noise", type=float, default=0.1, help="click prob. of irrelevant hits")
    p.add_argument("--exam-eta", type=float, default=1.0, help="P(examine p) = 1/p**eta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=0.2, help="share of queries with no traffic")
    p.add_argument("--train", action="store_true", help="train from the log, reload, re-measure")
    p.add_argument("--events", help="the server's event store (with --train)")
    p.add_argument("--model-dir", help="the server's model registry (with --train)")
    p.add_argument("--admin-token", default="", help="bearer token for /admin/reload")
    p.add_argument("--index-dir", help="the server's index: replay the log for the drift reference")
    p.add_argument("--settings", help="settings file of the training (scripts/train.py --settings)")
    p.add_argument("--out", help="write the results here as JSON")
    return p


@dataclass(frozen=True)
class SimOptions:
    """The command's options (field = flag, same defaults)."""

    url: str
    dataset: str
    sessions: int = 2000
    max_seconds: float = 120.0
    concurrency: int = 4
    k: int = 10
    noise: float = 0.1
    exam_eta: float = 1.0
    seed: int = 0
    holdout: float = 0.2
    train: bool = False
    events: str | None = None
    model_dir: str | None = None
    admin_token: str = ""
    index_dir: str | None = None
    settings: str | None = None
    out: str | None = None


def load_judged(dataset: Path) -> tuple[list[tuple[str, str]], dict[str, dict[str, float]]]:
    from indexing.loaders import load_beir

    if not (dataset / "queries.jsonl").is_file():
        raise SimError(f"{dataset} is not a BEIR directory (no queries.jsonl)")
    ds = load_beir(dataset)
    qrels: dict[str, dict[str, float]] = {}
    for j in ds.qrels:
        qrels.setdefault(j.query_id, {})[j.doc_id] = float(j.grade)
    queries = [(q.id, q.text) for q in ds.judged_queries()]
    if not queries:
        raise SimError(f"{dataset}: no judged queries")
    return queries, qrels


async def _search(session: Any, url: str, q: str, qid: str, k: int) -> dict[str, Any]:
    async with session.post(f"{url}/search", json={"q": q, "k": k, "query_id": qid}) as r:
        body = await r.json()
        if r.status != 200:
            raise SimError(f"/search returned {r.status}: {body.get('error')}")
        return dict(body)


async def measure_ndcg(
    url: str, queries: Sequence[tuple[str, str]], qrels: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Mean NDCG@10 (ltr.metrics) of what the server ranks now, per query too."""
    import aiohttp

    from ltr.metrics import ndcg_at_k

    per: dict[str, float] = {}
    model = None
    async with aiohttp.ClientSession() as s:
        for qid, text in queries:
            body = await _search(s, url, text, qid, 10)
            model = body["model_version"]
            per[qid] = ndcg_at_k([h["id"] for h in body["hits"]], qrels.get(qid, {}), 10)
    vals = [v for v in per.values() if not math.isnan(v)]
    return {"ndcg@10": float(np.mean(vals)) if vals else math.nan, "model": model, "n": len(vals)}


async def simulate(
    url: str,
    queries: Sequence[tuple[str, str]],
    qrels: dict[str, dict[str, float]],
    sessions: int,
    max_seconds: float,
    concurrency: int,
    k: int,
    noise: float,
    exam_eta: float,
    seed: int,
) -> dict[str, Any]:
    """Run the users; returns counts (searches, clicks, errors) and the elapsed time."""
    import aiohttp

    from ltr.click_models import attractiveness_from_grades

    max_grade = max((g for r in qrels.values() for g in r.values()), default=1.0) or 1.0
    rng = np.random.default_rng(seed)
    plan = rng.integers(0, len(queries), size=sessions)
    draws = rng.random((sessions, k, 2))  # examination and click draws, fixed by the seed
    exam = 1.0 / np.arange(1, k + 1, dtype=np.float64) ** exam_eta
    stats = {"searches": 0, "clicks": 0, "events_posted": 0, "errors": 0}
    deadline = time.monotonic() + max_seconds
    next_i = 0
    t0 = time.perf_counter()

    async def user(s: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while next_i < sessions and time.monotonic() < deadline:
            i = next_i
            next_i += 1
            qid, text = queries[int(plan[i])]
            try:
                body = await _search(s, url, text, qid, k)
            except (SimError, aiohttp.ClientError):
                stats["errors"] += 1
                continue
            stats["searches"] += 1
            events = []
            for p, h in enumerate(body["hits"][:k]):
                a = attractiveness_from_grades(qrels[qid].get(h["id"], 0.0), max_grade, noise)
                if draws[i, p, 0] < exam[p] and draws[i, p, 1] < a:
                    events.append(
                        {"type": "click", "request_id": body["request_id"], "doc_id": h["id"]}
                    )
            if not events:
                continue
            stats["clicks"] += len(events)
            async with s.post(f"{url}/events", json=events) as r:
                if r.status == 202:
                    stats["events_posted"] += len(events)
                else:
                    stats["errors"] += 1

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(user(s) for _ in range(max(1, concurrency))))
    stats_out: dict[str, Any] = dict(stats)
    stats_out["seconds"] = round(time.perf_counter() - t0, 2)
    return stats_out


async def reload_model(url: str, token: str) -> dict[str, Any]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        body = await r.json()
        if r.status != 200:
            raise SimError(f"/admin/reload returned {r.status}: {body.get('error')}")
        return dict(body)


def train_from_events(
    events: str, model_dir: str, settings: str | None, index_dir: str | None = None
) -> dict[str, Any]:
    """search.training.train on the event store, promoted (what ``scripts/train.py --events DB
    --model-dir DIR --promote`` does), in this process; the result as ``--json`` writes it.
    ``index_dir``: the drift reference is the log's queries replayed there with the new model."""
    from indexing.errors import IndexingError
    from ltr.errors import LTRError
    from scripts.settings import SettingsError, load_settings
    from scripts.train import events_source
    from search.training import train

    try:
        s = load_settings(settings)
        source = events_source(s, Path(events), Path(index_dir) if index_dir else None)
        result = train(source, s.ltr, Path(model_dir), s.registry, promote=True, verbose=False)
    except (LTRError, IndexingError, SettingsError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SimError(f"training from events failed: error: {msg}") from None
    return result.as_dict()


async def run(args: SimOptions) -> dict[str, Any]:
    url = check_loopback(args.url)
    for name, value in (("sessions", args.sessions), ("concurrency", args.concurrency)):
        if value < 1:
            raise SimError(f"--{name} must be >= 1")
    if args.k < 1:
        raise SimError("--k must be >= 1")
    if not 0 <= args.holdout < 1 or not 0 <= args.noise <= 1 or args.max_seconds <= 0:
        raise SimError("--holdout in [0, 1), --noise in [0, 1], --max-seconds > 0")
    if args.train and not (args.events and args.model_dir and args.admin_token):
        raise SimError("--train needs --events, --model-dir and --admin-token")
    queries, qrels = load_judged(Path(args.dataset))
    rng = np.random.default_rng(args.seed + 1)
    order = rng.permutation(len(queries))
    n_hold = round(len(queries) * args.holdout) if args.train else 0
    held = [queries[i] for i in sorted(order[:n_hold])]
    traffic_q = [queries[i] for i in sorted(order[n_hold:])]
    out: dict[str, Any] = {"url": url, "queries": len(traffic_q), "holdout_queries": len(held)}
    if args.train:
        out["before"] = {
            "traffic": await measure_ndcg(url, traffic_q, qrels),
            "holdout": await measure_ndcg(url, held, qrels) if held else None,
        }
    out["traffic"] = await simulate(
        url,
        traffic_q,
        qrels,
        args.sessions,
        args.max_seconds,
        args.concurrency,
        args.k,
        args.noise,
        args.exam_eta,
        args.seed,
    )
    if args.train:
        assert args.events is not None and args.model_dir is not None  # checked above
        out["train"] = await asyncio.to_thread(
            train_from_events, args.events, args.model_dir, args.settings, args.index_dir
        )
        out["reload"] = await reload_model(url, args.admin_token)
        out["after"] = {
            "traffic": await measure_ndcg(url, traffic_q, qrels),
            "holdout": await measure_ndcg(url, held, qrels) if held else None,
        }
    return out


def report(out: dict[str, Any]) -> str:
    t = out["traffic"]
    lines = [
        f"traffic: {t['searches']} searches, {t['clicks']} clicks, {t['errors']} errors "
        f"in {t['seconds']} s ({out['queries']} queries)"
    ]
    if "after" in out:
        for part in ("traffic", "holdout"):
            b, a = out["before"][part], out["after"][part]
            if b is None:
                continue
            lines.append(
                f"NDCG@10 on {part} queries ({b['n']}): before {b['ndcg@10']:.4f} "
                f"(model {b['model']}) -> after {a['ndcg@10']:.4f} (model {a['model']})"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = SimOptions(**vars(_parser().parse_args(argv)))
    try:
        out = asyncio.run(run(args))
    except SimError as e:
        print(f"simulate_traffic: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # connection refused, unreadable dataset
        print(f"simulate_traffic: {e}", file=sys.stderr)
        return 2
    print(report(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
