"""Errors as problem+json (RFC 9457), and the middleware that gives every request an exchange id."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import aiohttp.web_response
import orjson
from aiohttp import web

from broker.errors import (
    InvalidHeader,
    InvalidRequest,
    MethodNotAllowed,
    NdxpError,
    NotFound,
    PayloadTooLarge,
)
from broker.gateway.state import EXCHANGE_ID
from broker.model.envelope import new_exchange_id

log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
MAX_WAIT_S = 60
"""``Prefer: wait=N`` is honoured up to this many seconds."""
JSON = "application/json"
PROBLEM = "application/problem+json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(exc: NdxpError, exchange_id: str) -> web.Response:
    resp = web.Response(
        body=orjson.dumps(exc.problem(exchange_id)),
        status=exc.status,
        content_type=PROBLEM,
    )
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.499)))
    return resp


def header(request: web.Request, name: str) -> str | None:
    """A request header as text, or None if absent.

    aiohttp keeps header bytes that are not UTF-8 as surrogate escapes;
    such a header raises InvalidHeader (400) rather than failing later.
    """
    value = request.headers.get(name)
    if value is not None:
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidHeader(f"header {name} is not valid UTF-8 text") from None
    return value


USER_ID_PATTERN = r"^[\w.:@+-]{1,128}$"
"""``X-NDXP-User-Id``: the officer or citizen acted for, an identifier (letters of any script, digits,
``. : @ + - _``), never free text."""
PURPOSE_PATTERN = r"^[\w.:/+ -]{1,128}$"
"""``X-NDXP-Purpose``: the purpose of processing, a short label or code (spaces allowed)."""
_USER_ID = re.compile(USER_ID_PATTERN)
_PURPOSE = re.compile(PURPOSE_PATTERN)


def user_id(request: web.Request) -> str | None:
    """``X-NDXP-User-Id``, checked (InvalidRequest otherwise): it is recorded and travels to the provider."""
    given = header(request, "X-NDXP-User-Id")
    if given is not None and _USER_ID.match(given) is None:
        raise InvalidRequest("X-NDXP-User-Id must be 1-128 letters, digits or . : @ + - _ (an identifier)")
    return given


def purpose(request: web.Request) -> str | None:
    """``X-NDXP-Purpose``, checked (InvalidRequest otherwise)."""
    given = header(request, "X-NDXP-Purpose")
    if given is not None and _PURPOSE.match(given) is None:
        raise InvalidRequest("X-NDXP-Purpose must be 1-128 letters, digits, spaces or . : / + - _")
    return given


def request_id(request: web.Request) -> str | None:
    """The caller's ``X-Request-Id`` (a correlation label, never a key), or None if absent.

    Raises InvalidRequest if it is not 1-128 characters of ``A-Za-z0-9._:-``.
    """
    given = header(request, "X-Request-Id")
    if given is not None and _REQUEST_ID.match(given) is None:
        raise InvalidRequest("X-Request-Id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return given


def preferences(request: web.Request) -> dict[str, str]:
    """``Prefer`` (RFC 7240) as ``{name: value}``: ``respond-async`` → "", ``wait=10`` → "10"."""
    raw = header(request, "Prefer")
    prefs: dict[str, str] = {}
    for part in (raw or "").split(","):
        token = part.split(";", 1)[0].strip()
        name, _, value = token.partition("=")
        if name:
            prefs.setdefault(name.strip().lower(), value.strip().strip('"'))
    return prefs


def wait_seconds(prefs: dict[str, str]) -> float:
    try:
        return max(0.0, min(float(MAX_WAIT_S), float(prefs.get("wait", "0"))))
    except ValueError:
        return 0.0


def idempotency_key(request: web.Request) -> str | None:
    key = header(request, "Idempotency-Key")
    if key is not None and _IDEMPOTENCY_KEY.match(key) is None:
        raise InvalidHeader("Idempotency-Key must be 1-255 visible ASCII characters")
    return key


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A fresh exchange id on every request and response; every error as problem+json.

    The gateway alone assigns exchange ids: whatever a caller sends, no
    caller-chosen value becomes a key under which another caller's data is
    stored or found. A valid ``X-Request-Id`` is echoed as it came.
    """
    exchange_id = new_exchange_id()
    request[EXCHANGE_ID] = exchange_id
    given = request.headers.get("X-Request-Id")
    try:
        resp = await handler(request)
    except NdxpError as exc:
        resp = problem_response(exc, exchange_id)
    except web.HTTPException as exc:
        mapped: NdxpError
        if exc.status == 404:
            mapped = NotFound(f"no such path: {request.path}")
        elif exc.status == 405:
            mapped = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        elif exc.status == 413:
            mapped = PayloadTooLarge("request body too large")
        else:
            raise
        resp = problem_response(mapped, exchange_id)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        resp = problem_response(NdxpError("unexpected error; see the gateway log"), exchange_id)
    resp.headers.setdefault("X-NDXP-Exchange-Id", exchange_id)  # a replay names the first exchange
    if given is not None and given.isascii() and _REQUEST_ID.match(given) is not None:
        resp.headers["X-Request-Id"] = given
    return resp


async def server_header(_: web.Request, resp: web.StreamResponse) -> None:
    """Name the server without disclosing Python's or aiohttp's version."""
    resp.headers["Server"] = "ndxp"


# The answers aiohttp gives itself, to a request it cannot parse, never reach the app's hooks: its
# default Server header (Python's and aiohttp's versions) is the one name it falls back on.
setattr(aiohttp.web_response, "SERVER_SOFTWARE", "ndxp")  # noqa: B010 (not in its public API)
