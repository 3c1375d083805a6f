"""The built-in default config serves every endpoint from the simulated backend."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import openai
import pytest

from router.config_load import load_config
from tests.support.gateway import Running, start_gateway

KEY = "sk-spillway-demo"


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[openai.AsyncOpenAI]:
    monkeypatch.delenv("SPILLWAY_DEMO_KEY", raising=False)
    gw: Running = await start_gateway(load_config(None))
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            yield c
    finally:
        await gw.stop()


async def test_simulated_completions(client: openai.AsyncOpenAI) -> None:
    done = await client.completions.create(
        model="demo", prompt=["the dam", "the river"], n=2, max_tokens=5, echo=True, seed=3
    )
    assert len(done.choices) == 4 and [c.index for c in done.choices] == [0, 1, 2, 3]
    assert done.choices[0].text.startswith("the dam") and done.choices[2].text.startswith(
        "the river"
    )
    assert done.usage is not None and done.usage.prompt_tokens == 4
    again = await client.completions.create(
        model="demo", prompt=["the dam", "the river"], n=2, max_tokens=5, echo=True, seed=3
    )
    assert [c.text for c in again.choices] == [c.text for c in done.choices]  # deterministic
    stream = await client.completions.create(
        model="demo", prompt="the dam", max_tokens=5, seed=3, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == done.choices[0].text.removeprefix("the dam")
    assert chunks[-1].usage is not None
    tokens = sum(1 for c in chunks if c.choices and c.choices[0].text)
    assert chunks[-1].usage.completion_tokens == tokens


async def test_simulated_embeddings(client: openai.AsyncOpenAI) -> None:
    floats = await client.embeddings.create(
        model="demo-embed", input=["spillway", "dam"], encoding_format="float", dimensions=32
    )
    encoded = await client.embeddings.create(
        model="text-embedding-3-small", input=["spillway", "dam"], dimensions=32
    )
    assert encoded.model == "text-embedding-3-small"
    for a, b in zip(floats.data, encoded.data, strict=True):
        assert len(a.embedding) == 32
        assert math.isclose(math.fsum(v * v for v in a.embedding), 1.0, rel_tol=1e-4)
        assert all(abs(x - y) < 1e-6 for x, y in zip(a.embedding, b.embedding, strict=True))
    assert floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens == 2
