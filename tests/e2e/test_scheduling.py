"""GPU pool scheduling end to end: gateway processes, ``spillway simulate`` members.

* prefix_affinity: a conversation's turns, sent to either of two replicas, all
  reach the one member holding its prefix, and the members' own prefix cache
  counters show exactly the hits that placement implies;
* fair queueing across two replicas: while one team floods both, another's
  requests go ahead of the flood on each replica.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from router.contract import ChatCompletionRequest
from router.providers.simengine import PrefixCache, prompt_tokens
from tests.support.gateway import GatewayProcess
from tests.support.metrics import scrape, value
from tests.support.simulate import SimulateProcess

KEYS = {"a": "sk-e2e-sched-team-a1", "b": "sk-e2e-sched-team-b1"}


def gateway_config(
    sims: list[SimulateProcess], pool: dict[str, Any], **backend: Any
) -> dict[str, Any]:
    backends = {
        f"m{i}": {"provider": "openai", "url": sim.url + "/v1", "metrics_url": sim.url + "/metrics",
                  **backend}
        for i, sim in enumerate(sims)
    }  # fmt: skip
    return {
        "backends": backends,
        "pools": {"gpus": {"members": [{"backend": n, "model": "llama"} for n in backends],
                           **pool}},
        "models": {"chat": {"routes": [{"pools": ["gpus"]}]}},
        "teams": {"a": {}, "b": {}},
        "keys": [{"id": f"key-{t}", "team": t, "key": k} for t, k in KEYS.items()],
        "routing": {"health": {"interval_seconds": 0.2}},
        "logging": {"requests": False},
    }  # fmt: skip


@pytest.fixture
def replicas(request: pytest.FixtureRequest) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for gw in started:
        gw.stop()


async def chat(
    s: aiohttp.ClientSession, url: str, team: str, messages: list[dict[str, str]]
) -> tuple[str, str, float]:
    """(answer, backend, seconds)"""
    began = time.monotonic()
    auth = {"Authorization": f"Bearer {KEYS[team]}"}
    body = {"model": "chat", "messages": messages, "max_tokens": 24}
    async with s.post(url + "/v1/chat/completions", headers=auth, json=body) as r:
        answer = await r.json()
        assert r.status == 200, answer
        return (answer["choices"][0]["message"]["content"], r.headers["x-spillway-backend"],
                time.monotonic() - began)  # fmt: skip


async def test_conversations_stay_on_the_member_holding_their_prefix(
    replicas: list[GatewayProcess],
) -> None:
    sims = [SimulateProcess("--prefix-cache-blocks", "100000", "--block-size", "4")
            for _ in range(3)]  # fmt: skip
    try:
        doc = gateway_config(sims, {"strategy": "prefix_affinity"})
        replicas += [GatewayProcess(doc), GatewayProcess(doc)]
        system = "You review pull requests for the gateway team. " * 8
        served: dict[str, list[list[dict[str, str]]]] = {}  # backend -> prompts, in order
        homes: dict[int, set[str]] = {}
        async with aiohttp.ClientSession() as s:
            for c in range(12):
                opening = f"review change number {c} please"
                messages = [{"role": "system", "content": system},
                            {"role": "user", "content": opening}]  # fmt: skip
                for turn in range(4):
                    url = replicas[turn % 2].url  # turns reach both replicas
                    answer, backend, _ = await chat(s, url, "a", messages)
                    served.setdefault(backend, []).append([dict(m) for m in messages])
                    homes.setdefault(c, set()).add(backend)
                    follow_up = f"and what about part {turn}"
                    messages += [{"role": "assistant", "content": answer},
                                 {"role": "user", "content": follow_up}]  # fmt: skip
        assert all(len(h) == 1 for h in homes.values()), homes  # never moved
        assert len({next(iter(h)) for h in homes.values()}) >= 2  # spread over members
        for i, sim in enumerate(sims):
            cache = PrefixCache(100000, 4)
            for messages in served.get(f"m{i}", []):
                req = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
                cache.prefill(prompt_tokens(req))
            assert sim.counter("vllm:prefix_cache_queries_total") == cache.queries
            assert sim.counter("vllm:prefix_cache_hits_total") == cache.hits
        total = sum(s.counter("vllm:prefix_cache_hits_total") for s in sims)
        queried = sum(s.counter("vllm:prefix_cache_queries_total") for s in sims)
        assert total / queried > 0.7  # every turn after the first finds its history
    finally:
        for sim in sims:
            sim.stop()


async def test_each_replica_serves_the_small_team_ahead_of_the_flood(
    replicas: list[GatewayProcess],
) -> None:
    sim = SimulateProcess("--max-num-seqs", "2", "--ttft-ms", "200")
    try:
        doc = gateway_config([sim], {"queue": {"max_wait_ms": 20000}}, max_concurrency=1)
        replicas += [GatewayProcess(doc), GatewayProcess(doc)]
        urls = [gw.url for gw in replicas]
        flood: list[float] = []
        small: list[float] = []
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as s:

            async def flooder(url: str, k: int) -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    msg = [{"role": "user", "content": f"flood {k} request {n}"}]
                    flood.append((await chat(s, url, "a", msg))[2])

            floods = [asyncio.create_task(flooder(urls[k % 2], k)) for k in range(8)]
            await asyncio.sleep(1.0)  # both replicas' queues hold the flood
            for i in range(4):
                msg = [{"role": "user", "content": f"small request {i}"}]
                small.append((await chat(s, urls[i % 2], "b", msg))[2])
            stop.set()
            await asyncio.gather(*floods)
        assert max(small) < statistics.median(flood), (small, statistics.median(flood))
        for url in urls:
            text = scrape(url)
            assert value(text, "spillway_queue_wait_seconds_count", team="b") == 2
            assert value(text, "spillway_queue_wait_seconds_count", team="a") >= 3
    finally:
        sim.stop()
