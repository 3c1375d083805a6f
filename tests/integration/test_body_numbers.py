"""Huge and non-finite numbers through the gateway: 400s that name the field, and
nothing between the client, Redis and the upstream ever truncates or leaks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from router.contract import MAX_TOKENS
from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.gateway import Running, start_gateway
from tests.support.net import eventually

KEY = "sk-test-numbers-0001"
AUTH = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "count to three"}]


def config(upstream: FakeOpenAI, store: str, prefix: str, team: dict[str, Any]) -> dict[str, Any]:
    return {
        "redis": {"url": store, "key_prefix": prefix},
        "backends": {"gpu": {"provider": "openai", "url": upstream.url}},
        "pools": {"local": {"members": [{"backend": "gpu", "model": "llama"}],
                            "max_output_tokens": 64},
                  "vectors": {"members": [{"backend": "gpu", "model": "e5"}]}},
        "models": {"chat": {"routes": [{"pools": ["local"]}]},
                   "embed": {"kind": "embeddings", "routes": [{"pools": ["vectors"]}]}},
        "teams": {"t": team},
        "keys": [{"id": "k", "team": "t", "key": KEY}],
    }  # fmt: skip


async def post(gw: Running, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            gw.base_url + path, data=raw, headers={**AUTH, "Content-Type": "application/json"}
        ) as r,
    ):
        return r.status, await r.json()


def with_literal(doc: dict[str, Any], field: str, literal: str) -> bytes:
    return json.dumps({**doc, field: "@@"}).replace('"@@"', literal).encode()


CHAT = {"model": "chat", "messages": MSG}
BODIES = {
    "/chat/completions": CHAT,
    "/completions": {"model": "chat", "prompt": "count"},
    "/embeddings": {"model": "embed", "input": "count"},
}


@pytest.mark.parametrize("path", BODIES)
async def test_every_endpoint_refuses_non_finite_numbers(upstream: FakeOpenAI, path: str) -> None:
    gw = await start_gateway(config(upstream, "", "p", {}))
    try:
        for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
            status, doc = await post(gw, path, with_literal(BODIES[path], "foo", literal))
            assert status == 400, (literal, doc)
            assert doc["error"]["param"] == "foo" and doc["error"]["code"] == "invalid_number"
        status, doc = await post(gw, path, with_literal(BODIES[path], "user", "NaN"))
        assert (status, doc["error"]["param"]) == (400, "user")
    finally:
        await gw.stop()
    assert upstream.seen == []


async def test_huge_max_tokens_is_refused_never_wrapped(upstream: FakeOpenAI) -> None:
    gw = await start_gateway(config(upstream, "", "p", {"budgets": [{"tokens_per_day": 10**9}]}))
    try:
        for value in (2**63, 2**64 + 5, 10**30, 10**400, 2**31):
            status, doc = await post(gw, "/chat/completions",
                                     with_literal(CHAT, "max_tokens", str(value)))  # fmt: skip
            assert status == 400 and doc["error"]["param"] == "max_tokens", (value, doc)
        status, _ = await post(gw, "/chat/completions", with_literal(CHAT, "max_tokens", "9"))
        assert status == 200
    finally:
        await gw.stop()
    assert [s.body["max_tokens"] for s in upstream.seen] == [9]


async def test_a_refused_number_leaks_no_slot_in_redis(
    upstream: FakeOpenAI, redis_url: str, key_prefix: str
) -> None:
    """One slot and no token budget: a max_tokens of 10^400 once failed settlement in
    Lua and kept the slot; now it is a 400 before admission, and the slot stays free."""
    gw = await start_gateway(config(upstream, redis_url, key_prefix, {"limits": {"concurrent": 1}}))
    try:
        for literal in ("1" + "0" * 400, str(2**63), "1e308"):
            status, doc = await post(gw, "/chat/completions",
                                     with_literal(CHAT, "max_tokens", literal))  # fmt: skip
            assert status == 400 and doc["error"]["param"] == "max_tokens"
        for _ in range(2):
            status, _ = await post(gw, "/chat/completions", json.dumps(CHAT).encode())
            assert status == 200
    finally:
        await gw.stop()


@pytest.fixture
async def boastful() -> AsyncIterator[FakeOpenAI]:
    """An upstream that reports an absurd prompt count."""
    fake = await FakeOpenAI("boast", Behaviour(prompt_tokens=2**63 - 1)).start()
    yield fake
    await fake.stop()


async def test_an_absurd_reported_usage_is_settled_within_range(
    boastful: FakeOpenAI, redis_url: str, key_prefix: str
) -> None:
    """Settlement keeps an upstream's counts within a counter's range: the charge
    lands (bounded), the reservation does not linger."""
    gw = await start_gateway(config(boastful, redis_url, key_prefix,
                                    {"budgets": [{"tokens_per_month": 10**15}]}))  # fmt: skip
    try:
        status, doc = await post(gw, "/chat/completions", json.dumps(CHAT).encode())
        assert status == 200
        completion = doc["usage"]["completion_tokens"]

        async def settled() -> bool:
            got = await gw.gateway.runtime.quota.status("k")
            return any(b["used"] == MAX_TOKENS + completion for b in got["budgets"])

        await eventually(settled)
    finally:
        await gw.stop()
