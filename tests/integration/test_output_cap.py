"""The output cap a pool fills in goes in the parameter the backend's flavour takes:
OpenAI's reasoning models refuse ``max_tokens``; vLLM takes ``max_tokens``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.support.fakes import FakeOpenAI
from tests.support.gateway import start_gateway

KEY = "sk-test-cap-0001"
MSG = [{"role": "user", "content": "count to three"}]


@pytest.fixture
async def hosted() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI("hosted").start()
    yield fake
    await fake.stop()


def config(local: FakeOpenAI, hosted: FakeOpenAI) -> dict[str, Any]:
    return {
        "backends": {
            "gpu": {"provider": "openai", "url": local.url},
            "cloud": {"provider": "openai", "url": hosted.url, "flavour": "openai",
                      "api_key": "sk-cloud"},
        },
        "pools": {
            "local": {"members": [{"backend": "gpu", "model": "llama"}], "max_output_tokens": 48},
            "hosted": {"members": [{"backend": "cloud", "model": "o4-mini"}],
                       "max_output_tokens": 64},
        },
        "models": {"local": {"routes": [{"pools": ["local"]}]},
                   "hosted": {"routes": [{"pools": ["hosted"]}]}},
        # a budget makes every request reserve an output cap, which is then enforced
        "teams": {"t": {"budgets": [{"tokens_per_day": 1_000_000}]}},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    }  # fmt: skip


def caps(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("max_tokens", "max_completion_tokens") if k in body}


async def test_the_filled_in_cap_follows_the_flavour(
    upstream: FakeOpenAI, hosted: FakeOpenAI
) -> None:
    gw = await start_gateway(config(upstream, hosted))
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            await c.chat.completions.create(model="hosted", messages=MSG)
            stream = await c.chat.completions.create(model="hosted", messages=MSG, stream=True)
            async for _ in stream:
                pass
            await c.chat.completions.create(model="hosted", messages=MSG, max_tokens=8)
            await c.chat.completions.create(model="hosted", messages=MSG,
                                            max_completion_tokens=9)  # fmt: skip
            await c.chat.completions.create(model="local", messages=MSG)
            await c.chat.completions.create(model="local", messages=MSG,
                                            max_completion_tokens=9)  # fmt: skip
    finally:
        await gw.stop()
    assert [caps(s.body) for s in hosted.seen] == [
        {"max_completion_tokens": 64},  # OpenAI: the cap in the name its new models take
        {"max_completion_tokens": 64},
        {"max_tokens": 8},  # the client's own name is kept
        {"max_completion_tokens": 9},
    ]
    assert [caps(s.body) for s in upstream.seen] == [
        {"max_tokens": 48},  # vLLM: max_tokens
        {"max_completion_tokens": 9},
    ]
