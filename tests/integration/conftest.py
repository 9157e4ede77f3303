from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from broker.settings import Settings
from tests.fixtures import write_contracts, write_registry


@pytest.fixture
def provider() -> str:
    """A provider name unique to the test, so its topics are too."""
    return f"tp{uuid.uuid4().hex[:10]}"


@pytest.fixture
def exchange_settings(settings: Settings, provider: str, tmp_path: Path) -> Settings:
    """Settings with the test provider's contracts and registry, unique topics."""
    return settings.replace(
        schemas_dir=write_contracts(tmp_path, provider),
        registry_path=write_registry(tmp_path, provider),
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
        tx_topic=f"{settings.tx_topic}.{provider}",
        stats_topic=f"{settings.stats_topic}.{provider}",
        exchanges_topic=f"{settings.exchanges_topic}.{provider}",
        registry_topic=f"{settings.registry_topic}.{provider}",
        max_body_bytes=64 * 1024,
    )
