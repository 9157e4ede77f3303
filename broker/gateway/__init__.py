"""The REST gateway: aiohttp app, exchange path, reply routing, metaservices."""
