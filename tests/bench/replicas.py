"""How close two replicas, each queueing on its own, get to global fairness.

Run through ``fairness.py --replicas`` (see README.md here). Two ``spillway
simulate`` processes are the members (8 requests at once each, real running
and waiting gauges on /metrics); two ``spillway serve`` processes are the
replicas, with the same config. Teams: A (weight 1) and D (weight 3) both
flood (40 clients each, every client keeping to one replica), B (weight 1)
sends at 10% of capacity, half of its requests to each replica. Globally fair
shares (weighted max-min): B all it asks, then A a quarter and D three
quarters of the rest.

Layouts:

* one replica: the reference (the gateway sees every request);
* split, spread: each replica may send each member half its slots
  (``max_concurrency: 4``); each team's traffic reaches both replicas alike;
* split, D pinned: the same, but all of D's traffic reaches replica 1 (its
  clients' long-lived connections, or a sticky load balancer);
* shared, scraped: each replica may fill a member (``max_concurrency: 8``)
  and stops at the member's scraped waiting queue (``max_waiting: 0``, scraped
  every 250 ms), so the replicas share capacity as they observe it.

Reported per team: served per second, its share of what was served, the
globally fair share, and the ratio (1.0 = exactly fair); Jain's index over the
ratios (1.0 = perfectly fair); B's p99 wait.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import aiohttp

from tests.bench.fairness import KEYS, MAX_TOKENS, SLOTS, TPS, TTFT_S, Team, flood, poisson
from tests.bench.fairness import summarize as team_summary
from tests.support.gateway import GatewayProcess
from tests.support.net import free_port, wait_http

MEMBERS = 2
WEIGHTS = {"A": 1.0, "B": 1.0, "D": 3.0}
FLOODERS = 40  # per flooding team


def simulate(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "router", "simulate", "--port", str(port), "--model", "llama",
         "--ttft-ms", str(TTFT_S * 1000), "--tokens-per-second", str(TPS),
         "--max-num-seqs", str(SLOTS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def config(ports: list[int], *, per_replica: int, max_waiting: int | None) -> dict[str, Any]:
    backends = {
        f"sim-{i}": {"provider": "openai", "url": f"http://127.0.0.1:{p}/v1",
                     "metrics_url": f"http://127.0.0.1:{p}/metrics",
                     "max_concurrency": per_replica}
        for i, p in enumerate(ports)
    }  # fmt: skip
    pool: dict[str, Any] = {
        "strategy": "least_loaded",
        "members": [{"backend": n, "model": "llama"} for n in backends],
        "max_output_tokens": MAX_TOKENS,
        "queue": {"max_wait_ms": 30000, "max_depth": 2000},
    }
    if max_waiting is not None:
        pool["max_waiting"] = max_waiting
    return {
        "backends": backends,
        "pools": {"gpu": pool},
        "models": {"chat": {"routes": [{"pools": ["gpu"]}]}},
        "teams": {t: {"weight": w} for t, w in WEIGHTS.items()},
        "keys": [{"id": f"key-{t}", "team": t, "key": KEYS[t]} for t in WEIGHTS],
        "logging": {"requests": False},
        "routing": {"health": {"interval_seconds": 0.25}},
    }


async def service_time(port: int) -> float:
    """Mean duration of one request on an idle member."""
    body = {"model": "llama", "max_tokens": MAX_TOKENS, "stream": True,
            "messages": [{"role": "user", "content": "how long"}]}  # fmt: skip
    took = []
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            body["messages"] = [{"role": "user", "content": f"how long is answer {i}"}]
            began = time.monotonic()
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                await r.read()
            took.append(time.monotonic() - began)
    return sum(took) / len(took)


def fair_shares(b_asked: float, served: float) -> dict[str, float]:
    """Weighted max-min shares of ``served`` when B asks ``b_asked`` per second."""
    b = min(b_asked, served * WEIGHTS["B"] / sum(WEIGHTS.values()))
    rest = served - b
    return {"A": rest * 1 / 4 / served, "B": b / served, "D": rest * 3 / 4 / served}


async def layout(
    title: str, doc: dict[str, Any], replicas: int, pinned: bool, seconds: float, rate: float
) -> None:
    gateways = [GatewayProcess(doc) for _ in range(replicas)]
    try:
        urls = [g.url for g in gateways]
        teams = {t: Team(t, list(urls)) for t in WEIGHTS}
        if pinned:
            teams["D"].urls = urls[:1]
        loop = asyncio.get_running_loop()
        start = loop.time() + 3.0
        until = start + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            await asyncio.gather(
                flood(s, teams["A"], until, FLOODERS),
                flood(s, teams["D"], until, FLOODERS),
                poisson(s, teams["B"], rate, until, seed=1),
            )
        mono = time.monotonic() - loop.time()
        result = {t: team_summary(team, start + mono, until + mono) for t, team in teams.items()}
    finally:
        for g in gateways:
            g.stop()
    served = sum(r["served"] for r in result.values())
    fair = fair_shares(result["B"]["asked"], served)
    ratios = {t: (r["served"] / served) / fair[t] for t, r in result.items()}
    jain = sum(ratios.values()) ** 2 / (len(ratios) * sum(x * x for x in ratios.values()))
    print(f"\n{title}: {served:.1f} requests/s served, Jain's index {jain:.3f}")
    print("  team  weight  served/s  share   fair   ratio")
    for t, r in result.items():
        print(f"  {t:4}  {WEIGHTS[t]:6g}  {r['served']:8.1f}  {r['served'] / served:5.1%}"
              f"  {fair[t]:5.1%}  {ratios[t]:5.2f}")  # fmt: skip
    print(f"  B asked {result['B']['asked']:.1f}/s; its wait p50 {result['B']['wait50'] * 1000:.0f}"
          f" ms, p99 {result['B']['wait99'] * 1000:.0f} ms")  # fmt: skip


async def main(seconds: float) -> None:
    ports = [free_port() for _ in range(MEMBERS)]
    sims = [simulate(p) for p in ports]
    try:
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/health")
        capacity = MEMBERS * SLOTS / await service_time(ports[0])
        rate = 0.1 * capacity
        print(f"members: {MEMBERS} spillway simulate processes x {SLOTS} slots; teams A (weight"
              f" 1) and D (weight 3) flood with {FLOODERS} clients each, B sends {rate:.1f}/s;"
              f" {seconds:g} s measured per layout")  # fmt: skip
        one_replica = config(ports, per_replica=SLOTS, max_waiting=None)
        split = config(ports, per_replica=SLOTS // 2, max_waiting=None)
        shared = config(ports, per_replica=SLOTS, max_waiting=0)
        await layout("one replica", one_replica, 1, False, seconds, rate)
        await layout("two replicas, split, spread", split, 2, False, seconds, rate)
        await layout("two replicas, split, D pinned to replica 1", split, 2, True, seconds, rate)
        await layout("two replicas, shared, scraped", shared, 2, False, seconds, rate)
    finally:
        for sim in sims:
            sim.terminate()
            sim.wait(timeout=10)
