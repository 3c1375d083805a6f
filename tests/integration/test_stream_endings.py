"""How streams end: an upstream that breaks mid-stream, a client that goes away."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import pytest

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.fleet import (
    KEY,
    backend,
    chat_body,
    fleet_config,
    members,
    sse_events,
    wait_for,
)
from tests.support.gateway import Running, start_gateway
from tests.support.schema import validate


async def test_mid_stream_failure_yields_an_error_event_then_done() -> None:
    broken = await FakeOpenAI("broken", Behaviour(break_after=3, words=10)).start()
    spare = await FakeOpenAI("spare").start()
    gw = await start_gateway(fleet_config(
        {"broken": backend(broken), "spare": backend(spare)},
        {"p1": {"members": members("broken")}, "p2": {"members": members("spare")}},
    ))  # fmt: skip
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        url = gw.url + "/v1/chat/completions"
        async with (
            aiohttp.ClientSession() as s,
            s.post(url, json=chat_body(stream=True), headers=auth) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["x-spillway-backend"] == "broken"
            body = await resp.read()  # a clean end: no exception reading to EOF
        events = sse_events(body)
        assert events[-1] == "[DONE]"
        err = events[-2]
        assert set(err) == {"error"}
        assert set(err["error"]) == {"message", "type", "param", "code"}
        assert err["error"]["type"] == "api_error" and err["error"]["code"] == "upstream_error"
        for chunk in events[:-2]:
            validate("CreateChatCompletionStreamResponse", chunk)
        assert len(events[:-2]) == 3  # what came before the break was relayed
        assert spare.seen == []  # the stream had started: never retried elsewhere
        # the official SDK surfaces the in-band error as an APIError
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            stream = await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            got = []
            with pytest.raises(openai.APIError) as info:
                async for chunk in stream:
                    got.append(chunk)
            assert "broke" in str(info.value.message)
            assert len(got) == 3
    finally:
        await gw.stop()
        await broken.stop()
        await spare.stop()


async def _quota_used(s: aiohttp.ClientSession, gw: Running) -> float:
    async with s.get(gw.url + "/v1/quota", headers={"Authorization": f"Bearer {KEY}"}) as r:
        doc: dict[str, Any] = await r.json()
    return float(doc["budgets"][0]["used"])


async def test_client_disconnect_reaches_the_upstream_within_200ms() -> None:
    up = await FakeOpenAI("up", Behaviour(chunk_delay=0.05, words=200, prompt_tokens=30)).start()
    gw = await start_gateway(fleet_config(
        {"up": backend(up)}, {"p": {"members": members("up")}},
        teams={"t": {"budgets": [{"tokens_per_day": 100000}]}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            resp = await s.post(gw.url + "/v1/chat/completions",
                                json=chat_body(stream=True, max_tokens=200),
                                headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
            got = 0
            async for line in resp.content:
                if line.startswith(b"data: "):
                    got += 1
                    if got == 5:
                        break
            resp.close()  # drop the connection mid-stream
            gone = time.monotonic()
            await wait_for(lambda: up.disconnects, within=2, what="the upstream to see it")
            assert up.disconnects[0] - gone < 0.2
            state = gw.gateway.runtime.states["up"]
            await wait_for(lambda: state.inflight == 0, within=1, what="the attempt to end")
            # usage so far is settled: the reservation (body bound + 200) is released and
            # what was streamed is charged (no usage reported: counted chunks + prompt estimate)
            used = await _quota_used(s, gw)
            assert 5 <= used < 100
            assert state.healthy and state.consecutive_failures == 0  # not the member's fault
    finally:
        await gw.stop()
        await up.stop()


async def test_client_disconnect_before_the_answer_cancels_the_upstream() -> None:
    up = await FakeOpenAI("up", Behaviour(first_byte_delay=5)).start()
    gw = await start_gateway(fleet_config({"up": backend(up)}, {"p": {"members": members("up")}}))
    try:
        async with aiohttp.ClientSession() as s:
            auth = {"Authorization": f"Bearer {KEY}"}
            url = gw.url + "/v1/chat/completions"
            task = asyncio.create_task(s.post(url, json=chat_body(), headers=auth))
            await wait_for(lambda: up.inflight == 1, what="the upstream to get it")
            task.cancel()
            gone = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: up.disconnects, within=2, what="the upstream to see it")
            assert up.disconnects[0] - gone < 0.2
    finally:
        await gw.stop()
        await up.stop()
