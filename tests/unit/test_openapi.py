"""/openapi.json is valid OpenAPI 3.1, declares every parameter as strictly as the gateway checks it,
and a client generated from it by openapi-python-client imports (tests/integration/test_openapi_client.py
calls the platform with it)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from broker.contracts.catalog import Catalog
from broker.gateway.openapi import DAY_PATTERN, RFC3339_PATTERN, openapi_document
from broker.model.envelope import EXCHANGE_ID_PATTERN, new_exchange_id
from broker.model.events import POSITIONS_PATTERN, decode_positions, parse_time
from tests.fixtures import generate_client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document(Catalog.load(ROOT / "schemas"))


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)  # raises on the first error: undeclared path parameters among them
    assert document["openapi"] == "3.1.0"


def test_every_path_parameter_is_declared_and_required(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        templated = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in item.items():
            declared = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "path"}
            assert set(declared) == templated, (
                f"{method.upper()} {path}: {sorted(declared)} != {sorted(templated)}"
            )
            assert all(p["required"] for p in declared.values()), f"{method.upper()} {path}"


def test_every_parameter_has_a_strict_schema(document: dict[str, Any]) -> None:
    loose = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                schema = p["schema"]
                if p["in"] in ("path", "query") and "pattern" not in schema and "enum" not in schema:
                    loose.append(f"{method.upper()} {path} {p['in']} {p['name']}")
    assert loose == []


@pytest.mark.parametrize(
    ("pattern", "accepts", "samples"),
    [
        (EXCHANGE_ID_PATTERN, lambda s: True, [new_exchange_id(), "x", "0" * 36, new_exchange_id().upper()]),
        (POSITIONS_PATTERN, decode_positions, ["0:17,1:4", "0:1", "a:1", "0:1,", "1:-3", ""]),
        (RFC3339_PATTERN, parse_time, ["2026-12-02T10:00:00Z", "2026-12-02T10:00:00.5+07:00",
                                       "2026-12-02T10:00:00", "2026-12-02", "yesterday"]),
        (DAY_PATTERN, lambda s: __import__("datetime").date.fromisoformat(s), ["2026-12-02", "2026-13-01",
                                                                               "2026-12-32", "26-12-02"]),
    ],
)  # fmt: skip
def test_what_a_parameter_pattern_admits_the_gateway_accepts(
    pattern: str, accepts: Any, samples: list[str]
) -> None:
    """Never looser than the gateway: every sample the pattern admits, the gateway's own parser takes."""
    admitted = [s for s in samples if re.match(pattern, s)]
    assert admitted, "no sample is admitted: the check would prove nothing"
    assert len(admitted) < len(samples), "every sample is admitted: the check would prove nothing"
    for sample in admitted:
        accepts(sample)  # raises if the gateway would refuse what the document allows


def test_a_client_generated_from_the_document_imports(document: dict[str, Any], tmp_path: Path) -> None:
    root = generate_client(document, tmp_path)
    sys.path.insert(0, str(root))
    try:
        client = importlib.import_module("ndxp_client")
        citizen = importlib.import_module("ndxp_client.api.bca.bca_citizen")
        exchange = importlib.import_module("ndxp_client.api.default.get_exchange")
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "ndxp_client" or m.startswith("ndxp_client.")]:
            del sys.modules[name]
    assert hasattr(client, "AuthenticatedClient")
    assert hasattr(citizen, "asyncio_detailed")
    assert hasattr(exchange, "asyncio_detailed")


def test_the_management_apis_document_is_valid_openapi_3_1_and_lists_every_route() -> None:
    from aiohttp import web

    from broker.admin.api import routes
    from broker.admin.openapi import admin_openapi

    doc = admin_openapi()
    validate(doc)
    app = web.Application()
    routes(app)
    served = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        path = path.replace("{verdict}", "approve")
        served.add((route.method.lower(), path))
        if path.endswith("/approve"):
            served.add((route.method.lower(), path.replace("/approve", "/reject")))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served - {("head", p) for _, p in served} == documented
