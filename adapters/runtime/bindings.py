"""Bound services: a service version's ``binding`` (DESIGN §4) served with no code.

A binding says how to call the provider's own backend and how its answer
becomes the contract's response:

- ``rest``: method, URL template (``{field}`` is the request's field,
  URL-encoded), headers, timeout, the statuses that mean the provider's
  not-found; a POST or PUT backend gets the ``request`` mapping's result as
  its JSON body;
- ``soap``: a WSDL and an operation, called with zeep's message building and
  parsing over the platform's own bounded HTTP client (the ``request``
  mapping's result are the operation's arguments; faults listed in
  ``not_found`` mean the provider's not-found);
- ``response``: a JMESPath expression over the backend's JSON answer (for
  SOAP, the answer as zeep returns it, dates as ISO text) yielding the
  contract's response, which the gateway checks as for any handler.

Values that differ by deployment or are secret are references, never in the
registry: ``${env:NAME}`` and ``${secret:NAME}`` are read, where the adapter
runs, from ``NDXP_BINDING_<PROVIDER>_<NAME>`` or the file
``<NDXP_BACKEND_SECRETS_DIR>/<provider>/<NAME>``: a provider's binding reads
its own namespace only, never the adapter's other settings. A URL written in
the registry itself (not from a reference) must be ``https`` to public
addresses (``NDXP_BACKEND_ALLOW_PRIVATE`` lifts that, for development): the
registry is written by providers, and the adapter must not be aimed at the
platform's own network.

Every call has the :class:`~adapters.runtime.forward.Forwarder`'s bounds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import jmespath
import orjson

from adapters.runtime.forward import Answer, Forwarder, json_of
from adapters.runtime.request import Handler, Request
from broker.contracts.catalog import REFERENCE, Catalog, Service, VersionState
from broker.egress import PublicOnlyResolver, refusal
from broker.errors import AdapterSetupError, BackendError, BusinessError
from broker.settings import Settings

log = logging.getLogger(__name__)
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def reference(provider: str, name: str, settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The value of ``${env:NAME}`` or ``${secret:NAME}`` for ``provider``'s bindings, here."""
    env = os.environ if env is None else env
    var = f"NDXP_BINDING_{provider.upper()}_{name.upper()}"
    if var in env:
        return env[var]
    if settings.backend_secrets_dir is not None:
        path = settings.backend_secrets_dir / provider / name
        if path.is_file():
            return path.read_text().strip()
    where = (
        f" or the file {settings.backend_secrets_dir / provider / name}"
        if settings.backend_secrets_dir
        else ""
    )
    raise AdapterSetupError(f"{provider}'s binding needs {name}: set {var}{where}")


def _resolve(text: str, provider: str, settings: Settings) -> str:
    return REFERENCE.sub(lambda m: reference(provider, m[2], settings), text)


def _forwarder(url_template: str, resolved: str, timeout_ms: int, settings: Settings) -> Forwarder:
    """A bounded client; public addresses only when the URL is the registry's own (not a reference)."""
    trusted = url_template.startswith("${") or settings.backend_allow_private
    refused = None if trusted else refusal(resolved, allow_private=False, what="backend")
    if refused is not None:  # the registry's own URL: the callbacks' rule (https, public addresses)
        raise AdapterSetupError(f"{url_template}: written in the registry, {refused}")
    return Forwarder(
        timeout_ms=timeout_ms,
        resolver=None if trusted else PublicOnlyResolver(),
    )


def _not_found(svc: Service, body: Any) -> BusinessError:
    spec = (svc.binding or {}).get("not_found") or {}
    fields = body if isinstance(body, dict) else {}
    detail = _FIELD.sub(lambda m: str(fields.get(m[1], "")), spec.get("detail", "no such record"))
    return BusinessError(404, spec.get("code", "not_found"), detail)


async def compile_binding(svc: Service, settings: Settings) -> tuple[Handler, Forwarder]:
    """The handler serving ``svc``'s binding, and the client to close when it is replaced
    (AdapterSetupError when a reference is missing or the WSDL cannot be read)."""
    binding = svc.binding
    assert binding is not None
    response = jmespath.compile(binding["response"])
    request = jmespath.compile(binding["request"]) if "request" in binding else None
    if "rest" in binding:
        return _rest(svc, binding["rest"], request, response, settings)
    return await _soap(svc, binding["soap"], request, response, settings)


def _rest(
    svc: Service, rest: dict[str, Any], request: Any, response: Any, settings: Settings
) -> tuple[Handler, Forwarder]:
    method = rest["method"]
    url = _resolve(rest["url"], svc.provider, settings)
    headers = {k: _resolve(v, svc.provider, settings) for k, v in rest.get("headers", {}).items()}
    missing = frozenset(rest.get("not_found", [404]))
    backend = _forwarder(
        rest["url"], _FIELD.sub("x", url), rest.get("timeout_ms", settings.backend_timeout_ms), settings
    )
    ok = frozenset({200, 201}) | missing

    async def bound(req: Request) -> Any:
        fields = req.body if isinstance(req.body, dict) else {}
        target = _FIELD.sub(lambda m: urllib.parse.quote(str(fields.get(m[1], "")), safe=""), url)
        body = None
        sent = dict(headers)
        if method != "GET":
            body = orjson.dumps(request.search(req.body) if request is not None else req.body)
            sent.setdefault("Content-Type", "application/json")
        answer = await backend.call(method, target, req.meta, headers=sent, body=body, ok=ok)
        if answer.status in missing:
            raise _not_found(svc, req.body)
        return response.search(json_of(answer))

    return bound, backend


async def _soap(
    svc: Service, soap: dict[str, Any], request: Any, response: Any, settings: Settings
) -> tuple[Handler, Forwarder]:
    import zeep
    import zeep.exceptions
    import zeep.helpers
    from lxml import etree

    wsdl = _resolve(soap["wsdl"], svc.provider, settings)
    timeout_ms = soap.get("timeout_ms", settings.backend_timeout_ms)
    backend = _forwarder(soap["wsdl"], wsdl, timeout_ms, settings)
    if not (soap["wsdl"].startswith("${") or settings.backend_allow_private):
        raise AdapterSetupError(f"{svc.key}: a WSDL is read from a reference (${{env:…}}) or with "
                                "NDXP_BACKEND_ALLOW_PRIVATE")  # fmt: skip
    seconds = timeout_ms / 1000
    transport = zeep.Transport(timeout=seconds, operation_timeout=seconds)  # type: ignore[no-untyped-call]
    try:  # zeep reads the WSDL (and its imports) with blocking I/O: off the event loop, once
        client = await asyncio.to_thread(
            zeep.Client, wsdl, transport=transport, settings=zeep.Settings(strict=True, forbid_dtd=True,
                                                                             forbid_entities=True)
        )  # fmt: skip
        operation = client.service._binding.get(soap["operation"])
    except Exception as exc:
        await backend.close()
        what = f"{type(exc).__name__}: {exc}"
        raise AdapterSetupError(f"{svc.key}: cannot use the WSDL {soap['wsdl']}: {what}") from exc
    address = client.service._binding_options["address"]
    faults = frozenset(soap.get("not_found", []))
    action = operation.soapaction or ""
    expected = str(operation.output.body.qname) if operation.output.body is not None else None

    async def bound(req: Request) -> Any:
        args = request.search(req.body) if request is not None else req.body
        try:
            envelope = client.create_message(  # type: ignore[no-untyped-call]
                client.service, soap["operation"], **(args or {})
            )
        except (TypeError, ValueError, zeep.exceptions.Error) as exc:
            raise BackendError(f"the request does not fit the WSDL's message: {exc}") from exc
        answer = await backend.call(
            "POST", address, req.meta, body=etree.tostring(envelope, xml_declaration=True, encoding="utf-8"),
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action}"'},
            ok=frozenset({200, 500}),
        )  # fmt: skip
        _expect(answer.body, expected, etree)
        try:
            result = client.service._binding.process_reply(client, operation, _Reply(answer))
        except zeep.exceptions.Fault as fault:
            if fault.code in faults or _local(fault.code) in faults:
                raise _not_found(svc, req.body) from fault
            raise BackendError(f"backend fault {_local(fault.code)}") from fault
        except Exception as exc:  # not XML, not the WSDL's message
            raise BackendError(f"backend answered outside its WSDL: {type(exc).__name__}") from exc
        if result is None:  # an envelope, but not the operation's output message
            raise BackendError(f"backend answered outside its WSDL: not {soap['operation']}'s answer")
        answered = zeep.helpers.serialize_object(result, dict)  # type: ignore[no-untyped-call]
        return response.search(plain(answered))

    return bound, backend


_SOAP_ENV = "{http://schemas.xmlsoap.org/soap/envelope/}"


def _expect(body: bytes, expected: str | None, etree: Any) -> None:
    """The answer is a SOAP envelope holding the operation's output message or a fault (checked
    before zeep reads it: zeep answers an unknown element with empty fields)."""
    try:
        doc = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False))
    except etree.XMLSyntaxError as exc:
        raise BackendError("backend answered outside its WSDL: not XML") from exc
    found = doc.find(f"{_SOAP_ENV}Body")
    first = found[0] if found is not None and len(found) else None
    if first is None:
        raise BackendError("backend answered outside its WSDL: no SOAP body")
    name = str(etree.QName(first))
    if name != f"{_SOAP_ENV}Fault" and expected is not None and name != expected:
        raise BackendError(
            f"backend answered outside its WSDL: {etree.QName(first).localname}, not the answer"
        )


def _local(code: Any) -> str:
    """A fault code without its namespace prefix."""
    return str(code or "").rsplit(":", 1)[-1].rsplit("}", 1)[-1]


class _Reply:
    """What zeep's reply processing reads of an HTTP answer."""

    def __init__(self, answer: Answer) -> None:
        self.status_code = answer.status
        self.content = answer.body
        self.headers = answer.headers
        self.encoding = "utf-8"


def plain(value: Any) -> Any:
    """zeep's answer as JSON values: dates as ISO text, decimals as numbers."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class Bindings:
    """The bound services of one provider as the live registry has them, every version: compiled when
    published or changed, the old client closed when replaced. ``handlers`` has one handler per bound
    service, which calls the binding of the version the request was accepted for."""

    def __init__(self, provider: str, catalog: Catalog, settings: Settings) -> None:
        self.provider = provider
        self.catalog = catalog
        self.settings = settings
        self.handlers: dict[str, Handler] = {}
        self._compiled: dict[tuple[str, int], tuple[bytes, Handler, Forwarder]] = {}

    async def sync(self) -> bool:
        """Follow the catalog: True when the set of services served changed. A binding that cannot be
        compiled (a reference not set here, a WSDL that cannot be read) is logged and not served."""
        before = set(self.handlers)
        wanted = {
            (s.service, s.major): s
            for s in self.catalog.versions(self.provider)
            if s.binding is not None and s.state is not VersionState.RETIRED
        }
        for key in [k for k in self._compiled if k not in wanted]:
            await self._compiled.pop(key)[2].close()
        for key, svc in wanted.items():
            mark = orjson.dumps(svc.binding, option=orjson.OPT_SORT_KEYS)
            if key in self._compiled and self._compiled[key][0] == mark:
                continue
            old = self._compiled.pop(key, None)
            if old is not None:
                await old[2].close()
            try:
                handler, client = await compile_binding(svc, self.settings)
            except AdapterSetupError as exc:
                log.error("%s v%d: not served: %s", svc.key, svc.major, exc)
                continue
            self._compiled[key] = (mark, handler, client)
            log.info("%s v%d: served by its binding", svc.key, svc.major)
        self.handlers = {service: self._dispatch(service) for service, _ in self._compiled}
        return set(self.handlers) != before

    def _dispatch(self, service: str) -> Handler:
        async def bound(req: Request) -> Any:
            version = req.meta.version
            major = int(version.split(".", 1)[0]) if version else None
            svc = self.catalog.get(self.provider, service, major)
            compiled = self._compiled.get((service, svc.major)) if svc is not None else None
            if compiled is None:
                raise BackendError(f"{self.provider}/{service} v{version}: no binding served here")
            return await compiled[1](req)

        return bound

    async def close(self) -> None:
        for _, _, client in self._compiled.values():
            await client.close()
        self._compiled.clear()
        self.handlers = {}


__all__ = ["Bindings", "compile_binding", "plain", "reference"]
