"""The test provider, shared by unit and integration tests: its contracts (with an event type),
its registry (keys, rights, event rights) and its handlers. Nothing here needs Kafka."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.runtime import Handler, Request
from broker.errors import BusinessError
from broker.kafka import Sender, Written

ECHO_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["msg"],
    "properties": {
        "msg": {"type": "string", "maxLength": 2000000},
        "mode": {"enum": ["ok", "bad", "crash", "missing", "hold"]},
        "sleep_ms": {"type": "integer", "minimum": 0, "maximum": 5000},
    },
}
ECHO_RESPONSE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["msg", "via"],
    "properties": {"msg": {"type": "string"}, "via": {"type": "string"}},
}


def write_contracts(root: Path, provider: str, echo_timeout_ms: int = 5000) -> Path:
    """schemas/<provider>/{echo,slow,store}.json for the test provider (store has write effects)."""
    d = root / "schemas" / provider
    d.mkdir(parents=True)
    for name, timeout, effects, more in (
        ("echo", echo_timeout_ms, "read", {}),
        ("slow", 300, "read", {"async_ttl_s": 2}),  # an async exchange nobody answers expires soon
        ("store", 30000, "write", {}),
    ):
        (d / f"{name}.json").write_text(
            json.dumps(
                {
                    "title": f"Test {name}",
                    "description": "test service",
                    "timeout_ms": timeout,
                    "effects": effects,
                    "request": ECHO_REQUEST,
                    "response": ECHO_RESPONSE,
                    "examples": [{"msg": "hello"}],
                    **more,
                }
            )
        )
    events = d / "events"
    events.mkdir()
    (events / "changed.json").write_text(json.dumps(CHANGED_EVENT))
    return root / "schemas"


CHANGED_EVENT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Test record changed",
    "description": "test event",
    "x-ndxp-key": "subject",
    "type": "object",
    "additionalProperties": False,
    "required": ["subject", "seq"],
    "properties": {
        "subject": {"type": "string", "minLength": 1},
        "seq": {"type": "integer", "minimum": 0},
        "exchange": {"type": "string"},
    },
    "examples": [{"subject": "s1", "seq": 0}],
}


OPERATOR = {"Authorization": "Bearer key-ops"}
"""The test registry's operator (``ops``): /metrics and every /v1/stats row on the exchange port."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_registry(root: Path, provider: str) -> Path:
    """alice may call everything of the provider; bob nothing; slowpoke is rate limited; ops
    (key ``key-ops``) administers the registry.

    Events: the provider (key ``key-provider``) publishes ``changed``; alice and slowpoke may subscribe.
    """
    raw = {
        "agencies": [
            {"id": provider, "code": "T.PROV", "name": "Test provider",
             "keys_sha256": [key_hash("key-provider")]},
            {"id": "alice", "code": "T.A", "name": "Alice", "keys_sha256": [key_hash("key-alice")],
             "rate_limit": 100000},
            {"id": "bob", "code": "T.B", "name": "Bob", "keys_sha256": [key_hash("key-bob")]},
            {"id": "slowpoke", "code": "T.S", "name": "Slowpoke",
             "keys_sha256": [key_hash("key-slowpoke")], "rate_limit": 0.1},
            {"id": "ops", "code": "T.OPS", "name": "Operators", "roles": ["operator"],
             "keys_sha256": [key_hash("key-ops")]},
        ],
        "rights": {"alice": [f"{provider}/*"], "slowpoke": [f"{provider}/echo"], "bob": []},
        "events": {"publish": {provider: [f"{provider}/changed"]},
                   "subscribe": {"alice": [f"{provider}/*"], "slowpoke": [f"{provider}/changed"]}},
    }  # fmt: skip
    path = root / "registry.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class EchoHandlers:
    """Handlers whose behaviour the request chooses; counts calls per message."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.versions: Counter[str | None] = Counter()
        """The service versions echo was called for (the request metadata's)."""
        self.held = 0
        """Requests with ``mode: hold`` that have reached the handler (they wait for ``release``)."""
        self.release = asyncio.Event()
        """Set: every held request goes on."""
        self.gates: dict[str, asyncio.Event] = {}
        """Set ``gate(msg)``: the held request of that message goes on."""

    def gate(self, msg: str) -> asyncio.Event:
        return self.gates.setdefault(msg, asyncio.Event())

    async def _hold(self, msg: str) -> None:
        self.held += 1
        waits = [asyncio.ensure_future(self.release.wait()), asyncio.ensure_future(self.gate(msg).wait())]
        _, left = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in left:
            w.cancel()

    async def echo(self, req: Request) -> Any:
        self.calls[req.body["msg"]] += 1
        self.versions[req.meta.version] += 1
        if req.body.get("sleep_ms"):
            await asyncio.sleep(req.body["sleep_ms"] / 1000)
        mode = req.body.get("mode", "ok")
        if mode == "hold":  # in flight for as long as the test wants: a condition, not a sleep
            await self._hold(req.body["msg"])
        if mode == "bad":
            return {"msg": 42, "via": req.meta.reply_to}
        if mode == "crash":
            raise RuntimeError("boom")
        if mode == "missing":
            raise BusinessError(404, "record_not_found", f"no record {req.body['msg']}")
        return {"msg": req.body["msg"], "via": req.meta.reply_to}

    async def slow(self, req: Request) -> Any:
        self.calls[req.body["msg"]] += 1
        await asyncio.sleep(req.body.get("sleep_ms", 1000) / 1000)
        return {"msg": req.body["msg"], "via": req.meta.reply_to}

    async def store(self, req: Request) -> Any:
        """A write: records one change per request, committed with the reply."""
        self.calls[req.body["msg"]] += 1
        if req.body.get("sleep_ms"):
            await asyncio.sleep(req.body["sleep_ms"] / 1000)
        req.record_change(req.body["msg"], {"msg": req.body["msg"], "exchange": req.meta.exchange_id})
        req.publish_event("changed", req.body["msg"], {"subject": req.body["msg"], "seq": 0,
                                                       "exchange": req.meta.exchange_id})  # fmt: skip
        return {"msg": req.body["msg"], "via": req.meta.reply_to}

    def handlers(self) -> dict[str, Handler]:
        return {"echo": self.echo, "slow": self.slow, "store": self.store}


async def delivered(producer: Sender, topic: str, value: bytes, **kw: Any) -> Written:
    """Send one record and wait until Kafka has acknowledged it."""
    return await (await producer.send(topic, value, **kw))


def generate_client(document: dict[str, Any], out: Path, name: str = "ndxp_client") -> Path:
    """A Python client generated from an OpenAPI document by openapi-python-client; returns its folder's
    parent (put it on ``sys.path`` and import ``name``)."""
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "openapi.json"
    spec.write_text(json.dumps(document))
    config = out / "config.yaml"
    config.write_text(f"project_name_override: {name}\npackage_name_override: {name}\npost_hooks: []\n")
    tool = Path(sys.executable).parent / "openapi-python-client"
    done = subprocess.run(
        [str(tool), "generate", "--path", str(spec), "--meta", "none", "--config", str(config),
         "--fail-on-warning"],
        cwd=out, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / name / "client.py").is_file(), done.stdout
    return out


def sample(registry: Any, name: str, **labels: str) -> float:
    """A metric's value as Prometheus would scrape it (0 when it has no sample yet): the public
    exposition, never a client library's private state."""
    value = registry.get_sample_value(name, labels or None)
    return float(value) if value is not None else 0.0


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on loopback (an agency's backend, a fake one): yields its base URL."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def run_loadtest(script: str, *args: str, timeout: float) -> tuple[int, str]:
    """Run ``loadtests/<script>`` as a developer does (a short version: ``args``); its exit status, and
    its output (stdout, stderr's tail) to show when an assertion fails."""
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, str(root / "loadtests" / script), *args],
        cwd=root, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return run.returncode, run.stdout + run.stderr[-3000:]
