"""Simulated agencies: one module per provider, each exposing ``handlers(settings)``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from contextlib import AsyncExitStack

from adapters.runtime import Handler
from broker.settings import Settings

AGENCIES: dict[str, str] = {
    "bca": "adapters.demo.agencies.population",
    "dkkd": "adapters.demo.agencies.enterprise",
    "thue": "adapters.demo.agencies.tax",
    "btp": "adapters.demo.agencies.justice",
    "csgt": "adapters.demo.agencies.transport",
}
"""Provider agency id → module serving it. Land (``tnmt``) and social insurance (``bhxh``) have
no code here: their services are bound to their own backends (``schemas/*/``, ``binding``)."""


def handlers_for(agency: str, settings: Settings, resources: AsyncExitStack) -> Mapping[str, Handler]:
    """The service handlers of a simulated agency (KeyError if there is none).

    An agency that holds resources (an HTTP client, say) registers their
    cleanup on ``resources``, which the caller closes after its adapter stops.
    """
    module = importlib.import_module(AGENCIES[agency])
    result: Mapping[str, Handler] = module.handlers(settings, resources)
    return result
