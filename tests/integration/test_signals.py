"""A real `spillway serve` process: SIGHUP reloads (workers too), SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.fleet import KEY, backend, chat_body, fleet_config, members, post
from tests.support.gateway import GatewayProcess


def configs(a: FakeOpenAI, b: FakeOpenAI) -> tuple[dict[str, Any], dict[str, Any]]:
    server = {"watch_config_seconds": 0, "drain_delay_seconds": 0.5}
    one = fleet_config({"a": backend(a)}, {"pa": {"members": members("a")}},
                       routes=[{"name": "via-a", "pools": ["pa"]}], server=server)  # fmt: skip
    two = fleet_config({"b": backend(b)}, {"pb": {"members": members("b")}},
                       routes=[{"name": "via-b", "pools": ["pb"]}], server=server)  # fmt: skip
    return one, two


def rewrite(proc: GatewayProcess, doc: dict[str, Any] | str) -> None:
    Path(proc.config_path).write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))


async def routes_seen(url: str, n: int) -> set[str | None]:
    seen = set()
    for _ in range(n):  # a new connection each time: any worker may answer
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            r = await post(s, url)
            assert r.status == 200
            seen.add(r.headers.get("x-spillway-route"))
    return seen


async def wait_route(url: str, route: str, n: int) -> None:
    for _ in range(100):
        if await routes_seen(url, n) == {route}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{route} never served alone")


async def metrics_text(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        return await r.text()


async def test_sighup_reloads_and_refuses_a_bad_file() -> None:
    a = await FakeOpenAI("a").start()
    b = await FakeOpenAI("b").start()
    one, two = configs(a, b)
    proc = await asyncio.to_thread(GatewayProcess, one)
    try:
        assert await routes_seen(proc.url, 2) == {"via-a"}
        rewrite(proc, two)
        os.kill(proc.proc.pid, signal.SIGHUP)
        await wait_route(proc.url, "via-b", 2)
        assert 'spillway_config_reloads_total{result="success"} 1.0' in await metrics_text(proc.url)
        rewrite(proc, "models: {chat: {routes: []}}\n")
        os.kill(proc.proc.pid, signal.SIGHUP)
        for _ in range(100):
            if 'reloads_total{result="error"} 1.0' in await metrics_text(proc.url):
                break
            await asyncio.sleep(0.05)
        assert await routes_seen(proc.url, 3) == {"via-b"}
        assert "refused" in proc.log()
    finally:
        await asyncio.to_thread(proc.stop)
        await a.stop()
        await b.stop()


async def test_sighup_is_forwarded_to_every_worker() -> None:
    a = await FakeOpenAI("a").start()
    b = await FakeOpenAI("b").start()
    one, two = configs(a, b)
    proc = await asyncio.to_thread(GatewayProcess, one, workers=2)
    try:
        assert await routes_seen(proc.url, 4) == {"via-a"}
        rewrite(proc, two)
        os.kill(proc.proc.pid, signal.SIGHUP)  # the parent
        await wait_route(proc.url, "via-b", 12)
        assert proc.proc.poll() is None
    finally:
        await asyncio.to_thread(proc.stop)
        await a.stop()
        await b.stop()


async def test_sigterm_fails_readiness_drains_the_stream_and_exits() -> None:
    up = await FakeOpenAI("up", Behaviour(chunk_delay=0.04, words=30)).start()
    one, _ = configs(up, up)
    proc = await asyncio.to_thread(GatewayProcess, one)
    try:
        async with aiohttp.ClientSession() as s:
            resp = await s.post(proc.url + "/v1/chat/completions", json=chat_body(stream=True),
                                headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
            first = await resp.content.readline()
            assert first.startswith(b"data: ")
            os.kill(proc.proc.pid, signal.SIGTERM)
            await asyncio.sleep(0.1)
            async with aiohttp.ClientSession() as other, other.get(proc.url + "/readyz") as r:
                assert r.status == 503
                assert (await r.json())["error"]["code"] == "draining"
            rest = await resp.read()  # the stream in flight runs to its end
            resp.release()
        body = first + rest
        assert body.endswith(b"data: [DONE]\n\n")
        assert body.count(b'"content":" w') == 30
        code = await asyncio.to_thread(proc.proc.wait, 10)
        assert code == 0
        assert "draining" in proc.log()
    finally:
        await asyncio.to_thread(proc.stop)
        await up.stop()
