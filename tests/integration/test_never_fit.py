"""429s a client cannot win by retrying say so: ``x-should-retry: false``.

A request whose reservation is larger than a limit's whole window can never fit
it; a spent budget only comes back when its window resets. The official openai
SDK (default retries) must send each of them once. A rate limit that will have
room soon keeps its ``Retry-After`` and may be retried.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from tests.support.fakes import FakeOpenAI
from tests.support.gateway import Running, start_gateway

KEY = "sk-test-never-fit-0001"
SHORT = [{"role": "user", "content": "count to three"}]
LONG = [{"role": "user", "content": "word " * 240}]  # 1.2 KB: its bound is over 1,000 tokens


async def gateway(upstream: FakeOpenAI, team: dict[str, Any]) -> Running:
    return await start_gateway({
        "backends": {"gpu": {"provider": "openai", "url": upstream.url}},
        "pools": {"local": {"members": [{"backend": "gpu", "model": "llama"}],
                            "max_output_tokens": 64}},
        "models": {"chat": {"routes": [{"pools": ["local"]}]}},
        "teams": {"t": team},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    })  # fmt: skip


def sent_429s(capfd: pytest.CaptureFixture[str]) -> int:
    """Requests the gateway answered 429 (one access-log line each)."""
    lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if '"spillway.access"' in x]
    return sum(1 for line in lines if line["status"] == 429)


async def test_a_request_larger_than_the_window_is_not_retried(
    upstream: FakeOpenAI, capfd: pytest.CaptureFixture[str]
) -> None:
    gw = await gateway(upstream, {"limits": {"tokens_per_minute": 1000}})
    try:
        capfd.readouterr()
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY) as c:  # default retries
            with pytest.raises(openai.RateLimitError) as err:
                await c.chat.completions.create(model="chat", messages=LONG)
            # a request that fits is served as ever
            await c.chat.completions.create(model="chat", messages=SHORT, max_tokens=8)
        assert sent_429s(capfd) == 1
        headers = err.value.response.headers
        assert headers["x-should-retry"] == "false"
        assert "retry-after" not in headers
        body = err.value.body
        assert isinstance(body, dict) and body["code"] == "rate_limit_exceeded"
        assert "can never fit" in body["message"] and "limit 1000" in body["message"]
        assert "tokens_per_minute" in body["message"] and "requested 1" in body["message"]
    finally:
        await gw.stop()
    assert len(upstream.seen) == 1


async def test_a_spent_budget_is_not_retried(
    upstream: FakeOpenAI, capfd: pytest.CaptureFixture[str]
) -> None:
    gw = await gateway(upstream, {"budgets": [{"tokens_per_day": 200}]})
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            with pytest.raises(openai.RateLimitError):
                for _ in range(30):
                    await c.chat.completions.create(model="chat", messages=SHORT, max_tokens=8)
        served = len(upstream.seen)
        capfd.readouterr()
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY) as c:  # default retries
            with pytest.raises(openai.RateLimitError) as err:
                await c.chat.completions.create(model="chat", messages=SHORT, max_tokens=8)
        assert sent_429s(capfd) == 1
        assert len(upstream.seen) == served
        headers = err.value.response.headers
        assert headers["x-should-retry"] == "false"
        to_midnight = 86400 - time.time() % 86400
        assert abs(int(headers["retry-after"]) - to_midnight) <= 5  # when the day resets
        body = err.value.body
        assert isinstance(body, dict) and body["code"] == "insufficient_quota"
        assert "resets at" in body["message"]
    finally:
        await gw.stop()


async def test_a_request_larger_than_the_budget_can_never_fit(
    upstream: FakeOpenAI, capfd: pytest.CaptureFixture[str]
) -> None:
    gw = await gateway(upstream, {"budgets": [{"tokens_per_day": 500}]})
    try:
        capfd.readouterr()
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY) as c:
            with pytest.raises(openai.RateLimitError) as err:
                await c.chat.completions.create(model="chat", messages=LONG)
        assert sent_429s(capfd) == 1
        headers = err.value.response.headers
        assert headers["x-should-retry"] == "false" and "retry-after" not in headers
        body = err.value.body
        assert isinstance(body, dict) and "can never fit" in body["message"]
        assert "tokens_per_day" in body["message"] and "500 tokens" in body["message"]
    finally:
        await gw.stop()
    assert upstream.seen == []


async def test_a_rate_limit_that_resets_keeps_retry_after(upstream: FakeOpenAI) -> None:
    gw = await gateway(upstream, {"limits": {"requests_per_minute": 1}})
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            await c.chat.completions.create(model="chat", messages=SHORT)
            with pytest.raises(openai.RateLimitError) as err:
                await c.chat.completions.create(model="chat", messages=SHORT)
        headers = err.value.response.headers
        assert 1 <= int(headers["retry-after"]) <= 120
        assert "x-should-retry" not in headers
        body = err.value.body
        assert isinstance(body, dict) and "never" not in body["message"]
    finally:
        await gw.stop()
