"""Simulated agencies: one module per provider, each exposing ``handlers(settings)``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from adapters.runtime import Handler
from broker.settings import Settings

AGENCIES: dict[str, str] = {
    "bca": "adapters.agencies.population",
}
"""Provider agency id → module serving it."""


def handlers_for(agency: str, settings: Settings) -> Mapping[str, Handler]:
    """The service handlers of a simulated agency (KeyError if there is none)."""
    module = importlib.import_module(AGENCIES[agency])
    result: Mapping[str, Handler] = module.handlers(settings)
    return result
