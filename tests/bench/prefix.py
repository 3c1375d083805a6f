"""Prefix-cache-aware routing against round_robin and least_loaded (see README.md here).

Four simulated members, each with its own prefix cache (an LRU of 1,536 blocks
of 16 tokens, a third of what the whole run's prompts need) and a time to
first token of 200 ms for a prompt none of which is cached, scaled by the share
that is not (answers then come as fast as they can). 64 conversations of 10
turns run at once, each turn sent when the previous answer is in (plus a short
pause): 4 system prompts of about 400 words shared by 16 conversations each, a
first user message of its own, then every turn the previous answer and a new
user message, as agents do.

Reported per strategy: the prefix cache hit rate (tokens found cached over
tokens queried, summed over the members, as vLLM's ``prefix_cache_hits`` /
``queries``), its ratio to the ideal (every prompt replayed, in the order sent,
through one cache that never forgets: no routing can do better), time to first
token p50/p99 at the member (the simulated prefill: what the routing changes)
and as the client saw it (the same plus the gateway, the client and the event
loop of this one process: noisy on a busy machine), and max/mean requests per
member.

    python tests/bench/prefix.py [--conversations 64] [--turns 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvloop

from router.contract import ChatCompletionRequest
from router.providers.simengine import PrefixCache, Prompts, prompt_tokens
from tests.bench.fairness import pct
from tests.support.gateway import start_gateway

KEY = "sk-bench-prefix-0001"
MEMBERS = 4
CACHE_BLOCKS = 1536
BLOCK = 16
TTFT_MS = 200.0
WORDS = (
    "gateway", "replica", "budget", "stream", "token", "member", "prefix", "cache",
    "latency", "request", "module", "config", "review", "deploy", "metric", "queue",
)  # fmt: skip


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(n))


def config(strategy: str) -> dict[str, Any]:
    sim = {"ttft_ms": TTFT_MS, "prefix_cache_blocks": CACHE_BLOCKS, "block_size": BLOCK}
    backends = {f"gpu-{i}": {"provider": "simulate", "simulate": sim} for i in range(MEMBERS)}
    return {
        "backends": backends,
        "pools": {"gpus": {"strategy": strategy,
                           "members": [{"backend": n, "model": "llama"} for n in backends]}},
        "models": {"chat": {"routes": [{"pools": ["gpus"]}]}},
        "teams": {"t": {}},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
        "logging": {"requests": False},
    }  # fmt: skip


class Run:
    def __init__(self) -> None:
        self.ttfts: list[float] = []
        self.prefills: list[float] = []  # time to first token at the member
        self.members: dict[str, int] = {}
        self.sent: list[tuple[float, list[dict[str, str]]]] = []  # every prompt, when sent


async def turn(s: aiohttp.ClientSession, url: str, run: Run, messages: list[dict[str, str]]) -> str:
    body = {"model": "chat", "messages": messages, "stream": True, "max_tokens": 48}
    began = time.monotonic()
    run.sent.append((began, [dict(m) for m in messages]))
    text: list[str] = []
    ttft = None
    async with s.post(url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        assert r.status == 200, await r.text()
        backend = r.headers["x-spillway-backend"]
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            delta = orjson.loads(line[6:])["choices"]
            piece = delta[0]["delta"].get("content") if delta else None
            if piece:
                if ttft is None:
                    ttft = time.monotonic() - began
                text.append(piece)
    assert ttft is not None
    run.ttfts.append(ttft)
    run.members[backend] = run.members.get(backend, 0) + 1
    return "".join(text)


async def conversation(
    s: aiohttp.ClientSession, url: str, run: Run, i: int, turns: int, systems: list[str]
) -> None:
    rng = random.Random(i)
    messages = [{"role": "system", "content": systems[i % len(systems)]},
                {"role": "user", "content": f"conversation {i}: " + words(rng, 50)}]  # fmt: skip
    await asyncio.sleep(rng.random() * 0.5)  # conversations start spread over half a second
    for _ in range(turns):
        answer = await turn(s, url, run, messages)
        messages.append({"role": "assistant", "content": answer})
        messages.append({"role": "user", "content": words(rng, 30)})
        await asyncio.sleep(rng.random() * 0.05)


def ideal_hit_rate(run: Run) -> float:
    cache = PrefixCache(10**9, BLOCK)
    for _, messages in sorted(run.sent, key=lambda x: x[0]):
        req = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
        cache.prefill(prompt_tokens(req))
    return cache.hits / cache.queries


def recording(
    first_token_seconds: Callable[[Prompts], float], into: list[float]
) -> Callable[[Prompts], float]:
    def wrapped(prompts: Prompts) -> float:
        seconds = first_token_seconds(prompts)
        into.append(seconds)
        return seconds

    return wrapped


async def measure(strategy: str, conversations: int, turns: int) -> dict[str, float]:
    gw = await start_gateway(config(strategy))
    rng = random.Random(7)
    systems = [f"system prompt {k}: " + words(rng, 400) for k in range(4)]
    run = Run()
    engines = [b.engine for b in gw.gateway.runtime.backends.values()]  # type: ignore[attr-defined]
    for engine in engines:
        engine.first_token_seconds = recording(engine.first_token_seconds, run.prefills)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            await asyncio.gather(*(conversation(s, gw.url, run, i, turns, systems)
                                   for i in range(conversations)))  # fmt: skip
        hits = sum(e.cache.hits for e in engines)
        queries = sum(e.cache.queries for e in engines)
    finally:
        await gw.stop()
    loads = [run.members.get(f"gpu-{i}", 0) for i in range(MEMBERS)]
    return {
        "hit": hits / queries,
        "ideal": ideal_hit_rate(run),
        "ttft50": pct(run.ttfts, 0.5),
        "ttft99": pct(run.ttfts, 0.99),
        "member50": pct(run.prefills, 0.5),
        "member99": pct(run.prefills, 0.99),
        "maxmean": max(loads) / (sum(loads) / len(loads)),
    }


async def main(conversations: int, turns: int) -> None:
    print(f"{MEMBERS} members, prefix cache {CACHE_BLOCKS} blocks of {BLOCK} tokens each, "
          f"TTFT {TTFT_MS:.0f} ms uncached; {conversations} conversations x {turns} turns, "
          f"4 shared system prompts")  # fmt: skip
    print("                              TTFT at the member  TTFT at the client")
    print("  strategy          hit rate  of ideal    p50      p99       p50      p99"
          "   max/mean load")  # fmt: skip
    results = {}
    for strategy in ("round_robin", "least_loaded", "prefix_affinity"):
        r = results[strategy] = await measure(strategy, conversations, turns)
        print(f"  {strategy:16}  {r['hit']:8.1%}  {r['hit'] / r['ideal']:8.1%}"
              f"  {r['member50'] * 1000:5.0f} ms {r['member99'] * 1000:5.0f} ms"
              f"  {r['ttft50'] * 1000:5.0f} ms {r['ttft99'] * 1000:5.0f} ms"
              f"  {r['maxmean']:8.2f}")  # fmt: skip
    pa, ll = results["prefix_affinity"], results["least_loaded"]
    print(f"ideal hit rate {pa['ideal']:.1%}; against least_loaded, prefix_affinity cuts TTFT "
          f"p50 by {1 - pa['member50'] / ll['member50']:.0%} at the member, by "
          f"{1 - pa['ttft50'] / ll['ttft50']:.0%} at the client")  # fmt: skip


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    coro = main(args.conversations, args.turns)
    uvloop.run(coro)


if __name__ == "__main__":
    cli()
