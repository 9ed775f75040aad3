"""The search response encoder (orjson when installed) gives the same JSON as json.dumps."""

from __future__ import annotations

import json

import numpy as np

from search.api import _json_response


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
    r = _json_response(body)
    assert r.content_type == "application/json" and r.charset == "utf-8"
    assert r.body is not None
    assert json.loads(bytes(r.body)) == json.loads(json.dumps(body)) == body


def test_unsupported_types_fall_back_to_json_dumps() -> None:
    body = {"x": 1.5, "n": {1: "int key"}}  # orjson refuses non-str keys; json converts
    r = _json_response(body)
    assert r.body is not None
    assert json.loads(bytes(r.body)) == {"x": 1.5, "n": {"1": "int key"}}
    assert json.loads(bytes(_json_response({"s": float(np.float64(2.5))}).body)) == {"s": 2.5}  # type: ignore[arg-type]
