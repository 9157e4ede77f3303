"""Who is calling: the API key (``Authorization: Bearer``) or a verified client certificate."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from aiohttp import web

from broker.contracts.registry import Agency, Registry
from broker.egress import is_address
from broker.errors import NdxpError, Unauthorized
from broker.gateway.middleware import header
from broker.gateway.state import Gateway


def authenticate(gw: Gateway, request: web.Request) -> Agency:
    """The calling agency, from ``Authorization: Bearer <api key>`` or a verified client certificate.

    A valid credential is admitted whatever its address has done: behind a NAT,
    a load balancer or a proxy many agencies share one address, and an
    outsider's wrong guesses must not lock them out. Failures are limited per
    source address (``client_address``): past the allowance they get 429
    ``rate_limited`` instead of 401, and cost no more.
    """
    address = client_address(gw, request)
    try:
        agency = credential_agency(gw.registry, request)
    except NdxpError:
        gw.metrics.auth_failures.inc()
        gw.limits.check_address(address)  # past the allowance: 429, not another 401
        gw.limits.auth_failed(address)
        raise
    return agency


def recheck(gw: Gateway, request: web.Request, agency: Agency) -> Callable[[], str | None]:
    """For a long-lived answer (an event stream): a check, cheap enough to run every second, of
    whether the credential this request was admitted with still names ``agency`` in the live
    registry (not revoked, not expired, the agency not removed). It returns why not, or None."""
    auth = header(request, "Authorization") or ""
    scheme, _, key = auth.partition(" ")
    key = key.strip() if scheme.lower() == "bearer" else ""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None

    def check() -> str | None:
        holder = gw.registry.authenticate(key) if key else None
        if key and (holder is None or holder.id != agency.id):
            return "the API key was revoked or has expired"
        if der and not key:
            by_cert = gw.registry.authenticate_cert(der)
            if by_cert is None or by_cert.id != agency.id:
                return "the client certificate is no longer registered"
        return None

    return check


def client_address(gw: Gateway, request: web.Request) -> str:
    """Where the call comes from (see :func:`address_of`)."""
    return address_of(request, gw.settings.trusted_proxies)


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def address_of(request: web.Request, trusted: Networks) -> str:
    """Where the call comes from: the peer, or, when the peer is a trusted proxy
    (``NDXP_TRUSTED_PROXIES``), the nearest address in ``X-Forwarded-For`` that is not one."""
    peer = request.remote or "-"
    if not trusted or not _within(peer, trusted):
        return peer
    forwarded = [
        a.strip() for a in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if a.strip()
    ]
    for hop in reversed(forwarded):  # the right-most hops were added by our own proxies
        if not _within(hop, trusted):
            return hop if is_address(hop) else peer
    return peer


def _within(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def credential_agency(registry: Registry, request: web.Request) -> Agency:
    """The agency the request's credential names in ``registry`` (Unauthorized otherwise): its key,
    its verified client certificate, or both agreeing; a key alone when the agency requires its
    certificate is refused. The exchange port and the management API share it."""
    auth = header(request, "Authorization") or ""
    by_cert = _certificate_agency(registry, request)
    if by_cert is not None and not auth:
        return by_cert
    scheme, _, key = auth.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send your API key as 'Authorization: Bearer <api key>'")
    agency = registry.authenticate(key.strip())
    if agency is None:
        raise Unauthorized("unknown API key")
    if by_cert is not None and by_cert.id != agency.id:
        raise Unauthorized("the client certificate and the API key name different agencies")
    if agency.cert_required and by_cert is None:
        raise Unauthorized(f"{agency.id} calls with its client certificate (its key alone is not enough)")
    return agency


def _certificate_agency(registry: Registry, request: web.Request) -> Agency | None:
    """The agency of the verified client certificate (mutual TLS), if the caller sent one.

    A certificate that TLS verified but the registry does not know is refused:
    it is a claim of identity that maps to no agency.
    """
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    agency = registry.authenticate_cert(der)
    if agency is None:
        raise Unauthorized("the client certificate is not registered to any agency")
    return agency
