"""Nothing of one team is shown to another.

* ``/v1/quota`` lists only the pools (and their budgets) the caller's team may be
  routed to: team A never sees pool ``pb``, which only team B's traffic reaches,
  nor a pool behind a route that ``when.teams`` keeps A from.
* ``server.metrics_port``: ``/metrics`` (every team's spend) is served on a port
  of its own and not on the API port, in a real ``spillway serve`` (workers
  included); unset, it stays on the API port.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest

from tests.support.fakes import FakeOpenAI
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.net import free_port

KEY_A, KEY_B = "sk-team-a-000001", "sk-team-b-000001"


def teams_config(url: str) -> dict[str, Any]:
    member = [{"backend": "up", "model": "llama"}]
    return {
        "backends": {"up": {"provider": "openai", "url": url}},
        "pools": {
            "pa": {"members": member, "budget": {"tokens_per_day": 100000}},
            "pb": {"members": member, "budget": {"tokens_per_day": 200000}},
            "pvip": {"members": member, "budget": {"tokens_per_day": 300000}},
        },
        "models": {
            "ma": {"routes": [{"pools": ["pa"]}]},
            "mb": {"routes": [{"pools": ["pb"]}]},
            # a shared model whose first route only team B takes
            "shared": {
                "routes": [{"when": {"teams": ["b"]}, "pools": ["pvip"]}, {"pools": ["pa"]}]
            },
        },
        "teams": {"a": {"models": ["ma", "shared"]}, "b": {"models": ["mb", "shared"]}},
        "keys": [{"id": "ka", "team": "a", "key": KEY_A}, {"id": "kb", "team": "b", "key": KEY_B}],
        "logging": {"requests": False},
    }


def pool_budgets(doc: dict[str, Any]) -> set[str]:
    return {b["owner"] for b in doc["budgets"] if b["scope"] == "pool"}


async def test_quota_shows_only_the_pools_a_team_may_route_to(upstream: FakeOpenAI) -> None:
    gw = await start_gateway(teams_config(upstream.url))
    try:
        async with aiohttp.ClientSession() as s:
            body = {"model": "mb", "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(gw.url + "/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {KEY_B}"}) as r:  # fmt: skip
                assert r.status == 200
            docs = {}
            for key in (KEY_A, KEY_B):
                async with s.get(gw.url + "/v1/quota",
                                 headers={"Authorization": f"Bearer {key}"}) as r:  # fmt: skip
                    assert r.status == 200
                    docs[key] = await r.json()
        assert pool_budgets(docs[KEY_A]) == {"pa"}
        assert pool_budgets(docs[KEY_B]) == {"pa", "pb", "pvip"}
        used_b = {b["owner"]: b["used"] for b in docs[KEY_B]["budgets"] if b["scope"] == "pool"}
        assert used_b["pb"] > 0  # B's traffic, which A must not read
        assert "pb" not in str(docs[KEY_A]) and "pvip" not in str(docs[KEY_A])
    finally:
        await gw.stop()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_port_serves_metrics_apart(upstream: FakeOpenAI, workers: int) -> None:
    port = free_port()
    doc = teams_config(upstream.url)
    doc["server"] = {"metrics_port": port}
    gw = GatewayProcess(doc, workers=workers)
    try:
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"spillway_config_reloads_total" in body
        status, body = get(gw.url + "/metrics")
        assert status == 404 and b"unknown_url" in body  # not on the API port
        assert get(gw.url + "/healthz")[0] == 200
    finally:
        gw.stop()


def test_without_metrics_port_metrics_stay_on_the_api_port(upstream: FakeOpenAI) -> None:
    gw = GatewayProcess(teams_config(upstream.url))
    try:
        status, body = get(gw.url + "/metrics")
        assert status == 200 and b"spillway_config_reloads_total" in body
    finally:
        gw.stop()
