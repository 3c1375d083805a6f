"""The official openai SDK -> Spillway -> a fake Anthropic Messages API server.

The fake enforces the Messages API's rules and the anthropic SDK's request
types, so every request below is also a check of the translation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import DEMO_KEY
from tests.support.fake_anthropic import AnthropicBehaviour, FakeAnthropic
from tests.support.gateway import Running, start_gateway
from tests.support.schema import validate

MODEL = "claude-sonnet-4-5"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)


def backend(fake: FakeAnthropic, **extra: Any) -> dict[str, Any]:
    return {"provider": "anthropic", "url": fake.url, "api_key": fake.behaviour.api_key, **extra}


def config(backends: dict[str, Any], pools: list[str] | None = None) -> dict[str, Any]:
    names = list(backends)
    return {
        "backends": backends,
        "pools": {
            f"pool-{n}": {"members": [{"backend": n, "model": MODEL}], "max_output_tokens": 512}
            for n in names
        },
        "models": {"chat": {"routes": [{"pools": pools or [f"pool-{n}" for n in names]}]}},
        "teams": {"research": {"models": ["chat"], "budgets": [{"tokens_per_day": 1000000}]}},
        "keys": [{"id": "ci", "team": "research", "key": DEMO_KEY}],
    }


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = await FakeAnthropic().start()
    yield server
    await server.stop()


@pytest.fixture
async def gw(fake: FakeAnthropic) -> AsyncIterator[Running]:
    running = await start_gateway(config({"claude": backend(fake)}))
    yield running
    await running.stop()


@pytest.fixture
async def client(gw: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


async def used_tokens(gw: Running, want: float) -> float:
    """The team's token budget use once it is ``want`` (settlement is batched off
    the response path), or what it is after a second of waiting."""
    used = 0.0
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            async with s.get(
                gw.url + "/v1/quota", headers={"Authorization": f"Bearer {DEMO_KEY}"}
            ) as r:
                doc = await r.json()
            used = float(doc["budgets"][0]["used"])
            if used == want:
                break
            await asyncio.sleep(0.02)
    return used


async def test_plain_completion(
    client: openai.AsyncOpenAI, fake: FakeAnthropic, gw: Running
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    )
    done = raw.parse()
    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert done.model == "chat"
    assert done.choices[0].message.content == "w0 w1 w2 w3 w4 w5"
    assert done.choices[0].finish_reason == "stop"
    assert raw.headers["x-spillway-served-model"] == MODEL
    seen = fake.seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-test-key"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert DEMO_KEY not in json.dumps(seen.headers)
    assert seen.body["system"] == "Be brief."
    assert seen.body["max_tokens"] == 512  # the pool's max_output_tokens
    assert seen.body["messages"] == [{"role": "user", "content": "hi"}]
    usage = done.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (6, 6)
    assert await used_tokens(gw, 12) == 12  # settled exactly


async def test_stream_with_and_without_usage(client: openai.AsyncOpenAI, gw: Running) -> None:
    for wants in (False, True):
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if wants else {}
        stream = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], stream=True, **extra
        )
        chunks = [c async for c in stream]
        for c in chunks:
            assert c.model == "chat"
            validate("CreateChatCompletionStreamResponse", c.model_dump(exclude_unset=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "w0 w1 w2 w3 w4 w5"
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] == "stop"
        if wants:
            assert chunks[-1].choices == []
            assert chunks[-1].usage is not None
            assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (4, 6)
        else:
            assert all(c.usage is None for c in chunks)
    assert await used_tokens(gw, 20) == 20  # both streams settled with Anthropic's counts


async def test_tool_use_round_trip(client: openai.AsyncOpenAI, fake: FakeAnthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.chat.completions.create(model="chat", messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "city-value"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"})
    second = await client.chat.completions.create(model="chat", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "Result: 18C and sunny"
    assert second.choices[0].finish_reason == "stop"
    sent = fake.seen[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "city-value"}}
    ]
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}
    ]
    assert fake.behaviour.rejected == []


async def test_streamed_tool_use_round_trip(
    client: openai.AsyncOpenAI, fake: FakeAnthropic
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    stream = await client.chat.completions.create(
        model="chat",
        messages=messages,
        tools=[WEATHER],
        stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    chunks = [c async for c in stream]
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    head, fragments = deltas[0], [d.function.arguments for d in deltas[1:] if d.function]
    assert head.id and head.function and head.function.name == "get_weather"
    assert len(fragments) > 1  # streamed as they arrive, not in one piece
    arguments = "".join(a or "" for a in fragments)
    assert json.loads(arguments) == {"city": "city-value"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert fake.seen[-1].body["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": head.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": head.id, "content": "rainy"},
    ]
    stream = await client.chat.completions.create(
        model="chat", messages=messages, tools=[WEATHER], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Result: rainy"


async def test_parallel_tool_results_share_one_user_turn(
    client: openai.AsyncOpenAI, fake: FakeAnthropic
) -> None:
    done = await client.chat.completions.create(
        model="chat",
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [
                    {
                        "id": "toolu_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_b",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "toolu_b", "content": "windy"},
        ],
    )
    assert done.choices[0].message.content == "Result: sunny windy"
    assert [b["type"] for b in fake.seen[-1].body["messages"][2]["content"]] == [
        "tool_result",
        "tool_result",
    ]


async def test_images(client: openai.AsyncOpenAI, fake: FakeAnthropic) -> None:
    await client.chat.completions.create(
        model="chat",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            }
        ],
    )
    blocks = fake.seen[-1].body["messages"][0]["content"]
    assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG}
    assert blocks[2]["source"] == {"type": "url", "url": "https://example.com/cat.png"}
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="chat",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}
                    ],
                }
            ],
        )
    assert err.value.body["param"] == "messages[0].content[0].image_url.url"  # type: ignore[index]


@pytest.mark.parametrize(
    ("status", "etype", "sdk_error", "client_status"),
    [
        (400, "invalid_request_error", openai.BadRequestError, 400),
        (500, "api_error", openai.InternalServerError, 500),
        (529, "overloaded_error", openai.InternalServerError, 503),
    ],
)
async def test_errors_map_to_sdk_classes(
    client: openai.AsyncOpenAI,
    fake: FakeAnthropic,
    status: int,
    etype: str,
    sdk_error: type[openai.APIStatusError],
    client_status: int,
) -> None:
    fake.behaviour.error = (status, etype, f"upstream {etype}")
    with pytest.raises(sdk_error) as err:
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == client_status
    body = err.value.body
    assert isinstance(body, dict)
    assert body["message"] == f"upstream {etype}" and body["code"] == etype
    validate("ErrorResponse", {"error": body})


@pytest.mark.parametrize(
    ("status", "etype", "code"),
    [
        (401, "authentication_error", "upstream_auth_error"),
        (402, "billing_error", "upstream_auth_error"),
        (403, "permission_error", "upstream_auth_error"),
        (404, "not_found_error", "upstream_misconfigured"),
    ],
)
async def test_provider_refusals_are_the_gateways_502(
    client: openai.AsyncOpenAI, fake: FakeAnthropic, status: int, etype: str, code: str
) -> None:
    """The provider refusing the gateway's key or model is not the client's 401/404."""
    fake.behaviour.error = (status, etype, f"upstream {etype}")
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.status_code == 502
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == code
    assert "'claude'" in body["message"] and etype not in body["message"]
    validate("ErrorResponse", {"error": body})


async def test_wrong_upstream_key_ejects_the_member_and_fails_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A revoked provider key: 502-class failure, ERROR log, member out for long,
    the request served by the next pool; later requests go straight there."""
    bad = await FakeAnthropic().start()
    good = await FakeAnthropic().start()
    running = await start_gateway(
        config({"bad": {**backend(bad), "api_key": "sk-ant-revoked-1"}, "good": backend(good)})
    )
    try:
        async with openai.AsyncOpenAI(
            base_url=running.base_url, api_key=DEMO_KEY, max_retries=0
        ) as c:
            for _ in range(3):
                done = await c.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "x"}]
                )
                assert done.choices[0].message.content
        assert bad.refused == 1  # tried once, then ejected
        assert len(good.seen) == 3
        state = running.gateway.runtime.states["bad"]
        loop = asyncio.get_running_loop()
        assert not state.healthy and state.ejected_until - loop.time() > 250
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("bad" in e and "invalid x-api-key" in e for e in errors), errors
        assert not any("sk-ant-revoked-1" in r.getMessage() for r in caplog.records)
    finally:
        await running.stop()
        await bad.stop()
        await good.stop()


async def test_overloaded_falls_back_to_the_next_pool() -> None:
    busy = await FakeAnthropic(
        AnthropicBehaviour(error=(529, "overloaded_error", "Overloaded"), retry_after="1")
    ).start()
    spare = await FakeAnthropic().start()
    running = await start_gateway(config({"busy": backend(busy), "spare": backend(spare)}))
    try:
        async with openai.AsyncOpenAI(
            base_url=running.base_url, api_key=DEMO_KEY, max_retries=0
        ) as c:
            done = await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}]
            )
        assert done.choices[0].message.content == "w0 w1 w2 w3 w4 w5"
        assert len(busy.seen) == 1 and len(spare.seen) == 1
    finally:
        await running.stop()
        await busy.stop()
        await spare.stop()


async def test_error_event_mid_stream(
    client: openai.AsyncOpenAI, fake: FakeAnthropic, gw: Running
) -> None:
    fake.behaviour.stream_error_after = 2
    stream = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    got: list[str] = []
    with pytest.raises(openai.APIError) as err:
        async for c in stream:
            if c.choices:
                got.append(c.choices[0].delta.content or "")
    assert "".join(got) == "w0 w1"  # what arrived before the error reached the client
    assert "Overloaded" in str(err.value)
    assert err.value.body["code"] == "overloaded_error"  # type: ignore[index]
    # settled with what was produced: 4 prompt tokens + about 5 characters / 4
    assert await used_tokens(gw, 6) == 4 + 2


async def test_stream_cut_by_upstream(client: openai.AsyncOpenAI, fake: FakeAnthropic) -> None:
    fake.behaviour.break_after = 5  # message_start, ping, block start, two deltas
    stream = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_sampling_parameters_policy() -> None:
    old_model = await FakeAnthropic(AnthropicBehaviour(sampling_deprecated=False)).start()
    new_model = await FakeAnthropic().start()  # answers 400 to any sampling parameter
    running = await start_gateway(
        config(
            {
                "old": backend(
                    old_model, allow_params=["temperature", "top_k"], unsupported_params="reject"
                ),
                "new": backend(new_model),
            },
            pools=["pool-old"],
        )
    )
    running_new = await start_gateway(config({"new": backend(new_model)}))
    try:
        async with openai.AsyncOpenAI(
            base_url=running.base_url, api_key=DEMO_KEY, max_retries=0
        ) as c:
            await c.chat.completions.create(
                model="chat",
                temperature=0.5,
                messages=[{"role": "user", "content": "x"}],
                extra_body={"top_k": 12},
            )
            assert old_model.seen[-1].body["temperature"] == 0.5
            assert old_model.seen[-1].body["top_k"] == 12
            with pytest.raises(openai.BadRequestError) as err:
                await c.chat.completions.create(
                    model="chat", temperature=1.5, messages=[{"role": "user", "content": "x"}]
                )
            assert err.value.body["param"] == "temperature"  # type: ignore[index]
            assert "'old'" in err.value.message
            assert len(old_model.seen) == 1  # rejected before anything was sent
        async with openai.AsyncOpenAI(
            base_url=running_new.base_url, api_key=DEMO_KEY, max_retries=0
        ) as c:
            done = await c.chat.completions.create(
                model="chat",
                temperature=0.7,
                top_p=0.9,
                messages=[{"role": "user", "content": "x"}],
            )
            assert done.choices[0].message.content
            assert "temperature" not in new_model.seen[-1].body
            assert new_model.behaviour.rejected == []
    finally:
        await running.stop()
        await running_new.stop()
        await old_model.stop()
        await new_model.stop()
