"""Quotas through the gateway, with the openai SDK, on both stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.support.fakes import Behaviour, FakeOpenAI, count_words
from tests.support.gateway import Running, start_gateway
from tests.support.net import eventually

KEY = "sk-test-quota-0001"
MSG = [{"role": "user", "content": "count to three"}]


def base_config(
    local: FakeOpenAI, hosted: FakeOpenAI, redis: str, prefix: str, team: dict[str, Any]
) -> dict[str, Any]:
    return {
        "redis": {"url": redis, "key_prefix": prefix},
        "backends": {
            "gpu": {"provider": "openai", "url": local.url},
            "cloud": {"provider": "openai", "url": hosted.url, "api_key": "sk-cloud-secret"},
        },
        "pools": {
            "local": {"members": [{"backend": "gpu", "model": "llama"}], "max_output_tokens": 64},
            "hosted": {
                "members": [{"backend": "cloud", "model": "gpt-4o-mini"}],
                "price": {"input_per_mtok": 150_000, "output_per_mtok": 600_000},
                "max_output_tokens": 64,
            },
        },
        "models": {
            "chat": {"routes": [{"pools": ["hosted", "local"]}]},
            "hosted-only": {"routes": [{"pools": ["hosted"]}]},
        },
        "teams": {"t": team},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    }


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    return "" if request.param == "memory" else redis_url


@pytest.fixture
async def hosted() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI("hosted").start()
    yield fake
    await fake.stop()


async def gateway(
    upstream: FakeOpenAI, hosted: FakeOpenAI, store_url: str, prefix: str, team: dict[str, Any]
) -> Running:
    return await start_gateway(base_config(upstream, hosted, store_url, prefix, team))


async def test_rate_limit_429_and_headers(
    upstream: FakeOpenAI, hosted: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    gw = await gateway(upstream, hosted, store_url, key_prefix, {
        "limits": {"requests_per_minute": 3, "tokens_per_minute": 100_000}})  # fmt: skip
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            raw = await c.chat.completions.with_raw_response.create(model="chat", messages=MSG)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-remaining-requests"] == "2"
            assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
            assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
            await c.chat.completions.create(model="chat", messages=MSG)
            await c.chat.completions.create(model="chat", messages=MSG)
            with pytest.raises(openai.RateLimitError) as err:
                await c.chat.completions.create(model="chat", messages=MSG)
        body = err.value.body
        assert isinstance(body, dict)
        assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
        assert "requests_per_minute" in body["message"] and "limit 3" in body["message"]
        headers = err.value.response.headers
        assert 1 <= int(headers["retry-after"]) <= 120  # the window slides: up to two minutes
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert len(hosted.seen) == 3
    finally:
        await gw.stop()


async def test_hosted_budget_spent_spills_to_local(
    upstream: FakeOpenAI, hosted: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    """A team's hosted USD budget is spent: traffic falls back to the local GPUs."""
    gw = await gateway(upstream, hosted, store_url, key_prefix, {
        "budgets": [{"usd_per_month": 50, "pools": ["hosted"]}]})  # fmt: skip
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            pools = []
            for _ in range(10):
                raw = await c.chat.completions.with_raw_response.create(
                    model="chat", messages=MSG, max_tokens=8
                )
                pools.append(raw.headers["x-spillway-pool"])
        # $0.15/$0.60 per token: each answer costs ~$6, each reservation ~$20
        assert pools[0] == "hosted"
        assert "local" in pools, pools
        first_local = pools.index("local")
        assert first_local > 1
        assert set(pools[first_local:]) == {"local"}
        assert len(upstream.seen) == len(pools) - first_local
    finally:
        await gw.stop()


async def test_budget_429_names_the_budget(
    upstream: FakeOpenAI, hosted: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    gw = await gateway(upstream, hosted, store_url, key_prefix, {
        "budgets": [{"tokens_per_day": 200}]})  # fmt: skip
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            with pytest.raises(openai.RateLimitError) as err:
                for _ in range(30):
                    await c.chat.completions.create(model="chat", messages=MSG, max_tokens=8)
        body = err.value.body
        assert isinstance(body, dict)
        assert body["type"] == "insufficient_quota" and body["code"] == "insufficient_quota"
        assert "team 't' tokens_per_day" in body["message"]
        assert " of 200 tokens left this day" in body["message"]
        assert "resets at" in body["message"]
        assert _used(await gw.gateway.runtime.quota.status("k"), "tokens_per_day") <= 200
    finally:
        await gw.stop()


async def test_clamp_to_what_is_left(
    upstream: FakeOpenAI, hosted: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    gw = await gateway(upstream, hosted, store_url, key_prefix, {
        "budgets": [{"tokens_per_day": 300}]})  # fmt: skip
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            raw = await c.chat.completions.with_raw_response.create(
                model="hosted-only", messages=MSG, max_tokens=250
            )
        completion = raw.parse()
        cap = int(raw.headers["x-spillway-max-tokens-clamped"])
        assert 0 < cap < 250
        assert hosted.seen[-1].body["max_tokens"] == cap
        assert completion.usage is not None and completion.usage.completion_tokens <= cap
    finally:
        await gw.stop()


async def test_default_output_cap_is_forwarded(
    upstream: FakeOpenAI, hosted: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    """Without max_tokens the pool's max_output_tokens is reserved and enforced."""
    gw = await gateway(upstream, hosted, store_url, key_prefix, {
        "budgets": [{"tokens_per_day": 100_000}]})  # fmt: skip
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            await c.chat.completions.create(model="hosted-only", messages=MSG)
        assert hosted.seen[-1].body["max_tokens"] == 64
    finally:
        await gw.stop()


async def test_quota_endpoint_reports_use(
    upstream: FakeOpenAI, hosted: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    gw = await gateway(
        upstream,
        hosted,
        store_url,
        key_prefix,
        {
            "limits": {"requests_per_minute": 10, "concurrent": 5},
            "budgets": [{"tokens_per_day": 10_000}, {"usd_per_month": 100, "pools": ["hosted"]}],
        },
    )
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            done = await c.chat.completions.create(model="chat", messages=MSG, max_tokens=5)
        assert done.usage is not None
        doc: dict[str, Any] = {}

        async def settled() -> bool:
            async with aiohttp.ClientSession() as s, s.get(gw.base_url + "/quota",
                             headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
                assert r.status == 200
                doc.update(await r.json())
            return bool(next(x for x in doc["limits"] if x["name"] == "concurrent")["used"] == 0
                        and _used(doc, "tokens_per_day") < 50)  # fmt: skip

        await eventually(settled)
        rpm = next(x for x in doc["limits"] if x["name"] == "requests_per_minute")
        assert (rpm["limit"], rpm["used"], rpm["remaining"]) == (10, 1, 9)
        tokens = next(x for x in doc["budgets"] if x["name"] == "tokens_per_day")
        assert tokens["used"] == done.usage.total_tokens
        assert tokens["resets_at"].endswith("T00:00:00Z")
        usd = next(x for x in doc["budgets"] if x["name"] == "usd_per_month")
        expected = done.usage.prompt_tokens * 0.15 + done.usage.completion_tokens * 0.6
        assert usd["used"] == pytest.approx(expected, rel=1e-6)
        assert usd["pools"] == ["hosted"]
    finally:
        await gw.stop()


async def test_stream_usage_is_charged(
    upstream: FakeOpenAI, hosted: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    gw = await gateway(upstream, hosted, store_url, key_prefix, {
        "budgets": [{"tokens_per_day": 10_000}]})  # fmt: skip
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            stream = await c.chat.completions.create(
                model="hosted-only", messages=MSG, max_tokens=6, stream=True
            )
            chunks = [x async for x in stream]
        assert all(x.usage is None for x in chunks)  # not asked for: not shown
        expected = count_words(hosted.seen[-1].body) + 6

        async def settled() -> bool:
            return _used(await gw.gateway.runtime.quota.status("k"), "tokens_per_day") == expected

        await eventually(settled)
    finally:
        await gw.stop()


def _used(doc: dict[str, Any], name: str) -> float:
    return float(next(x for x in doc["budgets"] if x["name"] == name)["used"])


async def test_client_gone_frees_its_slot(
    upstream: FakeOpenAI, hosted: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    """A request cancelled mid-flight leaves no concurrency slot held."""
    hosted.behaviour = Behaviour(first_byte_delay=5)
    gw = await gateway(upstream, hosted, store_url, key_prefix, {"limits": {"concurrent": 1}})
    try:
        async with aiohttp.ClientSession() as s:
            body = {"model": "hosted-only", "messages": MSG}
            auth = {"Authorization": f"Bearer {KEY}"}
            held = asyncio.create_task(s.post(gw.base_url + "/chat/completions", json=body,
                                              headers=auth))  # fmt: skip

            async def upstream_has_it() -> bool:
                return len(hosted.seen) == 1

            await eventually(upstream_has_it)
            async with s.post(gw.base_url + "/chat/completions", json=body, headers=auth) as r:
                assert r.status == 429  # the one slot is taken
            held.cancel()
            with pytest.raises(asyncio.CancelledError):
                await held
            hosted.behaviour = Behaviour()

            async def admitted() -> bool:
                async with s.post(gw.base_url + "/chat/completions", json=body,
                                  headers=auth) as r:  # fmt: skip
                    return r.status == 200

            await eventually(admitted, within=2)
    finally:
        await gw.stop()
