"""Where callbacks may go: public addresses only, checked when the connection is made.

A callback URL comes from the registry, never from a request, but an agency
sets its own: without a check it could aim the keeper at the platform's own
network (``http://localhost:9102/metrics``, a cloud's metadata address) and
read what answers from the callback's error. So:

- the URL is ``https`` (``NDXP_CALLBACK_ALLOW_PRIVATE`` allows ``http`` and
  private addresses, for local development and tests);
- its host is resolved when the keeper connects, every address checked
  (loopback, private, link-local, unique-local, multicast, reserved and
  unspecified are refused) and only the checked addresses are connected to
  (no second resolution a DNS rebinding could answer differently);
- what the agency sees of a failure is its kind (``refused``, ``unreachable``,
  ``timeout``, ``HTTP 5xx``), never a host, a port or an OS message.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class NotPublic(OSError):
    """The callback's address is not a public one."""


def is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class PublicOnlyResolver(AbstractResolver):
    """Resolves as usual, then keeps only public addresses (none left: :class:`NotPublic`)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if is_public(r["host"])]
        if not public:
            raise NotPublic("the callback's host has no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def is_address(text: str) -> bool:
    """Whether ``text`` is an IP address (not a name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def refusal(url: str, allow_private: bool, what: str = "callback") -> str | None:
    """Why a ``what`` (a callback, a bound backend) may not be called at ``url`` before any
    connection (None: it may be tried; a host name is checked when it is resolved)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" and not allow_private:
        return f"refused: a {what} URL is https"
    host = parts.hostname or ""
    if is_address(host) and not allow_private and not is_public(host):
        return f"refused: the {what}'s address is not public"
    return None


def connector(allow_private: bool, *, limit: int, per_host: int) -> aiohttp.TCPConnector:
    """The keeper's connection pool: bounded in all and per host, public addresses only."""
    resolver = None if allow_private else PublicOnlyResolver()
    return aiohttp.TCPConnector(limit=limit, limit_per_host=per_host, resolver=resolver)


def error_kind(exc: BaseException) -> str:
    """What an agency is told of a failed delivery: its kind only."""
    if isinstance(exc, NotPublic) or isinstance(getattr(exc, "os_error", None), NotPublic):
        return "refused: the callback's address is not public"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientOSError | OSError):
        return "unreachable"
    return "failed"


def status_kind(status: int) -> str:
    """A receiver's non-2xx answer by its class (``HTTP 5xx``): enough to act on, too little to map by."""
    return f"HTTP {status // 100}xx"
