"""The component schemas of the OpenAPI description (search.openapi): every request and
response body and the Error shape with every error code, as JSON Schema 2020-12.

Kept apart from the paths so each file reads in one sitting; the limits come from the
server's ``ApiConfig``.
"""

from __future__ import annotations

from typing import Any

from ltr.behavior import AGGREGATE_KEYS
from ltr.types import RETRIEVERS
from search.config import ApiConfig
from search.events import EVENT_TYPES
from search.experiment_store import GATE_DEFAULTS, GUARDRAIL_DEFAULTS, MODES

# every ``error.code`` a response can carry: search.errors' classes, the ltr/indexing
# errors search.http maps, and aiohttp's own refusals (tests/test_openapi.py checks that
# every SearchError subclass is listed)
ERROR_CODES: tuple[str, ...] = (
    "backend_unavailable",
    "bad_request",
    "conflict",
    "corrupt_model",
    "event_store_unavailable",
    "featureset_mismatch",
    "forbidden",
    "header_too_large",
    "http_error",
    "impression_rejected",
    "index_not_found",
    "internal_error",
    "invalid_event",
    "invalid_parameter",
    "invalid_query",
    "invalid_unicode",
    "malformed_json",
    "method_not_allowed",
    "model_not_found",
    "not_found",
    "not_ready",
    "payload_too_large",
    "request_timeout",
    "unauthorized",
    "unknown_field",
    "unknown_name",
    "unknown_request_id",
    "unsupported_media_type",
    "uri_too_long",
    "workers_not_confirmed",
)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def schemas(config: ApiConfig) -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"], "maxLength": 200}
    num_or_null = {"type": ["number", "null"]}
    retriever = {
        "type": "object",
        "required": ["score", "rank"],
        "properties": {"score": num_or_null, "rank": {"type": ["integer", "null"], "minimum": 1}},
        "additionalProperties": False,
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "request_id"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "enum": list(ERROR_CODES)},
                        "message": {"type": "string"},
                    },
                },
                "request_id": {"type": "string"},
            },
        },
        "Range": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {"gte": {"type": "number"}, "lte": {"type": "number"}},
        },
        "SearchRequest": {
            "type": "object",
            "required": ["q"],
            "additionalProperties": False,
            "properties": {
                "q": {"type": "string", "minLength": 1, "maxLength": config.max_query_chars},
                "k": {"type": "integer", "minimum": 1, "maximum": config.max_k, "default": 10},
                "offset": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": config.max_offset,
                    "default": 0,
                },
                "category": nullable_str,
                "filters": {
                    "type": "object",
                    "description": "Numeric attribute -> range; the attributes of the index.",
                    "additionalProperties": ref("Range"),
                },
                "explain": {"type": "boolean", "default": False},
                "query_id": nullable_str,
                "debug": {"type": "boolean", "default": False},
                "model": {"type": ["string", "null"], "maxLength": 64},
                "client_id": nullable_str,
            },
        },
        "Hit": {
            "type": "object",
            "required": ["id", "score", "position", "fields", "retrievers"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string"},
                "score": num_or_null,
                "position": {"type": "integer", "minimum": 1},
                "fields": {
                    "type": "object",
                    "description": "title, body, category, extra text fields, numeric attrs.",
                    "additionalProperties": {"type": ["string", "number", "null"]},
                },
                "retrievers": {
                    "type": "object",
                    "required": list(RETRIEVERS),
                    "additionalProperties": False,
                    "properties": {r: retriever for r in RETRIEVERS},
                },
                "contributions": {
                    "type": "object",
                    "description": "explain=true: SHAP contribution per feature, plus _bias.",
                    "additionalProperties": {"type": "number"},
                },
                "fusion": {
                    "type": "object",
                    "description": "explain=true: the RRF score and rank among all candidates.",
                    "required": ["name", "score", "rank"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "score": num_or_null,
                        "rank": {"type": "integer", "minimum": 1},
                    },
                },
                "behavior": {
                    "type": "object",
                    "description": "explain=true with an event store: the click aggregates "
                    "of the hit, for this query (qd_*) and overall (d_*); null: no history.",
                    "additionalProperties": False,
                    "properties": {k: num_or_null for k in AGGREGATE_KEYS},
                },
            },
        },
        "SearchPage": {
            "type": "object",
            "required": [
                "request_id",
                "query",
                "model_version",
                "hits",
                "degraded",
                "took_ms",
                "candidates",
                "timings_ms",
            ],
            "additionalProperties": False,
            "properties": {
                "request_id": {"type": "string"},
                "query": {"type": "string"},
                "model_version": {"type": ["string", "null"]},
                "hits": {"type": "array", "items": ref("Hit")},
                "degraded": {"type": "array", "items": {"type": "string"}},
                "took_ms": {"type": "number", "minimum": 0},
                "candidates": {"type": "integer", "minimum": 0},
                "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
                "explain": {"type": "string", "description": "Why hits lack contributions."},
                "experiment": {
                    "type": "object",
                    "description": "While an experiment is live: its id, this page's arm and "
                    "(interleaved pages) the team per position (0 production, 1 candidate).",
                    "required": ["experiment_id", "arm"],
                    "additionalProperties": False,
                    "properties": {
                        "experiment_id": {"type": "string"},
                        "arm": {"type": "string"},
                        "teams": {"type": "array", "items": {"type": "integer", "enum": [0, 1]}},
                    },
                },
            },
        },
        "Event": {
            "type": "object",
            "required": ["type", "request_id", "doc_id"],
            "additionalProperties": False,
            "properties": {
                "type": {"type": "string", "enum": list(EVENT_TYPES)},
                "request_id": {"type": "string", "minLength": 1, "maxLength": 200},
                "doc_id": {"type": "string", "minLength": 1, "maxLength": 200},
                "ts": {"type": "number", "description": "Unix seconds (default: now)."},
                "client_id": nullable_str,
            },
        },
        "EventBatch": {
            "oneOf": [
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": config.max_events_per_batch,
                    "items": ref("Event"),
                },
                {
                    "type": "object",
                    "required": ["events"],
                    "additionalProperties": False,
                    "properties": {
                        "events": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": config.max_events_per_batch,
                            "items": ref("Event"),
                        }
                    },
                },
            ]
        },
        "ModelFallback": {
            "type": ["object", "null"],
            "required": ["refused", "reason", "serving"],
            "properties": {
                "refused": {"type": ["string", "null"]},
                "reason": {"type": "string"},
                "serving": {"type": ["string", "null"]},
            },
        },
        "Ready": {
            "type": "object",
            "required": ["ready", "index_version", "model_version", "degraded", "model_fallback"],
            "additionalProperties": False,
            "properties": {
                "ready": {"type": "boolean"},
                "index_version": {"type": ["string", "null"]},
                "model_version": {"type": ["string", "null"]},
                "problems": {"type": "array", "items": {"type": "string"}},
                "degraded": {"type": "object", "additionalProperties": {"type": "string"}},
                "model_fallback": ref("ModelFallback"),
            },
        },
        "Model": {
            "type": "object",
            "required": ["model_version", "ranking", "index_version", "model_fallback"],
            "properties": {
                "model_version": {"type": ["string", "null"]},
                "ranking": {"type": "string", "enum": ["ltr", "rrf"]},
                "featureset_id": {"type": "string"},
                "feature_names": {"type": "array", "items": {"type": "string"}},
                "base_margin": {"type": ["object", "null"]},
                "metrics": {"type": "object", "additionalProperties": num_or_null},
                "created_at": {"type": ["string", "number", "null"]},
                "label_source": {"type": ["string", "null"]},
                "index_version": {"type": ["string", "null"]},
                "model_fallback": ref("ModelFallback"),
                "experiment": {
                    "anyOf": [ref("Experiment"), {"type": "null"}],
                    "description": "The live (else the latest) experiment, its last decision.",
                },
            },
            "additionalProperties": False,
        },
        "Experiment": {
            "type": "object",
            "required": ["experiment_id", "mode", "production", "candidate", "share", "status"],
            "properties": {
                "experiment_id": {"type": "string"},
                "mode": {"type": "string", "enum": list(MODES)},
                "production": {"type": ["string", "null"]},
                "candidate": {"type": "string"},
                "share": {"type": "number"},
                "status": {"type": "string"},
                "gate": {"type": "object", "additionalProperties": {"type": "number"}},
                "guardrails": {"type": "object", "additionalProperties": {"type": "number"}},
                "created_at": {"type": "number"},
                "watch_until": {"type": ["number", "null"]},
                "last_decision": {"type": ["object", "null"]},
                "arms": {"type": "object"},
                "interleave": {"type": "object"},
                "shadow": {"type": "object"},
                "log": {"type": "array", "items": {"type": "object"}},
            },
        },
        "StartExperiment": {
            "type": "object",
            "required": ["candidate", "mode"],
            "additionalProperties": False,
            "properties": {
                "candidate": {"type": "string", "minLength": 1},
                "mode": {"type": "string", "enum": list(MODES)},
                "share": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 1,
                    "description": "split: (0.01, 0.5]; shadow / interleave: (0, 1].",
                },
                "gate": {
                    "type": ["object", "null"],
                    "additionalProperties": False,
                    "properties": {k: {"type": "number", "minimum": 0} for k in GATE_DEFAULTS},
                },
                "guardrails": {
                    "type": ["object", "null"],
                    "additionalProperties": False,
                    "properties": {k: {"type": "number", "minimum": 0} for k in GUARDRAIL_DEFAULTS},
                },
            },
        },
        "ReloadRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"version": nullable_str},
        },
        "Reload": {
            "type": "object",
            "required": [
                "model_version",
                "previous_model_version",
                "featureset_id",
                "index_version",
                "index_reloaded",
            ],
            "additionalProperties": False,
            "properties": {
                "model_version": {"type": "string"},
                "previous_model_version": {"type": ["string", "null"]},
                "featureset_id": {"type": "string"},
                "index_version": {"type": ["string", "null"]},
                "index_reloaded": {"type": "boolean"},
                "workers": {"type": "integer", "minimum": 1},
            },
        },
        "ModelCard": {
            "type": "object",
            "description": "The model's manifest (less file names and checksum) with "
            "feature_importance (share of total gain), or ranking rrf without a model.",
            "required": [
                "serving_version",
                "promoted_version",
                "versions",
                "index_version",
                "attributes",
                "ranking",
            ],
            "properties": {
                "serving_version": {"type": ["string", "null"]},
                "promoted_version": {"type": ["string", "null"]},
                "versions": {"type": "array", "items": {"type": "string"}},
                "index_version": {"type": ["string", "null"]},
                "attributes": {"type": "array", "items": {"type": "string"}},
                "ranking": {"type": "string", "enum": ["ltr", "rrf"]},
                "version": {"type": ["string", "null"]},
                "feature_importance": {
                    "type": "object",
                    "additionalProperties": {"type": "number"},
                },
                "metrics": {"type": "object", "additionalProperties": num_or_null},
            },
        },
        "Reports": {
            "type": "object",
            "required": ["reports"],
            "additionalProperties": False,
            "properties": {
                "reports": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "files", "summary"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "files": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "summary": {"type": ["object", "null"]},
                        },
                    },
                }
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "uptime_s", "version"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "const": "ok"},
                "uptime_s": {"type": "number", "minimum": 0},
                "version": {"type": "string", "description": "The ltrsearch package version."},
            },
        },
    }
