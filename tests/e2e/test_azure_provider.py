"""The official openai SDK -> Spillway -> a fake Azure OpenAI resource."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.conftest import DEMO_KEY
from tests.support.fake_azure import AzureBehaviour, FakeAzure
from tests.support.gateway import Running, start_gateway
from tests.support.schema import validate

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def config(backend: dict[str, Any], deployment: str = "gpt4o-prod") -> dict[str, Any]:
    return {
        "backends": {"az": backend},
        "pools": {"azure": {"members": [{"backend": "az", "model": deployment}]}},
        "models": {"chat": {"routes": [{"pools": ["azure"]}]}},
        "teams": {"research": {"models": ["chat"]}},
        "keys": [{"id": "ci", "team": "research", "key": DEMO_KEY}],
    }


@pytest.fixture
async def fake() -> AsyncIterator[FakeAzure]:
    server = await FakeAzure().start()
    yield server
    await server.stop()


@pytest.fixture
async def gw(fake: FakeAzure) -> AsyncIterator[Running]:
    running = await start_gateway(
        config({"provider": "azure", "url": fake.url, "api_key": "azure-test-key"})
    )
    yield running
    await running.stop()


@pytest.fixture
async def client(gw: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


async def test_plain_completion(client: openai.AsyncOpenAI, fake: FakeAzure) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=3
    )
    done = raw.parse()
    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert done.model == "chat"  # not Azure's gpt-4o-2024-08-06
    assert done.choices[0].message.content == "w0 w1 w2"
    assert done.choices[0].finish_reason == "length"
    assert raw.headers["x-spillway-served-model"] == "gpt4o-prod"
    seen = fake.seen[-1]
    assert seen.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert seen.query == {"api-version": "2024-10-21"}
    assert seen.headers["api-key"] == "azure-test-key"
    assert "Authorization" not in seen.headers


async def test_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices == []  # Azure's prompt-filter event, passed on as Azure sends it
    assert all(c.model == "chat" for c in chunks[1:])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 w4"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_tool_use_round_trip_streamed(client: openai.AsyncOpenAI, fake: FakeAzure) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    stream = await client.chat.completions.create(
        model="chat", messages=messages, tools=[WEATHER], stream=True
    )
    deltas = [d async for c in stream if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    call_id = deltas[0].id
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "city-value"}
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "snow"},
    ]
    done = await client.chat.completions.create(model="chat", messages=messages, tools=[WEATHER])
    assert done.choices[0].message.content == "Result: snow"
    assert fake.seen[-1].body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call_id,
        "content": "snow",
    }


async def test_vllm_extras_are_dropped_for_azure(
    client: openai.AsyncOpenAI, fake: FakeAzure
) -> None:
    done = await client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "x"}],
        extra_body={"top_k": 5, "min_p": 0.1, "skip_special_tokens": False},
    )
    assert done.choices[0].message.content
    assert not {"top_k", "min_p", "skip_special_tokens"} & set(fake.seen[-1].body)


async def test_reject_policy_names_parameter_and_backend(fake: FakeAzure) -> None:
    running = await start_gateway(
        config(
            {
                "provider": "azure",
                "url": fake.url,
                "api_key": "azure-test-key",
                "unsupported_params": "reject",
            }
        )
    )
    try:
        async with openai.AsyncOpenAI(
            base_url=running.base_url, api_key=DEMO_KEY, max_retries=0
        ) as c:
            with pytest.raises(openai.BadRequestError) as err:
                await c.chat.completions.create(
                    model="chat",
                    messages=[{"role": "user", "content": "x"}],
                    extra_body={"min_p": 0.1},
                )
        assert err.value.body == {
            "message": "Parameter 'min_p' is not supported by backend 'az'.",  # type: ignore[comparison-overlap]
            "type": "invalid_request_error",
            "param": "min_p",
            "code": "unsupported_parameter",
        }
        assert fake.seen == []
    finally:
        await running.stop()


async def test_bearer_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await FakeAzure(AzureBehaviour(api_key=None, token="entra-token-xyz")).start()
    monkeypatch.setenv("SPILLWAY_TEST_AZURE_TOKEN", "entra-token-xyz")
    running = await start_gateway(
        config(
            {
                "provider": "azure",
                "url": fake.url,
                "token_env": "SPILLWAY_TEST_AZURE_TOKEN",
                "api_version": "2025-04-01-preview",
            }
        )
    )
    try:
        async with openai.AsyncOpenAI(
            base_url=running.base_url, api_key=DEMO_KEY, max_retries=0
        ) as c:
            await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}]
            )
        seen = fake.seen[-1]
        assert seen.headers["Authorization"] == "Bearer entra-token-xyz"
        assert seen.query == {"api-version": "2025-04-01-preview"}
    finally:
        await running.stop()
        await fake.stop()


@pytest.mark.parametrize(
    ("backend", "deployment", "sdk_error", "text"),
    [
        ({"api_key": "wrong-key"}, "gpt4o-prod", openai.AuthenticationError, "Access denied"),
        (
            {"api_key": "azure-test-key"},
            "no-such-deployment",
            openai.NotFoundError,
            "deployment for this resource does not exist",
        ),
        (
            {"api_key": "azure-test-key", "api_version": "1999-01-01"},
            "gpt4o-prod",
            openai.NotFoundError,
            "Resource not found",
        ),
    ],
)
async def test_errors_map_to_sdk_classes(
    fake: FakeAzure,
    backend: dict[str, Any],
    deployment: str,
    sdk_error: type[openai.APIStatusError],
    text: str,
) -> None:
    running = await start_gateway(
        config({"provider": "azure", "url": fake.url, **backend}, deployment)
    )
    try:
        async with openai.AsyncOpenAI(
            base_url=running.base_url, api_key=DEMO_KEY, max_retries=0
        ) as c:
            with pytest.raises(sdk_error) as err:
                await c.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "x"}]
                )
        assert text in err.value.message
    finally:
        await running.stop()


async def test_azure_rate_limit_is_retryable_and_mapped(
    client: openai.AsyncOpenAI, fake: FakeAzure
) -> None:
    fake.behaviour.error = (429, "429", "Requests have exceeded token rate limit.")
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.body["code"] == "429"  # type: ignore[index]


async def test_embeddings_on_an_azure_deployment(fake: FakeAzure) -> None:
    fake.behaviour.deployments["emb-prod"] = "text-embedding-3-small"
    doc = config({"provider": "azure", "url": fake.url, "api_key": "azure-test-key"})
    doc["pools"]["vectors"] = {"members": [{"backend": "az", "model": "emb-prod"}]}
    doc["models"]["embed"] = {"kind": "embeddings", "routes": [{"pools": ["vectors"]}]}
    doc["teams"]["research"]["models"].append("embed")
    gw = await start_gateway(doc)
    try:
        async with openai.AsyncOpenAI(
            base_url=gw.base_url, api_key=DEMO_KEY, max_retries=0
        ) as client:
            result = await client.embeddings.create(
                model="embed", input=["a b", "c"], dimensions=4, encoding_format="float"
            )
    finally:
        await gw.stop()
    assert result.model == "embed"
    assert [d.embedding for d in result.data] == [[0.5] * 4] * 2
    assert result.usage.prompt_tokens == 3
    seen = fake.seen[-1]
    assert seen.path == "/openai/deployments/emb-prod/embeddings"
    assert seen.query["api-version"] == "2024-10-21" and seen.headers["api-key"] == "azure-test-key"
    assert seen.body == {"model": "emb-prod", "input": ["a b", "c"], "dimensions": 4,
                         "encoding_format": "float"}  # fmt: skip
