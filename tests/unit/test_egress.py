"""Where the keeper's callbacks may go (broker/egress.py)."""

from __future__ import annotations

import aiohttp
import pytest

from broker.egress import connector, error_kind, is_public, refusal, status_kind


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False),
        ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
        ("::1", False), ("fe80::1", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False), ("0.0.0.0", False), ("not an address", False),
    ],
)  # fmt: skip
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_a_url_is_refused_before_connecting_when_it_is_not_https_or_names_a_private_address() -> None:
    assert refusal("http://receiver.example/cb", allow_private=False) == "refused: a callback URL is https"
    assert (
        refusal("https://10.0.0.5/cb", allow_private=False) == "refused: the callback's address is not public"
    )
    assert (
        refusal("https://[::1]:8443/cb", allow_private=False)
        == "refused: the callback's address is not public"
    )
    assert refusal("https://receiver.example/cb", allow_private=False) is None  # checked when resolved
    assert refusal("http://127.0.0.1:9/cb", allow_private=True) is None


async def test_a_name_that_resolves_to_loopback_is_refused_at_connect_time() -> None:
    async with aiohttp.ClientSession(connector=connector(False, limit=10, per_host=2)) as session:
        with pytest.raises(aiohttp.ClientError) as caught:
            await session.get("https://localhost:9/metrics")
    assert error_kind(caught.value) == "refused: the callback's address is not public"


def test_failures_tell_their_kind_only() -> None:
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(ConnectionRefusedError(111, "Connection refused to 10.0.0.7:9102")) == "unreachable"
    assert status_kind(405) == "HTTP 4xx"
    assert status_kind(503) == "HTTP 5xx"
