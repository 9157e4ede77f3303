"""Runs the test provider's adapter in its own process (for restart and kill tests).

Usage: python -m tests.integration.adapter_proc <provider>; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from adapters.runtime.adapter import Adapter
from broker.settings import Settings
from tests.integration.exchange_fixtures import EchoHandlers


async def main(provider: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with Adapter(Settings.from_env(), provider, EchoHandlers().handlers()) as adapter:
        await adapter.wait_assigned()
        print("assigned", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
