"""Bound services without Kafka: the demo's land (REST) and social insurance (SOAP) bindings against
their own backends, run here in-process, and every way a backend or a binding can be wrong."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web

from adapters.demo import land_backend, soap_backend, synthetic
from adapters.demo.agencies.common import person_fields
from adapters.runtime import Request
from adapters.runtime.bindings import compile_binding
from broker.contracts.catalog import Catalog, Service, service_from_document
from broker.errors import AdapterSetupError, BackendError, BusinessError, CatalogError
from broker.model.envelope import RequestMeta
from broker.settings import Settings
from tests.fixtures import serving

SETTINGS = Settings()
CATALOG = Catalog.load(SETTINGS.schemas_dir)


def _meta(svc: Service, deadline_s: float = 5) -> RequestMeta:
    return RequestMeta(exchange_id="ex-1", client="test", provider=svc.provider, service=svc.service,
                       reply_to="-", deadline_ms=int((time.time() + deadline_s) * 1000))  # fmt: skip


async def _call(svc: Service, body: Any, settings: Settings = SETTINGS) -> Any:
    handler, client = await compile_binding(svc, settings)
    try:
        return await handler(Request(meta=_meta(svc), body=body))
    finally:
        await client.close()


@pytest.fixture
async def backends(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """The demo's two backends, and the references their bindings name."""
    async with (
        serving(land_backend.create_backend(SETTINGS)) as land,
        serving(soap_backend.create_backend(SETTINGS)) as bhxh,
    ):
        monkeypatch.setenv("NDXP_BINDING_TNMT_BACKEND", land)
        monkeypatch.setenv("NDXP_BINDING_BHXH_BACKEND", bhxh)
        yield


# -- what the hand-written handlers answered before the bindings (kept here as the reference) --------


def todays_land(parcel_id: str) -> Any:
    x = synthetic.parcel(parcel_id)
    if x is None:
        return ("parcel_not_found", f"no parcel {parcel_id}")
    return {"parcel_id": x.parcel_id, "province": x.province, "area_m2": x.area_m2,
            "land_use": {"code": x.land_use, "name": synthetic.LAND_USE.get(str(x.land_use), "")},
            "owner": {"cccd": x.owner.cccd, "full_name": x.owner.full_name},
            "certificate_number": x.certificate_number, "mortgaged": x.mortgaged}  # fmt: skip


def todays_insurance_status(cccd: str) -> Any:
    p = synthetic.person(cccd)
    if p is None:
        return ("citizen_not_found", f"no citizen {cccd}")
    r = synthetic.rng("bhxh", p.cccd)
    working_age = 18 <= synthetic.age(p) < 62
    participating = working_age and r.random() < 0.65
    months = r.randrange(1, 12 * (synthetic.age(p) - 17)) if participating else 0
    return {**person_fields(p), "social_insurance_number": synthetic.insurance_number(p),
            "participating": participating, "contribution_months": months}  # fmt: skip


def todays_health_card(cccd: str) -> Any:
    p = synthetic.person(cccd)
    if p is None:
        return ("citizen_not_found", f"no citizen {cccd}")
    r = synthetic.rng("bhyt", p.cccd)
    group = r.choice(["DN", "HC", "GD", "HS", "TE", "HT"])
    valid_from = dt.date(synthetic.REFERENCE_DATE.year, 1, 1)
    valid_to = dt.date(synthetic.REFERENCE_DATE.year, 12, 31)
    expired = r.random() < 0.1
    if expired:
        valid_from = valid_from.replace(year=valid_from.year - 1)
        valid_to = valid_to.replace(year=valid_to.year - 1)
    card = f"{group}{r.randint(1, 5)}{p.cccd[1:3]}{synthetic.insurance_number(p)}"
    return {**person_fields(p), "card_number": card,
            "valid_from": valid_from.isoformat(), "valid_to": valid_to.isoformat(), "valid": not expired,
            "registered_facility": r.choice(synthetic.HOSPITALS)}  # fmt: skip


def _citizens(n: int) -> list[str]:
    r = random.Random(7)
    return [
        synthetic.make_cccd(r, gender=r.choice(["male", "female"]), year=r.randint(1940, 2020))
        for _ in range(n)
    ]


def _parcels(n: int) -> list[str]:
    r = random.Random(7)
    provinces = list(synthetic.PROVINCES)
    return [
        f"{r.choice(provinces)}-{r.randrange(100000):05d}-{r.randint(1, 9)}-{r.randint(1, 999)}"
        for _ in range(n)
    ]


CASES: list[tuple[str, str, Callable[[str], Any], list[str]]] = [
    ("tnmt/land_parcel", "parcel_id", todays_land, _parcels(40)),
    ("bhxh/insurance_status", "cccd", todays_insurance_status, _citizens(40)),
    ("bhxh/health_card", "cccd", todays_health_card, _citizens(40)),
]


@pytest.mark.parametrize(("key", "field", "today", "ids"), CASES, ids=[c[0] for c in CASES])
async def test_bound_answers_are_byte_identical_to_the_hand_written_handlers(
    backends: None, key: str, field: str, today: Callable[[str], Any], ids: list[str]
) -> None:
    svc = _service(key)
    assert svc.binding is not None, f"{key} is served by its binding, no code"
    handler, client = await compile_binding(svc, SETTINGS)
    found = missing = 0
    try:
        for identifier in ids:
            want = today(identifier)
            if isinstance(want, tuple):
                with pytest.raises(BusinessError) as refused:
                    await handler(Request(meta=_meta(svc), body={field: identifier}))
                assert (refused.value.status, refused.value.code, refused.value.detail) == (404, *want)
                missing += 1
                continue
            got = await handler(Request(meta=_meta(svc), body={field: identifier}))
            assert orjson.dumps(got) == orjson.dumps(want), identifier
            assert not svc.response.violations(got)
            found += 1
    finally:
        await client.close()
    assert found >= 20, "most identifiers exist"
    assert missing >= 1 or key == "tnmt/land_parcel", "a not-found case is compared too"


def _with(svc: Service, **changes: Any) -> Service:
    """``svc`` with its binding changed (checked as a published document would be)."""
    doc = copy.deepcopy(svc.document)
    for path, value in changes.items():
        where = doc["binding"]
        *parents, last = path.split("__")
        for p in parents:
            where = where[p]
        where[last] = value
    return service_from_document(doc, svc.provider, svc.service, source="test")


def _service(key: str) -> Service:
    provider, service = key.split("/", 1)
    svc = CATALOG.get(provider, service)
    assert svc is not None, key
    return svc


LAND = _service("tnmt/land_parcel")
Backend = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def _bad_land(handler: Backend, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    app = web.Application()
    app.router.add_get("/api/v1/thua-dat/{ma_thua}", handler)
    async with serving(app) as url:
        monkeypatch.setenv("NDXP_BINDING_TNMT_BACKEND", url)
        yield


async def _hangs(_: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.json_response({})


async def _resets(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(1)
    return web.json_response({})


async def _html(_: web.Request) -> web.Response:
    return web.Response(text="<html><body>Bảo trì hệ thống</body></html>", content_type="text/html")


async def _not_json(_: web.Request) -> web.Response:
    return web.Response(text='{"maThua": "001-', content_type="application/json")


async def _huge(_: web.Request) -> web.StreamResponse:
    return web.Response(body=b'{"x": "' + b"a" * (10 * 1024 * 1024) + b'"}', content_type="application/json")


@pytest.mark.parametrize(
    ("behaviour", "said"),
    [(_hangs, "did not answer within"), (_resets, "unavailable"), (_html, "invalid JSON"),
     (_not_json, "invalid JSON"), (_huge, "larger than")],
    ids=["hangs", "resets", "html", "not-json", "10MB"],
)  # fmt: skip
async def test_a_bad_backend_is_a_clear_error_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch, behaviour: Backend, said: str
) -> None:
    svc = _with(LAND, rest__timeout_ms=500)
    started = time.monotonic()
    async with _bad_land(behaviour, monkeypatch):
        with pytest.raises(BackendError, match=said):
            await _call(svc, {"parcel_id": "001-00004-1-100"})
    assert time.monotonic() - started < 3, "within the binding's timeout (and one retry at most)"


async def test_a_soap_backend_outside_its_wsdl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = CATALOG.get("bhxh", "health_card")
    assert svc is not None
    real = soap_backend.create_backend(SETTINGS)
    async with serving(real) as wsdl_host:
        for answer in (
            b"<html>oops</html>",
            b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://'
            b'schemas.xmlsoap.org/soap/envelope/"><soap:Body><Other/></soap:Body></soap:Envelope>',
        ):

            async def wsdl(request: web.Request) -> web.Response:
                # The real WSDL, but its address points at this fake service.
                text = soap_backend.WSDL.replace("{address}", f"http://{request.host}/soap")
                return web.Response(text=text, content_type="text/xml")

            async def wrong(_: web.Request, body: bytes = answer) -> web.Response:
                return web.Response(body=body, content_type="text/xml")

            app = web.Application()
            app.router.add_get("/soap", wsdl)
            app.router.add_post("/soap", wrong)
            async with serving(app) as url:
                monkeypatch.setenv("NDXP_BINDING_BHXH_BACKEND", url)
                with pytest.raises(BackendError, match="outside its WSDL"):
                    await _call(svc, {"cccd": "001090012345"})
    assert wsdl_host


def test_a_binding_that_cannot_produce_the_contract_is_refused_naming_the_path() -> None:
    example = copy.deepcopy(LAND.binding["example"]) if LAND.binding else {}
    del example["chuSuDung"]["hoTen"]  # the backend's example lacks a mapped field
    with pytest.raises(CatalogError, match=r"binding/response.*/owner/full_name"):
        _with(LAND, example=example)
    with pytest.raises(CatalogError, match=r"binding/response.*/area_m2"):
        _with(
            LAND, response=LAND.binding["response"].replace("dienTichM2", "tinhThanh") if LAND.binding else ""
        )
    with pytest.raises(CatalogError, match="not a JMESPath expression"):
        _with(LAND, response="{parcel_id: maThua")
    with pytest.raises(CatalogError, match="binding/rest/url"):
        _with(LAND, rest__url="${file:/etc/passwd}")


async def test_a_missing_reference_is_a_clear_error_at_adapter_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NDXP_BINDING_TNMT_BACKEND", raising=False)
    with pytest.raises(AdapterSetupError, match="NDXP_BINDING_TNMT_BACKEND"):
        await compile_binding(LAND, SETTINGS)
    token = _with(LAND, rest__headers={"Authorization": "Bearer ${secret:TOKEN}"})
    monkeypatch.setenv("NDXP_BINDING_TNMT_BACKEND", "http://127.0.0.1:9")
    with pytest.raises(AdapterSetupError, match="NDXP_BINDING_TNMT_TOKEN"):
        await compile_binding(token, SETTINGS)
    # Only the provider's own namespace: a binding cannot read the adapter's other settings.
    monkeypatch.setenv("NDXP_KAFKA_SASL_PASSWORD", "platform-secret")
    leak = _with(LAND, rest__headers={"X": "${secret:KAFKA_SASL_PASSWORD}"})
    with pytest.raises(AdapterSetupError, match="NDXP_BINDING_TNMT_KAFKA_SASL_PASSWORD"):
        await compile_binding(leak, SETTINGS)


async def test_a_url_written_in_the_registry_may_not_aim_at_private_addresses() -> None:
    for url in ("http://127.0.0.1:9102/metrics", "https://10.0.0.8/x/{parcel_id}", "https://[::1]/x"):
        with pytest.raises(AdapterSetupError, match="registry"):
            await compile_binding(_with(LAND, rest__url=url), SETTINGS)
    allowed = SETTINGS.replace(backend_allow_private=True)
    _handler, client = await compile_binding(_with(LAND, rest__url="http://127.0.0.1:9/{parcel_id}"), allowed)
    await client.close()
    assert json.dumps(LAND.binding)  # the demo's own URL is a reference: ${env:BACKEND}
