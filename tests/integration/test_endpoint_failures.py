"""Completions and embeddings on the same walk as chat: failover to the next pool,
reservations undone for failed attempts, a stream broken midway ended in-band."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import DEMO_KEY
from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import Running, start_gateway
from tests.support.metrics import value

HEADERS = {"Authorization": f"Bearer {DEMO_KEY}"}


def config(down: FakeOpenAI, up: FakeOpenAI, broken: FakeOpenAI) -> dict[str, Any]:
    return {
        "routing": {"retries": {"backoff_base_seconds": 0}},
        "backends": {
            "down": {"provider": "openai", "url": down.url},
            "up": {"provider": "openai", "url": up.url},
            "broken": {"provider": "openai", "url": broken.url},
        },
        "pools": {
            "first": {"members": [{"backend": "down", "model": "m"}]},
            "second": {"members": [{"backend": "up", "model": "m"}]},
            "vectors-first": {"members": [{"backend": "down", "model": "e"}]},
            "vectors-second": {"members": [{"backend": "up", "model": "e"}]},
            "cut": {"members": [{"backend": "broken", "model": "m"}]},
        },
        "models": {
            "chat": {"routes": [{"pools": ["first", "second"]}]},
            "embed": {
                "kind": "embeddings",
                "routes": [{"pools": ["vectors-first", "vectors-second"]}],
            },
            "cut": {"routes": [{"pools": ["cut"]}]},
        },
        "teams": {"t": {"budgets": [{"tokens_per_day": 1_000_000}]}},
        "keys": [{"id": "k", "team": "t", "key": DEMO_KEY}],
    }


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Running, FakeOpenAI, FakeOpenAI, FakeOpenAI]]:
    down = await FakeOpenAI("down", Behaviour(status=503)).start()
    up = await FakeOpenAI("up").start()
    broken = await FakeOpenAI("broken", Behaviour(words=20, break_after=4)).start()
    gw = await start_gateway(config(down, up, broken))
    yield gw, down, up, broken
    await gw.stop()
    for fake in (down, up, broken):
        await fake.stop()


async def quota_used(s: aiohttp.ClientSession, gw: Running) -> int:
    async with s.get(gw.url + "/v1/quota", headers=HEADERS) as r:
        doc = await r.json()
    return int(doc["budgets"][0]["used"])


async def test_failover_and_exact_charges(
    setup: tuple[Running, FakeOpenAI, FakeOpenAI, FakeOpenAI],
) -> None:
    gw, down, up, _ = setup
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.url + "/v1/embeddings", headers=HEADERS,
                          json={"model": "embed", "input": ["a b", "c"]}) as r:  # fmt: skip
            assert r.status == 200
            assert r.headers["x-spillway-pool"] == "vectors-second"
            assert (await r.json())["usage"]["prompt_tokens"] == 3
        doc = {"model": "chat", "prompt": "x y", "max_tokens": 2}
        async with s.post(gw.url + "/v1/completions", headers=HEADERS, json=doc) as r:
            assert r.status == 200 and r.headers["x-spillway-pool"] == "second"
            usage = (await r.json())["usage"]
        assert [seen.path for seen in down.seen] == ["/v1/embeddings", "/v1/completions"]
        assert [seen.path for seen in up.seen] == ["/v1/embeddings", "/v1/completions"]
        # the failed pools' reservations were undone; only reported usage is charged
        assert await quota_used(s, gw) == 3 + usage["total_tokens"]
        async with s.get(gw.url + "/metrics") as r:
            text = await r.text()
    assert value(text, "spillway_fallbacks_total", model="embed", from_pool="vectors-first",
                 to_pool="vectors-second", reason="error") == 1  # fmt: skip
    assert value(text, "spillway_requests_total", endpoint="completions", pool="second",
                 status_class="2xx") == 1  # fmt: skip


async def test_completion_stream_broken_midway_ends_in_band(
    setup: tuple[Running, FakeOpenAI, FakeOpenAI, FakeOpenAI],
) -> None:
    gw, *_ = setup
    async with aiohttp.ClientSession() as s:
        body = {"model": "cut", "prompt": "x", "max_tokens": 20, "stream": True}
        async with s.post(gw.url + "/v1/completions", headers=HEADERS, json=body) as r:
            assert r.status == 200
            events = [line for line in (await r.read()).split(b"\n\n") if line]
        assert events[-1] == b"data: [DONE]"
        error = orjson.loads(events[-2].removeprefix(b"data: "))
        assert error["error"]["type"] == "api_error"
        texts = [orjson.loads(e[6:])["choices"][0]["text"] for e in events[:-2]]
        assert texts == ["w0", " w1", " w2", " w3"]
        # charged what was produced (estimated: the stream had no usage chunk)
        assert await quota_used(s, gw) >= 3
