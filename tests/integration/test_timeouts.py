"""Per-backend timeouts (connect, first byte, idle, total) and the per-attempt timeout."""

from __future__ import annotations

import aiohttp

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.fleet import (
    backend,
    blackhole,
    fleet_config,
    members,
    metric,
    post,
    sse_events,
)
from tests.support.gateway import start_gateway


async def test_connect_timeout_moves_to_the_next_member() -> None:
    good = await FakeOpenAI("good").start()
    with blackhole() as port:
        gw = await start_gateway(fleet_config(
            {"hole": {"provider": "openai", "url": f"http://127.0.0.1:{port}/v1",
                      "timeouts": {"connect": 0.2}},
             "good": backend(good)},
            {"p": {"strategy": "round_robin", "members": members("hole", "good")}},
            health={"failure_threshold": 1000},
        ))  # fmt: skip
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(2):  # one of the two starts on the hole
                    r = await post(s, gw)
                    assert (r.status, r.backend) == (200, "good")
                    assert r.elapsed < 1.0
            assert metric(gw, "spillway_upstream_errors_total", backend="hole", kind="timeout") == 1
        finally:
            await gw.stop()
            await good.stop()


async def test_connect_timeout_alone_is_a_504() -> None:
    with blackhole() as port:
        gw = await start_gateway(fleet_config(
            {"hole": {"provider": "openai", "url": f"http://127.0.0.1:{port}/v1",
                      "timeouts": {"connect": 0.2}}},
            {"p": {"members": members("hole")}},
        ))  # fmt: skip
        try:
            async with aiohttp.ClientSession() as s:
                r = await post(s, gw)
            assert r.status == 504
            assert r.json()["error"]["code"] == "upstream_timeout"
            assert 0.2 <= r.elapsed < 1.0
        finally:
            await gw.stop()


async def test_first_byte_timeout() -> None:
    slow = await FakeOpenAI("slow", Behaviour(first_byte_delay=2)).start()
    gw = await start_gateway(fleet_config(
        {"slow": backend(slow, timeouts={"first_byte": 0.3})}, {"p": {"members": members("slow")}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            for stream in (False, True):
                r = await post(s, gw, stream=stream)
                assert r.status == 504, r.body
                assert r.json()["error"]["code"] == "upstream_timeout"
                assert 0.3 <= r.elapsed < 1.5
    finally:
        await gw.stop()
        await slow.stop()


async def test_idle_timeout_mid_stream_ends_with_an_error_event() -> None:
    up = await FakeOpenAI("up", Behaviour(chunk_delay=1.0, words=5)).start()
    gw = await start_gateway(fleet_config(
        {"up": backend(up, timeouts={"idle": 0.3})}, {"p": {"members": members("up")}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw, stream=True)
        assert r.status == 200
        events = sse_events(r.body)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "upstream_timeout"
        assert "idle" in events[-2]["error"]["message"]
        assert r.elapsed < 1.0
        assert len(up.disconnects) == 1  # the upstream was hung up on
    finally:
        await gw.stop()
        await up.stop()


async def test_total_timeout_bounds_a_stream_that_keeps_trickling() -> None:
    up = await FakeOpenAI("up", Behaviour(chunk_delay=0.1, words=40)).start()
    gw = await start_gateway(fleet_config(
        {"up": backend(up, timeouts={"total": 0.6, "idle": 0.5})},
        {"p": {"members": members("up")}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw, stream=True)
        events = sse_events(r.body)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["type"] == "api_error"
        assert events[-2]["error"]["code"] == "upstream_timeout"
        chunks = [e for e in events[:-2] if "choices" in e]
        assert 2 <= len(chunks) < 20
        assert 0.6 <= r.elapsed < 1.5
    finally:
        await gw.stop()
        await up.stop()


async def test_attempt_timeout_retries_on_another_member() -> None:
    slow = await FakeOpenAI("slow", Behaviour(first_byte_delay=2)).start()
    fast = await FakeOpenAI("fast").start()
    gw = await start_gateway(fleet_config(
        {"slow": backend(slow), "fast": backend(fast)},
        {"p": {"strategy": "round_robin", "members": members("slow", "fast")}},
        retries={"attempt_timeout_seconds": 0.25},
        health={"failure_threshold": 1000},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            for stream in (False, True):
                r = await post(s, gw, stream=stream)  # round robin: the first starts on slow
                assert (r.status, r.backend) == (200, "fast")
                assert r.elapsed < 1.0
                r = await post(s, gw, stream=stream)
                assert (r.status, r.backend) == (200, "fast")
    finally:
        await gw.stop()
        await slow.stop()
        await fast.stop()
