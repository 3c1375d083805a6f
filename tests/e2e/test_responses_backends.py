"""Responses through each kind of backend and failure: Azure's v1 API, Anthropic behind
the chat bridge, custom tools, streams that break midway."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from openai import APIStatusError

from tests.e2e.test_responses_api import (
    KEY_A,
    WEATHER,
    client,
    config,
    fakes,
    gw,
    stream_events,
)
from tests.support.fake_responses import FakeResponses, FakeToolChat, Script
from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import Running, start_gateway

__all__ = ["fakes", "gw"]  # the fixtures


async def test_a_stream_that_breaks_ends_with_response_failed() -> None:
    up = await FakeOpenAI("broken", Behaviour(break_after=3)).start()
    gw = await start_gateway(config(up.url, up.url, None))
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                gw.base_url + "/responses",
                headers={"Authorization": f"Bearer {KEY_A}"},
                json={"model": "bridged", "input": "hi", "stream": True},
            ) as r,
        ):
            raw = await r.read()
    finally:
        await gw.stop()
        await up.stop()
    events = stream_events(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"


async def test_azure_v1_responses_path(fakes: tuple[FakeToolChat, FakeResponses]) -> None:
    """Azure passes Responses through on its v1 API, the deployment as the body's model."""
    chat, native = fakes
    doc = config(chat.url, native.url, None)
    doc["backends"]["azure"] = {"provider": "azure", "url": native.base, "api_key": "az-key"}
    doc["pools"]["az"] = {"members": [{"backend": "azure", "model": "gpt4o-prod"}]}
    doc["pools"]["az-chat"] = {
        "members": [{"backend": "azure", "model": "gpt4o-prod", "responses": "bridge"}]
    }
    doc["models"]["azure"] = {"routes": [{"pools": ["az"]}]}
    doc["models"]["azure-chat"] = {"routes": [{"pools": ["az-chat"]}]}
    gw = await start_gateway(doc)
    try:
        async with client(gw) as oa:
            r = await oa.responses.create(model="azure", input="hi")
            assert r.output_text == "Hello from the model" and r.model == "azure"
            seen = native.seen[-1]
            assert seen.path == "/openai/v1/responses" and seen.query == {}
            assert seen.headers["api-key"] == "az-key" and seen.body["model"] == "gpt4o-prod"
            # a member that declares `responses: bridge` gets chat completions instead
            with pytest.raises(APIStatusError) as err:  # the fake has no chat deployment path
                await oa.responses.create(model="azure-chat", input="hi")
            assert err.value.status_code == 502 and "azure" in err.value.message
            assert native.seen[-1] is seen
    finally:
        await gw.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_to_an_anthropic_backend(
    fakes: tuple[FakeToolChat, FakeResponses], stream: bool
) -> None:
    """Responses -> the chat bridge -> the Anthropic adapter: no pair is special."""
    from tests.support.fake_anthropic import FakeAnthropic

    claude = await FakeAnthropic().start()
    doc = config(fakes[0].url, fakes[1].url, None)
    doc["backends"]["claude"] = {
        "provider": "anthropic",
        "url": claude.url,
        "api_key": claude.behaviour.api_key,
    }
    doc["pools"]["anthropic"] = {
        "members": [{"backend": "claude", "model": "claude-x"}],
        "max_output_tokens": 256,
    }
    doc["models"]["claude"] = {"routes": [{"pools": ["anthropic"]}]}
    gw = await start_gateway(doc)
    try:
        async with client(gw) as oa:
            history: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
            if stream:
                async with oa.responses.stream(
                    model="claude", input=history, tools=[WEATHER], instructions="Brief."
                ) as s:
                    first = await s.get_final_response()
            else:
                first = await oa.responses.create(
                    model="claude", input=history, tools=[WEATHER], instructions="Brief."
                )
            call = next(o for o in first.output if o.type == "function_call")
            assert call.name == "get_weather" and "city" in json.loads(call.arguments)
            history += [o.model_dump(exclude_none=True) for o in first.output]
            history.append(
                {"type": "function_call_output", "call_id": call.call_id, "output": "18C"}
            )
            second = await oa.responses.create(model="claude", input=history, tools=[WEATHER])
        assert "Result: 18C" in second.output_text
        assert first.usage is not None and first.usage.input_tokens > 0
        assert claude.seen[0].body["system"] in ("Brief.", [{"type": "text", "text": "Brief."}])
    finally:
        await gw.stop()
        await claude.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_custom_tools_are_bridged_as_functions(stream: bool) -> None:
    """A custom tool (free-text input, as Codex's apply_patch) reaches a chat backend as a
    function of one string and comes back as a custom_tool_call."""
    patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"
    chat = await FakeToolChat(Script(calls={"apply_patch": {"input": patch}})).start()
    gw = await start_gateway(config(chat.url, chat.url, None))
    tool = {
        "type": "custom",
        "name": "apply_patch",
        "description": "Edit files.",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: PATCH"},
    }
    try:
        async with client(gw) as oa:
            history: list[Any] = [{"role": "user", "content": "add a.txt"}]
            if stream:
                async with oa.responses.stream(model="bridged", input=history, tools=[tool]) as s:
                    kinds = [e.type async for e in s]
                    first = await s.get_final_response()
                assert "response.custom_tool_call_input.done" in kinds
            else:
                first = await oa.responses.create(model="bridged", input=history, tools=[tool])
            call = first.output[0]
            assert call.type == "custom_tool_call" and call.name == "apply_patch"
            assert call.input == patch
            history += [o.model_dump(exclude_none=True) for o in first.output]
            history.append(
                {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Done!"}
            )
            second = await oa.responses.create(model="bridged", input=history, tools=[tool])
        assert second.output_text == "Result: Done!"
        fn = chat.seen[0].body["tools"][0]["function"]
        assert fn["parameters"]["required"] == ["input"]
        assert "start: PATCH" in fn["parameters"]["properties"]["input"]["description"]
        msgs = chat.seen[-1].body["messages"]
        assert json.loads(msgs[-2]["tool_calls"][0]["function"]["arguments"]) == {"input": patch}
    finally:
        await gw.stop()
        await chat.stop()


async def test_a_native_stream_that_breaks_ends_with_response_failed(
    gw: Running, fakes: tuple[FakeToolChat, FakeResponses]
) -> None:
    fakes[1].break_after = 4
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.base_url + "/responses",
            headers={"Authorization": f"Bearer {KEY_A}"},
            json={"model": "native", "input": "hi", "stream": True},
        ) as r,
    ):
        raw = await r.read()
    events = stream_events(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events))) and len(events) == 5
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["id"] == events[0]["response"]["id"] == "resp_fake0001"
