"""A member dies during a burst: traffic moves, nothing fails, the probe brings it back."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.fleet import backend, fleet_config, members, metric, post, wait_for
from tests.support.gateway import start_gateway


async def test_member_killed_during_a_burst_fails_no_request() -> None:
    a = await FakeOpenAI("a", Behaviour(first_byte_delay=0.02)).start()
    b = await FakeOpenAI("b", Behaviour(first_byte_delay=0.02)).start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a), "b": backend(b)},
        {"local": {"strategy": "round_robin", "members": members("a", "b")}},
        health={"ejection_seconds": 0.3},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            done = 0
            sem = asyncio.Semaphore(16)

            async def one() -> tuple[int, str | None]:
                nonlocal done
                async with sem:
                    r = await post(s, gw)
                    done += 1
                    return r.status, r.backend

            tasks = [asyncio.create_task(one()) for _ in range(300)]
            await wait_for(lambda: done >= 60 and a.inflight > 0, what="the burst to get going")
            await a.kill()
            cut_off = len(a.disconnects)
            results = await asyncio.gather(*tasks)
        statuses = Counter(status for status, _ in results)
        assert statuses == {200: 300}, statuses
        served = Counter(be for _, be in results)
        assert served["a"] >= 20 and served["b"] >= 150
        # requests cut off mid-answer, or refused before the ejection, were retried on b
        assert metric(gw, "spillway_retries_total", pool="local", backend="b") >= max(cut_off, 1)
        assert metric(gw, "spillway_backend_ejections_total", backend="a") == 1
        assert metric(gw, "spillway_backend_healthy", backend="a") == 0
        assert metric(gw, "spillway_backend_healthy", backend="b") == 1
        # ejected: new requests go straight to b, with no retry
        retries = metric(gw, "spillway_retries_total", pool="local", backend="b")
        async with aiohttp.ClientSession() as s:
            for _ in range(10):
                r = await post(s, gw)
                assert (r.status, r.backend) == (200, "b")
            assert metric(gw, "spillway_retries_total", pool="local", backend="b") == retries
            async with s.get(gw.url + "/readyz") as ready:
                assert ready.status == 200  # b is healthy
            # a comes back: the active probe notices and traffic returns
            await a.revive()
            await wait_for(lambda: gw.gateway.runtime.states["a"].healthy, what="probe")
            assert a.probes >= 1
            assert metric(gw, "spillway_backend_healthy", backend="a") == 1
            served_after = Counter([(await post(s, gw)).backend for _ in range(10)])
            assert served_after == {"a": 5, "b": 5}
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


async def test_readyz_fails_when_no_pool_has_a_healthy_member() -> None:
    a = await FakeOpenAI("a").start()
    b = await FakeOpenAI("b").start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a), "b": backend(b)},
        {"p1": {"members": members("a")}, "p2": {"members": members("b")}},
        health={"failure_threshold": 2, "ejection_seconds": 0.2},
        retries={"budget_ratio": 1.0},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            await a.kill()
            # p1 fails over to p2: still ready
            for _ in range(3):
                r = await post(s, gw)
                assert (r.status, r.pool) == (200, "p2")
            async with s.get(gw.url + "/readyz") as ready:
                assert ready.status == 200
            assert metric(gw, "spillway_fallbacks_total", model="chat", from_pool="p1",
                          to_pool="p2", reason="unhealthy") >= 1  # fmt: skip
            await b.kill()
            for _ in range(3):
                r = await post(s, gw)
                assert r.status == 502
                assert r.json()["error"]["code"] == "upstream_error"
            async with s.get(gw.url + "/readyz") as ready:
                assert ready.status == 503
                doc = await ready.json()
                assert doc["error"]["code"] == "no_healthy_backend"
            # an ejected fleet is still tried rather than refused outright (or the probe won)
            await b.revive()
            r = await post(s, gw)
            assert (r.status, r.backend) == (200, "b")
            await wait_for(lambda: gw.gateway.runtime.states["b"].healthy, what="probe")
            async with s.get(gw.url + "/readyz") as ready:
                assert ready.status == 200
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


async def test_panic_mode_tries_ejected_members() -> None:
    a = await FakeOpenAI("a").start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a)}, {"p": {"members": members("a")}},
        health={"interval_seconds": 60, "ejection_seconds": 60},  # no probe in this test
    ))  # fmt: skip
    try:
        state = gw.gateway.runtime.states["a"]
        state.eject(asyncio.get_running_loop().time(), gw.gateway.cfg.routing.health)
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw)
        assert (r.status, r.backend) == (200, "a")
        assert state.healthy  # the success on real traffic brought it back
    finally:
        await gw.stop()
        await a.stop()
