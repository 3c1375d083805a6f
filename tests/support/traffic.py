"""A gateway config and a traffic mix that make every metric move.

Simulated backends (one always failing), a priced hosted pool, a route that
spills on error and one that spills on a spent budget, a rate-limited team,
streamed and plain requests on every endpoint (chat, completions, embeddings):
answered 2xx, refused 4xx and failed 5xx. A pool with a queue of one slot,
where requests wait, time out and spill, and a sheddable team is turned away;
a prefix_affinity pool whose member keeps a prefix cache (a ``spillway
simulate`` process when its URL is given, so its ``vllm:prefix_cache_*``
counters can be scraped too).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

KEYS = {
    "research": "sk-traffic-research-0001",
    "limited": "sk-traffic-limited-0002",
    "broke": "sk-traffic-broke-0003",
    "batch": "sk-traffic-batch-00004",
}


def config(
    redis_url: str, prefix: str, refresh_seconds: float = 0.5, simulate_url: str | None = None
) -> dict[str, Any]:
    """``simulate_url``: a ``spillway simulate`` server behind both members of the
    prefix_affinity pool (else in-process simulated members with a prefix cache)."""
    agent: dict[str, Any] = {"provider": "simulate", "simulate": {"prefix_cache_blocks": 512}}
    if simulate_url is not None:
        agent = {"provider": "openai", "url": simulate_url + "/v1",
                 "metrics_url": simulate_url + "/metrics"}  # fmt: skip
    return {
        "redis": {"url": redis_url, "key_prefix": prefix},
        "metrics": {"refresh_seconds": refresh_seconds},
        "backends": {
            "sim-a": {"provider": "simulate",
                      "simulate": {"ttft_ms": 15, "tokens_per_second": 3000}},
            "sim-b": {"provider": "simulate", "simulate": {"ttft_ms": 5}},
            "broken": {"provider": "simulate",
                       "simulate": {"failure_rate": 1.0, "failure_status": 503}},
            "sim-q": {"provider": "simulate", "max_concurrency": 1,
                      "simulate": {"ttft_ms": 60}},
            "agent-a": agent,
            "agent-b": agent,
        },
        "pools": {
            "local": {"members": [{"backend": "sim-a", "model": "llama-8b"}],
                      "budget": {"tokens_per_day": 50_000_000}},
            "flaky": {"members": [{"backend": "broken", "model": "x"},
                                  {"backend": "sim-b", "model": "llama-8b"}]},
            "dead": {"members": [{"backend": "broken", "model": "x"}]},
            "vectors": {"members": [{"backend": "sim-b", "model": "bge-m3"}],
                        "price": {"input_per_mtok": 0.02}},
            "hosted": {"members": [{"backend": "sim-b", "model": "gpt-4o-mini"}],
                       "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
                       "budget": {"usd_per_month": 1000}},
            "queued": {"members": [{"backend": "sim-q", "model": "llama-8b"}],
                       "queue": {"max_wait_ms": 30, "max_depth": 2}},
            "agents": {"strategy": "prefix_affinity",
                       "members": [{"backend": "agent-a", "model": "spillway-sim-1"},
                                   {"backend": "agent-b", "model": "spillway-sim-1"}]},
        },
        "models": {
            "chat": {"routes": [{"pools": ["local", "hosted"]}]},
            "flaky": {"routes": [{"pools": ["flaky"]}]},
            "spill": {"routes": [{"pools": ["dead", "hosted"]}]},
            "down": {"routes": [{"pools": ["dead"]}]},
            "embed": {"kind": "embeddings", "routes": [{"pools": ["vectors"]}]},
            "queued": {"routes": [{"pools": ["queued", "hosted"]}]},
            "agents": {"routes": [{"pools": ["agents"]}]},
        },
        "teams": {
            "research": {"budgets": [{"tokens_per_day": 10_000_000},
                                     {"usd_per_month": 100, "pools": ["hosted"]}]},
            "limited": {"limits": {"requests_per_minute": 5}},
            "broke": {"budgets": [{"tokens_per_day": 600, "pools": ["local"]}]},
            "batch": {"priority": -1},
        },
        "keys": [
            {"id": "research-bot", "team": "research", "key": KEYS["research"],
             "budgets": [{"tokens_per_hour": 5_000_000}]},
            {"id": "limited-bot", "team": "limited", "key": KEYS["limited"]},
            {"id": "broke-bot", "team": "broke", "key": KEYS["broke"]},
            {"id": "batch-bot", "team": "batch", "key": KEYS["batch"]},
        ],
    }  # fmt: skip


# (team, model, stream, endpoint)
MIX: tuple[tuple[str, str, bool, str], ...] = (
    ("research", "chat", False, "chat"),
    ("research", "chat", True, "chat"),
    ("research", "flaky", False, "chat"),
    ("research", "spill", True, "chat"),
    ("research", "down", False, "chat"),
    ("limited", "chat", False, "chat"),
    ("broke", "chat", True, "chat"),
    ("research", "chat", True, "completions"),
    ("research", "embed", False, "embeddings"),
    ("research", "queued", False, "chat"),  # one slot: one is served, the others wait ...
    ("research", "queued", True, "chat"),
    ("research", "queued", False, "completions"),
    ("research", "queued", False, "chat"),  # ... time out or find the queue full, and spill
    ("batch", "queued", False, "chat"),  # sheddable: turned away while the pool is full
    ("research", "agents", True, "chat"),
    ("broke", "agents", False, "chat"),
)


async def _one(
    s: aiohttp.ClientSession, url: str, team: str, model: str, stream: bool, endpoint: str
) -> int:
    body: dict[str, Any] = {"model": model, "max_tokens": 12, "stream": stream}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": "tell me about dams"}]
    elif endpoint == "completions":
        body["prompt"] = "Dams hold back"
    else:
        body = {"model": model, "input": ["tell me about dams", "and spillways"]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {KEYS[team]}"}
    async with s.post(f"{url}/v1/{endpoint.replace('chat', 'chat/completions')}", json=body,
                      headers=headers) as r:  # fmt: skip
        await r.read()
        return r.status


async def drive(url: str, seconds: float, pause: float = 0.15) -> dict[int, int]:
    """Send the mix over and over for ``seconds``; the count of each status."""
    loop = asyncio.get_running_loop()
    counts: dict[int, int] = {}
    async with aiohttp.ClientSession() as s:
        end = loop.time() + seconds
        while loop.time() < end:
            statuses = await asyncio.gather(*(_one(s, url, *m) for m in MIX))
            for st in statuses:
                counts[st] = counts.get(st, 0) + 1
            await asyncio.sleep(pause)
    return counts
