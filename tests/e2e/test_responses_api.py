"""OpenAI's Responses API through the gateway, with the official ``openai`` SDK.

Three members of three models: a vLLM-style chat backend (bridged: the gateway
translates both ways), hosted OpenAI (flavour openai: passed through), and a
vLLM server declaring ``responses: native`` (passed through). The fakes follow
the same script, so every assertion holds whichever way a call went.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as redis
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from tests.support.fake_responses import FakeResponses, FakeToolChat, Script
from tests.support.gateway import Running, start_gateway
from tests.support.metrics import value

KEY_A, KEY_B = "sk-resp-team-a-0001", "sk-resp-team-b-0001"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
SCRIPT = Script(calls={"get_weather": {"city": "Paris"}}, text="Hello from the model")
MODELS = ("bridged", "native", "vllm-native")


def config(
    chat: str,
    responses: str,
    store: dict[str, Any] | None,
    redis_url: str = "",
    prefix: str = "spillway",
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "backends": {
            "vllm": {"provider": "openai", "url": chat},
            "openai": {
                "provider": "openai",
                "flavour": "openai",
                "url": responses,
                "api_key": "sk-upstream",
            },
            "vllm-responses": {"provider": "openai", "url": responses},
        },
        "pools": {
            "gpu": {"members": [{"backend": "vllm", "model": "qwen-coder"}]},
            "hosted": {"members": [{"backend": "openai", "model": "gpt-5-mini"}]},
            "gpu2": {
                "members": [
                    {"backend": "vllm-responses", "model": "gpt-oss", "responses": "native"}
                ]
            },
        },
        "models": {
            "bridged": {"routes": [{"pools": ["gpu"]}]},
            "native": {"routes": [{"pools": ["hosted"]}]},
            "vllm-native": {"routes": [{"pools": ["gpu2"]}]},
        },
        "teams": {"a": {"budgets": [{"tokens_per_day": 1_000_000}]}, "b": {}},
        "keys": [{"id": "ka", "team": "a", "key": KEY_A}, {"id": "kb", "team": "b", "key": KEY_B}],
    }
    if store is not None:
        doc["responses"] = {"store": store}
    if redis_url:
        doc["redis"] = {"url": redis_url, "key_prefix": prefix}
    return doc


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeToolChat, FakeResponses]]:
    chat = await FakeToolChat(SCRIPT).start()
    native = await FakeResponses(SCRIPT).start()
    yield chat, native
    await chat.stop()
    await native.stop()


@pytest.fixture
async def gw(fakes: tuple[FakeToolChat, FakeResponses]) -> AsyncIterator[Running]:
    running = await start_gateway(config(fakes[0].url, fakes[1].url, None))
    yield running
    await running.stop()


def client(gw: Running, key: str = KEY_A) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
async def test_create_and_stream(
    gw: Running, fakes: tuple[FakeToolChat, FakeResponses], model: str
) -> None:
    chat, native = fakes
    async with client(gw) as oa:
        r = await oa.responses.create(
            model=model, input="Say hello", instructions="Be brief.", max_output_tokens=50
        )
        assert r.output_text == "Hello from the model" and r.model == model
        assert r.status == "completed" and r.id.startswith("resp")
        assert r.usage is not None and r.usage.output_tokens == 4
        assert r.usage.total_tokens == r.usage.input_tokens + 4
        async with oa.responses.stream(model=model, input="Say hello") as stream:
            kinds, deltas = [], []
            async for event in stream:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Hello from the model"
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    assert final.usage is not None and final.usage.output_tokens == 4
    if model == "bridged":
        sent = chat.seen[0].body
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert sent["max_completion_tokens"] == 50 and sent["model"] == "qwen-coder"
        assert chat.seen[1].body["stream_options"] == {"include_usage": True}
    else:
        sent = native.seen[0].body
        assert sent["model"] == ("gpt-5-mini" if model == "native" else "gpt-oss")
        assert sent["input"] == "Say hello" and sent["instructions"] == "Be brief."
        expected = "/v1/responses"
        assert native.seen[0].path == expected
        auth = native.seen[0].headers.get("Authorization")
        assert auth == ("Bearer sk-upstream" if model == "native" else None)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/metrics") as resp:
            text = await resp.text()
        async with s.get(
            gw.base_url + "/quota", headers={"Authorization": f"Bearer {KEY_A}"}
        ) as resp:
            used = (await resp.json())["budgets"][0]["used"]
    assert (
        value(
            text, "spillway_requests_total", endpoint="responses", model=model, status_class="2xx"
        )
        == 2
    )
    billed = r.usage.total_tokens + final.usage.total_tokens
    assert used == billed  # settled on the usage the backend reported
    assert value(text, "spillway_completion_tokens_total", endpoint="responses") == 8


def stream_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                events.append(orjson.loads(line[6:]))
    return events


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
async def test_function_tools_across_turns(
    gw: Running, fakes: tuple[FakeToolChat, FakeResponses], model: str, stream: bool
) -> None:
    chat, native = fakes
    history: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    async with client(gw) as oa:
        if stream:
            async with oa.responses.stream(model=model, input=history, tools=[WEATHER]) as s:
                args = [
                    e.delta async for e in s if e.type == "response.function_call_arguments.delta"
                ]
                first = await s.get_final_response()
            assert "".join(args) == '{"city":"Paris"}' and len(args) > 1
        else:
            first = await oa.responses.create(model=model, input=history, tools=[WEATHER])
        calls = [o for o in first.output if o.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "get_weather"
        assert json.loads(calls[0].arguments) == {"city": "Paris"}
        history += [o.model_dump(exclude_none=True) for o in first.output]
        history.append(
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C and sunny"}
        )
        second = await oa.responses.create(model=model, input=history, tools=[WEATHER])
    assert second.output_text == "Result: 18C and sunny"
    if model == "bridged":
        msgs = chat.seen[-1].body["messages"]
        assert msgs[-2]["role"] == "assistant"
        assert msgs[-2]["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        }
        assert msgs[-1] == {
            "role": "tool",
            "tool_call_id": calls[0].call_id,
            "content": "18C and sunny",
        }
    else:
        assert native.seen[-1].body["input"][-1]["type"] == "function_call_output"


async def test_raw_stream_is_sequenced(gw: Running) -> None:
    """Every event of a bridged stream has an ``event:`` line matching its type and a
    sequence_number counting from 0."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.base_url + "/responses",
            headers={"Authorization": f"Bearer {KEY_A}"},
            json={"model": "bridged", "input": "Weather?", "tools": [WEATHER], "stream": True},
        ) as r,
    ):
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        raw = await r.read()
    events = stream_events(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [
        line.split(b": ", 1)[1].decode() for line in raw.split(b"\n") if line.startswith(b"event: ")
    ]
    assert kinds == [e["type"] for e in events]
    done = events[-1]["response"]
    assert done["output"][0]["type"] == "function_call" and done["status"] == "completed"


async def test_builtin_tools_need_a_native_backend(gw: Running) -> None:
    async with client(gw) as oa:
        with pytest.raises(BadRequestError) as err:
            await oa.responses.create(
                model="bridged", input="news?", tools=[{"type": "web_search"}]
            )
        assert err.value.body["param"] == "tools"  # type: ignore[index]
        assert (
            "'web_search'" in err.value.message and 'web_search = "disabled"' in err.value.message
        )
        r = await oa.responses.create(model="native", input="news?", tools=[{"type": "web_search"}])
        assert r.output_text == "Hello from the model"


async def test_previous_response_id_needs_the_store(gw: Running) -> None:
    async with client(gw) as oa:
        r = await oa.responses.create(model="bridged", input="hi", store=False)
        assert r.output_text == "Hello from the model"
        with pytest.raises(BadRequestError) as err:
            await oa.responses.create(model="bridged", input="again", previous_response_id=r.id)
        assert "responses: {store:" in err.value.message
        with pytest.raises(BadRequestError):
            await oa.responses.retrieve(r.id)


@pytest.mark.parametrize("model", ["bridged", "native"])
async def test_previous_response_id_with_the_redis_store(
    fakes: tuple[FakeToolChat, FakeResponses], redis_url: str, key_prefix: str, model: str
) -> None:
    chat, native = fakes
    gw = await start_gateway(
        config(chat.url, native.url, {"ttl_seconds": 600}, redis_url, key_prefix)
    )
    try:
        async with client(gw) as oa, client(gw, KEY_B) as other:
            first = await oa.responses.create(
                model=model, input="Weather in Paris?", tools=[WEATHER], instructions="Be brief."
            )
            call = next(o for o in first.output if o.type == "function_call")
            async with oa.responses.stream(
                model=model,
                previous_response_id=first.id,
                tools=[WEATHER],
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18C"}],
            ) as s:
                second = await s.get_final_response()
            assert second.output_text == "Result: 18C"
            assert second.previous_response_id == first.id
            third = await oa.responses.create(
                model=model, input="Thanks", previous_response_id=second.id
            )
            assert third.output_text == "Hello from the model"
            # the backend got the whole conversation each turn, never the id
            if model == "bridged":
                roles = [m["role"] for m in chat.seen[-1].body["messages"]]
                assert roles == ["user", "assistant", "tool", "assistant", "user"]
            else:
                sent = native.seen[-1].body
                assert "previous_response_id" not in sent
                assert [i.get("type", "message") for i in sent["input"]] == [
                    "message",
                    "function_call",
                    "function_call_output",
                    "message",
                    "message",
                ]
            got = await oa.responses.retrieve(second.id)
            assert got.id == second.id and got.output_text == "Result: 18C"
            # another team's ids do not exist for it
            with pytest.raises(NotFoundError):
                await other.responses.retrieve(second.id)
            with pytest.raises(NotFoundError):
                await other.responses.create(model=model, input="x", previous_response_id=second.id)
            with pytest.raises(NotFoundError):
                await other.responses.delete(second.id)
            # kept in Redis with the configured TTL
            r = redis.from_url(redis_url)
            try:
                ttl = await r.ttl(f"{key_prefix}:responses:{second.id}")
            finally:
                await r.aclose()
            assert 0 < ttl <= 600
            await oa.responses.delete(second.id)
            with pytest.raises(NotFoundError):
                await oa.responses.retrieve(second.id)
            # store: false is not kept
            unkept = await oa.responses.create(model=model, input="hi", store=False)
            with pytest.raises(NotFoundError):
                await oa.responses.retrieve(unkept.id)
    finally:
        await gw.stop()


async def test_bad_requests_are_openai_errors(gw: Running) -> None:
    async with aiohttp.ClientSession() as s:
        for body, param in (
            ({"model": "bridged"}, "input"),
            (
                {
                    "model": "bridged",
                    "input": [{"type": "message", "role": "robot", "content": "x"}],
                },
                "input",
            ),
            ({"model": "bridged", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
            ({"model": "bridged", "input": "x", "background": True}, "background"),
        ):
            async with s.post(
                gw.base_url + "/responses", json=body, headers={"Authorization": f"Bearer {KEY_A}"}
            ) as r:
                assert r.status == 400, body
                err = (await r.json())["error"]
                assert err["param"] == param and err["type"] == "invalid_request_error"
        async with s.post(
            gw.url + "/responses", data=b"{not json", headers={"Authorization": f"Bearer {KEY_A}"}
        ) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
