"""The simulated engine: batch capacity with a line, and the prefix cache."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from router.config import SimulateSettings
from router.contract import ChatCompletionRequest
from router.providers.simengine import PrefixCache, SimEngine, block_hashes, prompt_tokens
from router.providers.simulate import count_prompt_tokens
from router.routing.health import parse_load
from router.simserver import create_sim_app
from tests.support.fakes import FakeServer
from tests.support.metrics import value

SYSTEM = " ".join(f"rule{i}" for i in range(40))


def request(*contents: str, system: str = SYSTEM) -> ChatCompletionRequest:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for i, text in enumerate(contents):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})


def test_tokens_match_the_usage_count() -> None:
    req = request("hello there friend", "hi", "and more words here")
    assert len(prompt_tokens(req)) == count_prompt_tokens(req)


def test_block_hashes_chain_full_blocks_only() -> None:
    tokens = [f"t{i}" for i in range(40)]
    blocks = block_hashes(tokens, 16)
    assert len(blocks) == 2  # the last 8 tokens are not a full block
    assert block_hashes(tokens[:32], 16) == blocks
    changed = ["x", *tokens[1:]]
    assert not set(block_hashes(changed, 16)) & set(blocks)  # a change early changes all


def test_a_growing_conversation_hits_its_previous_prompt() -> None:
    cache = PrefixCache(1000, 16)
    first = prompt_tokens(request("please review module one"))
    assert cache.prefill(first) == 0
    again = cache.prefill(first)
    assert again == (len(first) // 16) * 16
    longer = prompt_tokens(request("please review module one", "looks fine", "now module two"))
    hit = cache.prefill(longer)
    assert hit == (len(first) // 16) * 16  # up to the last full block of the earlier prompt
    assert cache.queries == 2 * len(first) + len(longer)
    assert cache.hits == 2 * hit


def test_the_lru_forgets_the_oldest_blocks() -> None:
    cache = PrefixCache(4, 4)
    a = [f"a{i}" for i in range(16)]  # 4 blocks
    b = [f"b{i}" for i in range(8)]  # 2 blocks
    cache.prefill(a)
    cache.prefill(b)  # evicts a's first two blocks
    assert len(cache) == 4
    assert cache.prefill(a) == 0  # its first block is gone: nothing leads in
    assert cache.prefill(a) == 16


def test_first_token_time_scales_with_the_uncached_share() -> None:
    engine = SimEngine(SimulateSettings(ttft_ms=200, prefix_cache_blocks=1000, block_size=4))
    req = request("a b c d e f g h")
    cold = engine.first_token_seconds(lambda: [prompt_tokens(req)])
    warm = engine.first_token_seconds(lambda: [prompt_tokens(req)])
    assert cold == pytest.approx(0.2)
    tokens = len(prompt_tokens(req))
    assert warm == pytest.approx(0.2 * (tokens % 4) / tokens)
    unused = []  # without a prefix cache the prompts are never tokenized
    no_cache = SimEngine(SimulateSettings(ttft_ms=50))
    assert no_cache.first_token_seconds(lambda: unused.append(1) or []) == 0.05
    assert unused == []


def test_several_prompts_each_prefill() -> None:
    engine = SimEngine(SimulateSettings(ttft_ms=100, prefix_cache_blocks=100, block_size=4))
    one = [f"w{i}" for i in range(8)]
    two = [f"v{i}" for i in range(8)]
    assert engine.first_token_seconds(lambda: [one]) == pytest.approx(0.1)
    # one is cached whole, two not at all: half the tokens to prefill
    assert engine.first_token_seconds(lambda: [one, two]) == pytest.approx(0.05)
    assert engine.cache is not None and engine.cache.hits == 8


async def test_the_batch_is_served_first_come_first_served() -> None:
    engine = SimEngine(SimulateSettings(max_num_seqs=2))
    started: list[int] = []
    gates = [asyncio.Event() for _ in range(6)]

    async def job(i: int) -> None:
        async with engine.slot():
            started.append(i)
            await gates[i].wait()

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(job(i)))
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert started == [0, 1] and engine.running == 2 and engine.waiting == 4
    tasks[3].cancel()  # a client leaves the line
    await asyncio.sleep(0)
    assert engine.waiting == 3
    gates[1].set()
    await asyncio.sleep(0.01)
    assert started == [0, 1, 2]
    gates[0].set()
    gates[2].set()
    await asyncio.sleep(0.01)
    assert started == [0, 1, 2, 4, 5] and engine.running == 2 and engine.waiting == 0
    gates[4].set()
    gates[5].set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert engine.running == 0


async def test_a_place_handed_to_a_leaving_client_goes_to_the_next() -> None:
    engine = SimEngine(SimulateSettings(max_num_seqs=1))
    release = asyncio.Event()
    got: list[str] = []

    async def hold() -> None:
        async with engine.slot():
            await release.wait()

    async def wait_for_place(name: str) -> None:
        async with engine.slot():
            got.append(name)

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    second = asyncio.create_task(wait_for_place("second"))
    third = asyncio.create_task(wait_for_place("third"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.sleep(0)  # first leaves and hands its place to second ...
    second.cancel()  # ... which is cancelled before it runs
    await asyncio.gather(first, second, third, return_exceptions=True)
    assert got == ["third"] and engine.running == 0 and engine.waiting == 0


async def test_simulate_server_exposes_vllm_gauges_and_prefix_counters() -> None:
    knobs = SimulateSettings(ttft_ms=1, max_num_seqs=1, prefix_cache_blocks=256, block_size=4)
    server = await FakeServer(create_sim_app(knobs, ["m1", "m2"])).start()
    try:
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "one two three"}]  # fmt: skip
        body = {"model": "m1", "messages": messages}
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.post(server.base + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200
            async with s.get(server.base + "/metrics") as r:
                text = await r.text()
        tokens = len(SYSTEM.split()) + 3 + 3 + 3
        assert value(text, "vllm:prefix_cache_queries_total") == 2 * tokens
        assert value(text, "vllm:prefix_cache_hits_total") == (tokens // 4) * 4
        assert "# TYPE vllm:prefix_cache_hits counter" in text
        load = parse_load(text)
        assert load is not None and load.running == 0 and load.waiting == 0
        assert 0 < load.kv_cache <= 1
    finally:
        await server.stop()
