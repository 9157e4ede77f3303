"""An agency connected with no code: a binding published through the management API is served by a
running generic adapter (``ndxp adapter --bound``, its own process), and a changed one too."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from broker.settings import Settings
from tests.fixtures import serving
from tests.integration.exchange_fixtures import running_admin, running_gateway
from tests.integration.test_exchange_processes import ROOT, _env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ALICE = {"Authorization": "Bearer key-alice"}
PROVIDER = {"Authorization": "Bearer key-provider"}


def _document(version: str, response: str) -> dict[str, Any]:
    person = {"type": "string", "pattern": "^[0-9]{1,12}$"}
    return {
        "title": "A person, from the provider's own REST backend",
        "version": version,
        "timeout_ms": 3000,
        "request": {"type": "object", "additionalProperties": False, "required": ["id"],
                    "properties": {"id": person}},
        "response": {"type": "object", "additionalProperties": False, "required": ["id", "name"],
                     "properties": {"id": person, "name": {"type": "string", "minLength": 1}}},
        "examples": [{"id": "7"}],
        "binding": {
            "rest": {"method": "GET", "url": "${env:BACKEND}/nguoi/{id}", "timeout_ms": 1000,
                     "headers": {"Authorization": "Bearer ${secret:TOKEN}"}},
            "response": response,
            "not_found": {"code": "person_not_found", "detail": "no person {id}"},
            "example": {"so": "7", "ten": "An", "ho": "Nguyễn"},
        },
    }  # fmt: skip


@asynccontextmanager
async def backend() -> AsyncIterator[tuple[str, list[str]]]:
    """The agency's own REST backend; yields its URL and the Authorization headers it was sent."""
    seen: list[str] = []

    async def person(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        pid = request.match_info["id"]
        if pid == "404":
            return web.json_response({"loi": "không có"}, status=404)
        return web.json_response({"so": pid, "ten": "An", "ho": "Nguyễn"})

    app = web.Application()
    app.router.add_get("/nguoi/{id}", person)
    async with serving(app) as url:
        yield url, seen


async def _served(http: ClientSession, provider: str, want: Any, within_s: float = 30) -> float:
    """Seconds until ``provider/person`` answers ``want``."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < within_s:
        resp = await http.post(f"/v1/exchange/{provider}/person", json={"id": "7"}, headers=ALICE)
        last = (resp.status, await resp.json(content_type=None))
        if last == (200, want):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not served within {within_s}s: {last}")


async def test_a_binding_published_through_the_admin_api_is_served_by_the_running_adapter(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    settings = exchange_settings
    log = tmp_path / "adapter.log"
    async with backend() as (url, seen), running_admin(settings) as (admin, _):
        env = _env(settings, **{f"BINDING_{provider.upper()}_BACKEND": url,
                                f"BINDING_{provider.upper()}_TOKEN": "s3cret"})  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "adapter", "--bound"],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
        try:
            async with asyncio.timeout(60):
                while b"adapters serving" not in log.read_bytes():
                    assert proc.poll() is None, log.read_text()
                    await asyncio.sleep(0.1)
            async with running_gateway(settings) as (http, _):
                put = f"/admin/v1/services/{provider}/person"
                first = await admin.put(put, json=_document("1", "{id: so, name: ten}"), headers=PROVIDER)
                assert first.status == 201, await first.text()
                took = await _served(http, provider, {"id": "7", "name": "An"})
                print(f"\na new bound service of a new provider served {took:.2f}s after it was published")
                changed = await admin.put(
                    put, json=_document("1.1", "{id: so, name: join(' ', [ho, ten])}"), headers=PROVIDER
                )
                assert changed.status == 200, await changed.text()
                took = await _served(http, provider, {"id": "7", "name": "Nguyễn An"})
                print(f"a changed binding served {took:.2f}s after it was published")
                missing = await http.post(
                    f"/v1/exchange/{provider}/person", json={"id": "404"}, headers=ALICE
                )
                problem = await missing.json()
        finally:
            proc.terminate()
            proc.wait(30)
    assert (missing.status, problem["code"], problem["detail"]) == (404, "person_not_found", "no person 404")
    assert set(seen) == {"Bearer s3cret"}, "the secret came from the adapter's environment"
    assert proc.returncode == 0, log.read_text()
    assert "s3cret" not in log.read_text()
