"""Errors of the platform: the HTTP branch (problem+json, RFC 9457) and the start-up branch.

The tree (HTTP status, stable ``code``)::

    NdxpException                               everything the platform raises on purpose
    ├── StartupError                            a part cannot start: `ndxp` prints one line, exits 1
    │   ├── SettingsError                       an NDXP_ variable that cannot be used (exit 2)
    │   ├── CatalogError                        a contract or event type that does not load
    │   ├── RegistryError                       a registry that does not load
    │   ├── KafkaUnavailable                    Kafka cannot be reached or used
    │   ├── LocalKafkaError                     a local Kafka that cannot start (Java, Maven, ports)
    │   ├── PlatformError                       `ndxp up`: a part that does not come up
    │   └── AdapterSetupError                   an agency that cannot be served
    ├── PartFailed                              a running part's Kafka loop died: exit 1, restarted
    │   └── TransactionFenced                   another instance took over a transactional id
    ├── BusinessError                           a provider's own answer (e.g. not found): passed through
    ├── BackendError                            an agency's own backend failed, was unreachable or too slow
    └── NdxpError                               one HTTP answer each (status, code)
        ├── Unauthorized            401 unauthorized
        ├── AccessDenied            403 access_denied
        ├── UnknownService          404 unknown_service
        ├── NotFound                404 not_found          (no such path)
        ├── MethodNotAllowed        405 method_not_allowed
        ├── InvalidRequest          400 invalid_request    (with failing schema paths)
        │   └── InvalidHeader       400 invalid_header     (header bytes that are not UTF-8)
        ├── RequestTimeout          408 request_timeout    (body not received in time)
        ├── PayloadTooLarge         413 payload_too_large
        ├── RateLimited             429 rate_limited       (Retry-After)
        ├── Overloaded              503 overloaded         (Retry-After)
        ├── Timeout                 504 timeout            (also a TimeoutError)
        ├── ProviderError           502 provider_error
        ├── InvalidResponse         502 invalid_response   (provider broke its contract)
        ├── Unavailable             503 unavailable        (not ready, or Kafka unreachable)
        ├── IdempotencyKeyReused    422 idempotency_key_reused    (same key, another request)
        ├── IdempotencyKeyInFlight  409 idempotency_key_in_flight (Retry-After)
        ├── Conflict                409 conflict           (management API: a stale If-Match)
        ├── Forbidden               403 access_denied      (management API: another agency's documents)
        ├── OperatorOnly            403 access_denied      (/metrics on the exchange port)
        └── ClientClosed            499 client_closed      (the caller went away; recorded, never sent)

Every class is defined here; the modules that raise them import them from here.
A provider's own business errors are not raised: they pass through with the
provider's status and problem body.
"""

from __future__ import annotations

from typing import Any, ClassVar


def problem_body(status: int, code: str, title: str, detail: str, exchange_id: str | None) -> dict[str, Any]:
    """An RFC 9457 problem with the platform's ``code`` and ``exchange_id`` members."""
    return {
        "type": f"https://ndxp.example/problems/{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
        "exchange_id": exchange_id,
    }


class NdxpException(Exception):
    """Root of everything the platform raises on purpose."""


class StartupError(NdxpException):
    """A part cannot start (configuration, contracts, registry, Kafka, local processes).

    The message names what is wrong and where; the ``ndxp`` command prints it
    as one line and exits non-zero.
    """


class SettingsError(StartupError, ValueError):
    """An environment variable holds a value that cannot be used."""


class CatalogError(StartupError, ValueError):
    """A service contract cannot be used; the message names the file and the fault."""


class RegistryError(StartupError, ValueError):
    """The registry cannot be used; the message names the file and the fault."""


class KafkaUnavailable(StartupError, RuntimeError):
    """No Kafka bootstrap address is configured or the cluster cannot be reached."""


class LocalKafkaError(StartupError, RuntimeError):
    """The local Kafka could not be resolved, started or stopped."""


class PlatformError(StartupError, RuntimeError):
    """A part of the platform failed to start."""


class AdapterSetupError(StartupError, ValueError):
    """An agency cannot be served (unknown, or its handlers do not match the catalog)."""


class PartFailed(NdxpException, RuntimeError):
    """A part's Kafka loop died while serving; its process exits non-zero."""


class TransactionFenced(PartFailed):
    """Another instance started with this part's transactional id: this one must stop."""


class BusinessError(NdxpException):
    """A provider's own answer that is not a success (e.g. citizen not found).

    It passes through the gateway with ``status`` and this problem body.
    """

    def __init__(self, status: int, code: str, detail: str, title: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()

    def problem(self, exchange_id: str) -> dict[str, Any]:
        """The problem+json body the caller receives."""
        return problem_body(self.status, self.code, self.title, self.detail, exchange_id)


class BackendError(NdxpException, RuntimeError):
    """An agency's own backend failed, was unreachable, too slow or too busy."""


class NdxpError(NdxpException):
    """Root of the platform's errors; each maps to one problem+json response."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    retriable: ClassVar[bool] = False

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.extra = extra or {}

    def problem(self, exchange_id: str | None) -> dict[str, Any]:
        """The problem+json body of this error."""
        return {**problem_body(self.status, self.code, self.title, self.detail, exchange_id), **self.extra}


class Unauthorized(NdxpError):
    status, code, title = 401, "unauthorized", "Missing or unknown API key"


class AccessDenied(NdxpError):
    status, code, title = 403, "access_denied", "Caller may not call this service"


class UnknownService(NdxpError):
    status, code, title = 404, "unknown_service", "No such service"


class NotFound(NdxpError):
    status, code, title = 404, "not_found", "No such resource"


class MethodNotAllowed(NdxpError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class InvalidRequest(NdxpError, ValueError):
    status, code, title = 400, "invalid_request", "Request does not match the service contract"


class InvalidHeader(InvalidRequest):
    status, code, title = 400, "invalid_header", "A header is not valid UTF-8 text"


class RequestTimeout(NdxpError, TimeoutError):
    status, code, title, retriable = 408, "request_timeout", "Request body not received in time", True


class ClientClosed(NdxpError, ConnectionError):
    """The caller closed the connection before the exchange ended: its own outcome, not a server error."""

    status, code, title = 499, "client_closed", "Client closed the connection"


class PayloadTooLarge(NdxpError):
    status, code, title = 413, "payload_too_large", "Request body too large"


class RateLimited(NdxpError):
    status, code, title, retriable = 429, "rate_limited", "Rate limit exceeded", True


class Overloaded(NdxpError):
    status, code, title, retriable = 503, "overloaded", "Gateway overloaded", True


class Timeout(NdxpError, TimeoutError):
    status, code, title, retriable = 504, "timeout", "Provider did not answer in time", True


class ProviderError(NdxpError):
    status, code, title, retriable = 502, "provider_error", "Provider failed", True


class InvalidResponse(NdxpError):
    status, code, title = 502, "invalid_response", "Provider answered outside its contract"


class Unavailable(NdxpError):
    status, code, title, retriable = 503, "unavailable", "Gateway not ready", True


class IdempotencyKeyReused(NdxpError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency-Key already used for another request"


class IdempotencyKeyInFlight(NdxpError):
    status, code, title, retriable = (
        409,
        "idempotency_key_in_flight",
        "A request with this Idempotency-Key is in flight",
        True,
    )


class Conflict(NdxpError):
    status, code, title = 409, "conflict", "The resource changed since you read it (stale If-Match)"


class Forbidden(AccessDenied):
    title = "Caller may not administer this resource"


class OperatorOnly(AccessDenied):
    title = "Only an operator may read this"
