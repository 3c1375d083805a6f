"""Redis failing mid-flight, reconnection, and a real Redis Cluster."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
import redis as syncredis

from tests.support.fakes import FakeOpenAI
from tests.support.gateway import start_gateway
from tests.support.net import eventually
from tests.support.redis_server import redis_cluster, redis_process

KEY = "sk-test-fail-0001"
BODY = {"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def config(
    upstream: FakeOpenAI, url: str, prefix: str, on_error: str, **extra: Any
) -> dict[str, Any]:
    return {
        "redis": {
            "url": url,
            "key_prefix": prefix,
            "on_error": on_error,
            "socket_timeout_seconds": 0.3,
            "connect_timeout_seconds": 0.3,
            **extra.pop("redis", {}),
        },
        "backends": {"gpu": {"provider": "openai", "url": upstream.url}},
        "pools": {
            "local": {"members": [{"backend": "gpu", "model": "llama"}], **extra.pop("pool", {})}
        },
        "models": {"chat": {"routes": [{"pools": ["local"]}]}},
        "teams": {
            "t": {"limits": {"requests_per_minute": 1000}, "budgets": [{"tokens_per_day": 100_000}]}
        },
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    }


async def call(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=BODY,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        return r.status, await r.json()


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_redis_down_allow_then_reconnect(upstream: FakeOpenAI, key_prefix: str) -> None:
    with redis_process() as (port, proc, _):
        url = f"redis://127.0.0.1:{port}/0"
        gw = await start_gateway(config(upstream, url, key_prefix, "allow"))
        try:
            assert (await call(gw.url))[0] == 200
            proc.terminate()
            proc.wait(timeout=10)
            started = time.monotonic()
            status, _ = await call(gw.url)
            assert status == 200  # admitted in-process
            assert time.monotonic() - started < 3  # no hang on a dead Redis
            assert await metric(gw.url, "spillway_quota_degraded_total") >= 1
            assert await metric(gw.url, "spillway_redis_errors_total") >= 1
            async with aiohttp.ClientSession() as s, s.get(gw.url + "/readyz") as r:
                # on_error: allow serves on: ready, and degraded
                assert r.status == 200
                assert (await r.json())["degraded"] == ["redis_unreachable"]
            assert await metric(gw.url, "spillway_redis_up") == 0
            # Redis comes back on the same port: the gateway uses it again by itself
            with redis_process(port=port):

                async def back() -> bool:
                    status, _ = await call(gw.url)
                    client = syncredis.Redis(port=port)
                    try:
                        return status == 200 and bool(client.keys(f"{key_prefix}:*rpm*"))
                    finally:
                        client.close()

                await eventually(back, within=5)
        finally:
            await gw.stop()


async def test_redis_down_deny_answers_503(upstream: FakeOpenAI, key_prefix: str) -> None:
    with redis_process() as (port, proc, _):
        gw = await start_gateway(
            config(upstream, f"redis://127.0.0.1:{port}/0", key_prefix, "deny")
        )
        try:
            assert (await call(gw.url))[0] == 200
            proc.terminate()
            proc.wait(timeout=10)
            status, body = await call(gw.url)
            assert status == 503
            assert body["error"]["code"] == "service_unavailable"
            assert "not admitted" in body["error"]["message"]
            assert len(upstream.seen) == 1  # nothing reached the upstream unaccounted
        finally:
            await gw.stop()


async def test_cluster_team_and_pool_budgets(upstream: FakeOpenAI, key_prefix: str) -> None:
    """Team keys and pool keys hash to different slots; both are enforced exactly."""
    with redis_cluster(3) as ports:
        url = f"redis://127.0.0.1:{ports[0]}/0"
        cfg = config(upstream, url, key_prefix, "deny", redis={"cluster": True},
                     pool={"budget": {"tokens_per_day": 120}})  # fmt: skip
        gw = await start_gateway(cfg)
        try:
            used = 0
            codes = []
            for _ in range(12):
                status, body = await call(gw.url)
                codes.append(status)
                if status == 200:
                    used += body["usage"]["total_tokens"]
                else:
                    assert body["error"]["type"] == "insufficient_quota"
                    assert "pool 'local' tokens_per_day" in body["error"]["message"]
            assert 200 in codes and 429 in codes
            assert used <= 120

            cluster = syncredis.RedisCluster(host="127.0.0.1", port=ports[0])
            try:

                async def exact() -> bool:
                    team = list(cluster.scan_iter(f"{key_prefix}:*team:b:tokens*"))
                    pool = list(cluster.scan_iter(f"{key_prefix}:*pool:local*tokens*"))
                    return (len(team) == 1 and len(pool) == 1
                            and int(cluster.get(team[0]) or 0) == used
                            and int(cluster.get(pool[0]) or 0) == used)  # fmt: skip

                # refusals on the pool's slot gave back what the team's slot reserved
                await eventually(exact, within=5)
                team_key = next(cluster.scan_iter(f"{key_prefix}:*team:b:tokens*"))
                pool_key = next(cluster.scan_iter(f"{key_prefix}:*pool:local*tokens*"))
                assert cluster.keyslot(team_key) != cluster.keyslot(pool_key)
            finally:
                cluster.close()
        finally:
            await gw.stop()


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR", logger="spillway.quota")
