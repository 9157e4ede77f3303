"""Runs the exchange keeper in its own process (for kill tests), on the test's registry file.

Usage: python -m tests.integration.keeper_proc; settings from the environment; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import signal

from broker.settings import Settings
from tests.integration.exchange_fixtures import running_keeper


async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with running_keeper(Settings.from_env()):
        print("keeper running", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
