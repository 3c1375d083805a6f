"""Quotas on a bad day: clients hanging up mid-admission, Redis stalled or gone, budgets
lost with Redis, cancelled requests still billed upstream, minutes that slide.

Real Redis servers (our own, so they can be paused, stopped and restarted), real
gateway processes where the finding was about them, the openai SDK's wire format.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis as syncredis

from router.quota.plan import RATE_SPAN
from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.net import eventually
from tests.support.quota_counters import TeamCounters
from tests.support.redis_server import redis_process

KEY = "sk-test-faults-0001"
MSG = [{"role": "user", "content": "tell me about dams"}]


def config(upstream: FakeOpenAI, url: str, prefix: str, *, team: dict[str, Any] | None = None,
           redis: dict[str, Any] | None = None, backend: dict[str, Any] | None = None,
           quota: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "redis": {"url": url, "key_prefix": prefix, "socket_timeout_seconds": 0.3,
                  "connect_timeout_seconds": 0.3, **(redis or {})},
        "quota": {"checkpoint_seconds": 0, **(quota or {})},
        "logging": {"requests": False},
        "backends": {"up": {"provider": "openai", "url": upstream.url, **(backend or {})}},
        "pools": {"p": {"members": [{"backend": "up", "model": "m"}], "max_output_tokens": 64}},
        "models": {"chat": {"routes": [{"pools": ["p"]}]}},
        "teams": {"t": team or {"limits": {"concurrent": 1000},
                                "budgets": [{"tokens_per_day": 10_000_000}]}},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    }  # fmt: skip


async def post(session: aiohttp.ClientSession, url: str, **extra: Any) -> tuple[int, Any]:
    body = {"model": "chat", "messages": MSG, "max_tokens": 8, **extra}
    async with session.post(url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        return r.status, await r.json()


@pytest.fixture
async def own_redis() -> AsyncIterator[tuple[int, Any]]:
    with redis_process() as (port, proc, _):
        yield port, proc


async def test_hangup_during_admission_leaks_nothing(
    upstream: FakeOpenAI, own_redis: tuple[int, Any], key_prefix: str
) -> None:
    """Finding 1: clients hang up while their admission waits on Redis (held by a pause);
    Redis then admits them, and every slot and reservation comes back."""
    port, _ = own_redis
    gw = GatewayProcess(config(upstream, f"redis://127.0.0.1:{port}/0", key_prefix,
                               redis={"socket_timeout_seconds": 2.0}))  # fmt: skip
    counters = TeamCounters(port, key_prefix)
    try:
        async with aiohttp.ClientSession() as s:
            status, first = await post(s, gw.url)  # scripts loaded, connection made
            assert status == 200
            counters.client.execute_command("CLIENT", "PAUSE", 700, "ALL")
            calls = [asyncio.ensure_future(post(s, gw.url)) for _ in range(50)]
            await asyncio.sleep(0.3)  # the admissions are written, Redis holds them
            for call in calls:
                call.cancel()  # each client hangs up
            await asyncio.gather(*calls, return_exceptions=True)

        async def given_back() -> bool:
            return counters.slots() == 0 and counters.tokens_today() == charged

        charged = first["usage"]["total_tokens"]
        await eventually(given_back, within=5)  # only the first request is charged
        assert len(upstream.seen) == 1
    finally:
        counters.close()
        gw.stop()


async def test_unknown_outcome_is_refunded_and_written_back(
    upstream: FakeOpenAI, own_redis: tuple[int, Any], key_prefix: str
) -> None:
    """Findings 2 and 3: admissions time out on a stalled Redis (decided in-process,
    on_error: allow) while Redis goes on to apply them after the stall: nothing stays
    held, and the usage served meanwhile is written back, once."""
    port, _ = own_redis
    gw = GatewayProcess(config(upstream, f"redis://127.0.0.1:{port}/0", key_prefix))
    counters = TeamCounters(port, key_prefix)
    try:
        async with aiohttp.ClientSession() as s:
            status, first = await post(s, gw.url)
            assert status == 200
            counters.client.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            results = await asyncio.gather(*(post(s, gw.url) for _ in range(20)))
        assert [status for status, _ in results] == [200] * 20
        served = sum(body["usage"]["total_tokens"] for _, body in [*results, (200, first)])

        async def exact() -> bool:
            return counters.slots() == 0 and counters.tokens_today() == served

        await eventually(exact, within=8)
        metrics = await _metrics(gw.url)
        assert _sample(metrics, 'spillway_redis_errors_total{op="settle"}') >= 1
        assert _sample(metrics, "spillway_quota_settlements_pending") == 0
    finally:
        counters.close()
        gw.stop()


async def test_settlements_outlast_an_outage(own_redis: tuple[int, Any], key_prefix: str) -> None:
    """Finding 3: Redis is unreachable for 3 s between admission and settlement (the old
    code gave up after about 1.5 s): the settlement still lands, the slot is freed."""
    port, _ = own_redis
    slow = await FakeOpenAI("slow", Behaviour(first_byte_delay=0.3)).start()
    counters = TeamCounters(port, key_prefix)
    gw = await start_gateway(config(slow, f"redis://127.0.0.1:{port}/0", key_prefix))
    try:
        async with aiohttp.ClientSession() as s:
            call = asyncio.ensure_future(post(s, gw.url))
            await eventually(_true(lambda: slow.inflight == 1), within=5)
            counters.client.execute_command("CLIENT", "PAUSE", 3000, "ALL")
            status, body = await call
        assert status == 200
        m = gw.gateway.metrics

        async def pending() -> bool:
            return bool(m.registry.get_sample_value("spillway_quota_settlements_pending"))

        await eventually(pending, within=3)  # waiting for Redis, not dropped
        used = 0 + body["usage"]["total_tokens"]

        async def landed() -> bool:
            return counters.slots() == 0 and counters.tokens_today() == used

        await eventually(landed, within=8)
        # the counters are read with a blocking client, which holds the gateway's loop
        # (it shares this one) until Redis resumes: the timed-out call's connection may
        # not be closed by then, so Redis may apply that call and the retry, sent once
        # the loop runs again, hears "already settled" a moment later
        await eventually(_true(lambda: _pending(m) == 0), within=3)
        errors = m.registry.get_sample_value("spillway_redis_errors_total", {"op": "settle"})
        assert errors is not None and errors >= 1
    finally:
        await gw.stop()
        await slow.stop()
        counters.close()


async def test_readyz_with_redis_down(upstream: FakeOpenAI, key_prefix: str) -> None:
    """Finding 5: allow keeps the replica ready (degraded); deny takes it out."""
    with redis_process() as (port, proc, _):
        url = f"redis://127.0.0.1:{port}/0"
        allow = await start_gateway(config(upstream, url, key_prefix))
        deny = await start_gateway(config(upstream, url, key_prefix, redis={"on_error": "deny"}))
        try:
            async with aiohttp.ClientSession() as s:
                for gw in (allow, deny):
                    async with s.get(gw.url + "/readyz") as r:
                        assert r.status == 200 and "degraded" not in await r.json()
                proc.terminate()
                proc.wait(timeout=10)
                async with s.get(allow.url + "/readyz") as r:
                    assert r.status == 200
                    assert (await r.json())["degraded"] == ["redis_unreachable"]
                async with s.get(deny.url + "/readyz") as r:
                    assert r.status == 503
                    assert (await r.json())["error"]["code"] == "redis_unreachable"
            up = allow.gateway.metrics.registry.get_sample_value("spillway_redis_up")
            assert up == 0
        finally:
            await allow.stop()
            await deny.stop()


async def test_budget_survives_an_empty_restart(
    upstream: FakeOpenAI, key_prefix: str, tmp_path: Any
) -> None:
    """Finding 4: Redis restarts without its data; the day's counter comes back from the
    gateway's checkpoint (and from its file, for a gateway started afterwards)."""
    with redis_process() as (port, proc, _):
        url = f"redis://127.0.0.1:{port}/0"
        path = str(tmp_path / "budgets.json")
        cfg = config(upstream, url, key_prefix,
                     quota={"checkpoint_seconds": 0.1, "checkpoint_file": path})  # fmt: skip
        gw = GatewayProcess(cfg)
        try:
            async with aiohttp.ClientSession() as s:
                results = [await post(s, gw.url) for _ in range(5)]
            served = sum(body["usage"]["total_tokens"] for _, body in results)
            counters = TeamCounters(port, key_prefix)
            # the last settlement is sent a moment after its response
            await eventually(_true(lambda: counters.tokens_today() == served), within=3)
            counters.close()
            await asyncio.sleep(0.5)  # a checkpoint or two
            proc.terminate()
            proc.wait(timeout=10)
            with redis_process(port=port):  # empty: no persistence
                counters = TeamCounters(port, key_prefix)
                try:
                    await eventually(_true(lambda: counters.tokens_today() == served), within=5)
                    gw.stop()
                    counters.client.flushall()  # lost again, with no gateway running
                    gw = GatewayProcess(cfg)  # restores from the file it left
                    await eventually(_true(lambda: counters.tokens_today() == served), within=5)
                finally:
                    counters.close()
        finally:
            gw.stop()


@pytest.mark.parametrize("bills", [True, False], ids=["hosted", "self-hosted"])
async def test_cancelled_request_billed_as_upstream_reports(
    own_redis: tuple[int, Any], key_prefix: str, bills: bool
) -> None:
    """Finding 7: a client hangs up on a non-streamed request. A backend that bills
    generation is read to the end and its reported usage charged; a self-hosted one is
    cancelled at once and charged the prompt."""
    port, _ = own_redis
    slow = await FakeOpenAI("slow", Behaviour(first_byte_delay=0.5, words=30)).start()
    backend = {"flavour": "openai"} if bills else {}
    gw = await start_gateway(config(slow, f"redis://127.0.0.1:{port}/0", key_prefix,
                                    backend=backend))  # fmt: skip
    counters = TeamCounters(port, key_prefix)
    try:
        async with aiohttp.ClientSession() as s:
            call = asyncio.ensure_future(post(s, gw.url, max_tokens=40))
            await eventually(_true(lambda: slow.inflight == 1), within=5)
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
        prompt = 3 + len(MSG[0]["content"].split())  # as the fake counts it
        if bills:
            await eventually(_true(lambda: counters.tokens_today() == prompt + 30), within=5)
            assert not slow.disconnects  # read to its end
        else:
            await eventually(_true(lambda: bool(slow.disconnects)), within=5)
            await eventually(_true(lambda: counters.slots() == 0), within=5)
            assert counters.tokens_today() < prompt + 30  # the prompt estimate only
        assert counters.slots() == 0
    finally:
        await gw.stop()
        await slow.stop()
        counters.close()


async def test_rate_limit_slides_over_the_minute_boundary(
    upstream: FakeOpenAI, own_redis: tuple[int, Any], key_prefix: str
) -> None:
    """Finding 8: a burst at the end of one minute still counts at the start of the next.
    The burst is written into the previous minute's counter as Redis's clock sees it, so
    the expectation does not depend on where in a minute the test runs."""
    port, _ = own_redis
    limit = 30
    team = {"limits": {"requests_per_minute": limit}}
    gw = await start_gateway(config(upstream, f"redis://127.0.0.1:{port}/0", key_prefix,
                                    team=team))  # fmt: skip
    client = syncredis.Redis(port=port)
    try:
        for _ in range(3):
            seconds, micros = client.time()
            now = seconds + micros / 1e6
            if now % RATE_SPAN < RATE_SPAN - 10:
                break
            await asyncio.sleep(RATE_SPAN - now % RATE_SPAN + 0.1)  # not at a minute's end
        minute = int(now // RATE_SPAN)
        client.set(f"{key_prefix}:{{team:t}}:team:rpm:{minute - 1}", limit, ex=180)
        async with aiohttp.ClientSession() as s:
            statuses = [(await post(s, gw.url))[0] for _ in range(limit)]
        seconds, micros = client.time()
        later = seconds + micros / 1e6
        assert int(later // RATE_SPAN) == minute
        # the previous minute still weighs (1 - elapsed/60) of its count
        least = int(limit * (now % RATE_SPAN) / RATE_SPAN)
        most = int(limit * (later % RATE_SPAN) / RATE_SPAN) + 1
        admitted = statuses.count(200)
        assert least <= admitted <= most, (admitted, least, most)
        assert admitted < limit  # a fixed calendar minute would have admitted them all
    finally:
        client.close()
        await gw.stop()


def _pending(m: Any) -> float | None:
    return m.registry.get_sample_value("spillway_quota_settlements_pending")


def _true(check: Any) -> Any:
    async def predicate() -> bool:
        return bool(check())

    return predicate


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        return await r.text()


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("CRITICAL", logger="spillway.quota")
