"""The official openai SDK against Spillway in front of a real fake upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.conftest import DEMO_KEY
from tests.support.fakes import FakeOpenAI
from tests.support.gateway import Running, start_gateway
from tests.support.schema import validate


def config(upstream: FakeOpenAI) -> dict[str, Any]:
    return {
        "backends": {
            "gpu": {"provider": "openai", "url": upstream.url, "api_key": "sk-upstream-secret"},
        },
        "pools": {"local": {"members": [{"backend": "gpu", "model": "meta-llama/Llama-3.1-8B"}]}},
        "models": {"chat": {"routes": [{"pools": ["local"]}]}},
        "teams": {"research": {"models": ["chat"]}, "other": {"models": []}},
        "keys": [
            {"id": "ci", "team": "research", "key": DEMO_KEY},
            {"id": "nobody", "team": "other", "key": "sk-test-other-0002"},
        ],
    }


@pytest.fixture
async def gw(upstream: FakeOpenAI) -> AsyncIterator[Running]:
    running = await start_gateway(config(upstream))
    yield running
    await running.stop()


@pytest.fixture
async def client(gw: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


async def test_plain_completion(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello there"}], max_tokens=5
    )
    completion = raw.parse()
    assert completion.model == "chat"
    assert completion.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert raw.headers["x-spillway-served-model"] == "meta-llama/Llama-3.1-8B"
    assert raw.headers["x-request-id"].startswith("req_")
    validate("CreateChatCompletionResponse", raw.http_response.json())
    seen = upstream.seen[-1]
    assert seen.body["model"] == "meta-llama/Llama-3.1-8B"
    assert seen.headers["Authorization"] == "Bearer sk-upstream-secret"
    assert DEMO_KEY not in str(dict(seen.headers))


async def test_stream_without_usage_request(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    stream = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=3
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " w0 w1 w2"
    assert all(c.usage is None for c in chunks)
    for c in chunks:
        assert c.model == "chat"
        validate("CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True))
    assert upstream.seen[-1].body["stream_options"] == {"include_usage": True}


async def test_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=3,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].choices == []


async def test_errors_map_to_sdk_classes(gw: Running, client: openai.AsyncOpenAI) -> None:
    async with openai.AsyncOpenAI(
        base_url=gw.base_url, api_key="sk-wrong-key-123", max_retries=0
    ) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}]
            )
    async with openai.AsyncOpenAI(
        base_url=gw.base_url, api_key="sk-test-other-0002", max_retries=0
    ) as other:
        with pytest.raises(openai.PermissionDeniedError):
            await other.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}]
            )
    good = client
    with pytest.raises(openai.NotFoundError) as nf:
        await good.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert nf.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as br:
        await good.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], temperature=3
        )
    assert br.value.body["param"] == "temperature"  # type: ignore[index]
