"""Simulated agencies: one module per provider, each exposing ``handlers(settings)``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from contextlib import AsyncExitStack
from importlib.metadata import entry_points

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


ENTRY_POINTS = "ndxp.agencies"
"""Where an agency's own package offers its handlers: an entry point named by its agency id, pointing
at ``handlers(settings, resources) -> {service: handler}`` (see the adapter kit in the docs)."""


def known(agency: str) -> bool:
    """Whether ``agency`` has handlers here: simulated, or an installed package's entry point."""
    return agency in AGENCIES or bool(entry_points(group=ENTRY_POINTS, name=agency))


def handlers_for(agency: str, settings: Settings, resources: AsyncExitStack) -> Mapping[str, Handler]:
    """The service handlers of a simulated agency, or of an agency's own installed package (its
    ``ndxp.agencies`` entry point); KeyError if there are none.

    An agency that holds resources (an HTTP client, say) registers their
    cleanup on ``resources``, which the caller closes after its adapter stops.
    """
    if agency in AGENCIES:
        make = importlib.import_module(AGENCIES[agency]).handlers
    else:
        found = entry_points(group=ENTRY_POINTS, name=agency)
        if not found:
            raise KeyError(agency)
        make = next(iter(found)).load()
    result: Mapping[str, Handler] = make(settings, resources)
    return result
