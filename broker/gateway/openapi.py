"""``GET /openapi.json``: an OpenAPI 3.1 document generated from the catalog.

One operation per service version with its own request and response schemas,
one publish and one subscribe operation per event type, and every
metaservice with its parameters and response shape. Every path parameter is
declared, and every parameter's schema is as strict as the gateway: an agency
that generates a client from this document gets one that calls the API as it
is (``tests/unit/test_openapi.py`` validates the document and generates a
client with openapi-python-client).
"""

from __future__ import annotations

from typing import Any

from broker import __version__
from broker.contracts.catalog import Catalog
from broker.gateway.middleware import PURPOSE_PATTERN, USER_ID_PATTERN
from broker.model.envelope import EXCHANGE_ID_PATTERN
from broker.model.events import POSITIONS_PATTERN

DAY_PATTERN = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
"""A day as ``/v1/stats?day=`` takes it (``format: date`` too: the month's own length is checked)."""
NAME_PATTERN = "^[a-z0-9_-]+$"
"""Provider and service names (``broker.contracts.catalog.valid_name``)."""
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
"""An RFC 3339 time with its offset (what ``?from=`` accepts)."""

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["code", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "exchange_id": {"type": ["string", "null"]},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}
"""The problem+json body (RFC 9457) of every error; the management API's document uses it too."""
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
_SCHEMAS: dict[str, Any] = {
    "Problem": PROBLEM_SCHEMA,
    "Agency": {
        "type": "object",
        "required": ["id", "code", "name"],
        "properties": {"id": {"type": "string"}, "code": {"type": "string"}, "name": {"type": "string"}},
    },
    "Agencies": {
        "type": "object",
        "required": ["agencies"],
        "properties": {"agencies": {"type": "array", "items": {"$ref": "#/components/schemas/Agency"}}},
    },
    "Service": {
        "type": "object",
        "required": ["provider", "service", "title", "mode", "timeout_ms", "request", "response", "examples"],
        "properties": {
            "provider": {"type": "string"},
            "service": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "version": {"type": "integer"},
            "mode": {"type": "string"},
            "timeout_ms": {"type": "integer"},
            "effects": {"type": "string", "enum": ["read", "write"]},
            "async_ttl_s": {"type": "integer"},
            "request": {"type": "object", "description": "JSON Schema of the request body"},
            "response": {"type": "object", "description": "JSON Schema of the answer"},
            "examples": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Services": {
        "type": "object",
        "required": ["services"],
        "properties": {"services": {"type": "array", "items": {"$ref": "#/components/schemas/Service"}}},
    },
    "Allowed": {
        "type": "object",
        "required": ["client", "services", "events"],
        "properties": {
            "client": {"type": "string"},
            "services": {"type": "array", "items": {"type": "string"}},
            "events": {
                "type": "object",
                "properties": {
                    "publish": {"type": "array", "items": {"type": "string"}},
                    "subscribe": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
    "Stats": {
        "type": "object",
        "required": ["day", "total", "by_outcome", "by_client", "by_provider", "by_service"],
        "properties": {
            "day": {"type": "string"},
            "total": {"type": "integer"},
            "by_outcome": _COUNTS,
            "by_client": _COUNTS,
            "by_provider": _COUNTS,
            "by_service": _COUNTS,
        },
    },
    "StoredExchange": {
        "type": "object",
        "required": ["exchange_id", "status", "mode", "provider", "service", "accepted_at"],
        "properties": {
            "exchange_id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "done", "failed", "expired"]},
            "http_status": {"type": ["integer", "null"]},
            "mode": {"type": "string", "enum": ["sync", "async"]},
            "provider": {"type": "string"},
            "service": {"type": "string"},
            "accepted_at": {"type": "string"},
            "expires_at": {"type": "string"},
            "finished_at": {"type": "string"},
            "result": {"description": "The provider's typed answer (status done)"},
            "problem": {"$ref": "#/components/schemas/Problem"},
            "callback": {"type": "object"},
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["exchange_id", "status"],
        "properties": {"exchange_id": {"type": "string"}, "status": {"type": "string", "enum": ["pending"]}},
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}
_PROBLEM_RESPONSE = {
    "description": "Error (problem+json, RFC 9457)",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}]


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "header", "description": description, "schema": {"type": "string", **schema}}


def _exchange_headers() -> list[dict[str, Any]]:
    return [
        _header(
            "X-Request-Id",
            "Your correlation label: echoed, carried, recorded; never a key",
            pattern="^[A-Za-z0-9._:-]{1,128}$",
        ),
        _header("X-NDXP-User-Id", "The officer or citizen acted for", pattern=USER_ID_PATTERN),
        _header("X-NDXP-Purpose", "Purpose of processing", pattern=PURPOSE_PATTERN),
        _header(
            "Idempotency-Key",
            "The same key and body within 24 h replay the first answer",
            pattern="^[!-~]{1,255}$",
        ),
        _header("Prefer", "respond-async: 202 + Location /v1/exchanges/{exchange_id}"),
    ]


def _operation(operation_id: str, summary: str, ok: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": ok, "default": _PROBLEM_RESPONSE},
        **more,
    }


def _metaservices() -> dict[str, Any]:
    name = {"type": "string", "pattern": NAME_PATTERN}
    return {
        "/v1/agencies": {
            "get": _operation("list_agencies", "Registered agencies", _json("Agencies", "Agencies"))
        },
        "/v1/services": {
            "get": _operation("list_services", "Service catalog", _json("Services", "Services"))
        },
        "/v1/services/{provider}/{service}": {
            "get": _operation(
                "get_service",
                "One service's definition",
                _json("The service", "Service"),
                parameters=[
                    {"name": "provider", "in": "path", "required": True, "schema": name},
                    {"name": "service", "in": "path", "required": True, "schema": name},
                ],
            )
        },
        "/v1/allowed": {
            "get": _operation(
                "list_allowed",
                "Services and events the caller may use",
                _json("What the caller may use", "Allowed"),
                security=_SECURITY,
            )
        },
        "/v1/stats": {
            "get": _operation(
                "get_stats",
                "Exact transaction counts of a day: the caller's own rows (an operator's: all)",
                _json("Counts", "Stats"),
                security=_SECURITY,
                parameters=[
                    {
                        "name": "day",
                        "in": "query",
                        "required": False,
                        "description": "YYYY-MM-DD in the counting time zone (default: today)",
                        "schema": {"type": "string", "format": "date", "pattern": DAY_PATTERN},
                    }
                ],
            )
        },
        "/v1/exchanges/{exchange_id}": {
            "get": _operation(
                "get_exchange",
                "A stored exchange's status and result (its caller only)",
                _json("The stored exchange", "StoredExchange"),
                security=_SECURITY,
                parameters=[
                    {
                        "name": "exchange_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": EXCHANGE_ID_PATTERN},
                    },
                    _header("Prefer", "wait=N: wait up to N seconds (at most 30) for the result"),
                ],
            )
        },
        "/v1/events": {
            "get": _operation(
                "list_event_types",
                "Event types: schema, key and examples",
                {"description": "Event types", "content": {"application/json": {}}},
            )
        },
        "/healthz": {"get": _operation("healthz", "Liveness", _json("Alive", "Health"))},
        "/readyz": {
            "get": _operation(
                "readyz", "Readiness (Kafka reachable, reply consumer assigned)", _json("Ready", "Health")
            )
        },
    }


def openapi_document(catalog: Catalog) -> dict[str, Any]:
    """OpenAPI 3.1 of the gateway serving ``catalog``."""
    paths: dict[str, Any] = _metaservices()
    for svc in catalog:
        examples = {f"example{i}": {"value": ex} for i, ex in enumerate(svc.examples)}
        paths[f"/v1/exchange/{svc.provider}/{svc.service}"] = {
            "post": {
                "operationId": f"{svc.provider}__{svc.service}".replace("-", "_"),
                "summary": svc.title,
                "description": svc.description,
                "tags": [svc.provider],
                "security": _SECURITY,
                "parameters": _exchange_headers(),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": svc.request.schema, "examples": examples}},
                },
                "responses": {
                    "200": {
                        "description": "The provider's typed answer",
                        "content": {"application/json": {"schema": svc.response.schema}},
                    },
                    "202": _json("Accepted (Prefer: respond-async); see the Location header", "Accepted"),
                    "default": _PROBLEM_RESPONSE,
                },
                "x-ndxp-timeout-ms": svc.timeout_ms,
                "x-ndxp-async-ttl-s": svc.async_ttl_s,
                "x-ndxp-version": svc.version,
            }
        }
    for ev in catalog.events.values():
        paths[f"/v1/events/{ev.provider}/{ev.type}"] = {
            "post": {
                "operationId": f"publish__{ev.provider}__{ev.type}".replace("-", "_"),
                "summary": f"Publish: {ev.title}",
                "description": ev.description,
                "tags": ["events", ev.provider],
                "security": _SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ev.schema.schema}},
                },
                "responses": {
                    "202": {
                        "description": "Durable in Kafka: {event_id}",
                        "content": {"application/json": {}},
                    },
                    "default": _PROBLEM_RESPONSE,
                },
            },
            "get": {
                "operationId": f"subscribe__{ev.provider}__{ev.type}".replace("-", "_"),
                "summary": f"Subscribe (Server-Sent Events): {ev.title}",
                "tags": ["events", ev.provider],
                "security": _SECURITY,
                "parameters": [
                    _header(
                        "Last-Event-ID",
                        "Resume after this event (the id of the last event seen)",
                        pattern=POSITIONS_PATTERN,
                    ),
                    {
                        "name": "from",
                        "in": "query",
                        "required": False,
                        "description": "Start at this time (RFC 3339, with offset) without Last-Event-ID",
                        "schema": {"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN},
                    },
                ],
                "responses": {
                    "200": {"description": "A stream of events", "content": {"text/event-stream": {}}},
                    "default": _PROBLEM_RESPONSE,
                },
                "x-ndxp-key": ev.key,
            },
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "NDXP data exchange gateway", "version": __version__},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
