"""Shared fixtures: a real Redis, fake upstreams, the gateway under test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.fakes import FakeOpenAI
from tests.support.postgres import database_url as _database_url
from tests.support.postgres import new_schema
from tests.support.redis_server import redis_url as _redis_url

DEMO_KEY = "sk-test-demo-0001"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """$REDIS_URL when set, else a redis-server of our own on a free port."""
    with _redis_url() as url:
        yield url


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """$DATABASE_URL when set, else a PostgreSQL server of our own."""
    with _database_url() as url:
        yield url


@pytest.fixture
def db_schema() -> str:
    """A database schema of this test's own, so tests never see each other's keys."""
    return new_schema()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test's own, so tests never see each other's counters."""
    return f"spt-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI("up").start()
    yield fake
    await fake.stop()
