"""The official anthropic SDK -> Spillway's /v1/messages -> a native Anthropic backend
(the fake Messages API, which enforces the API's rules and the SDK's request types)
or a translated vLLM-style backend (the fake chat-completions server).

Every answer is parsed by the SDK itself; streamed events are also checked against
the SDK's event types, in the order Anthropic sends them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from tests.conftest import DEMO_KEY
from tests.support.anthropic_types import validate_event
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fakes import FakeOpenAI
from tests.support.gateway import Running, start_gateway
from tests.support.metrics import value

WEATHER = {
    "name": "get_weather",
    "description": "Weather now",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
MODELS = ["claude", "local"]  # native Anthropic, translated to chat completions


def config(anthropic_url: str, vllm_url: str, redis: str, prefix: str) -> dict[str, Any]:
    return {
        "backends": {
            "anth": {"provider": "anthropic", "url": anthropic_url, "api_key": "sk-ant-test-key"},
            "vllm": {"provider": "openai", "url": vllm_url},
        },
        "pools": {
            "anth-pool": {"members": [{"backend": "anth", "model": "claude-sonnet-4-5"}]},
            "vllm-pool": {"members": [{"backend": "vllm", "model": "qwen3", "tokenize": True}]},
            "plain-pool": {"members": [{"backend": "vllm", "model": "qwen3"}]},
        },
        "models": {
            "claude": {"routes": [{"pools": ["anth-pool"]}]},
            "local": {"routes": [{"pools": ["vllm-pool"]}]},
            "plain": {"routes": [{"pools": ["plain-pool"]}]},
        },
        "teams": {
            "research": {"budgets": [{"tokens_per_day": 10_000_000}]},
            "tiny": {"limits": {"requests_per_minute": 1}},
        },
        "keys": [
            {"id": "ci", "team": "research", "key": DEMO_KEY},
            {"id": "tiny", "team": "tiny", "key": "sk-test-tiny-0001"},
        ],
        "redis": {"url": redis, "key_prefix": prefix},
        "logging": {"format": "text"},  # access lines as log records
    }


@pytest.fixture
async def gw(
    native: FakeAnthropic, vllm: FakeOpenAI, redis_url: str, key_prefix: str
) -> AsyncIterator[Running]:
    vllm.behaviour.tool_calls = True  # an agent's model
    running = await start_gateway(config(native.url, vllm.url, redis_url, key_prefix))
    yield running
    await running.stop()


@pytest.fixture
async def client(gw: Running) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0) as c:
        yield c


async def metrics(gw: Running) -> str:
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        return await r.text()


async def budget_used(gw: Running, want: float) -> float:
    """The team's token use once it is ``want`` (settlement is off the response path)."""
    used = 0.0
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            async with s.get(gw.url + "/v1/quota", headers={"x-api-key": DEMO_KEY}) as r:
                used = float((await r.json())["budgets"][0]["used"])
            if used == want:
                break
            await asyncio.sleep(0.02)
    return used


# ------------------------------------------------------------------------- create


@pytest.mark.parametrize("model", MODELS)
async def test_create(
    client: anthropic.AsyncAnthropic, gw: Running, native: FakeAnthropic, vllm: FakeOpenAI,
    model: str, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="spillway.access")
    raw = await client.messages.with_raw_response.create(
        model=model, max_tokens=64, system="Be brief.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "say hi",
                                                "cache_control": {"type": "ephemeral"}}]}],
    )  # fmt: skip
    msg = await raw.parse()
    assert msg.model == model
    assert msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "w0 w1 w2 w3 w4 w5"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 6
    if model == "claude":
        sent = native.seen[-1]
        assert sent.body["model"] == "claude-sonnet-4-5"
        assert sent.body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
        assert sent.headers["anthropic-version"] == "2026-10-21"  # the SDK's, forwarded
    else:
        sent_chat = vllm.seen[-1].body
        assert sent_chat["model"] == "qwen3"
        assert sent_chat["messages"] == [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "say hi"},
        ]  # fmt: skip
        assert sent_chat["max_tokens"] == 64
    prompt = msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0)
    assert await budget_used(gw, prompt + 6) == prompt + 6
    text = await metrics(gw)
    assert value(text, "spillway_requests_total", endpoint="messages", model=model) == 1
    assert value(text, "spillway_completion_tokens_total", endpoint="messages") == 6
    access = [
        r.fields
        for r in caplog.records  # type: ignore[attr-defined]
        if r.name == "spillway.access" and "endpoint" in r.fields
    ]  # the model calls
    assert access[-1]["endpoint"] == "messages" and access[-1]["status"] == 200
    assert (access[-1]["prompt_tokens"], access[-1]["completion_tokens"]) == (prompt, 6)


async def test_native_passes_betas_and_thinking(
    client: anthropic.AsyncAnthropic, native: FakeAnthropic
) -> None:
    history = [
        {"role": "user", "content": "think"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "c2lnbmF0dXJl"},
            {"type": "text", "text": "ok"}]},
        {"role": "user", "content": "again"},
    ]  # fmt: skip
    msg = await client.beta.messages.create(
        model="claude", max_tokens=2048, messages=history,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 1024},
        betas=["interleaved-thinking-2025-05-14", "context-management-2025-06-27"],
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    )  # fmt: skip
    assert msg.stop_reason == "end_turn"
    sent = native.seen[-1]
    assert sent.headers["anthropic-beta"] == (
        "interleaved-thinking-2025-05-14,context-management-2025-06-27"
    )
    assert sent.body["messages"][1]["content"][0] == history[1]["content"][0]  # type: ignore[index]
    assert sent.body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent.body["context_management"]["edits"][0]["keep"] == "all"


# ------------------------------------------------------------------------- stream


@pytest.mark.parametrize("model", MODELS)
async def test_stream_events(client: anthropic.AsyncAnthropic, gw: Running, model: str) -> None:
    kinds: list[str] = []
    async with client.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        async for ev in stream:
            if ev.type in ("text", "input_json", "thinking", "signature", "citation"):
                continue  # the SDK's own helper events
            kinds.append(ev.type)
            if ev.type != "ping":
                validate_event(ev.model_dump())
        texts = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert kinds[0] == "message_start"
    body = [k for k in kinds if k != "ping"]
    assert body[:2] == ["message_start", "content_block_start"]
    assert set(body[2:-3]) == {"content_block_delta"} and len(body[2:-3]) == 6
    assert body[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert texts == ""  # consumed by the loop above
    assert final.content[0].text == "w0 w1 w2 w3 w4 w5"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.model == model
    assert final.usage.output_tokens == 6
    prompt = final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0)
    assert prompt > 0
    assert await budget_used(gw, prompt + 6) == prompt + 6


@pytest.mark.parametrize("model", MODELS)
async def test_tools_stream_input_json(
    client: anthropic.AsyncAnthropic, native: FakeAnthropic, vllm: FakeOpenAI, model: str
) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    parts: list[str] = []
    async with client.messages.stream(
        model=model, max_tokens=256, tools=[WEATHER], messages=question,  # type: ignore[list-item]
    ) as stream:  # fmt: skip
        async for ev in stream:
            if ev.type == "input_json":
                parts.append(ev.partial_json)
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather"
    assert call.input == {"city": "city-value", "days": 7}
    assert len(parts) > 2  # streamed in fragments, in order
    assert orjson.loads("".join(parts)) == call.input
    follow = await client.messages.create(
        model=model, max_tokens=256, tools=[WEATHER],  # type: ignore[list-item]
        messages=[*question, {"role": "assistant", "content": final.content},  # type: ignore[list-item]
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                "content": "sunny 21C"}]}],
    )  # fmt: skip
    assert follow.stop_reason == "end_turn"
    assert follow.content[0].text == "Result: sunny 21C"  # type: ignore[union-attr]
    if model == "local":
        sent = vllm.seen[-1].body["messages"]
        assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny 21C"}


async def test_translated_thinking_and_stop_sequence(
    client: anthropic.AsyncAnthropic, vllm: FakeOpenAI
) -> None:
    vllm.behaviour.reasoning = "let me see"
    msg = await client.messages.create(
        model="local", max_tokens=64, stop_sequences=["w3"],
        messages=[{"role": "user", "content": "count"}],
    )  # fmt: skip
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "let me see"  # type: ignore[union-attr]
    assert msg.content[1].text == "w0 w1 w2"  # type: ignore[union-attr]
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "w3"
    thinking: list[str] = []
    async with client.messages.stream(
        model="local", max_tokens=64, messages=[{"role": "user", "content": "count"}]
    ) as stream:
        async for ev in stream:
            if ev.type == "thinking":
                thinking.append(ev.thinking)
        final = await stream.get_final_message()
    assert "".join(thinking) == "let me see"
    assert final.content[0].type == "thinking"


# ------------------------------------------------------------------- count_tokens


async def test_count_tokens_sources(
    client: anthropic.AsyncAnthropic, native: FakeAnthropic, vllm: FakeOpenAI
) -> None:
    messages = [{"role": "user", "content": "one two three four"}]
    native_count = await client.messages.count_tokens(model="claude", messages=messages)  # type: ignore[arg-type]
    assert native_count.input_tokens == 4 + 3  # the fake Anthropic's own count
    assert native.seen[-1].path == "/v1/messages/count_tokens"
    assert native.seen[-1].body["model"] == "claude-sonnet-4-5"
    counted = await client.messages.count_tokens(model="local", messages=messages)  # type: ignore[arg-type]
    assert counted.input_tokens == 4 + 3  # vLLM's /tokenize (the fake counts words)
    assert vllm.tokenized == 1 and vllm.seen[-1].body["model"] == "qwen3"
    chats = vllm.chats
    estimated = await client.messages.count_tokens(model="plain", messages=messages)  # type: ignore[arg-type]
    assert estimated.input_tokens == (len("one two three four") + 16) // 4 + 1
    assert vllm.tokenized == 1 and vllm.chats == chats  # no backend was asked


# ------------------------------------------------------------------------- errors


async def test_error_classes(
    client: anthropic.AsyncAnthropic, gw: Running, native: FakeAnthropic
) -> None:
    hi = [{"role": "user", "content": "hi"}]
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError) as auth:
            await c.messages.create(model="claude", max_tokens=8, messages=hi)  # type: ignore[arg-type]
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="nope", max_tokens=8, messages=hi)  # type: ignore[arg-type]
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="claude", max_tokens=-1, messages=hi)  # type: ignore[arg-type]
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in bad.value.message
    with pytest.raises(anthropic.BadRequestError) as server_tool:
        await client.messages.create(
            model="local", max_tokens=8, messages=hi,  # type: ignore[arg-type]
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )  # fmt: skip
    assert "web_search_20250305" in server_tool.value.message
    with pytest.raises(anthropic.BadRequestError) as pdf:
        await client.messages.create(
            model="local", max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "document", "source": {
                "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}],
        )  # fmt: skip
    assert "application/pdf" in pdf.value.message
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, api_key="sk-test-tiny-0001", max_retries=0
    ) as tiny:
        await tiny.messages.create(model="claude", max_tokens=8, messages=hi)  # type: ignore[arg-type]
        with pytest.raises(anthropic.RateLimitError) as limited:
            await tiny.messages.create(model="claude", max_tokens=8, messages=hi)  # type: ignore[arg-type]
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(limited.value.response.headers["retry-after"]) >= 1
    native.behaviour.error = (529, "overloaded_error", "Overloaded")
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        await client.messages.create(model="claude", max_tokens=8, messages=hi)  # type: ignore[arg-type]
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


@pytest.mark.parametrize("model", MODELS)
async def test_error_mid_stream(
    client: anthropic.AsyncAnthropic, native: FakeAnthropic, vllm: FakeOpenAI, model: str
) -> None:
    native.behaviour.stream_error_after = 2
    vllm.behaviour.break_after = 3  # role chunk and two words, then the connection drops
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with client.messages.stream(
            model=model, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert "".join(texts) == "w0 w1"
    expected = "overloaded_error" if model == "claude" else "api_error"
    assert failed.value.body["error"]["type"] == expected  # type: ignore[index]


async def test_bearer_token_and_x_api_key(gw: Running, native: FakeAnthropic) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gw.url, auth_token=DEMO_KEY, max_retries=0
    ) as bearer:  # ANTHROPIC_AUTH_TOKEN: Authorization: Bearer
        msg = await bearer.messages.create(
            model="claude", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert msg.content[0].text == "w0 w1 w2 w3 w4 w5"  # type: ignore[union-attr]
    sent = native.seen[-1].headers
    assert sent["x-api-key"] == "sk-ant-test-key"  # the backend's own key, never the client's
    assert "authorization" not in {k.lower() for k in sent}
