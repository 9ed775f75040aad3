"""The search response encoder (orjson when installed) gives the same JSON as json.dumps."""

from __future__ import annotations

import json

import numpy as np

from search.http import json_response


def test_search_body_encodes_like_json_dumps() -> None:
    body = {
        "request_id": "r1",
        "query": "wing flutter …",
        "model_version": None,
        "hits": [
            {"id": "d1", "score": 1.2345678901234567, "position": 1, "fields": {"body": "é…"}},
            {"id": "d2", "score": None, "position": 2, "fields": {}, "retrievers": {}},
        ],
        "degraded": [],
        "took_ms": 12.345,
        "candidates": 150,
        "timings_ms": {"bm25": 0.5, "total": 12.345},
    }
    r = json_response(body)
    assert r.content_type == "application/json" and r.charset == "utf-8"
    assert r.body is not None
    assert json.loads(bytes(r.body)) == json.loads(json.dumps(body)) == body


def test_unsupported_types_fall_back_to_json_dumps() -> None:
    body = {"x": 1.5, "n": {1: "int key"}}  # orjson refuses non-str keys; json converts
    r = json_response(body)
    assert r.body is not None
    assert json.loads(bytes(r.body)) == {"x": 1.5, "n": {"1": "int key"}}
    assert json.loads(bytes(json_response({"s": float(np.float64(2.5))}).body)) == {"s": 2.5}  # type: ignore[arg-type]


def test_request_ids_are_unique_hex_and_time_ordered() -> None:
    """32 hex chars like uuid4().hex, but ordered by time (the event store appends)."""
    import re
    import time

    from search.http import new_request_id

    first = [new_request_id() for _ in range(1000)]
    time.sleep(0.005)
    later = new_request_id()
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in [*first, later])
    assert len(set(first)) == len(first)
    assert later > max(first)  # a later millisecond sorts after every earlier id
    assert sorted(first, key=lambda r: r[:12]) == first  # the time prefix never goes back
