"""A client's x-request-id is echoed, logged and forwarded, never an accounting key.

Quota admissions and settlements are keyed by ids the gateway makes; two requests
that carry the same client id (one after the other, at once, from two teams) are two
requests to every limit and budget, on the in-process store and on Redis.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import Running, start_gateway
from tests.support.net import eventually

KEY = "sk-test-rid-0001"
OTHER = "sk-test-rid-0002"
MSG = [{"role": "user", "content": "count to three"}]
SAME = {"x-request-id": "same-id-1"}


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    return "" if request.param == "memory" else redis_url


def config(upstream: FakeOpenAI, store: str, prefix: str, team: dict[str, Any]) -> dict[str, Any]:
    return {
        "redis": {"url": store, "key_prefix": prefix},
        "backends": {"gpu": {"provider": "openai", "url": upstream.url}},
        "pools": {"local": {"members": [{"backend": "gpu", "model": "llama"}],
                            "max_output_tokens": 64}},
        "models": {"chat": {"routes": [{"pools": ["local"]}]}},
        "teams": {"a": team, "b": team},
        "keys": [{"id": "ka", "team": "a", "key": KEY}, {"id": "kb", "team": "b", "key": OTHER}],
    }  # fmt: skip


@pytest.fixture
async def slow() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI("slow", Behaviour(first_byte_delay=0.3)).start()
    yield fake
    await fake.stop()


def access_lines(err: str) -> list[dict[str, Any]]:
    return [
        doc for doc in (json.loads(line) for line in err.splitlines() if line.startswith("{"))
        if doc.get("logger") == "spillway.access"
    ]  # fmt: skip


async def statuses(gw: Running, key: str, count: int) -> list[int]:
    out = []
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0) as c:
        for _ in range(count):
            try:
                await c.chat.completions.create(model="chat", messages=MSG, extra_headers=SAME)
                out.append(200)
            except openai.RateLimitError:
                out.append(429)
    return out


async def test_a_reused_id_does_not_skip_the_rate_limit(
    upstream: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    gw = await start_gateway(config(upstream, store_url, key_prefix,
                                    {"limits": {"requests_per_minute": 2}}))  # fmt: skip
    try:
        assert await statuses(gw, KEY, 6) == [200, 200, 429, 429, 429, 429]
        # another team's requests with the same id are its own
        assert await statuses(gw, OTHER, 3) == [200, 200, 429]
    finally:
        await gw.stop()
    assert len(upstream.seen) == 4


async def test_each_request_is_charged(
    upstream: FakeOpenAI, store_url: str, key_prefix: str
) -> None:
    gw = await start_gateway(config(upstream, store_url, key_prefix,
                                    {"budgets": [{"tokens_per_day": 1_000_000}]}))  # fmt: skip
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            charged = 0
            for _ in range(5):
                r = await c.chat.completions.create(
                    model="chat", messages=MSG, max_tokens=8, extra_headers=SAME
                )
                assert r.usage is not None
                charged += r.usage.total_tokens

        async def settled() -> bool:
            doc = await gw.gateway.runtime.quota.status("ka")
            return any(b["used"] == charged for b in doc["budgets"])

        assert charged > 0
        await eventually(settled)
    finally:
        await gw.stop()


async def test_same_id_at_once_is_two_requests(
    slow: FakeOpenAI, store_url: str, key_prefix: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Two requests in flight with one client id: both are admitted under a
    concurrency limit of two, each with its own gateway id; the client's id is echoed
    to it, logged beside the gateway's and forwarded upstream."""
    gw = await start_gateway(config(slow, store_url, key_prefix, {"limits": {"concurrent": 2}}))
    try:
        async with aiohttp.ClientSession() as s:

            async def one() -> tuple[int, str]:
                async with s.post(gw.base_url + "/chat/completions", headers={
                    "Authorization": f"Bearer {KEY}", **SAME,
                }, json={"model": "chat", "messages": MSG}) as r:  # fmt: skip
                    await r.read()
                    return r.status, r.headers["x-request-id"]

            answers = await asyncio.gather(one(), one())
        assert answers == [(200, "same-id-1"), (200, "same-id-1")]
        # a third at once is over the limit: the two slots were two
        async with aiohttp.ClientSession() as s:
            many = await asyncio.gather(*[s.post(gw.base_url + "/chat/completions", headers={
                "Authorization": f"Bearer {KEY}", **SAME,
            }, json={"model": "chat", "messages": MSG}) for _ in range(3)])  # fmt: skip
            codes = sorted(r.status for r in many)
            for r in many:
                r.release()
        assert codes == [200, 200, 429]
    finally:
        await gw.stop()
    assert [s.headers["X-Request-Id"] for s in slow.seen] == ["same-id-1"] * 4
    lines = [d for d in access_lines(capfd.readouterr().err) if d["status"] == 200]
    assert len(lines) == 4
    assert {d["client_request_id"] for d in lines} == {"same-id-1"}
    ids = [d["request_id"] for d in lines]
    assert len(set(ids)) == 4 and all(i.startswith("req_") for i in ids)


async def test_an_answer_without_a_client_id_carries_the_gateways(
    upstream: FakeOpenAI, capfd: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway(config(upstream, "", "p", {}))
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            raw = await c.chat.completions.with_raw_response.create(model="chat", messages=MSG)
            bad = await c.chat.completions.with_raw_response.create(
                model="chat", messages=MSG, extra_headers={"x-request-id": "has spaces;and more"}
            )
    finally:
        await gw.stop()
    rid = raw.headers["x-request-id"]
    assert rid.startswith("req_") and upstream.seen[0].headers["X-Request-Id"] == rid
    assert bad.headers["x-request-id"].startswith("req_")  # not an id: not echoed
    lines = access_lines(capfd.readouterr().err)
    assert [d["request_id"] for d in lines] == [rid, bad.headers["x-request-id"]]
    assert all("client_request_id" not in d for d in lines)
