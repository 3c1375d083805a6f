"""The chat-completions contract end to end: forwarding, errors, hardening."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import Running, start_gateway
from tests.support.net import free_port

KEY = "sk-test-contract-01"
AUTH = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "hello"}]


def config(*urls: str, **server: Any) -> dict[str, Any]:
    backends = {f"b{i}": {"provider": "openai", "url": u, "api_key": f"sk-backend-{i}",
                          "timeouts": {"first_byte": 1.0}} for i, u in enumerate(urls)}  # fmt: skip
    return {
        "server": server,
        "backends": {**backends, "sim": {"provider": "simulate"}},
        "pools": {
            "same": {"members": [{"backend": "b0", "model": "chat"}]},
            "renamed": {
                "members": [{"backend": f"b{i}", "model": "served-model"} for i in range(len(urls))]
            },
            "sim": {"members": [{"backend": "sim", "model": "sim-1"}]},
        },
        "models": {
            "chat": {"routes": [{"pools": ["same"]}]},
            "alias": {"routes": [{"pools": ["renamed"]}], "aliases": ["team-*"]},
            "tools": {"routes": [{"pools": ["sim"]}]},
        },
        "teams": {"t": {}},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    }


@pytest.fixture
async def gw(upstream: FakeOpenAI) -> AsyncIterator[Running]:
    running = await start_gateway(config(upstream.url, max_body_bytes=4096,
                                         body_timeout_seconds=0.5))  # fmt: skip
    yield running
    await running.stop()


async def post(gw: Running, body: bytes | dict[str, Any], headers: dict[str, str] | None = None,
               path: str = "/v1/chat/completions") -> tuple[int, Any, Any]:  # fmt: skip
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.url + path, data=data, headers={**AUTH, **(headers or {})}) as r,
    ):
        raw = await r.read()
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            doc = raw
        return r.status, doc, r.headers


def assert_envelope(doc: Any, code: str | None = None, param: str | None = None) -> None:
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert doc["error"]["message"]
    if code is not None:
        assert doc["error"]["code"] == code
    if param is not None:
        assert doc["error"]["param"] == param


async def test_body_forwarded_unchanged_with_extras(gw: Running, upstream: FakeOpenAI) -> None:
    body = {"model": "chat", "messages": MSG, "top_k": 40, "min_p": 0.1,
            "include_stop_str_in_output": True, "skip_special_tokens": False,
            "return_tokens_as_token_ids": True, "chat_template_kwargs": {"x": 1},
            "brand_new_field": {"a": [1, 2]}, "temperature": 0.7}  # fmt: skip
    raw = json.dumps(body, indent=1).encode()  # the client's exact bytes, odd spacing and all
    status, _, _ = await post(
        gw,
        raw,
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "Cookie": "s=1",
            "X-Forwarded-For": "1.2.3.4",
            "x-request-id": "req-42",
        },
    )
    assert status == 200
    seen = upstream.seen[-1]
    assert seen.raw == raw  # nothing had to change, so nothing did
    assert seen.headers["Authorization"] == "Bearer sk-backend-0"
    assert KEY not in json.dumps(dict(seen.headers))
    assert seen.headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert seen.headers["X-Request-Id"] == "req-42"
    assert "Cookie" not in seen.headers and "X-Forwarded-For" not in seen.headers


async def test_only_the_model_changes(gw: Running, upstream: FakeOpenAI) -> None:
    body = {"model": "team-alpha", "messages": MSG, "top_k": 5, "x_extra": True}
    status, doc, headers = await post(gw, body)
    assert status == 200
    assert doc["model"] == "team-alpha"  # what the client asked for
    assert headers["x-spillway-served-model"] == "served-model"
    assert upstream.seen[-1].body == {**body, "model": "served-model"}


async def test_poolside_path_and_models_list(gw: Running) -> None:
    status, doc, _ = await post(gw, {"model": "chat", "messages": MSG},
                                path="/openai/v1/chat/completions")  # fmt: skip
    assert status == 200 and doc["object"] == "chat.completion"
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/models", "/openai/v1/models"):
            async with s.get(gw.url + path, headers=AUTH) as r:
                ids = [m["id"] for m in (await r.json())["data"]]
                assert ids == ["chat", "alias", "tools"]
        async with s.get(gw.url + "/healthz") as r:
            assert r.status == 200
        async with s.get(gw.url + "/readyz") as r:
            assert r.status == 200


async def test_client_errors(gw: Running) -> None:
    status, doc, _ = await post(gw, b'{"model": "chat", "messages": [')
    assert status == 400
    assert_envelope(doc, "invalid_json")
    status, doc, _ = await post(gw, {"model": "chat", "messages": MSG, "top_p": 7})
    assert status == 400
    assert_envelope(doc, param="top_p")
    status, doc, _ = await post(gw, {"model": "chat", "messages": MSG}, {"Authorization": ""})
    assert status == 401
    assert_envelope(doc, "missing_api_key")
    status, doc, _ = await post(gw, {"model": "nope", "messages": MSG})
    assert status == 404
    assert_envelope(doc, "model_not_found", "model")
    status, doc, _ = await post(gw, {"model": "chat", "messages": [
        {"role": "user", "content": "x" * 5000}]})  # fmt: skip
    assert status == 413
    assert_envelope(doc, "request_too_large")
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/v1/chat/completions", headers=AUTH) as r:
            assert r.status == 405
            assert_envelope(await r.json(), "method_not_allowed")
        async with s.post(gw.url + "/v2/nothing", headers=AUTH) as r:
            assert r.status == 404
            assert_envelope(await r.json(), "unknown_url")


async def test_upstream_4xx_passed_on(gw: Running, upstream: FakeOpenAI) -> None:
    upstream.behaviour = Behaviour(status=400, error_message="This model's context is 8192 tokens")
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as err:
            await c.chat.completions.create(model="chat", messages=MSG)  # type: ignore[arg-type]
    assert "8192 tokens" in err.value.message
    assert len(upstream.seen) == 1  # a client error is not retried


async def test_upstream_unreachable_and_timeout(upstream: FakeOpenAI) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    running = await start_gateway(config(dead))
    try:
        status, doc, _ = await post(running, {"model": "chat", "messages": MSG})
        assert status == 502
        assert_envelope(doc, "upstream_error")
        assert "unreachable" in doc["error"]["message"]
    finally:
        await running.stop()
    upstream.behaviour = Behaviour(first_byte_delay=3)
    running = await start_gateway(config(upstream.url))
    try:
        async with openai.AsyncOpenAI(base_url=running.base_url, api_key=KEY, max_retries=0) as c:
            with pytest.raises(openai.APIStatusError) as err:
                await c.chat.completions.create(model="chat", messages=MSG)  # type: ignore[arg-type]
        assert err.value.status_code == 504
    finally:
        await running.stop()


async def test_redirect_not_followed(upstream: FakeOpenAI) -> None:
    elsewhere = await FakeOpenAI("elsewhere").start()
    upstream.behaviour = Behaviour(redirect_to=elsewhere.url + "/chat/completions")
    running = await start_gateway(config(upstream.url))
    try:
        status, doc, _ = await post(running, {"model": "chat", "messages": MSG})
        assert status == 502
        assert "redirect" in doc["error"]["message"]
        assert elsewhere.seen == []  # the backend's credentials went nowhere else
    finally:
        await running.stop()
        await elsewhere.stop()


async def test_failover_to_next_member(upstream: FakeOpenAI) -> None:
    broken = await FakeOpenAI("broken", Behaviour(status=503)).start()
    running = await start_gateway(config(broken.url, upstream.url))
    try:
        for _ in range(4):
            status, _, headers = await post(running, {"model": "alias", "messages": MSG})
            assert status == 200
            assert headers["x-spillway-backend"] == "b1"
        assert len(upstream.seen) == 4
    finally:
        await running.stop()
        await broken.stop()


async def test_trickled_body_is_cut_off(gw: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{")  # fmt: skip
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), timeout=5)
    writer.close()
    await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in head


async def test_tool_calls_multi_turn_on_simulate(gw: Running) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
        first = await c.chat.completions.create(
            model="tools", messages=[{"role": "user", "content": "weather in Oslo?"}],
            tools=tools,  # type: ignore[arg-type]
        )  # fmt: skip
        call = first.choices[0].message.tool_calls
        assert first.choices[0].finish_reason == "tool_calls" and call
        assert json.loads(call[0].function.arguments) == {"city": "city-value"}  # type: ignore[union-attr]
        second = await c.chat.completions.create(
            model="tools", tools=tools,  # type: ignore[arg-type]
            messages=[
                {"role": "user", "content": "weather in Oslo?"},
                first.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": call[0].id, "content": "12C, rain"},
            ],
        )  # fmt: skip
        assert second.choices[0].finish_reason == "stop"
        assert second.choices[0].message.content
        stream = await c.chat.completions.create(
            model="tools", messages=[{"role": "user", "content": "weather in Oslo?"}],
            tools=tools, stream=True,  # type: ignore[arg-type]
        )  # fmt: skip
        args = ""
        async for chunk in stream:
            for tc in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
                args += tc.function.arguments or "" if tc.function else ""
        assert json.loads(args) == {"city": "city-value"}
