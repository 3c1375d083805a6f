"""/metrics after real traffic: counters, histograms, budget and health gauges.

The gateway runs in-process in front of a real fake upstream; quotas are kept
in-process or in a real Redis.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import DEMO_KEY
from tests.support.fakes import FakeOpenAI
from tests.support.gateway import Running, make_config, start_gateway
from tests.support.metrics import series, value
from tests.support.net import free_port

LIMITED_KEY = "sk-test-limited-0003"
PRICE_IN, PRICE_OUT = 1.0, 2.0  # USD per million tokens


def config(upstream: FakeOpenAI, redis: str = "", prefix: str = "spillway") -> dict[str, Any]:
    return {
        "redis": {"url": redis, "key_prefix": prefix},
        "metrics": {"refresh_seconds": 3600},  # tests refresh by hand unless they say
        "backends": {"gpu": {"provider": "openai", "url": upstream.url, "api_key": "sk-up-1"}},
        "pools": {
            "local": {
                "members": [{"backend": "gpu", "model": "llama"}],
                "price": {"input_per_mtok": PRICE_IN, "output_per_mtok": PRICE_OUT},
                "budget": {"tokens_per_day": 1_000_000},
            }
        },
        "models": {"chat": {"routes": [{"pools": ["local"]}]}},
        "teams": {
            "research": {
                "budgets": [{"tokens_per_day": 100_000}, {"usd_per_month": 50, "pools": ["local"]}]
            },
            "limited": {"limits": {"requests_per_minute": 2}},
        },
        "keys": [
            {"id": "ci", "team": "research", "key": DEMO_KEY,
             "budgets": [{"tokens_per_hour": 5000}]},
            {"id": "lim", "team": "limited", "key": LIMITED_KEY},
        ],
    }  # fmt: skip


async def metrics_text(gw: Running) -> str:
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await r.text()


@pytest.fixture(params=["memory", "redis"])
async def gw(
    request: pytest.FixtureRequest, upstream: FakeOpenAI, key_prefix: str
) -> AsyncIterator[Running]:
    redis = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    running = await start_gateway(config(upstream, redis, key_prefix))
    yield running
    await running.stop()


async def traffic(gw: Running) -> tuple[int, int]:
    """5 answered requests of team research (2 streamed), 3 of team limited (1 refused)."""
    prompt = completion = 0
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=DEMO_KEY, max_retries=0) as c:
        for i in range(3):
            r = await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hello " * (i + 1)}],
                max_tokens=4,
            )  # fmt: skip
            assert r.usage is not None
            prompt += r.usage.prompt_tokens
            completion += r.usage.completion_tokens
        for _ in range(2):
            stream = await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "stream it"}], max_tokens=6,
                stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            async for chunk in stream:
                if chunk.usage is not None:
                    prompt += chunk.usage.prompt_tokens
                    completion += chunk.usage.completion_tokens
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=LIMITED_KEY, max_retries=0) as c:
        for _ in range(2):
            await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        with pytest.raises(openai.RateLimitError):
            await c.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
    return prompt, completion


async def settled(gw: Running, want: float) -> str:
    """Refresh the gauges until team research's daily tokens reach ``want`` (Redis
    settles in batches, off the response path)."""
    labels = {"scope": "team", "owner": "research", "unit": "tokens", "window": "day"}
    for _ in range(100):
        await gw.gateway.gauges.refresh(gw.gateway.runtime)
        text = await metrics_text(gw)
        if value(text, "spillway_budget_used", **labels) == want:
            return text
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"team budget never reached {want}: {value(text, 'spillway_budget_used', **labels)}"
    )


async def test_request_metrics_add_up(gw: Running) -> None:
    prompt, completion = await traffic(gw)
    text = await metrics_text(gw)
    ok = {"model": "chat", "pool": "local", "backend": "gpu"}
    assert value(text, "spillway_requests_total", team="research", status_class="2xx", **ok) == 5
    assert value(text, "spillway_requests_total", team="limited", status_class="2xx", **ok) == 2
    assert value(text, "spillway_requests_total", team="limited", status_class="4xx") == 1
    assert value(text, "spillway_prompt_tokens_total", team="research", **ok) == prompt
    assert value(text, "spillway_completion_tokens_total", team="research", **ok) == completion
    cost = value(text, "spillway_cost_usd_total", team="research", model="chat", pool="local")
    assert cost == pytest.approx((prompt * PRICE_IN + completion * PRICE_OUT) / 1e6)
    # 7 answered requests were timed; only the 2 streams have a time to first token
    assert value(text, "spillway_request_duration_seconds_count", **ok) == 7
    assert value(text, "spillway_time_to_first_token_seconds_count", **ok) == 2
    assert value(text, "spillway_time_per_output_token_seconds_count", **ok) == 2
    assert value(text, "spillway_gateway_overhead_seconds_count", model="chat") == 7
    assert 0 < value(text, "spillway_gateway_overhead_seconds_sum", model="chat") < 1
    # the slowest bucket holds everything; buckets run from milliseconds to minutes
    assert value(text, "spillway_request_duration_seconds_bucket", le="+Inf", **ok) == 7
    les = {float(s["le"]) for s in series(text, "spillway_request_duration_seconds_bucket")}
    assert min(les) <= 0.01 and max(les - {math.inf}) >= 300
    assert value(
        text, "spillway_quota_rejections_total", team="limited", kind="rate",
        limit="requests_per_minute",
    ) == 1  # fmt: skip
    assert value(text, "spillway_inflight_requests", backend="gpu") == 0
    # fixed label values exist before their first event
    assert value(text, "spillway_config_reloads_total", result="success") == 0
    assert value(text, "spillway_config_reloads_total", result="error") == 0
    assert value(text, "spillway_redis_errors_total", op="admit") == 0


async def test_budget_gauges_match_the_quota_store(gw: Running) -> None:
    prompt, completion = await traffic(gw)
    research = prompt + completion
    text = await settled(gw, research)
    team = {"scope": "team", "owner": "research", "team": "research"}
    assert value(text, "spillway_budget_limit", unit="tokens", window="day", **team) == 100_000
    assert value(text, "spillway_budget_remaining", unit="tokens", window="day", **team) == (
        100_000 - research
    )
    usd = {"unit": "usd", "window": "month", "pools": "local", **team}
    assert value(text, "spillway_budget_limit", **usd) == 50
    spent = value(text, "spillway_budget_used", **usd)
    assert spent == pytest.approx((prompt * PRICE_IN + completion * PRICE_OUT) / 1e6, abs=1e-8)
    assert value(text, "spillway_budget_remaining", **usd) == pytest.approx(50 - spent)
    key = {"scope": "key", "owner": "ci", "team": "research", "unit": "tokens", "window": "hour"}
    assert value(text, "spillway_budget_used", **key) == research
    assert value(text, "spillway_budget_limit", **key) == 5000
    # the pool's own budget counts every team's tokens
    pool = {"scope": "pool", "owner": "local", "team": "", "unit": "tokens", "window": "day"}
    assert value(text, "spillway_budget_used", **pool) > research
    assert value(text, "spillway_backend_healthy", backend="gpu") == 1
    # an unscoped budget has an empty pools label, never a made-up one
    assert {s["pools"] for s in series(text, "spillway_budget_used")} == {"", "local"}


async def test_reload_drops_the_series_of_removed_budgets(
    gw: Running, upstream: FakeOpenAI
) -> None:
    await gw.gateway.gauges.refresh(gw.gateway.runtime)
    before = series(await metrics_text(gw), "spillway_budget_limit")
    assert any(s["owner"] == "research" for s in before)
    doc = config(upstream, gw.gateway.cfg.redis.url, gw.gateway.cfg.redis.key_prefix)
    doc["teams"]["research"]["budgets"] = [{"tokens_per_hour": 777}]
    gw.gateway.reload(make_config(doc))
    await gw.gateway.gauges.refresh(gw.gateway.runtime)
    after = series(await metrics_text(gw), "spillway_budget_limit")
    research = [s for s in after if s["owner"] == "research"]
    assert [(s["unit"], s["window"]) for s in research] == [("tokens", "hour")]


async def test_gauges_refresh_on_their_own(upstream: FakeOpenAI) -> None:
    doc = config(upstream)
    doc["metrics"] = {"refresh_seconds": 0.05}
    gw = await start_gateway(doc)
    try:
        prompt, completion = await traffic(gw)
        labels = {"scope": "team", "owner": "research", "unit": "tokens", "window": "day"}
        for _ in range(100):
            text = await metrics_text(gw)
            if value(text, "spillway_budget_used", **labels) == prompt + completion:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the budget gauges were not refreshed")
        task = gw.gateway.gauges._task
        assert task is not None and not task.done()
    finally:
        await gw.stop()
    assert task.done()  # stopped and awaited with the app


async def test_refresh_survives_redis_down(upstream: FakeOpenAI) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    gw = await start_gateway(config(upstream, dead))
    try:
        await gw.gateway.gauges.refresh(gw.gateway.runtime)
        await gw.gateway.gauges.refresh(gw.gateway.runtime)
        text = await metrics_text(gw)
        assert value(text, "spillway_redis_errors_total", op="status") >= 2
        assert value(text, "spillway_backend_healthy", backend="gpu") == 1
    finally:
        await gw.stop()
