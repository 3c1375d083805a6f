"""Embeddings and completions count against the same team budgets and limits as chat:
exact across three gateway processes sharing one real Redis, endpoints mixed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.integration.test_quota_exact import counter
from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.metrics import value
from tests.support.net import eventually

KEY = "sk-test-mixed-0001"
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
         "embeddings": "/v1/embeddings"}  # fmt: skip


def config(upstream: FakeOpenAI, redis_url: str, prefix: str, **team: Any) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url, "key_prefix": prefix},
        "logging": {"requests": False},
        "backends": {"gpu": {"provider": "openai", "url": upstream.url}},
        "pools": {
            "local": {"members": [{"backend": "gpu", "model": "llama"}]},
            "vectors": {
                "members": [{"backend": "gpu", "model": "bge"}],
                "price": {"input_per_mtok": 20000.0},
            },
        },
        "models": {
            "chat": {"routes": [{"pools": ["local"]}]},
            "embed": {"kind": "embeddings", "routes": [{"pools": ["vectors"]}]},
        },
        "teams": {"t": team},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    }


def body(endpoint: str, i: int) -> dict[str, Any]:
    words = " ".join(f"word{j}" for j in range(5 + i % 7))
    if endpoint == "chat":
        return {"model": "chat", "messages": [{"role": "user", "content": words}],
                "max_tokens": 30}  # fmt: skip
    if endpoint == "completions":
        doc: dict[str, Any] = {"model": "chat", "prompt": words, "max_tokens": 30}
        if i % 2:
            doc |= {"stream": True, "stream_options": {"include_usage": True}}
        return doc
    return {"model": "embed", "input": [words, "and a second input"]}


async def post(
    session: aiohttp.ClientSession, url: str, endpoint: str, doc: dict[str, Any]
) -> tuple[int, int]:
    """(status, total tokens the client was told it used)."""
    async with session.post(url + PATHS[endpoint], json=doc,
                            headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        if r.status != 200:
            await r.read()
            return r.status, 0
        if not doc.get("stream"):
            return 200, int((await r.json())["usage"]["total_tokens"])
        total = 0
        async for line in r.content:
            if line.startswith(b"data: {"):
                usage = orjson.loads(line[6:]).get("usage")
                total = usage["total_tokens"] if usage else total
        return 200, total


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture
async def slow_upstream() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI("slow", Behaviour(words=30, first_byte_delay=0.02)).start()
    yield fake
    await fake.stop()


async def test_one_team_budget_exact_across_endpoints(
    slow_upstream: FakeOpenAI, redis_url: str, key_prefix: str,
    processes: list[GatewayProcess],
) -> None:  # fmt: skip
    budget = 10_000
    cfg = config(slow_upstream, redis_url, key_prefix, budgets=[{"tokens_per_day": budget}])
    processes += [GatewayProcess(cfg) for _ in range(3)]
    spent: dict[str, int] = {"chat": 0, "completions": 0, "embeddings": 0}
    answered = 0

    async def worker(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal answered
        endpoint = ("chat", "completions", "embeddings")[i % 3]
        n = 0
        while True:
            status, total = await post(session, processes[i % 3].url, endpoint, body(endpoint, n))
            n += 1
            if status != 200:
                assert status == 429
                return
            spent[endpoint] += total
            answered += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(i, session) for i in range(36)))
    total = sum(spent.values())
    assert all(spent.values()), spent  # every endpoint was admitted and charged
    assert total <= budget  # never overspent, whatever the mix
    assert total >= 0.9 * budget, (spent, budget)

    async def exact() -> bool:
        return await counter(redis_url, key_prefix, ":tokens:day:all:*") == total

    await eventually(exact, within=5)  # the counter is what the upstream reported
    assert len(slow_upstream.seen) == answered  # nothing ran unaccounted


async def test_embeddings_share_rate_limits_and_are_priced_by_input(
    upstream: FakeOpenAI, redis_url: str, key_prefix: str
) -> None:
    cfg = config(upstream, redis_url, key_prefix, limits={"requests_per_minute": 1000},
                 budgets=[{"usd_per_day": 1000.0}])  # fmt: skip
    gw = await start_gateway(cfg)
    try:
        async with aiohttp.ClientSession() as session:
            status, tokens = await post(
                session, gw.url, "embeddings", {"model": "embed", "input": ["a b c", "d e"]}
            )
            assert (status, tokens) == (200, 5)
            status, _ = await post(session, gw.url, "chat", body("chat", 0))
            assert status == 200
            async with session.get(gw.url + "/v1/quota",
                                   headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
                doc = await r.json()
            async with session.get(gw.url + "/metrics") as r:
                text = await r.text()
        rpm = next(x for x in doc["limits"] if x["name"] == "requests_per_minute")
        assert rpm["used"] == 2  # one embeddings request, one chat request
        # 5 input tokens at $20,000 per million: the embedding request costs $0.10
        assert value(text, "spillway_cost_usd_total", model="embed", pool="vectors",
                     team="t") == pytest.approx(0.1)  # fmt: skip
        assert value(text, "spillway_prompt_tokens_total", endpoint="embeddings",
                     model="embed") == 5  # fmt: skip
        assert value(text, "spillway_requests_total", endpoint="embeddings",
                     status_class="2xx") == 1  # fmt: skip
        usd = next(x for x in doc["budgets"] if x["unit"] == "usd")
        assert usd["used"] >= 0.1
    finally:
        await gw.stop()
