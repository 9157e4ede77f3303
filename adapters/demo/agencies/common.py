"""What the simulated agencies share: latency simulation, not-found errors, person fields."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from adapters.demo import synthetic
from adapters.runtime import Handler, Request
from broker.errors import BusinessError
from broker.settings import Settings


def simulated(settings: Settings) -> Callable[[Handler], Handler]:
    """Decorator adding the configured simulated processing latency (default none)."""
    latency = settings.sim_latency_ms / 1000

    def wrap(handler: Handler) -> Handler:
        if not latency:
            return handler

        @functools.wraps(handler)
        async def slowed(req: Request) -> Any:
            await asyncio.sleep(latency)
            return await handler(req)

        return slowed

    return wrap


def not_found(kind: str, identifier: str) -> BusinessError:
    return BusinessError(404, f"{kind}_not_found", f"no {kind.replace('_', ' ')} {identifier}")


def citizen_or_404(cccd: str) -> synthetic.Person:
    p = synthetic.person(cccd)
    if p is None:
        raise not_found("citizen", cccd)
    return p


def person_fields(p: synthetic.Person) -> dict[str, str]:
    """The identity every agency reports the same way."""
    return {
        "cccd": p.cccd,
        "full_name": p.full_name,
        "gender": p.gender,
        "birth_date": p.birth_date.isoformat(),
    }
