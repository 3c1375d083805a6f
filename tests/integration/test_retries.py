"""Retries before the first byte: which errors, where to, how many, and the bill."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.fleet import KEY, backend, fleet_config, members, metric, post, wait_for
from tests.support.gateway import start_gateway
from tests.support.net import free_port

NO_EJECTION = {"failure_threshold": 1000}


async def test_retry_budget_caps_retries() -> None:
    a = await FakeOpenAI("a", Behaviour(status=503)).start()
    b = await FakeOpenAI("b", Behaviour(status=503)).start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a), "b": backend(b)}, {"p": {"members": members("a", "b")}},
        retries={"budget_ratio": 0.5, "min_per_second": 0, "backoff_base_seconds": 0},
        health=NO_EJECTION,
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(10):
                r = await post(s, gw)
                assert r.status == 503
                assert r.json()["error"]["message"] == "upstream says no"
        # 10 requests: retries may not pass half of them
        assert len(a.seen) + len(b.seen) == 15
        assert metric(gw, "spillway_retries_denied_total", pool="p", reason="budget") == 5
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


async def test_max_attempts_bounds_one_request() -> None:
    fakes = [await FakeOpenAI(f"f{i}", Behaviour(status=500)).start() for i in range(3)]
    gw = await start_gateway(fleet_config(
        {f.name: backend(f) for f in fakes}, {"p": {"members": members("f0", "f1", "f2")}},
        retries={"max_attempts": 2, "budget_ratio": 10, "backoff_base_seconds": 0},
        health=NO_EJECTION,
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(4):
                assert (await post(s, gw)).status == 500
        assert sum(len(f.seen) for f in fakes) == 8
        assert metric(gw, "spillway_retries_denied_total", pool="p", reason="max_attempts") == 4
    finally:
        await gw.stop()
        for f in fakes:
            await f.stop()


async def test_connect_error_and_5xx_move_on_4xx_does_not() -> None:
    good = await FakeOpenAI("good").start()
    bad = await FakeOpenAI("bad", Behaviour(status=400, error_message="bad schema")).start()
    gw = await start_gateway(fleet_config(
        {"dead": {"provider": "openai", "url": f"http://127.0.0.1:{free_port()}/v1"},
         "good": backend(good), "bad": backend(bad)},
        {"p1": {"members": members("dead")}, "p2": {"members": members("good")},
         "p3": {"members": members("bad")}},
        routes=[{"when": {"headers": {"x-t": "bad"}}, "pools": ["p3", "p2"]},
                {"pools": ["p1", "p2"]}],
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw)
            assert (r.status, r.backend) == (200, "good")
            assert metric(gw, "spillway_upstream_errors_total", backend="dead", kind="connect") == 1
            assert metric(gw, "spillway_fallbacks_total", model="chat", from_pool="p1",
                          to_pool="p2", reason="error") == 1  # fmt: skip
            r = await post(s, gw, headers={"x-t": "bad"})
            assert r.status == 400
            assert r.json()["error"]["message"] == "bad schema"
            assert len(good.seen) == 1  # a 400 is the request's fault: not retried
    finally:
        await gw.stop()
        await good.stop()
        await bad.stop()


async def test_retry_after_is_honoured_on_the_same_member() -> None:
    only = await FakeOpenAI("only", Behaviour(status=429, retry_after="0.3", fail_times=1)).start()
    gw = await start_gateway(fleet_config(
        {"only": backend(only)}, {"p": {"members": members("only")}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw)
        assert r.status == 200
        assert r.elapsed >= 0.3
        assert only.chats == 2
    finally:
        await gw.stop()
        await only.stop()


async def test_retry_after_past_the_cap_is_passed_on_or_routed_around() -> None:
    a = await FakeOpenAI("a", Behaviour(status=429, retry_after="30")).start()
    b = await FakeOpenAI("b").start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a), "b": backend(b)},
        {"alone": {"members": members("a")},
         "pair": {"strategy": "round_robin", "members": members("a", "b")}},
        routes=[{"when": {"headers": {"x-pool": "alone"}}, "pools": ["alone"]},
                {"pools": ["pair"]}],
        retries={"retry_after_max_seconds": 2},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw, headers={"x-pool": "alone"})
            assert r.status == 429
            assert r.headers["Retry-After"] == "30"
            assert r.elapsed < 1.0  # not waited for
            assert a.chats == 1
            # in a pool with another member: straight to it, and a is avoided while throttled
            replies = [await post(s, gw) for _ in range(4)]
            assert {(r.status, r.backend) for r in replies} == {(200, "b")}
            assert a.chats == 1
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


async def test_stream_retried_before_the_first_byte() -> None:
    a = await FakeOpenAI("a", Behaviour(status=502)).start()
    b = await FakeOpenAI("b").start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a), "b": backend(b)}, {"p1": {"members": members("a")},
                                             "p2": {"members": members("b")}},
    ))  # fmt: skip
    try:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as c:
            stream = await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], stream=True,
                max_tokens=4,
            )  # fmt: skip
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream
                            if ch.choices])  # fmt: skip
        assert text == " w0 w1 w2 w3"
        assert len(a.seen) == 1 and len(b.seen) == 1
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


async def _quota(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with s.get(url + "/v1/quota", headers={"Authorization": f"Bearer {KEY}"}) as r:
        doc: dict[str, Any] = await r.json()
        return doc


async def test_each_attempt_is_settled_once_across_pools(redis_url: str, key_prefix: str) -> None:
    bad = await FakeOpenAI("bad", Behaviour(status=503)).start()
    good = await FakeOpenAI("good", Behaviour(prompt_tokens=40)).start()
    gw = await start_gateway(fleet_config(
        {"bad": backend(bad), "good": backend(good)},
        {"first": {"members": members("bad"), "budget": {"tokens_per_day": 100000}},
         "second": {"members": members("good"), "budget": {"tokens_per_day": 100000}}},
        redis={"url": redis_url, "key_prefix": key_prefix},
        teams={"t": {"limits": {"requests_per_minute": 100},
                     "budgets": [{"tokens_per_day": 100000}]}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw, max_tokens=5)
            assert (r.status, r.pool) == (200, "second")
            r = await post(s, gw, max_tokens=5, stream=True)
            assert (r.status, r.pool) == (200, "second")
            assert r.body.endswith(b"data: [DONE]\n\n")

            def settled(doc: dict[str, Any]) -> bool:
                return all(b["used"] == 90 for b in doc["budgets"] if b["scope"] == "team")

            doc = await _quota(s, gw.url)
            for _ in range(100):
                if settled(doc):
                    break
                await wait_for(lambda: True)
                doc = await _quota(s, gw.url)
            # two requests of 40 prompt + 5 completion tokens: charged once each
            assert [b["used"] for b in doc["budgets"] if b["scope"] == "team"] == [90]
            rpm = [lim for lim in doc["limits"] if lim["name"] == "requests_per_minute"]
            assert rpm[0]["used"] == 2  # the refunded attempts on `first` do not count
        pools = gw.gateway.runtime.quota
        checks = pools.planner.pool_budget_checks("first") + pools.planner.pool_budget_checks(
            "second"
        )
        _, used = await pools.primary.status(checks)
        assert used == [0, 90]  # the failed pool's reservation was refunded
    finally:
        await gw.stop()
        await bad.stop()
        await good.stop()
