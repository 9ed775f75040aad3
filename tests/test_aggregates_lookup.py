"""BehaviorAggregates.arrays (vectorized) == the per-candidate loop it replaced, bit for bit.

Behavior features are logged with every impression and replayed for training, so the
serve-time lookup must return exactly the values of the straightforward loop below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ltr.behavior import AGGREGATE_KEYS, decay_factor, query_key
from search.aggregates import BehaviorAggregates
from search.events import Event, Impression, SqliteEventStore

T0 = 1_700_000_000.0


def reference_arrays(
    agg: BehaviorAggregates, query: str, ids: Sequence[str], now: float
) -> dict[str, np.ndarray]:
    """The previous implementation of BehaviorAggregates.arrays (slow reference)."""
    q = query_key(query)
    n = len(ids)
    out = {k: np.full(n, np.nan, dtype=np.float64) for k in AGGREGATE_KEYS}
    rows = agg._rows
    for i, doc in enumerate(ids):
        for level, key in (("qd", ("qd", q, doc)), ("d", ("d", "", doc))):
            row = rows.get(key)
            if row is None:
                continue
            f = decay_factor(now - row[5], agg.half_life_s)
            out[f"{level}_impressions"][i] = row[0]
            out[f"{level}_clicks"][i] = row[1]
            out[f"{level}_examinations"][i] = row[2]
            out[f"{level}_decayed_clicks"][i] = row[3] * f
            out[f"{level}_decayed_impressions"][i] = row[4] * f
    return out


def test_arrays_equal_reference_loop(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "e.db")
    agg = BehaviorAggregates.attach(store, half_life_s=1234.5)
    rng = np.random.default_rng(3)
    docs = [f"d{i}" for i in range(60)]
    queries = ["wing flutter", "heat transfer", "Wing  Flutter", "slab"]
    names = ("f1", "f2")
    for r in range(120):
        shown = [str(d) for d in rng.choice(docs, size=10, replace=False)]
        ts = T0 + 37.0 * r
        imp = Impression(
            request_id=f"r{r}", ts=ts, query=queries[r % 4], query_id=None,
            model_version=None, featureset_id="fs", feature_names=names, offset=0,
            doc_ids=tuple(shown), positions=tuple(range(1, 11)),
            scores=rng.normal(size=10), features=rng.normal(size=(10, 2)).astype(np.float32),
        )  # fmt: skip
        store.add_impressions([imp])
        clicked = [d for d in shown if rng.random() < 0.3]
        if clicked:
            store.add_events([Event("click", f"r{r}", d, ts + 1) for d in clicked])
    assert len(agg) > 60
    ids = [*docs, "unknown", docs[0]]  # unknown id and a duplicate
    for q in [*queries, "never searched"]:
        for now in (T0, T0 + 37.0 * 60, T0 + 1e6):
            got = agg.arrays(q, ids, now=now)
            want = reference_arrays(agg, q, ids, now)
            assert set(got) == set(want)
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"{q!r} {k}")
    assert np.isfinite(agg.arrays("wing flutter", ids, now=T0)["qd_clicks"]).any()
    empty = agg.arrays("wing flutter", [], now=T0)
    assert all(v.shape == (0,) for v in empty.values())
    store.close()
