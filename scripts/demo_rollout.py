"""Demo step: a retrained model goes through shadow -> interleave -> the gate, and a
deliberately bad one (inverted scores) is rejected while serving only its share.

Against a running API with an admin token, an event store and a model registry
(scripts/serve.py), with simulated users (scripts/simulate_traffic.simulate: position-based
examination, clicks from graded judgments):

1. ``shadow``: the candidate scores every request off the response path; its rank
   agreement with production, its latency and non-finite/outlier score counts are printed;
2. ``interleave``: team-draft pages; the gate (search.rollout) promotes or rejects from
   the candidate's wins and losses, or the phase ends undecided after ``max_seconds``;
3. ``bad model``: production's trees with their leaf values negated (``invert_model``),
   interleaved into half of the pages: rejected, with the share it served.

``invert_model`` is also what tests/test_experiments*.py use as the known-worse ranker.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ltr.registry import ModelRegistry
from search.experiment_store import LIVE


def invert_model(model_dir: str | Path, version: str | None = None) -> str:
    """Save a new registry version whose trees score the opposite of ``version``'s
    (default: the promoted one): every leaf value negated, no base margin. Not promoted."""
    import xgboost as xgb

    from ltr.train import TrainedModel

    reg = ModelRegistry(model_dir)
    name = version or reg.promoted()
    assert name is not None, "no promoted model to invert"
    manifest = reg.manifest(name)
    booster = xgb.Booster()
    booster.load_model(str(reg.path(name) / manifest.model_file))
    raw = json.loads(booster.save_raw("json"))
    for tree in raw["learner"]["gradient_booster"]["model"]["trees"]:
        left = tree["left_children"]
        for key in ("base_weights", "split_conditions"):
            vals = tree[key]
            tree[key] = [-v if left[i] == -1 else v for i, v in enumerate(vals)]
    inverted = xgb.Booster()
    inverted.load_model(bytearray(json.dumps(raw).encode()))
    trained = TrainedModel(
        booster=inverted,
        feature_names=manifest.feature_names,
        params=dict(manifest.params),
        best_iteration=manifest.best_iteration,
        best_score=float("nan"),
        num_rounds_run=manifest.best_iteration + 1,
        uses_base_margin=False,
    )
    return reg.save(
        trained,
        featureset_id=manifest.featureset_id,
        label_source=manifest.label_source,
        extra={"inverted_from": name},
    )


async def admin(url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    """One admin call; raises RuntimeError with the API's error on a non-2xx answer."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{url}{path}", json=body, headers=headers) as r,
    ):
        got = await r.json()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {got.get('error', got)}")
        return got


async def experiment(url: str, token: str, eid: str) -> dict[str, Any]:
    got = await admin(url, token, "GET", f"/admin/experiments/{eid}")
    return dict(got["experiments"][0])


async def run_phase(
    url: str,
    token: str,
    spec: Mapping[str, Any],
    traffic: Callable[[int], Any],
    *,
    max_seconds: float,
    batch: int = 100,
    until_decided: bool = True,
) -> dict[str, Any]:
    """Start an experiment, drive ``traffic(batch)`` until the gate decides and, after a
    promotion, its guardrail window ends (or ``max_seconds``); stop it if it is still live
    (a live experiment blocks the next one); the experiment's report and searches."""
    exp = await admin(url, token, "POST", "/admin/experiments", dict(spec))
    eid = exp["experiment_id"]
    deadline = time.monotonic() + max_seconds
    searches = 0
    while time.monotonic() < deadline:
        stats = await traffic(batch)
        searches += int(stats["searches"])
        await asyncio.sleep(float(spec.get("gate", {}).get("every_s", 2.0)) + 0.1)
        if until_decided and (await experiment(url, token, eid))["status"] not in LIVE:
            break
    got = await experiment(url, token, eid)
    if got["status"] in LIVE:
        await admin(url, token, "POST", f"/admin/experiments/{eid}/stop")
        got = await experiment(url, token, eid)
    got["searches"] = searches
    return got


def describe(rep: Mapping[str, Any]) -> list[str]:
    """Printable lines: arms, outcomes, shadow agreement and the gate's decisions."""
    lines = [f"experiment {rep['experiment_id']}: {rep['mode']} {rep['production']} vs "
             f"{rep['candidate']} (share {rep['share']:g}) -> {rep['status']}"]  # fmt: skip
    for arm, a in sorted(rep["arms"].items()):
        lines.append(
            f"  arm {arm:<16} {a['requests']:5.0f} requests  "
            f"zero-result {a['zero_result_rate']:.3f}  errors {a['error_rate']:.3f}  "
            f"p50 <= {a['p50_ms']:g} ms  p99 <= {a['p99_ms']:g} ms"
        )
    if "shadow" in rep:
        s = rep["shadow"]
        lines.append(
            f"  shadow: {s['requests']} scored off-path, Kendall tau {s['kendall_tau_mean']:.3f}, "
            f"top-k overlap {s['overlap_mean']:.3f}, candidate p50 {s['candidate_p50_ms']:.2f} ms"
            f" / p99 {s['candidate_p99_ms']:.2f} ms, non-finite {s['nonfinite_scores']}, "
            f"outliers {s['outlier_scores']}"
        )
    if "interleave" in rep:
        i = rep["interleave"]
        lines.append(
            f"  interleaved queries: candidate won {i['wins']}, lost {i['losses']}, "
            f"tied {i['ties']}"
        )
    for row in rep["log"]:
        if row["action"] != "continue":
            lines.append(f"  log: {row['action']}: {row['reason']}")
    return lines


async def demo_rollout(
    url: str,
    token: str,
    dataset: Path,
    model_dir: Path,
    candidate: str,
    *,
    seed: int = 7,
    print_: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The three phases above against a running server; their reports."""
    from scripts.simulate_traffic import load_judged, simulate

    queries, qrels = load_judged(dataset)
    calls = [0]

    async def traffic(n: int) -> Any:
        calls[0] += 1
        return await simulate(url, queries, qrels, n, 60.0, 4, 10, 0.1, 1.0, seed + calls[0])

    gate = {"every_s": 0.5, "min_queries": 200}
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    out["shadow"] = await run_phase(
        url, token, {"candidate": candidate, "mode": "shadow", "share": 1.0, "gate": gate},
        traffic, max_seconds=3.0, until_decided=False,
    )  # fmt: skip
    print_("\n".join(describe(out["shadow"])))
    # a promotion is watched (guardrails on every request) before it is final: seconds here
    watch = {"watch_s": 5.0}
    out["interleave"] = await run_phase(
        url, token,
        {"candidate": candidate, "mode": "interleave", "gate": gate, "guardrails": watch},
        traffic, max_seconds=30.0,
    )  # fmt: skip
    print_("\n".join(describe(out["interleave"])))
    production = ModelRegistry(model_dir).promoted()
    bad = await asyncio.to_thread(invert_model, model_dir, production)
    print_(f"\nbad model {bad}: the trees of {production} with every leaf negated")
    rep = await run_phase(
        url, token, {"candidate": bad, "mode": "interleave", "share": 0.5, "gate": gate},
        traffic, max_seconds=20.0,
    )  # fmt: skip
    out["bad"] = rep
    print_("\n".join(describe(rep)))
    served = rep["arms"].get("interleave", {}).get("requests", 0)
    total = served + rep["arms"].get("production", {}).get("requests", 0)
    print_(
        f"  the bad model took part in {served:.0f} of {total:.0f} searches during its "
        f"experiment ({served / max(1, total):.1%}; its share is 50%), placing about half "
        "of the hits of those pages"
    )
    print_(f"rollout phase took {time.perf_counter() - t0:.0f} s")
    return out
