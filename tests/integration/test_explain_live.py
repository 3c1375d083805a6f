"""`spillway explain --url`: a running gateway adds live health, load and budgets."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from router.cli import main
from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.fleet import KEY, backend, fleet_config, members, post, wait_for
from tests.support.gateway import start_gateway


async def test_live_explain_reports_saturation_ejection_and_budgets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=1.0)).start()
    spare = await FakeOpenAI("spare").start()
    cloud = await FakeOpenAI("cloud", Behaviour(prompt_tokens=60)).start()
    gw = await start_gateway(fleet_config(
        {"gpu": backend(gpu, max_concurrency=1), "spare": backend(spare),
         "cloud": backend(cloud)},
        {"local": {"members": members("gpu")},
         "backup": {"members": members("spare")},
         "hosted": {"members": members("cloud"), "budget": {"tokens_per_day": 100}}},
        routes=[{"name": "spill", "pools": ["local", "backup", "hosted"]}],
        health={"ejection_seconds": 30},
    ))  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            busy = asyncio.create_task(post(s, gw))
            await wait_for(lambda: gpu.inflight == 1, what="the GPU to fill")
            gw.gateway.runtime.states["spare"].eject(
                asyncio.get_running_loop().time(), gw.gateway.cfg.routing.health
            )
            # spend most of the hosted budget: 60 prompt + 8 completion of 100
            r = await post(s, gw)
            assert (r.status, r.pool) == (200, "hosted")

            def run() -> int:
                return main(["explain", "--url", gw.base_url, "--key", KEY, "--model", "chat",
                             "--prompt-tokens", "20", "--max-tokens", "50", "--json"])  # fmt: skip

            await asyncio.sleep(0.1)  # settlement of the hosted request
            assert await asyncio.to_thread(run) == 0
            doc: dict[str, Any] = orjson.loads(capsys.readouterr().out)
            live = {p["pool"]: p["live"] for p in doc["pools"]}
            assert live["local"]["verdict"] == "would be skipped: saturated"
            assert any("member gpu: healthy, 1/1 in flight" in d and "SATURATED" in d
                       for d in live["local"]["details"])  # fmt: skip
            assert live["backup"]["verdict"] == "would be skipped: unhealthy"
            assert any("member spare: ejected" in d for d in live["backup"]["details"])
            assert live["hosted"]["status"] == "ok"
            assert any("68.00 of 100.00 used this day: would clamp max_tokens to 12" in d
                       for d in live["hosted"]["details"])  # fmt: skip
            assert doc["serving_pool"] == "hosted"
            assert doc["request"]["key"] == "k" and doc["unknown"] == []
            # the text form
            args = ["explain", "--url", gw.url, "--key", KEY, "--model", "chat"]
            assert await asyncio.to_thread(main, args) == 0
            out = capsys.readouterr().out
            assert "now: would be skipped: saturated" in out
            assert "now: WOULD SERVE the request" in out
            await busy
    finally:
        await gw.stop()
        for f in (gpu, spare, cloud):
            await f.stop()


async def test_explain_endpoint_needs_a_key_and_is_off_without_route_headers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    up = await FakeOpenAI("up").start()
    doc = fleet_config({"up": backend(up)}, {"p": {"members": members("up")}})
    gw = await start_gateway(doc)
    quiet = await start_gateway({**doc, "server": {"route_headers": False}})
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.url + "/v1/spillway/explain?model=chat") as r:
                assert r.status == 401
            auth = {"Authorization": f"Bearer {KEY}"}
            async with s.get(gw.url + "/v1/spillway/explain", headers=auth) as r:
                assert r.status == 400
                assert (await r.json())["error"]["param"] == "model"
            async with s.get(gw.url + "/v1/spillway/explain?model=chat&prompt_tokens=x",
                             headers=auth) as r:  # fmt: skip
                assert r.status == 400
            async with s.get(gw.url + "/v1/spillway/explain?model=nope", headers=auth) as r:
                assert r.status == 200
                assert "404" in (await r.json())["problem"]
            async with s.get(quiet.url + "/v1/spillway/explain?model=chat", headers=auth) as r:
                assert r.status == 404
            loud, silent = await post(s, gw), await post(s, quiet)
            assert (loud.headers["x-spillway-route"], loud.backend) == ("main", "up")
            assert silent.status == 200
            assert not any(h.lower().startswith("x-spillway-") and h.lower() != (
                "x-spillway-served-model") for h in silent.headers)  # fmt: skip
        args = ["explain", "--url", gw.url, "--key", "sk-wrong-0000", "--model", "chat"]
        assert await asyncio.to_thread(main, args) == 2
        assert "HTTP 401" in capsys.readouterr().err
    finally:
        await gw.stop()
        await quiet.stop()
        await up.stop()


async def test_live_explain_shows_a_queue_and_that_the_request_would_wait(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gpu = await FakeOpenAI("gpu", Behaviour(first_byte_delay=1.0)).start()
    gw = await start_gateway(fleet_config(
        {"gpu": backend(gpu, max_concurrency=1)},
        {"local": {"members": members("gpu"), "queue": {"max_wait_ms": 5000}}},
    ))  # fmt: skip
    gate = gw.gateway.runtime.scheduler.gates["local"]
    try:
        async with aiohttp.ClientSession() as s:
            busy = [asyncio.create_task(post(s, gw)) for _ in range(3)]
            await wait_for(lambda: len(gate.queue) == 2, what="two requests to queue")
            args = ["explain", "--url", gw.base_url, "--key", KEY, "--model", "chat", "--json"]
            assert await asyncio.to_thread(main, args) == 0
            doc: dict[str, Any] = orjson.loads(capsys.readouterr().out)
            live = doc["pools"][0]["live"]
            assert live["verdict"] == "WOULD WAIT in its queue for a turn, then serve or move on"
            assert "queue: 2 waiting: t (priority 0) 2" in live["details"]
            assert doc["serving_pool"] == "local"
            assert doc["pools"][0]["queue"].startswith("waits up to 5000 ms")
            assert all(r.status == 200 for r in await asyncio.gather(*busy))
    finally:
        await gw.stop()
        await gpu.stop()
