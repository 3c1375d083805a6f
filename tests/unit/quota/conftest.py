"""Both stores for the contract tests: the Lua scripts on a real Redis, and in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from router.config import RedisSettings
from router.quota.base import Store
from router.quota.memory_store import MemoryStore
from router.quota.redis_store import RedisStore


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str
) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    s = RedisStore(RedisSettings(url=redis_url, key_prefix=key_prefix))
    yield s
    await s.aclose()
