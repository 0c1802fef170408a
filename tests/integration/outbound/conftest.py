"""The outbound store's aggregates on the test's real PostgreSQL (the ``pool`` fixture)."""

from __future__ import annotations

import asyncpg
import pytest

from agi.outbound.stores import OutboundStores


@pytest.fixture
def stores(pool: asyncpg.Pool) -> OutboundStores:
    return OutboundStores.over(pool, timeout=5.0)
