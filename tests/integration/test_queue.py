"""Pool queues through the gateway: wait instead of spilling, fair order, priorities,
timeout -> next pool -> 429, a client leaving the queue (on both quota stores)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.fleet import backend, fleet_config, members, metric, post, wait_for
from tests.support.gateway import Running, make_config, start_gateway
from tests.support.net import eventually

KEYS = {"a": "sk-queue-team-a-01", "b": "sk-queue-team-b-01", "vip": "sk-queue-team-vip1",
        "batch": "sk-queue-batch-001"}  # fmt: skip
TEAMS = {"a": {}, "b": {}, "vip": {"priority": 10}, "batch": {"priority": -1}}


def queued_config(
    gpu: FakeOpenAI, cloud: FakeOpenAI | None = None, *, queue: dict[str, Any] | None = None,
    teams: dict[str, Any] | None = None, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    backends = {"gpu": backend(gpu, max_concurrency=1)}
    pools: dict[str, Any] = {
        "local": {"members": members("gpu"), "queue": {"max_wait_ms": 5000, **(queue or {})}}
    }
    if cloud is not None:
        backends["cloud"] = backend(cloud)
        pools["hosted"] = {"members": members("cloud", model="gpt-4o-mini")}
    doc = fleet_config(backends, pools, **extra)
    doc["teams"] = {name: {**TEAMS.get(name, {}), **spec}
                    for name, spec in (teams or {n: {} for n in TEAMS}).items()}  # fmt: skip
    doc["keys"] = [{"id": f"key-{t}", "team": t, "key": KEYS[t]} for t in doc["teams"]]
    return doc


async def ask(s: aiohttp.ClientSession, gw: Running, team: str, text: str = "hi",
              headers: dict[str, str] | None = None) -> Any:  # fmt: skip
    return await post(s, gw, key=KEYS[team], headers=headers,
                      messages=[{"role": "user", "content": text}])  # fmt: skip


async def test_a_saturated_pool_queues_instead_of_spilling() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=0.3)).start()
    cloud = await FakeOpenAI("cloud").start()
    gw = await start_gateway(queued_config(gpu, cloud))
    try:
        async with aiohttp.ClientSession() as s:
            first = asyncio.create_task(ask(s, gw, "a", "first"))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            second = await ask(s, gw, "a", "second")
            assert (second.status, second.pool) == (200, "local")  # waited, not spilled
            assert (await first).status == 200
        assert cloud.chats == 0 and gpu.chats == 2
        assert metric(gw, "spillway_queue_wait_seconds_count", pool="local", team="a",
                      priority="0") == 2  # fmt: skip
        assert metric(gw, "spillway_queue_wait_seconds_bucket", pool="local", team="a",
                      priority="0", le="0.001") == 1  # the first did not wait  # fmt: skip
        assert metric(gw, "spillway_queue_depth", pool="local", team="a", priority="0") == 0
    finally:
        await gw.stop()
        await gpu.stop()
        await cloud.stop()


async def test_turns_go_by_fair_share_and_priority() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=0.15)).start()
    gw = await start_gateway(queued_config(gpu))
    try:
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.create_task(ask(s, gw, "a", "a-0"))]
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            for i in range(1, 5):
                tasks.append(asyncio.create_task(ask(s, gw, "a", f"a-{i}")))
            gate = gw.gateway.runtime.scheduler.gates["local"]
            await wait_for(lambda: len(gate.queue) == 4, what="a's requests to queue")
            tasks.append(asyncio.create_task(ask(s, gw, "b", "b-0")))
            await wait_for(lambda: len(gate.queue) == 5, what="b to queue")
            tasks.append(asyncio.create_task(ask(s, gw, "vip", "vip-0")))
            await wait_for(lambda: len(gate.queue) == 6, what="vip to queue")
            replies = await asyncio.gather(*tasks)
        assert all(r.status == 200 for r in replies)
        served = [seen.body["messages"][0]["content"] for seen in gpu.seen]
        # vip's band first, then b's first request before a's backlog
        assert served[:4] == ["a-0", "vip-0", "b-0", "a-1"]
        assert metric(gw, "spillway_queue_wait_seconds_count", pool="local", team="vip",
                      priority="10") == 1  # fmt: skip
    finally:
        await gw.stop()
        await gpu.stop()


async def test_timeout_spills_to_the_next_pool() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=2.0)).start()
    cloud = await FakeOpenAI("cloud").start()
    gw = await start_gateway(queued_config(gpu, cloud, queue={"max_wait_ms": 150}))
    try:
        async with aiohttp.ClientSession() as s:
            held = asyncio.create_task(ask(s, gw, "a"))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            r = await ask(s, gw, "b")
            assert (r.status, r.pool) == (200, "hosted")
            assert r.elapsed >= 0.15  # it waited its max_wait first
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
        assert metric(gw, "spillway_fallbacks_total", model="chat", from_pool="local",
                      to_pool="hosted", reason="queue_timeout") == 1  # fmt: skip
        assert metric(gw, "spillway_queue_dropped_total", pool="local", team="b",
                      priority="0", reason="timeout") == 1  # fmt: skip
        assert metric(gw, "spillway_queue_spilled_total", pool="local", team="b",
                      priority="0") == 1  # fmt: skip
    finally:
        await gw.stop()
        await gpu.stop()
        await cloud.stop()


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_timeout_on_the_last_pool_is_429_and_refunds(
    store: str, redis_url: str, key_prefix: str
) -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=2.0)).start()
    team = {"limits": {"concurrent": 5}, "budgets": [{"tokens_per_day": 1_000_000}]}
    doc = queued_config(gpu, queue={"max_wait_ms": 120}, teams={"a": team, "b": team})
    if store == "redis":
        doc["redis"] = {"url": redis_url, "key_prefix": key_prefix}
    gw = await start_gateway(doc)
    quota = gw.gateway.runtime.quota
    try:
        async with aiohttp.ClientSession() as s:
            held = asyncio.create_task(ask(s, gw, "a"))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            r = await ask(s, gw, "b")
            assert r.status == 429
            err = r.json()["error"]
            assert err["code"] == "queue_timeout" and err["type"] == "requests"
            assert "120 ms" in err["message"]
            assert r.headers["Retry-After"] == "1"
            assert r.headers["x-request-id"]
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)

        async def refunded() -> bool:
            doc = await quota.status("key-b")
            budget = next(x for x in doc["budgets"] if x["name"] == "tokens_per_day")
            slots = next(x for x in doc["limits"] if x["name"] == "concurrent")
            return bool(budget["used"] == 0 and slots["used"] == 0)

        await eventually(refunded)
    finally:
        await gw.stop()
        await gpu.stop()


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_client_leaving_the_queue_frees_its_slot_and_reservation(
    store: str, redis_url: str, key_prefix: str
) -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=1.0)).start()
    team = {"limits": {"concurrent": 2}, "budgets": [{"tokens_per_day": 1_000_000}]}
    doc = queued_config(gpu, teams={"a": team, "b": team})
    if store == "redis":
        doc["redis"] = {"url": redis_url, "key_prefix": key_prefix}
    gw = await start_gateway(doc)
    rt = gw.gateway.runtime
    gate = rt.scheduler.gates["local"]
    try:
        async with aiohttp.ClientSession() as s:
            held = asyncio.create_task(ask(s, gw, "a"))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            leaving = asyncio.create_task(ask(s, gw, "b", "I will not wait"))
            await wait_for(lambda: len(gate.queue) == 1, what="b to queue")
            status = await rt.quota.status("key-b")
            assert next(x for x in status["limits"] if x["name"] == "concurrent")["used"] == 1
            leaving.cancel()  # the client hangs up while queued
            await asyncio.gather(leaving, return_exceptions=True)
            await wait_for(lambda: len(gate.queue) == 0, what="b to leave the queue")

            async def freed() -> bool:
                doc = await rt.quota.status("key-b")
                budget = next(x for x in doc["budgets"] if x["name"] == "tokens_per_day")
                slots = next(x for x in doc["limits"] if x["name"] == "concurrent")
                return bool(budget["used"] == 0 and slots["used"] == 0)

            await eventually(freed)
            assert metric(gw, "spillway_queue_dropped_total", pool="local", team="b",
                          priority="0", reason="disconnect") == 1  # fmt: skip
            assert metric(gw, "spillway_queue_depth", pool="local", team="b", priority="0") == 0
            assert (await held).status == 200
        assert gpu.chats == 1  # the one that left never reached the GPU
    finally:
        await gw.stop()
        await gpu.stop()


async def test_the_priority_header_cannot_raise_and_can_shed() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=0.3)).start()
    cloud = await FakeOpenAI("cloud").start()
    gw = await start_gateway(queued_config(gpu, cloud))
    try:
        async with aiohttp.ClientSession() as s:
            r = await ask(s, gw, "a", headers={"x-spillway-priority": "10"})
            assert r.status == 200
            assert metric(gw, "spillway_queue_wait_seconds_count", pool="local", team="a",
                          priority="0") == 1  # band 0: not raised  # fmt: skip
            assert metric(gw, "spillway_queue_wait_seconds_count", pool="local", team="a",
                          priority="10") == 0  # fmt: skip
            bad = await ask(s, gw, "a", headers={"x-spillway-priority": "urgent"})
            assert bad.status == 400 and bad.json()["error"]["code"] == "invalid_priority"
            held = asyncio.create_task(ask(s, gw, "a"))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            lowered = await ask(s, gw, "vip", headers={"x-spillway-priority": "-1"})
            assert (lowered.status, lowered.pool) == (200, "hosted")  # shed: spilled at once
            assert lowered.elapsed < 0.25
            assert (await held).status == 200
        assert metric(gw, "spillway_fallbacks_total", model="chat", from_pool="local",
                      to_pool="hosted", reason="shed") == 1  # fmt: skip
        assert metric(gw, "spillway_queue_dropped_total", pool="local", team="vip",
                      priority="-1", reason="shed") == 1  # fmt: skip
    finally:
        await gw.stop()
        await gpu.stop()
        await cloud.stop()


async def test_sheddable_on_the_last_pool_is_refused_at_once() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=0.5)).start()
    gw = await start_gateway(queued_config(gpu))
    try:
        async with aiohttp.ClientSession() as s:
            held = asyncio.create_task(ask(s, gw, "a"))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            r = await ask(s, gw, "batch")
            assert r.status == 429 and r.json()["error"]["code"] == "shed"
            assert "Retry-After" in r.headers
            assert (await held).status == 200
            assert (await ask(s, gw, "batch")).status == 200  # room again: served
    finally:
        await gw.stop()
        await gpu.stop()


async def test_pools_without_a_queue_still_spill_at_once() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=0.5)).start()
    cloud = await FakeOpenAI("cloud").start()
    doc = queued_config(gpu, cloud)
    del doc["pools"]["local"]["queue"]
    gw = await start_gateway(doc)
    try:
        async with aiohttp.ClientSession() as s:
            held = asyncio.create_task(ask(s, gw, "a"))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            r = await ask(s, gw, "b", headers={"x-spillway-priority": "not checked"})
            assert (r.status, r.pool) == (200, "hosted")
            assert (await held).status == 200
        assert gw.gateway.runtime.scheduler.gates == {}
    finally:
        await gw.stop()
        await gpu.stop()
        await cloud.stop()


async def test_a_reload_keeps_the_queue_and_its_order() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=0.3)).start()
    doc = queued_config(gpu)
    gw = await start_gateway(doc)
    gate = gw.gateway.runtime.scheduler.gates["local"]
    try:
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.create_task(ask(s, gw, "a", "first"))]
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            tasks.append(asyncio.create_task(ask(s, gw, "a", "second")))
            await wait_for(lambda: len(gate.queue) == 1, what="a request to queue")
            doc["pools"]["local"]["queue"]["max_wait_ms"] = 9000
            gw.gateway.reload(make_config(doc))
            assert gw.gateway.runtime.scheduler.gates["local"] is gate  # the same line
            assert gate.max_wait == 9.0
            tasks.append(asyncio.create_task(ask(s, gw, "a", "third")))
            await wait_for(lambda: len(gate.queue) == 2, what="the newcomer behind it")
            assert all(r.status == 200 for r in await asyncio.gather(*tasks))
        served = [seen.body["messages"][0]["content"] for seen in gpu.seen]
        assert served == ["first", "second", "third"]
    finally:
        await gw.stop()
        await gpu.stop()


async def test_completions_and_embeddings_queue_like_chat() -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=30.0)).start()
    doc = queued_config(gpu, teams={"a": {}, "b": {}})
    # an embeddings model on the same GPU, with a short wait: both pools share its slot
    doc["pools"]["vectors"] = {"members": members("gpu", model="bge"),
                               "queue": {"max_wait_ms": 150}}  # fmt: skip
    doc["models"]["embed"] = {"kind": "embeddings", "routes": [{"pools": ["vectors"]}]}
    gw = await start_gateway(doc)
    gates = gw.gateway.runtime.scheduler.gates
    try:
        async with aiohttp.ClientSession() as s:

            async def send(path: str, team: str, body: dict[str, Any]) -> tuple[int, Any]:
                auth = {"Authorization": f"Bearer {KEYS[team]}"}
                async with s.post(gw.url + path, json=body, headers=auth) as r:
                    return r.status, (await r.json(), r.headers)

            held = asyncio.create_task(ask(s, gw, "a", "first"))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            completion = asyncio.create_task(send(
                "/v1/completions", "b", {"model": "chat", "prompt": "Dams hold", "max_tokens": 4}
            ))  # fmt: skip
            await wait_for(lambda: len(gates["local"].queue) == 1, what="completions to queue")
            status, (body, headers) = await send(
                "/v1/embeddings", "b", {"model": "embed", "input": ["spillway"]}
            )
            assert status == 429  # waited its 150 ms behind the chat, in OpenAI's envelope
            assert body["error"]["code"] == "queue_timeout" and "Retry-After" in headers
            gpu.behaviour.first_byte_delay = 0.0
            held.cancel()  # the chat's client leaves: its slot goes to the completions request
            await asyncio.gather(held, return_exceptions=True)
            status, (body, _) = await completion
            assert status == 200 and body["object"] == "text_completion"
            status, (body, _) = await send(
                "/v1/embeddings", "b", {"model": "embed", "input": ["spillway"]}
            )
            assert status == 200 and body["data"][0]["object"] == "embedding"
        assert [seen.path for seen in gpu.seen] == [
            "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
        ]  # fmt: skip
        assert metric(gw, "spillway_queue_wait_seconds_count", pool="local", team="b",
                      priority="0") == 1  # fmt: skip
        assert metric(gw, "spillway_queue_dropped_total", pool="vectors", team="b",
                      priority="0", reason="timeout") == 1  # fmt: skip
        assert metric(gw, "spillway_requests_total", endpoint="completions", model="chat",
                      pool="local", backend="gpu", team="b", status_class="2xx") == 1  # fmt: skip
        assert metric(gw, "spillway_requests_total", endpoint="embeddings", model="embed",
                      pool="vectors", backend="gpu", team="b", status_class="2xx") == 1  # fmt: skip
    finally:
        await gw.stop()
        await gpu.stop()
