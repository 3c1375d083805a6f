"""Fair queueing with priorities on a saturated GPU pool (see README.md here).

A pool of two simulated members, each generating 8 requests at once (vLLM's
max_num_seqs): 100 ms to the first token, then 12 to 47 tokens (the simulated
model's own answer lengths, evenly spread) at 200 tokens/s. The service time
is measured first (one request at a time on the idle pool; timers overshoot a
little, so it is some 15% above the nominal 0.25 s) and gives the capacity:
16 slots / service time. Three teams:

* A floods: 160 clients in a loop, always 10x the pool's 16 slots outstanding;
* B sends at 20% of capacity (Poisson arrivals);
* C sends at 20% of capacity too, and has priority 10 where priorities are on.

Runs (each --seconds long after a warm-up), one in-process gateway on uvloop:

* quiet:        B and C alone (the reference: nothing waits);
* fifo:         A, B, C without a gateway queue: everything goes to the members,
                which queue first come first served (a vLLM server's own line);
* fair:         the pool's queue, every team at priority 0 and weight 1;
* fair+prio:    the same with C at priority 10;
* C floods, strict / min_share 0.25: C (priority 10) floods instead of A and B
                sends at 20%: without a minimum share band 0 starves, with one it
                gets its share.

For each team: requests asked and served per second, time waiting (time to
the first token less the member's own 100 ms) p50/p99, time to first token
p50/p99, refused (429).

    python tests/bench/fairness.py [--seconds 15]
    python tests/bench/fairness.py --replicas [--seconds 15]

``--replicas`` measures instead how close two replicas, each queueing on its
own, get to global fairness (``spillway simulate`` members, two gateways; see
``replicas.py`` here).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))

import uvloop

from tests.support.gateway import start_gateway

TTFT_S = 0.1
TPS = 200.0
MAX_TOKENS = 64  # above every answer: lengths are the model's own, 12 to 47 tokens
MEMBERS, SLOTS = 2, 8
FLOOD_CLIENTS = 10 * MEMBERS * SLOTS
KEYS = {t: f"sk-bench-team-{t.lower()}-0001" for t in "ABCD"}


@dataclass
class Sample:
    sent: float
    done: float
    status: int
    ttft: float | None


@dataclass
class Team:
    name: str
    urls: list[str] = field(default_factory=list)  # gateways it sends to, in turn
    samples: list[Sample] = field(default_factory=list)
    pending: int = 0
    turn: int = 0

    def url(self) -> str:
        self.turn += 1
        return self.urls[self.turn % len(self.urls)]


def gateway_config(*, queue: bool, c_priority: int = 0, min_share: float = 0.0) -> dict[str, Any]:
    sim = {"ttft_ms": TTFT_S * 1000, "tokens_per_second": TPS, "max_num_seqs": SLOTS}
    backends: dict[str, Any] = {}
    for i in range(MEMBERS):
        b: dict[str, Any] = {"provider": "simulate", "simulate": sim}
        if queue:
            b["max_concurrency"] = SLOTS  # the gateway knows each member's capacity
        backends[f"sim-{i}"] = b
    pool: dict[str, Any] = {
        "strategy": "least_loaded",
        "members": [{"backend": n, "model": "llama"} for n in backends],
        "max_output_tokens": 64,
    }
    if queue:
        pool["queue"] = {"max_wait_ms": 20000, "max_depth": 1000, "min_share": min_share}
    return {
        "backends": backends,
        "pools": {"gpu": pool},
        "models": {"chat": {"routes": [{"pools": ["gpu"]}]}},
        "teams": {"A": {}, "B": {}, "C": {"priority": c_priority}},
        "keys": [{"id": f"key-{t}", "team": t, "key": KEYS[t]} for t in "ABC"],
        "logging": {"requests": False},
        "server": {"route_headers": False},
    }


async def one(session: aiohttp.ClientSession, team: Team, url: str | None = None) -> None:
    """One streamed request of ``team`` (to ``url``, else to its gateways in turn)."""
    n = len(team.samples) + team.pending
    team.pending += 1
    text = f"team {team.name} asks question {n}"
    body = {"model": "chat", "stream": True, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip
    auth = {"Authorization": f"Bearer {KEYS[team.name]}"}
    sent = time.monotonic()
    ttft = None
    url = url or team.url()
    async with session.post(url + "/v1/chat/completions", json=body, headers=auth) as r:
        if r.status == 200:
            async for line in r.content:
                if ttft is None and b'"content":"' in line and b'"content":""' not in line:
                    ttft = time.monotonic() - sent
        else:
            await r.read()
        team.samples.append(Sample(sent, time.monotonic(), r.status, ttft))
        team.pending -= 1


async def flood(
    session: aiohttp.ClientSession, team: Team, until: float, clients: int = FLOOD_CLIENTS
) -> None:
    """``clients`` clients in a loop; each keeps to one of the team's gateways."""
    loop = asyncio.get_running_loop()

    async def client(url: str) -> None:
        while loop.time() < until:
            await one(session, team, url)

    await asyncio.gather(*(client(team.urls[k % len(team.urls)]) for k in range(clients)))


async def poisson(
    session: aiohttp.ClientSession, team: Team, rate: float, until: float, seed: int
) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    pending: set[asyncio.Task[None]] = set()
    while loop.time() < until:
        await asyncio.sleep(rng.expovariate(rate))
        task = asyncio.create_task(one(session, team))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(team: Team, start: float, end: float) -> dict[str, float]:
    window = [s for s in team.samples if start <= s.sent < end]
    served = [s for s in window if s.status == 200 and s.ttft is not None]
    ttfts = [s.ttft for s in served if s.ttft is not None]
    waits = [max(0.0, t - TTFT_S) for t in ttfts]
    seconds = end - start
    return {
        "asked": len(window) / seconds,
        "served": sum(1 for s in team.samples if s.status == 200 and start <= s.done < end)
        / seconds,
        "refused": sum(1 for s in window if s.status == 429) / seconds,
        "wait50": pct(waits, 0.5),
        "wait99": pct(waits, 0.99),
        "ttft50": pct(ttfts, 0.5),
        "ttft99": pct(ttfts, 0.99),
    }


async def service_time() -> float:
    """Mean duration of one request on the idle pool."""
    gw = await start_gateway(gateway_config(queue=True))
    team = Team("B", [gw.url])
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(30):
                await one(s, team)
    finally:
        await gw.stop()
    return sum(x.done - x.sent for x in team.samples) / len(team.samples)


async def scenario(
    doc: dict[str, Any], flooding: str | None, trickles: list[str], seconds: float, rate: float
) -> dict[str, dict[str, float]]:
    gw = await start_gateway(doc)
    teams = {n: Team(n, [gw.url]) for n in "ABC"}
    loop = asyncio.get_running_loop()
    warm = 3.0
    start = loop.time() + warm
    until = start + seconds
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as s:
            jobs = [poisson(s, teams[t], rate, until, seed=i) for i, t in enumerate(trickles)]
            if flooding:
                jobs.append(flood(s, teams[flooding], until))
            await asyncio.gather(*jobs)
    finally:
        await gw.stop()
    mono = time.monotonic() - loop.time()  # samples carry time.monotonic()
    return {n: summarize(t, start + mono, until + mono) for n, t in teams.items() if t.samples}


def show(title: str, result: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print("  team  asked/s  served/s  429/s   wait p50   wait p99   TTFT p50   TTFT p99")
    for name, r in result.items():
        print(f"  {name:4}  {r['asked']:7.1f}  {r['served']:8.1f}  {r['refused']:5.1f}"
              f"  {r['wait50'] * 1000:6.0f} ms  {r['wait99'] * 1000:6.0f} ms"
              f"  {r['ttft50'] * 1000:6.0f} ms  {r['ttft99'] * 1000:6.0f} ms")  # fmt: skip


async def main(seconds: float) -> None:
    service = await service_time()
    capacity = MEMBERS * SLOTS / service
    rate = 0.2 * capacity
    print(f"pool: {MEMBERS} members x {SLOTS} slots, service time {service * 1000:.0f} ms "
          f"(measured): {capacity:.1f} requests/s; A keeps {FLOOD_CLIENTS} outstanding, "
          f"B and C send {rate:.1f}/s each; {seconds:g} s measured per run")  # fmt: skip
    runs = [
        ("quiet: B and C alone", gateway_config(queue=True), None, ["B", "C"]),
        ("fifo: no gateway queue", gateway_config(queue=False), "A", ["B", "C"]),
        ("fair: queue, weights 1", gateway_config(queue=True), "A", ["B", "C"]),
        ("fair+prio: queue, C priority 10",
         gateway_config(queue=True, c_priority=10, min_share=0.05), "A", ["B", "C"]),
        ("C (priority 10) floods, strict bands (min_share 0)",
         gateway_config(queue=True, c_priority=10, min_share=0.0), "C", ["B"]),
        ("C (priority 10) floods, min_share 0.25",
         gateway_config(queue=True, c_priority=10, min_share=0.25), "C", ["B"]),
    ]  # fmt: skip
    for title, doc, flooding, trickles in runs:
        began = time.monotonic()
        result = await scenario(doc, flooding, trickles, seconds, rate)
        show(f"{title}  ({time.monotonic() - began:.0f} s)", result)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--replicas", action="store_true",
                        help="two replicas against shared members (replicas.py)")  # fmt: skip
    args = parser.parse_args()
    if args.replicas:
        from tests.bench.replicas import main as replicas_main

        coro = replicas_main(args.seconds)
    else:
        coro = main(args.seconds)
    uvloop.run(coro)


if __name__ == "__main__":
    cli()
