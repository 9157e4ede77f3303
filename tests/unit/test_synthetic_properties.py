"""Property tests of the simulated agencies over generated identifiers (no Kafka).

Every answer fits its contract; the same identifier gives the same answer;
a person's name, birth date and gender agree across agencies.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.demo import soap_backend, synthetic
from adapters.demo.agencies import AGENCIES, handlers_for
from adapters.runtime import Change, Request
from adapters.runtime.bindings import plain
from broker.contracts.catalog import Catalog, Effects
from broker.errors import BusinessError
from broker.model.envelope import RequestMeta
from broker.settings import Settings

SETTINGS = Settings()
CATALOG = Catalog.load(SETTINGS.schemas_dir)
LOCAL = sorted(AGENCIES)
"""The agencies with code; social insurance is bound to its SOAP backend (below), the land registry to
its REST backend (its contract test is test_contracts.py, its answers test_bindings.py)."""


def _soap_without_transport(svc: Any) -> Any:
    """Social insurance's binding minus its HTTP hop: the backend's own answer (as zeep hands it over:
    typed values, dates as ISO text) mapped by the binding's JMESPath expression."""
    binding = svc.binding
    operation = soap_backend.OPERATIONS[binding["soap"]["operation"]]

    async def handler(req: Request) -> Any:
        p = synthetic.person(req.body["cccd"])
        if p is None:
            raise BusinessError(404, binding["not_found"]["code"], f"no citizen {req.body['cccd']}")
        return jmespath.search(binding["response"], plain(dict(operation(p))))

    return handler


def _handlers() -> dict[str, Any]:
    out = {}
    stack = AsyncExitStack()
    for agency in LOCAL:
        for service, handler in handlers_for(agency, SETTINGS, stack).items():
            out[f"{agency}/{service}"] = handler
    for svc in CATALOG.of_provider("bhxh"):
        out[svc.key] = _soap_without_transport(svc)
    return out


HANDLERS = _handlers()
META = RequestMeta(
    exchange_id="prop", client="test", provider="p", service="s", reply_to="r", deadline_ms=2**62
)

province = st.sampled_from(sorted(synthetic.PROVINCES))
cccd = st.builds(
    lambda p, g, y, s: f"{p}{g}{y:02d}{s:06d}",
    province,
    st.integers(0, 3),
    st.integers(0, 99),
    st.integers(0, 999_999),
)
tax10 = st.from_regex(r"\A[0-9]{10}\Z")
REQUESTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "bca/citizen": st.fixed_dictionaries({"cccd": cccd}),
    "bca/household": st.fixed_dictionaries({"cccd": cccd}),
    "bca/verify_identity": st.fixed_dictionaries(
        {
            "cccd": cccd,
            "full_name": st.text(min_size=1, max_size=30),
            "birth_date": st.dates().map(lambda d: d.isoformat()),
        }
    ),
    "bca/register_address": st.fixed_dictionaries(
        {
            "cccd": cccd,
            "address": st.fixed_dictionaries(
                {
                    "street": st.text(min_size=1, max_size=40),
                    "ward": st.text(min_size=1, max_size=20),
                    "province": province.map(synthetic.PROVINCES.__getitem__),
                }
            ),
            "moved_on": st.dates().map(lambda d: d.isoformat()),
        }
    ),
    "dkkd/business": st.fixed_dictionaries({"enterprise_code": tax10}),
    "thue/tax_status": st.fixed_dictionaries({"tax_code": st.from_regex(r"\A[0-9]{10}(-?[0-9]{3})?\Z")}),
    "bhxh/insurance_status": st.fixed_dictionaries({"cccd": cccd}),
    "bhxh/health_card": st.fixed_dictionaries({"cccd": cccd}),
    "btp/judicial_record": st.fixed_dictionaries({"cccd": cccd}),
    "btp/birth_record": st.fixed_dictionaries({"cccd": cccd}),
    "btp/marital_status": st.fixed_dictionaries({"cccd": cccd}),
    "csgt/driving_licence": st.fixed_dictionaries({"licence_number": st.from_regex(r"\A[0-9]{12}\Z")}),
    "csgt/vehicle": st.fixed_dictionaries(
        {"plate": st.from_regex(r"\A(29|30|43|12|51|99)[A-Z][0-9]?-[0-9]{3}\.[0-9]{2}\Z")}
    ),
}


def call(key: str, body: dict[str, Any]) -> tuple[int, Any]:
    svc = CATALOG.get(*_split(key))
    changes: list[Change] | None = [] if svc is not None and svc.effects is Effects.WRITE else None
    try:
        return 200, asyncio.run(HANDLERS[key](Request(meta=META, body=body, changes=changes)))
    except BusinessError as exc:
        return exc.status, exc.code


def test_every_local_service_has_a_request_strategy() -> None:
    assert set(REQUESTS) == set(HANDLERS)
    assert {s.key for s in CATALOG} == set(HANDLERS) | {"tnmt/land_parcel"}


@pytest.mark.parametrize("key", sorted(REQUESTS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_answers_fit_the_contract_and_are_deterministic(key: str, data: st.DataObject) -> None:
    provider, service = key.split("/")
    contract = CATALOG.get(provider, service)
    assert contract is not None
    body = data.draw(REQUESTS[key])
    assert contract.request.is_valid(body), body
    status, answer = call(key, body)
    if status == 200:
        assert contract.response.is_valid(answer), contract.response.violations(answer)
    else:
        assert status == 404
        assert answer.endswith("_not_found")
    assert call(key, body) == (status, answer)


PERSON_SERVICES = ["bhxh/insurance_status", "bhxh/health_card", "btp/judicial_record",
                   "btp/birth_record", "btp/marital_status"]  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(cccd)
def test_a_person_is_the_same_person_at_every_agency(number: str) -> None:
    status, citizen = call("bca/citizen", {"cccd": number})
    for key in PERSON_SERVICES:
        other_status, other = call(key, {"cccd": number})
        assert other_status == status, key
        if status == 200:
            for field in ("cccd", "full_name", "gender", "birth_date"):
                assert other[field] == citizen[field], (key, field)
    if status == 200:
        verified = call(
            "bca/verify_identity",
            {"cccd": number, "full_name": citizen["full_name"].upper(),
             "birth_date": citizen["birth_date"]},
        )  # fmt: skip
        assert verified == (200, {"match": True})
        _, household = call("bca/household", {"cccd": number})
        assert number in {m["cccd"] for m in household["members"]}
        for member in household["members"]:
            _, member_citizen = call("bca/citizen", {"cccd": member["cccd"]})
            assert member_citizen["full_name"] == member["full_name"]
            assert member_citizen["birth_date"] == member["birth_date"]


@settings(max_examples=60, deadline=None)
@given(tax10)
def test_business_and_tax_agree_on_the_enterprise_and_its_representative_exists(code: str) -> None:
    status, business = call("dkkd/business", {"enterprise_code": code})
    tax_status, tax = call("thue/tax_status", {"tax_code": code})
    assert status == tax_status
    if status == 200:
        assert tax["taxpayer_name"] == business["name"]
        rep = business["legal_representative"]
        assert call("bca/citizen", {"cccd": rep["cccd"]})[1]["full_name"] == rep["full_name"]


def test_a_fixed_documented_share_of_identifiers_does_not_exist() -> None:
    numbers = [f"001090{i:06d}" for i in range(4000)]
    missing = sum(synthetic.person(n) is None for n in numbers) / len(numbers)
    assert abs(missing - synthetic.MISSING_PERCENT / 100) < 0.015


def test_a_lookup_cannot_record_a_change_and_a_write_records_one_and_its_event() -> None:
    with pytest.raises(TypeError, match="lookup"):
        asyncio.run(HANDLERS["bca/register_address"](Request(meta=META, body=_REGISTRATION)))
    changes: list[Change] = []
    answer = asyncio.run(
        HANDLERS["bca/register_address"](Request(meta=META, body=_REGISTRATION, changes=changes))
    )
    assert [(c.key, c.event) for c in changes] == [
        (_REGISTRATION["cccd"], None),
        (_REGISTRATION["cccd"], "address_changed"),
    ]
    assert changes[0].value["registration_id"] == answer["registration_id"]
    event_type = CATALOG.event("bca", "address_changed")
    assert event_type is not None
    assert event_type.schema.violations(changes[1].value) == [], "the event passes its own schema"
    assert changes[1].value["registration_id"] == answer["registration_id"]


_REGISTRATION = CATALOG.get("bca", "register_address").examples[0]  # type: ignore[union-attr]


def test_a_licence_issued_on_29_february_expires_ten_years_later_without_a_crash() -> None:
    # Found by the property test above: 29 February + 10 years is no date.
    status, answer = call("csgt/driving_licence", {"licence_number": "102220000080"})
    assert status == 200
    assert answer["expires_on"] is None or answer["expires_on"][5:] in ("02-28", answer["issued_on"][5:])


def _split(name: str) -> tuple[str, str]:
    """``provider/service`` as its two parts."""
    provider, _, service = name.partition("/")
    return provider, service
