"""Mutual TLS on the gateway: client certificates map to agencies, API keys keep working."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from broker.gateway.app import create_app
from broker.gateway.workers import server_ssl_context
from broker.settings import Settings
from tests.integration.exchange_fixtures import EchoHandlers, running_adapter

pytestmark = pytest.mark.kafka


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(d: Path, name: str, ca: str, *, san: str | None = None) -> None:
    """A key and certificate ``name`` signed by the CA named ``ca``."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=d)  # fmt: skip
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=d)  # fmt: skip


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
             f"{name}.pem", "-days", "2", "-subj", f"/CN={name}", cwd=d)  # fmt: skip


def _fingerprint(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


def _client(d: Path, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(d / f"{cert}.pem", d / f"{cert}.key")
    return ctx


async def test_client_certificates_authenticate_agencies_and_keys_keep_working(
    exchange_settings: Settings, provider: str, tmp_path: Path
) -> None:
    d = tmp_path / "pki"
    d.mkdir()
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _issue(d, "gateway", "ca", san="IP:127.0.0.1")
    _issue(d, "alice", "ca")
    _issue(d, "stranger", "ca")  # signed by our CA, but registered to no agency
    _issue(d, "impostor", "rogue-ca")
    raw = yaml.safe_load(exchange_settings.registry_path.read_text())
    next(a for a in raw["agencies"] if a["id"] == "alice")["certs_sha256"] = [_fingerprint(d / "alice.pem")]
    _issue(d, "slowpoke", "ca")
    slowpoke = next(a for a in raw["agencies"] if a["id"] == "slowpoke")
    slowpoke.update(certs_sha256=[_fingerprint(d / "slowpoke.pem")], cert_required=True, rate_limit=1000)
    exchange_settings.registry_path.write_text(yaml.safe_dump(raw))
    settings = exchange_settings.replace(
        tls_cert=d / "gateway.pem", tls_key=d / "gateway.key", tls_client_ca=d / "ca.pem"
    )
    url = f"/v1/exchange/{provider}/echo"
    server = TestServer(create_app(settings), host="127.0.0.1")
    async with running_adapter(settings, provider, EchoHandlers()):
        await server.start_server(ssl=server_ssl_context(settings))
        try:
            base = str(server.make_url(""))
            assert base.startswith("https://")

            async def call(cert: str | None, key: str | None) -> tuple[int, str]:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                async with (
                    aiohttp.ClientSession(base) as http,
                    http.post(url, json={"msg": "m"}, headers=headers, ssl=_client(d, cert)) as resp,
                ):
                    body = await resp.json(content_type=None)
                    return resp.status, body.get("code", "ok")

            assert await call("alice", None) == (200, "ok")  # the certificate alone
            assert await call(None, "key-alice") == (200, "ok")  # a key, no certificate
            assert await call("alice", "key-alice") == (200, "ok")  # both, agreeing
            assert await call("alice", "key-bob") == (401, "unauthorized")  # disagreeing
            assert await call("stranger", None) == (401, "unauthorized")  # valid but unregistered
            assert await call(None, None) == (401, "unauthorized")
            # An agency whose certificate is required: its key alone is refused, with it admitted.
            assert await call(None, "key-slowpoke") == (401, "unauthorized")
            assert await call("slowpoke", "key-slowpoke") == (200, "ok")
            with pytest.raises(aiohttp.ClientError):  # another CA's certificate: no TLS session
                await call("impostor", None)
        finally:
            await server.close()
