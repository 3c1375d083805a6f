"""The simulated backend serves chat, completions and embeddings through its engine:
one batch limit and one prefix cache for every endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from router.config import Backend
from router.inbound.base import Codec
from router.inbound.chat import ChatCodec
from router.inbound.completions import CompletionsCodec
from router.inbound.embeddings import EmbeddingsCodec
from router.providers.base import Call
from router.providers.simulated import SimulateBackend

CODECS: dict[str, Codec] = {
    "chat": ChatCodec(), "completions": CompletionsCodec(), "embeddings": EmbeddingsCodec(),
}  # fmt: skip
BODIES: dict[str, dict[str, Any]] = {
    "chat": {"messages": [{"role": "user", "content": "one two three four five six"}]},
    "completions": {"prompt": "one two three four five six seven eight", "max_tokens": 3},
    "embeddings": {"input": ["one two three four five six seven eight", "nine ten"]},
}


def backend(**knobs: Any) -> SimulateBackend:
    return SimulateBackend("sim", Backend.model_validate({"provider": "simulate",
                                                          "simulate": knobs}))  # fmt: skip


def attempt(endpoint: str, *, stream: bool = False) -> Call:
    body = {"model": "m", **BODIES[endpoint]}
    if stream:
        body["stream"] = True
    client = CODECS[endpoint].parse(orjson.dumps(body))
    return Call(
        request=client.request, raw=client.raw, client_model="m", member_model="m",
        max_tokens=None, clamped=False, default_max_tokens=16, request_id="r",
        forward_headers={}, api=client.api, stream=client.stream,
    )  # fmt: skip


async def answer(sim: SimulateBackend, call: Call) -> bytes:
    opened = await sim.adapter(call).open()
    if call.stream:
        return b"".join([chunk async for chunk in opened.chunks()])
    return await opened.read()


@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings"])
async def test_the_batch_limit_holds_for_every_endpoint(endpoint: str) -> None:
    sim = backend(max_num_seqs=1, ttft_ms=40)
    engine = sim.engine
    first = asyncio.create_task(answer(sim, attempt(endpoint)))
    second = asyncio.create_task(answer(sim, attempt(endpoint)))
    for _ in range(100):
        if engine.running == 1 and engine.waiting == 1:
            break
        await asyncio.sleep(0.005)
    assert (engine.running, engine.waiting) == (1, 1)  # one generates, one waits in line
    bodies = await asyncio.gather(first, second)
    assert bodies[0] == bodies[1] and (engine.running, engine.waiting) == (0, 0)
    doc = orjson.loads(bodies[0])
    assert doc["object"] == {"chat": "chat.completion", "completions": "text_completion",
                             "embeddings": "list"}[endpoint]  # fmt: skip


# (prompt tokens, of them in full blocks of 4): embeddings' "nine ten" fills no block
@pytest.mark.parametrize(("endpoint", "tokens", "full"), [("completions", 8, 8),
                                                         ("embeddings", 10, 8)])  # fmt: skip
async def test_prompts_and_inputs_go_through_the_prefix_cache(
    endpoint: str, tokens: int, full: int
) -> None:
    sim = backend(prefix_cache_blocks=64, block_size=4)
    await answer(sim, attempt(endpoint))
    cache = sim.engine.cache
    assert cache is not None and (cache.queries, cache.hits) == (tokens, 0)
    await answer(sim, attempt(endpoint))  # the second time its full blocks are cached
    assert (cache.queries, cache.hits) == (2 * tokens, full)


async def test_a_streamed_completion_takes_a_place_and_its_first_token_time() -> None:
    sim = backend(max_num_seqs=1, ttft_ms=30, prefix_cache_blocks=64, block_size=4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    cold = await answer(sim, attempt("completions", stream=True))
    cold_seconds = loop.time() - started
    assert cold.endswith(b"data: [DONE]\n\n") and cold_seconds >= 0.03
    assert sim.engine.cache is not None and sim.engine.cache.hits == 0
    await answer(sim, attempt("completions", stream=True))
    assert sim.engine.cache.hits == 8  # the whole prompt was cached: no wait for it
    assert sim.engine.running == 0
