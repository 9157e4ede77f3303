"""Who is calling: the API key (``Authorization: Bearer``) or a verified client certificate."""

from __future__ import annotations

from aiohttp import web

from broker.contracts.registry import Agency
from broker.errors import NdxpError, Unauthorized
from broker.gateway.middleware import header
from broker.gateway.state import Gateway


def authenticate(gw: Gateway, request: web.Request) -> Agency:
    """The calling agency, from ``Authorization: Bearer <api key>`` only.

    Failed attempts are limited per source address: past the allowance the
    address gets 429 ``rate_limited`` without its key being looked at.
    """
    address = request.remote or "-"
    gw.limits.check_address(address)
    try:
        auth = header(request, "Authorization") or ""
        by_cert = _certificate_agency(gw, request)
        if by_cert is not None and not auth:
            return by_cert
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("send your API key as 'Authorization: Bearer <api key>'")
        agency = gw.registry.authenticate(key.strip())
        if agency is None:
            raise Unauthorized("unknown API key")
        if by_cert is not None and by_cert.id != agency.id:
            raise Unauthorized("the client certificate and the API key name different agencies")
    except NdxpError:
        gw.limits.auth_failed(address)
        gw.metrics.auth_failures.inc()
        raise
    return agency


def _certificate_agency(gw: Gateway, request: web.Request) -> Agency | None:
    """The agency of the verified client certificate (mutual TLS), if the caller sent one.

    A certificate that TLS verified but the registry does not know is refused:
    it is a claim of identity that maps to no agency.
    """
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    agency = gw.registry.authenticate_cert(der)
    if agency is None:
        raise Unauthorized("the client certificate is not registered to any agency")
    return agency
