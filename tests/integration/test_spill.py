"""Local GPUs first; hosted when they fill up (saturation); back when they drain."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.fakes import Behaviour, FakeOpenAI, VllmGauges
from tests.support.fleet import backend, fleet_config, members, metric, post, wait_for
from tests.support.gateway import start_gateway


async def test_spill_on_max_concurrency_and_return() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=0.3)).start()
    cloud = await FakeOpenAI("cloud").start()
    gw = await start_gateway(fleet_config(
        {"gpu": backend(gpu, max_concurrency=2), "cloud": backend(cloud)},
        {"local": {"members": members("gpu")},
         "hosted": {"members": members("cloud", model="gpt-4o-mini")}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            slow = [asyncio.create_task(post(s, gw)) for _ in range(2)]
            await wait_for(lambda: gpu.inflight == 2, what="the GPU to fill")
            spilled = [await post(s, gw) for _ in range(3)]
            assert [(r.status, r.pool, r.backend) for r in spilled] == [
                (200, "hosted", "cloud")
            ] * 3
            assert cloud.seen[-1].body["model"] == "gpt-4o-mini"
            assert metric(gw, "spillway_fallbacks_total", model="chat", from_pool="local",
                          to_pool="hosted", reason="saturated") == 3  # fmt: skip
            assert [r.pool for r in await asyncio.gather(*slow)] == ["local", "local"]
            # drained: traffic returns to the GPU
            back = await post(s, gw)
            assert (back.status, back.pool) == (200, "local")
            assert len(gpu.seen) == 3 and len(cloud.seen) == 3
    finally:
        await gw.stop()
        await gpu.stop()
        await cloud.stop()


async def test_spill_on_vllm_waiting_queue_and_return() -> None:
    g1 = await FakeOpenAI("g1", vllm=VllmGauges(waiting=12)).start()
    g2 = await FakeOpenAI("g2", vllm=VllmGauges(waiting=9)).start()
    cloud = await FakeOpenAI("cloud").start()
    gw = await start_gateway(fleet_config(
        {"g1": backend(g1, metrics=True), "g2": backend(g2, metrics=True),
         "cloud": backend(cloud)},
        {"local": {"strategy": "least_loaded", "members": members("g1", "g2"), "max_waiting": 8},
         "hosted": {"members": members("cloud")}},
    ))  # fmt: skip
    states = gw.gateway.runtime.states
    try:
        await wait_for(lambda: states["g1"].load_known and states["g2"].load_known, what="scrape")
        async with aiohttp.ClientSession() as s:
            assert {(await post(s, gw)).pool for _ in range(4)} == {"hosted"}
            g2.vllm.waiting = 3  # one GPU drains below the threshold
            await wait_for(lambda: states["g2"].waiting == 3, what="scrape")
            replies = [await post(s, gw) for _ in range(4)]
            assert {(r.pool, r.backend) for r in replies} == {("local", "g2")}
    finally:
        await gw.stop()
        for f in (g1, g2, cloud):
            await f.stop()


async def test_every_pool_saturated_answers_503_with_retry_after() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=0.3)).start()
    gw = await start_gateway(fleet_config(
        {"gpu": backend(gpu, max_concurrency=1)}, {"local": {"members": members("gpu")}},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            slow = asyncio.create_task(post(s, gw))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            r = await post(s, gw)
            assert r.status == 503
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "capacity_exceeded"
            assert (await slow).status == 200
            assert (await post(s, gw)).status == 200
            # nothing was charged or counted for the refused request: no upstream saw it
            assert len(gpu.seen) == 2
    finally:
        await gw.stop()
        await gpu.stop()


async def test_session_affinity_returns_to_the_same_member() -> None:
    fakes = [await FakeOpenAI(f"g{i}").start() for i in range(3)]
    gw = await start_gateway(fleet_config(
        {f.name: backend(f) for f in fakes},
        {"local": {"members": members(*(f.name for f in fakes)), "affinity": "header",
                   "affinity_header": "x-conversation"}},
        health={"ejection_seconds": 30},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            homes = {}
            for conv in ("c1", "c2", "c3", "c4", "c5", "c6"):
                seen = {(await post(s, gw, headers={"x-conversation": conv})).backend
                        for _ in range(4)}  # fmt: skip
                assert len(seen) == 1
                homes[conv] = seen.pop()
            assert len(set(homes.values())) >= 2
            # the home of c1 dies: c1 moves, the others stay where they are
            dead = homes["c1"]
            now = asyncio.get_running_loop().time()
            gw.gateway.runtime.states[dead].eject(now, gw.gateway.cfg.routing.health)
            for conv, home in homes.items():
                r = await post(s, gw, headers={"x-conversation": conv})
                assert r.status == 200
                assert (r.backend == home) == (home != dead)
    finally:
        await gw.stop()
        for f in fakes:
            await f.stop()
