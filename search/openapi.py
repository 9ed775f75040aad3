"""The search API's OpenAPI 3.1 description, served by ``GET /openapi.json``.

Written here as data, next to the handlers it describes (search.api) and the request
parsing it mirrors (search.http): every path, parameter, body, response and error shape.
Limits that come from settings (``k``, ``offset``, the query length, the events per batch)
are filled in from the server's ``ApiConfig``, so the document is the contract of the
server that serves it (the bodies and the Error shape: search/openapi_schemas.py).
tests/test_openapi.py validates it and checks real responses of
every handler against it; tests/test_openapi_fuzz.py (slow) fuzzes a real server from it.
"""

from __future__ import annotations

from typing import Any

from search.config import ApiConfig
from search.openapi_schemas import ref, schemas
from search.version import package_version
from search.workbench import ASSETS


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


_ERROR_TEXT = {
    400: "Bad input: malformed JSON, an unknown field, an invalid parameter or text.",
    401: "No or malformed Authorization header.",
    403: "Wrong admin token, or the admin API is disabled.",
    404: "Not found (no model directory, an unknown model version).",
    405: "Method not allowed on this path.",
    408: "The body did not arrive within api.body_timeout_s.",
    409: "The model is for another featureset; the serving model stays.",
    413: "The body is larger than api.max_body_bytes.",
    414: "The request line is longer than api.max_request_line_bytes.",
    415: "The body is not application/json.",
    422: "Refused: an event names an unknown request id, or the model files are corrupt.",
    431: "A header name or value is longer than api.max_header_bytes.",
    503: "Not ready: no index, the backend or event store unavailable, workers unconfirmed.",
}
# what any request can get before its handler runs (search.http: check_head); a method or
# path not listed here gets 405 / 404 with the same Error shape (components E405, E404)
_EDGE = (414, 431)
_BODY = (408, 413, 415)


def _search_params(config: ApiConfig) -> list[dict[str, Any]]:
    def q(name: str, schema: dict[str, Any], description: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "in": "query", "schema": schema, "description": description, **kw}

    return [
        q(
            "q",
            {"type": "string", "minLength": 1, "maxLength": config.max_query_chars},
            "The query text.",
            required=True,
        ),
        q("k", {"type": "integer", "minimum": 1, "maximum": config.max_k}, "Page size."),
        q(
            "offset",
            {"type": "integer", "minimum": 0, "maximum": config.max_offset},
            "Hits to skip (page 2 of k=10: offset=10).",
        ),
        q("category", {"type": "string", "maxLength": 200}, "Only this category."),
        q("explain", {"type": "boolean"}, "SHAP contributions per hit (first hits only)."),
        q("query_id", {"type": "string", "maxLength": 200}, "Logged with the impression."),
        q("debug", {"type": "boolean"}, "The workbench's searches: the page is not logged."),
        q(
            "model",
            {"type": "string", "maxLength": 64},
            "rrf or a registry version: that ranking instead of the serving model's (not logged).",
        ),
    ]


def build_spec(config: ApiConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server with ``config``."""
    search_responses = {
        "200": _json(ref("SearchPage"), "One page of ranked hits."),
        **_errors(400, 404, *_EDGE, 409, 422, 503),
    }
    admin: list[dict[str, list[str]]] = [{"bearer": []}]
    _experiments = {
        "type": "object",
        "required": ["experiments"],
        "additionalProperties": False,
        "properties": {"experiments": {"type": "array", "items": ref("Experiment")}},
    }
    _eid = {"name": "experiment_id", "in": "path", "required": True, "schema": {"type": "string"}}
    _html = {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ltrsearch",
            "version": package_version(),
            "description": (
                "Hybrid BM25 + dense retrieval reranked by a LambdaMART model that learns "
                "from clicks. Every refusal is a 4xx with the Error shape; a 5xx is a bug "
                "or an unavailable dependency (503)."
            ),
        },
        "paths": {
            "/search": {
                "get": {
                    "operationId": "searchGet",
                    "summary": "Search (query string; filters only in POST).",
                    "parameters": _search_params(config),
                    "responses": search_responses,
                },
                "post": {
                    "operationId": "searchPost",
                    "summary": "Search with a JSON body (filters on numeric attributes).",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("SearchRequest")}},
                    },
                    "responses": {**search_responses, **_errors(*_BODY)},
                },
            },
            "/events": {
                "post": {
                    "operationId": "postEvents",
                    "summary": "Store a batch of events (202 after the SQLite commit).",
                    "parameters": [
                        {
                            "name": "debug",
                            "in": "query",
                            "schema": {"type": "boolean"},
                            "description": "The workbench's clicks: validated, not stored.",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("EventBatch")}},
                    },
                    "responses": {
                        "202": _json(
                            {
                                "type": "object",
                                "required": ["accepted"],
                                "additionalProperties": False,
                                "properties": {
                                    "accepted": {"type": "integer", "minimum": 0},
                                    "debug": {"type": "boolean", "const": True},
                                },
                            },
                            "Stored durably.",
                        ),
                        **_errors(400, *_EDGE, *_BODY, 422, 503),
                    },
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and the package version.",
                    "responses": {"200": _json(ref("Health"), "Alive."), **_errors(*_EDGE)},
                }
            },
            "/ready": {
                "get": {
                    "operationId": "ready",
                    "summary": "200 while searches are served as configured, else 503.",
                    "responses": {
                        "200": _json(ref("Ready"), "Ready (degraded lists reduced service)."),
                        "503": _json(ref("Ready"), "Not ready (problems says why)."),
                        **_errors(*_EDGE),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus text exposition (every worker's series).",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(*_EDGE),
                    },
                }
            },
            "/model": {
                "get": {
                    "operationId": "model",
                    "summary": "The serving model (or RRF ranking) and index.",
                    "responses": {"200": _json(ref("Model"), "The model."), **_errors(*_EDGE)},
                }
            },
            "/admin/reload": {
                "post": {
                    "operationId": "adminReload",
                    "summary": "Serve the promoted (or a named) model; pick up a new index.",
                    "security": admin,
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": ref("ReloadRequest")}},
                    },
                    "responses": {
                        "200": _json(ref("Reload"), "Serving the model (on every worker)."),
                        **_errors(400, 401, 403, 404, *_EDGE, *_BODY, 409, 422, 503),
                    },
                }
            },
            "/model/card": {
                "get": {
                    "operationId": "modelCard",
                    "summary": "The serving (or a named) model's card, the registry's versions.",
                    "parameters": [
                        {"name": "version", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _json(ref("ModelCard"), "The card."),
                        **_errors(404, *_EDGE, 409, 422),
                    },
                }
            },
            "/reports": {
                "get": {
                    "operationId": "reports",
                    "summary": "The newest drift reports with links to their files.",
                    "responses": {"200": _json(ref("Reports"), "Listed."), **_errors(*_EDGE)},
                }
            },
            "/reports/{report}/{file}": {
                "get": {
                    "operationId": "reportFile",
                    "summary": "One file of a listed drift report (read only, sandboxed).",
                    "parameters": [
                        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                        for n in ("report", "file")
                    ],
                    "responses": {
                        "200": {
                            "description": "The report's HTML or JSON.",
                            "content": {
                                "text/html": {"schema": {"type": "string"}},
                                "application/json": {"schema": {}},
                            },
                        },
                        **_errors(404, *_EDGE),
                    },
                }
            },
            **{
                path: {
                    "get": {
                        "operationId": op,
                        "summary": "The workbench page.",
                        "responses": {"200": _html, **_errors(*_EDGE)},
                    }
                }
                for path, op in (("/", "workbench"), ("/ui", "workbenchUi"))
            },
            "/ui/{name}": {
                "get": {
                    "operationId": "workbenchAsset",
                    "summary": "A file of the workbench page.",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "One of: " + ", ".join(ASSETS),
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The file.",
                            "content": {
                                t: {"schema": {"type": "string"}} for t in set(ASSETS.values())
                            },
                        },
                        **_errors(404, *_EDGE),
                    },
                }
            },
            "/admin/experiments": {
                "get": {
                    "operationId": "listExperiments",
                    "summary": "Recent experiments with their numbers and decision log.",
                    "security": admin,
                    "responses": {
                        "200": _json(_experiments, "The experiments."),
                        **_errors(401, 403, *_EDGE, 503),
                    },
                },
                "post": {
                    "operationId": "startExperiment",
                    "summary": "Start a shadow, interleave or split experiment on every worker.",
                    "security": admin,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("StartExperiment")}},
                    },
                    "responses": {
                        "201": _json(ref("Experiment"), "Started."),
                        **_errors(400, 401, 403, 404, *_EDGE, *_BODY, 409, 503),
                    },
                },
            },
            "/admin/experiments/{experiment_id}": {
                "get": {
                    "operationId": "getExperiment",
                    "summary": "One experiment with its numbers and decision log.",
                    "security": admin,
                    "parameters": [_eid],
                    "responses": {
                        "200": _json(_experiments, "The experiment."),
                        **_errors(401, 403, 404, *_EDGE, 503),
                    },
                }
            },
            "/admin/experiments/{experiment_id}/stop": {
                "post": {
                    "operationId": "stopExperiment",
                    "summary": "Stop a live experiment: production serves everyone again.",
                    "security": admin,
                    "parameters": [_eid],
                    "responses": {
                        "200": _json(ref("Experiment"), "Stopped."),
                        **_errors(401, 403, 404, *_EDGE, 409, 503),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {
                        "200": _json({"type": "object"}, "OpenAPI 3.1."),
                        **_errors(*_EDGE),
                    },
                }
            },
        },
        "components": {
            "schemas": schemas(config),
            "responses": {
                f"E{s}": _json(ref("Error"), text) for s, text in sorted(_ERROR_TEXT.items())
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token (api.admin_token).",
                }
            },
        },
    }
