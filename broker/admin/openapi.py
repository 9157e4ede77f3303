"""``GET /admin/openapi.json``: the management API as OpenAPI 3.1."""

from __future__ import annotations

from typing import Any

from broker.gateway.openapi import PROBLEM_SCHEMA

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_ERRORS = {
    "400": "invalid_request: the document is wrong (the detail names the field)",
    "401": "unauthorized",
    "403": "access_denied: another agency's documents (logged as refused)",
    "404": "not_found",
    "409": "conflict: a stale If-Match, or a state that forbids it",
    "503": "unavailable: Kafka cannot take the change (nothing changed)",
}
_NAME = {"type": "string", "pattern": "^[a-z0-9_-]+$"}
_AGENCY = {
    "type": "object",
    "required": ["id"],
    "properties": {
        "id": _NAME,
        "code": {"type": "string"},
        "name": {"type": "string"},
        "roles": {"type": "array", "items": {"enum": ["operator", "tracker"]}},
        "rate_limit": {"type": "number", "exclusiveMinimum": 0},
        "max_in_flight": {"type": "integer", "minimum": 1},
        "callback": {
            "type": "object",
            "properties": {"url": {"type": "string"}, "secret": {"type": "string", "minLength": 16}},
        },
        "certs_sha256": {"type": "array", "items": {"type": "string"}},
        "cert_required": {"type": "boolean"},
        "max_open_stored": {"type": "integer", "minimum": 1},
        "own_adapter": {
            "type": "boolean",
            "description": "runs its own adapter (set when its Kafka user "
            "is issued): the platform's generic adapter leaves its bound services to it",
        },
    },
}
_ACCESS = {
    "type": "object",
    "required": ["client", "provider", "purpose"],
    "properties": {
        "client": _NAME,
        "provider": _NAME,
        "service": {"type": "string"},
        "event": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "purpose": {"type": "string", "maxLength": 500},
    },
}
_OPS: list[tuple[str, str, str, str, dict[str, Any] | None]] = [
    ("get", "/admin/v1/agencies", "list_agencies", "Agencies (an operator sees all, an agency itself)", None),
    ("post", "/admin/v1/agencies", "create_agency", "Add an agency (operator)", _AGENCY),
    ("get", "/admin/v1/agencies/{id}", "get_agency", "One agency, with its key ids (ETag)", None),
    ("patch", "/admin/v1/agencies/{id}", "patch_agency", "Change fields (null removes; If-Match)", _AGENCY),
    ("delete", "/admin/v1/agencies/{id}", "delete_agency", "Remove an agency, its keys and rights", None),
    ("post", "/admin/v1/agencies/{id}/keys", "issue_key", "Issue a key: shown once, stored hashed",
     {"type": "object", "properties": {"expires": {"type": "string"}}}),
    ("post", "/admin/v1/agencies/{id}/kafka-credentials", "kafka_credentials",
     "A provider's own Kafka user for its adapter (operator; SASL Kafka): shown once, ACLs to its topics",
     None),
    ("delete", "/admin/v1/agencies/{id}/keys/{key_id}", "revoke_key", "Revoke a key (within 1 s everywhere)",
     None),
    ("get", "/admin/v1/services", "list_versions", "Every service version with its state", None),
    ("put", "/admin/v1/services/{provider}/{service}", "publish_service",
     "Publish a service version (a schemas/ document, with an optional binding)", {"type": "object"}),
    ("get", "/admin/v1/access-requests", "list_access_requests", "Access requests that concern the caller",
     None),
    ("post", "/admin/v1/access-requests", "create_access_request", "A client agency asks for a right",
     _ACCESS),
    ("post", "/admin/v1/access-requests/{id}/approve", "approve_access_request",
     "The provider approves: a right at once, everywhere", None),
    ("post", "/admin/v1/access-requests/{id}/reject", "reject_access_request", "The provider rejects", None),
    ("get", "/admin/v1/rights", "list_rights", "Rights (operator: all; an agency: its own and to its data)",
     None),
    ("delete", "/admin/v1/rights/{id}", "revoke_right", "Revoke a right (provider, operator)", None),
    ("get", "/admin/v1/changes", "list_changes", "The change log (?since=<change_id>)", None),
]  # fmt: skip


def admin_openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, op_id, summary, body in _OPS:
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("id", "key_id", "provider", "service")
            if "{" + name + "}" in path
        ]
        if method in ("patch", "delete", "put") or path.endswith(("approve", "reject")):
            params.append(
                {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}}
            )
        op: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                **{code: {"description": text, "content": _PROBLEM} for code, text in _ERRORS.items()},
            },
        }
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "NDXP management API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": PROBLEM_SCHEMA,
            },
        },
        "security": [{"apiKey": []}],
    }
