"""Exact quotas across replicas: three gateway processes share one real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import GatewayProcess
from tests.support.net import eventually

KEY = "sk-test-exact-0001"
BODY = {"model": "chat", "messages": [{"role": "user", "content": "write a poem please"}]}


def config(upstream: FakeOpenAI, redis_url: str, prefix: str, **team: Any) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url, "key_prefix": prefix},
        "quota": {"lease_seconds": team.pop("lease", 900)},
        "logging": {"requests": False},
        "backends": {"gpu": {"provider": "openai", "url": upstream.url}},
        "pools": {"local": {"members": [{"backend": "gpu", "model": "llama"}]}},
        "models": {"chat": {"routes": [{"pools": ["local"]}]}},
        "teams": {"t": team},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    }


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture
async def slow_upstream() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI("slow", Behaviour(words=40, first_byte_delay=0.02)).start()
    yield fake
    await fake.stop()


async def post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any] | None]:
    """One request; returns (status, usage as the client saw it)."""
    async with session.post(url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        if r.status != 200:
            await r.read()
            return r.status, None
        if not body.get("stream"):
            return 200, (await r.json())["usage"]
        usage = None
        async for line in r.content:
            if line.startswith(b"data: {"):
                doc = orjson.loads(line[6:])
                usage = doc.get("usage") or usage
        return 200, usage


async def counter(redis_url: str, prefix: str, pattern: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(f"{prefix}:*{pattern}")]
        assert len(keys) == 1, keys
        return int(await client.get(keys[0]) or 0)
    finally:
        await client.aclose()


async def test_token_budget_never_overspent_and_exact(
    slow_upstream: FakeOpenAI, redis_url: str, key_prefix: str,
    processes: list[GatewayProcess],
) -> None:  # fmt: skip
    budget = 12_000
    cfg = config(slow_upstream, redis_url, key_prefix, budgets=[{"tokens_per_day": budget}])
    processes += [GatewayProcess(cfg) for _ in range(3)]
    usages: list[dict[str, Any]] = []
    statuses: list[int] = []

    async def worker(i: int, session: aiohttp.ClientSession) -> None:
        url = processes[i % 3].url
        n = 0
        while True:
            body = {**BODY, "max_tokens": 40}
            if (i + n) % 2:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            status, usage = await post(session, url, body)
            statuses.append(status)
            n += 1
            if status != 200:
                assert status == 429
                return
            assert usage is not None
            usages.append(usage)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(i, session) for i in range(48)))
    spent = sum(u["total_tokens"] for u in usages)
    assert len(usages) >= 200  # hundreds of admitted requests raced the budget
    assert spent <= budget
    assert spent >= 0.95 * budget, (spent, budget)

    async def stored() -> int:
        return await counter(redis_url, key_prefix, ":tokens:day:all:*")

    async def exact() -> bool:
        return await stored() == spent

    await eventually(exact, within=5)  # the counters equal the upstream-reported usage
    # every answer the upstream gave was admitted and charged: nothing ran unaccounted
    assert len(slow_upstream.seen) == len(usages)


async def test_rate_limit_exact_across_processes(
    upstream: FakeOpenAI, redis_url: str, key_prefix: str, processes: list[GatewayProcess]
) -> None:
    cfg = config(upstream, redis_url, key_prefix, limits={"requests_per_minute": 40})
    processes += [GatewayProcess(cfg) for _ in range(3)]
    # the window slides: a burst across a minute boundary counts the same as one inside
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(
            *(post(session, processes[i % 3].url, {**BODY, "max_tokens": 2}) for i in range(120))
        )
    codes = [status for status, _ in results]
    assert codes.count(200) == 40
    assert codes.count(429) == 80
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(f"{key_prefix}:*:rpm:*")]
        rpm = sum([int(await client.get(k) or 0) for k in keys])
    finally:
        await client.aclose()
    assert rpm == 40  # in one minute's counter or split over two


async def test_killed_process_slots_and_reservations_come_back(
    redis_url: str, key_prefix: str, processes: list[GatewayProcess]
) -> None:
    hung = await FakeOpenAI("hung", Behaviour(first_byte_delay=60)).start()
    try:
        cfg = config(hung, redis_url, key_prefix, lease=3, limits={"concurrent": 2},
                     budgets=[{"tokens_per_day": 1_000_000}])  # fmt: skip
        victim = GatewayProcess(cfg)
        survivor = GatewayProcess(cfg)  # up before the lease starts: its boot time is no part
        processes += [victim, survivor]
        async with aiohttp.ClientSession() as session:
            held = [asyncio.ensure_future(post(session, victim.url, {**BODY, "max_tokens": 100}))
                    for _ in range(2)]  # fmt: skip

            async def holding() -> bool:
                return hung.inflight == 2

            await eventually(holding, within=10)
            reserved = await counter(redis_url, key_prefix, ":tokens:day:all:*")
            assert reserved > 200
            victim.kill()  # dies holding two slots and two reservations
            await asyncio.gather(*held, return_exceptions=True)

            hung.behaviour = Behaviour(words=3)
            status, _ = await post(session, survivor.url, {**BODY, "max_tokens": 3})
            assert status == 429  # both slots are still held by the dead process
            await asyncio.sleep(3.2)  # the lease runs out
            status, usage = await post(session, survivor.url, {**BODY, "max_tokens": 3})
            assert status == 200 and usage is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if await counter(redis_url, key_prefix, ":tokens:day:all:*") == usage["total_tokens"]:
                break
            await asyncio.sleep(0.05)
        # the dead process's reservations were given back; only the new answer is charged
        assert await counter(redis_url, key_prefix, ":tokens:day:all:*") == usage["total_tokens"]
    finally:
        await hung.stop()
