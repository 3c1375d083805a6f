"""least_loaded reads vLLM's queue from /metrics, off the request path."""

from __future__ import annotations

from collections import Counter

import aiohttp
import pytest

from tests.support.fakes import FakeOpenAI, VllmGauges
from tests.support.fleet import backend, fleet_config, members, post, wait_for
from tests.support.gateway import start_gateway


@pytest.mark.parametrize("legacy", [False, True], ids=["v1-kv_cache", "v0-gpu_cache"])
async def test_least_loaded_prefers_the_shorter_vllm_queue(legacy: bool) -> None:
    a = await FakeOpenAI("a", vllm=VllmGauges(waiting=6, running=4, legacy=legacy)).start()
    b = await FakeOpenAI("b", vllm=VllmGauges(waiting=0, running=4, legacy=legacy)).start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a, metrics=True), "b": backend(b, metrics=True)},
        {"gpus": {"strategy": "least_loaded", "members": members("a", "b")}},
    ))  # fmt: skip
    states = gw.gateway.runtime.states
    try:
        await wait_for(lambda: states["a"].load_known and states["b"].load_known, what="scrape")
        assert states["a"].waiting == 6 and states["b"].waiting == 0
        async with aiohttp.ClientSession() as s:
            served = Counter([(await post(s, gw)).backend for _ in range(10)])
            assert served == {"b": 10}
            # the queues swap; the next scrape moves the traffic
            a.vllm.waiting, b.vllm.waiting = 0, 6
            await wait_for(lambda: states["b"].waiting == 6, what="the next scrape")
            served = Counter([(await post(s, gw)).backend for _ in range(10)])
            assert served == {"a": 10}
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


async def test_kv_cache_breaks_ties_and_weights_count() -> None:
    a = await FakeOpenAI("a", vllm=VllmGauges(running=2, kv_cache=0.9)).start()
    b = await FakeOpenAI("b", vllm=VllmGauges(running=2, kv_cache=0.3)).start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a, metrics=True), "b": backend(b, metrics=True)},
        {"gpus": {"strategy": "least_loaded", "members": members("a", "b")}},
    ))  # fmt: skip
    states = gw.gateway.runtime.states
    try:
        await wait_for(lambda: states["a"].load_known and states["b"].load_known, what="scrape")
        async with aiohttp.ClientSession() as s:
            served = Counter([(await post(s, gw)).backend for _ in range(6)])
        assert served == {"b": 6}
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


async def test_scraping_is_not_on_the_request_path() -> None:
    a = await FakeOpenAI("a", vllm=VllmGauges(waiting=1)).start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a, metrics=True)},
        {"gpus": {"strategy": "least_loaded", "members": members("a")}},
        health={"interval_seconds": 60},
    ))  # fmt: skip
    try:
        await wait_for(lambda: a.scrapes == 1, what="the first scrape")
        async with aiohttp.ClientSession() as s:
            for _ in range(20):
                assert (await post(s, gw)).status == 200
        assert a.scrapes == 1
    finally:
        await gw.stop()
        await a.stop()


async def test_a_failed_scrape_forgets_the_stale_load() -> None:
    a = await FakeOpenAI("a", vllm=VllmGauges(waiting=9)).start()
    b = await FakeOpenAI("b", vllm=VllmGauges(waiting=0)).start()
    gw = await start_gateway(fleet_config(
        {"a": backend(a, metrics=True), "b": backend(b, metrics=True)},
        {"gpus": {"strategy": "least_loaded", "members": members("a", "b")}},
    ))  # fmt: skip
    states = gw.gateway.runtime.states
    try:
        await wait_for(lambda: states["a"].load_known, what="scrape")
        a.vllm.status = 500
        await wait_for(lambda: not states["a"].load_known, what="the failed scrape")
        async with aiohttp.ClientSession() as s:
            served = Counter([(await post(s, gw)).backend for _ in range(10)])
        assert served["a"] >= 3  # back to in-flight counting: a is not held at 9 waiting
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()
