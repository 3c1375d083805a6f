"""The quota contract, run against both stores: real Redis and in-process."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import redis.asyncio as aioredis

from router.config import Config, RedisSettings
from router.quota.base import ADMITTED, BUDGET_SHORT, RATE_LIMITED, Store
from router.quota.memory_store import MemoryStore
from router.quota.plan import NANO_PER_USD, RATE_SPAN, Planner, bucket_id, rate_weight
from router.quota.redis_store import RedisStore
from tests.support.gateway import make_config

LEASE = 60


def quota_config(prefix: str, **team: object) -> Config:
    return make_config(
        {
            "redis": {"key_prefix": prefix},
            "backends": {"sim": {"provider": "simulate"}},
            "pools": {
                "local": {"members": [{"backend": "sim", "model": "m"}]},
                "hosted": {
                    "members": [{"backend": "sim", "model": "m"}],
                    "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0},
                    "budget": {"tokens_per_day": 1_000_000},
                },
            },
            "models": {"chat": {"routes": [{"pools": ["local", "hosted"]}]}},
            "teams": {"t": team},
            "keys": [{"id": "k", "team": "t", "key": "sk-test-aaaaaaaa"}],
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def settle_now(store: Store) -> None:
    """Settlements are queued; give a Redis store the time to send them."""
    if isinstance(store, RedisStore):
        await asyncio.sleep(0.05)


async def test_rate_limit_is_all_or_nothing(store: Store, key_prefix: str) -> None:
    cfg = quota_config(key_prefix, limits={"requests_per_minute": 2}, budgets=[
        {"tokens_per_day": 10_000}])  # fmt: skip
    checks = Planner(cfg).checks("k", "local")
    assert [c.name for c in checks] == ["requests_per_minute", "tokens_per_day"]
    for i in range(2):
        reply = await store.admit(f"r{i}", checks, 100, 50, 1, 0, LEASE)
        assert reply.code == ADMITTED
    refused = await store.admit("r2", checks, 100, 50, 1, 0, LEASE)
    assert refused.code == RATE_LIMITED and checks[refused.failed].name == "requests_per_minute"
    _, used = await store.status(checks)
    assert used == [2, 300]  # the refused request reserved nothing


async def test_settle_replaces_reservation_once(store: Store, key_prefix: str) -> None:
    cfg = quota_config(key_prefix, limits={"tokens_per_minute": 10_000, "concurrent": 1},
                       budgets=[{"tokens_per_day": 10_000}])  # fmt: skip
    checks = Planner(cfg).checks("k", "local")
    reply = await store.admit("a", checks, 100, 400, 1, 0, LEASE)
    assert reply.code == ADMITTED and reply.out == 400

    async def shows(expected: list[float]) -> bool:
        """The store shows ``expected`` (tokens_per_minute as counted in the admission's
        minute; should the minute have turned since, that count weighs less)."""
        now, values = await store.status(checks)
        return values == [slid(expected[0], reply.now, now), *expected[1:]]

    assert await shows([500, 1, 500])
    busy = await store.admit("b", checks, 100, 400, 1, 0, LEASE)
    assert busy.code == RATE_LIMITED and checks[busy.failed].name == "concurrent"
    store.settle("a", checks, 20, 30, False, LEASE)
    store.settle("a", checks, 20, 30, False, LEASE)  # a retried settlement is applied once
    await settle_now(store)
    assert await shows([50, 0, 50])
    again = await store.admit("a", checks, 100, 400, 1, 0, LEASE)  # replayed admission
    assert again.code == ADMITTED
    assert await shows([50, 0, 50])


def slid(count: float, written: float, now: float) -> float:
    """A rate count written at ``written`` as the sliding window shows it at ``now``."""
    minutes = int(now // RATE_SPAN) - int(written // RATE_SPAN)
    assert minutes in (0, 1), "the test took over a minute"
    return count if minutes == 0 else float(math.floor(count * rate_weight(now)))


async def test_budget_clamps_output_or_refuses(store: Store, key_prefix: str) -> None:
    cfg = quota_config(key_prefix, budgets=[{"tokens_per_day": 1000}])
    checks = Planner(cfg).checks("k", "local")
    assert (await store.admit("a", checks, 100, 700, 1, 0, LEASE)).code == ADMITTED
    short = await store.admit("b", checks, 100, 400, 1, 0, LEASE)
    assert short.code == BUDGET_SHORT and short.out == 100  # what would fit
    clamped = await store.admit("c", checks, 100, 400, 1, 1, LEASE)
    assert clamped.code == ADMITTED and clamped.out == 100
    assert (await store.status(checks))[1] == [1000]
    empty = await store.admit("d", checks, 10, 1, 1, 1, LEASE)
    assert empty.code == BUDGET_SHORT


async def test_usd_budget_uses_pool_price(store: Store, key_prefix: str) -> None:
    cfg = quota_config(key_prefix, budgets=[{"usd_per_month": 0.01, "pools": ["hosted"]}])
    planner = Planner(cfg)
    assert [c.name for c in planner.checks("k", "local")] == []
    checks = planner.checks("k", "hosted")
    usd = next(c for c in checks if c.unit == "usd")
    # $1/Mtok in, $4/Mtok out: 1000 in + 500 out = $0.001 + $0.002
    reply = await store.admit("a", checks, 1000, 500, 1, 0, LEASE)
    assert reply.code == ADMITTED
    store.settle("a", checks, 1000, 500, False, LEASE)
    await settle_now(store)
    _, used = await store.status(checks)
    assert used[checks.index(usd)] == pytest.approx(0.003 * NANO_PER_USD)
    # $0.007 left: 1000 in ($0.001) leaves room for 1500 out tokens
    assert (await store.admit("b", checks, 1000, 1501, 1, 0, LEASE)).code == BUDGET_SHORT
    assert (await store.admit("c", checks, 1000, 1500, 1, 0, LEASE)).code == ADMITTED


async def test_expired_lease_gives_back_slot_and_reservation(store: Store, key_prefix: str) -> None:
    cfg = quota_config(key_prefix, limits={"concurrent": 1}, budgets=[{"tokens_per_day": 1000}])
    checks = Planner(cfg).checks("k", "local")
    clock = Clock()
    if isinstance(store, MemoryStore):
        store.clock = clock
    assert (await store.admit("dead", checks, 100, 800, 1, 0, 1)).code == ADMITTED
    assert (await store.admit("next", checks, 10, 10, 1, 0, 1)).code == RATE_LIMITED
    # the process holding "dead" is gone; after the lease both come back
    if isinstance(store, MemoryStore):
        clock.now += 1.5
    else:
        await asyncio.sleep(1.5)
    reply = await store.admit("next", checks, 10, 10, 1, 0, 60)
    assert reply.code == ADMITTED
    assert (await store.status(checks))[1] == [1, 20]
    # a late settlement of the reclaimed request still charges what it used
    store.settle("dead", checks, 100, 50, False, 60)
    await settle_now(store)
    assert (await store.status(checks))[1] == [1, 170]


async def test_windows_match_lua(redis_url: str, key_prefix: str) -> None:
    """The Lua scripts and Python agree on bucket numbers, months included."""
    cfg = make_config(
        {
            "redis": {"key_prefix": key_prefix},
            "backends": {"sim": {"provider": "simulate"}},
            "pools": {"p": {"members": [{"backend": "sim", "model": "m"}]}},
            "models": {"chat": {"routes": [{"pools": ["p"]}]}},
            "teams": {"t": {"limits": {"requests_per_minute": 5}, "budgets": [
                {"tokens_per_hour": 10**6, "tokens_per_day": 10**6, "tokens_per_month": 10**6}]}},
            "keys": [{"id": "k", "team": "t", "key": "sk-test-aaaaaaaa"}],
        }
    )  # fmt: skip
    store = RedisStore(RedisSettings(url=redis_url, key_prefix=key_prefix))
    try:
        checks = Planner(cfg).checks("k", "p")
        reply = await store.admit("a", checks, 1, 1, 1, 0, LEASE)
        assert reply.code == ADMITTED
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = {k.decode() async for k in client.scan_iter(f"{key_prefix}:*")}
        finally:
            await client.aclose()
        for c in checks:
            assert f"{c.key}:{bucket_id(c.window, reply.now)}" in keys, c.name
    finally:
        await store.aclose()


async def test_script_reloaded_after_flush(redis_url: str, key_prefix: str) -> None:
    cfg = quota_config(key_prefix, limits={"requests_per_minute": 100})
    checks = Planner(cfg).checks("k", "local")
    store = RedisStore(RedisSettings(url=redis_url, key_prefix=key_prefix))
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert (await store.admit("a", checks, 1, 1, 1, 0, LEASE)).code == ADMITTED
        await client.script_flush()  # as after a restart or a failover
        assert (await store.admit("b", checks, 1, 1, 1, 0, LEASE)).code == ADMITTED
        store.settle("b", checks, 1, 1, False, LEASE)
        await client.script_flush()
        await asyncio.sleep(0.05)
        state = await client.hget(f"{key_prefix}:{{team:t}}:rec:b", "state")
        assert state == b"s"
    finally:
        await client.aclose()
        await store.aclose()
