"""Social insurance's own backend (simulated): a SOAP 1.1 service with its own WSDL.

Many government backends speak SOAP. This one answers in its own vocabulary
(Vietnamese element names, typed dates and booleans) at ``POST /soap``, and
describes itself at ``GET /soap?wsdl``; the platform reaches it with no code,
through the bindings in ``schemas/bhxh/*.json``. A citizen it does not know is
the fault ``tns:KhongTimThay``. Run it with ``ndxp backend bhxh --port 8092``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from aiohttp import web
from lxml import etree

from adapters.demo import synthetic
from broker.settings import Settings

NS = "urn:vn:bhxh:tra-cuu:1"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)

_PERSON = """
          <xsd:element name="soCccd" type="xsd:string"/>
          <xsd:element name="hoTen" type="xsd:string"/>
          <xsd:element name="gioiTinh" type="xsd:string"/>
          <xsd:element name="ngaySinh" type="xsd:date"/>"""

WSDL = f"""<?xml version="1.0" encoding="UTF-8"?>
<definitions name="TraCuuBHXH" targetNamespace="{NS}" xmlns="http://schemas.xmlsoap.org/wsdl/"
    xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:tns="{NS}"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <types>
    <xsd:schema targetNamespace="{NS}" elementFormDefault="qualified">
      <xsd:element name="TraCuuThamGia">
        <xsd:complexType><xsd:sequence><xsd:element name="soCccd" type="xsd:string"/></xsd:sequence>
        </xsd:complexType>
      </xsd:element>
      <xsd:element name="TraCuuThamGiaResponse">
        <xsd:complexType><xsd:sequence>{_PERSON}
          <xsd:element name="soSoBhxh" type="xsd:string"/>
          <xsd:element name="dangThamGia" type="xsd:boolean"/>
          <xsd:element name="soThangDong" type="xsd:int"/>
        </xsd:sequence></xsd:complexType>
      </xsd:element>
      <xsd:element name="TraCuuTheBHYT">
        <xsd:complexType><xsd:sequence><xsd:element name="soCccd" type="xsd:string"/></xsd:sequence>
        </xsd:complexType>
      </xsd:element>
      <xsd:element name="TraCuuTheBHYTResponse">
        <xsd:complexType><xsd:sequence>{_PERSON}
          <xsd:element name="soThe" type="xsd:string"/>
          <xsd:element name="tuNgay" type="xsd:date"/>
          <xsd:element name="denNgay" type="xsd:date"/>
          <xsd:element name="conHieuLuc" type="xsd:boolean"/>
          <xsd:element name="noiDangKy" type="xsd:string"/>
        </xsd:sequence></xsd:complexType>
      </xsd:element>
    </xsd:schema>
  </types>
  <message name="TraCuuThamGiaIn"><part name="parameters" element="tns:TraCuuThamGia"/></message>
  <message name="TraCuuThamGiaOut"><part name="parameters" element="tns:TraCuuThamGiaResponse"/></message>
  <message name="TraCuuTheBHYTIn"><part name="parameters" element="tns:TraCuuTheBHYT"/></message>
  <message name="TraCuuTheBHYTOut"><part name="parameters" element="tns:TraCuuTheBHYTResponse"/></message>
  <portType name="TraCuuPort">
    <operation name="TraCuuThamGia"><input message="tns:TraCuuThamGiaIn"/>
      <output message="tns:TraCuuThamGiaOut"/></operation>
    <operation name="TraCuuTheBHYT"><input message="tns:TraCuuTheBHYTIn"/>
      <output message="tns:TraCuuTheBHYTOut"/></operation>
  </portType>
  <binding name="TraCuuBinding" type="tns:TraCuuPort">
    <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <operation name="TraCuuThamGia"><soap:operation soapAction="{NS}#TraCuuThamGia"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>
    <operation name="TraCuuTheBHYT"><soap:operation soapAction="{NS}#TraCuuTheBHYT"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>
  </binding>
  <service name="TraCuuBHXH">
    <port name="TraCuuPort" binding="tns:TraCuuBinding"><soap:address location="{{address}}"/></port>
  </service>
</definitions>
"""


def _person(p: synthetic.Person) -> list[tuple[str, Any]]:
    return [("soCccd", p.cccd), ("hoTen", p.full_name), ("gioiTinh", "Nam" if p.gender == "male" else "Nữ"),
            ("ngaySinh", p.birth_date)]  # fmt: skip


def insurance_status(p: synthetic.Person) -> list[tuple[str, Any]]:
    """Participation in social insurance, as the social insurance agency records it."""
    r = synthetic.rng("bhxh", p.cccd)
    working_age = 18 <= synthetic.age(p) < 62
    participating = working_age and r.random() < 0.65
    months = r.randrange(1, 12 * (synthetic.age(p) - 17)) if participating else 0
    return [*_person(p), ("soSoBhxh", synthetic.insurance_number(p)), ("dangThamGia", participating),
            ("soThangDong", months)]  # fmt: skip


def health_card(p: synthetic.Person) -> list[tuple[str, Any]]:
    """The citizen's health insurance card (thẻ BHYT)."""
    r = synthetic.rng("bhyt", p.cccd)
    group = r.choice(["DN", "HC", "GD", "HS", "TE", "HT"])
    valid_from = dt.date(synthetic.REFERENCE_DATE.year, 1, 1)
    valid_to = dt.date(synthetic.REFERENCE_DATE.year, 12, 31)
    expired = r.random() < 0.1
    if expired:
        valid_from = valid_from.replace(year=valid_from.year - 1)
        valid_to = valid_to.replace(year=valid_to.year - 1)
    return [*_person(p), ("soThe", f"{group}{r.randint(1, 5)}{p.cccd[1:3]}{synthetic.insurance_number(p)}"),
            ("tuNgay", valid_from), ("denNgay", valid_to), ("conHieuLuc", not expired),
            ("noiDangKy", r.choice(synthetic.HOSPITALS))]  # fmt: skip


OPERATIONS: dict[str, Callable[[synthetic.Person], list[tuple[str, Any]]]] = {
    "TraCuuThamGia": insurance_status,
    "TraCuuTheBHYT": health_card,
}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _envelope(body: etree._Element) -> bytes:
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP, "tns": NS})
    etree.SubElement(env, f"{{{SOAP}}}Body").append(body)
    result: bytes = etree.tostring(env, xml_declaration=True, encoding="utf-8")
    return result


def _fault(code: str, text: str) -> web.Response:
    fault = etree.Element(f"{{{SOAP}}}Fault")
    etree.SubElement(fault, "faultcode").text = code
    etree.SubElement(fault, "faultstring").text = text
    return web.Response(body=_envelope(fault), status=500, content_type="text/xml", charset="utf-8")


def create_backend(settings: Settings) -> web.Application:
    latency = settings.sim_latency_ms / 1000

    async def wsdl(request: web.Request) -> web.Response:
        address = f"{request.scheme}://{request.host}/soap"
        return web.Response(text=WSDL.replace("{address}", address), content_type="text/xml")

    async def call(request: web.Request) -> web.Response:
        if latency:
            await asyncio.sleep(latency)
        try:
            doc = etree.fromstring(await request.read(), _PARSER)
            body = doc.find(f"{{{SOAP}}}Body")
            op = body[0] if body is not None and len(body) else None
            name = etree.QName(op).localname if op is not None else ""
            cccd = op.findtext(f"{{{NS}}}soCccd") if op is not None else None
        except etree.XMLSyntaxError:
            return _fault("soap:Client", "không đọc được yêu cầu")
        if name not in OPERATIONS or not cccd:
            return _fault("soap:Client", f"không có thao tác {name}")
        p = synthetic.person(cccd)
        if p is None:
            return _fault("tns:KhongTimThay", f"không tìm thấy công dân {cccd}")
        answer = etree.Element(f"{{{NS}}}{name}Response")
        for field, value in OPERATIONS[name](p):
            etree.SubElement(answer, f"{{{NS}}}{field}").text = _text(value)
        return web.Response(body=_envelope(answer), content_type="text/xml", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/soap", wsdl)
    app.router.add_post("/soap", call)
    app.router.add_get("/healthz", healthz)
    return app
