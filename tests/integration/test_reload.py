"""Hot reload: atomic swaps under load, refused configs, the file watcher."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import threading
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.fakes import Behaviour, FakeOpenAI
from tests.support.fleet import backend, fleet_config, members, metric, post, wait_for
from tests.support.gateway import start_gateway


def two_configs(a: FakeOpenAI, b: FakeOpenAI, **extra: Any) -> tuple[dict[str, Any], ...]:
    one = fleet_config(
        {"a": backend(a)}, {"pa": {"members": members("a")}},
        routes=[{"name": "via-a", "pools": ["pa"]}], **extra,
    )  # fmt: skip
    two = fleet_config(
        {"b": backend(b)}, {"pb": {"members": members("b")}},
        routes=[{"name": "via-b", "pools": ["pb"]}], **extra,
    )  # fmt: skip
    return one, two


def write(path: Path, doc: dict[str, Any] | str) -> None:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic, like an editor or a ConfigMap update


async def test_reload_during_load_fails_no_request(tmp_path: Path) -> None:
    a = await FakeOpenAI("a", Behaviour(first_byte_delay=0.01, chunk_delay=0.002)).start()
    b = await FakeOpenAI("b", Behaviour(first_byte_delay=0.01, chunk_delay=0.002)).start()
    one, two = two_configs(a, b, server={"watch_config_seconds": 0})
    path = tmp_path / "spillway.yaml"
    write(path, one)
    gw = await start_gateway(one, config_path=str(path))
    try:
        async with aiohttp.ClientSession() as s:
            sem = asyncio.Semaphore(16)

            async def one_request(i: int) -> tuple[int, str | None, bool]:
                async with sem:
                    r = await post(s, gw, stream=i % 3 == 0)
                    complete = i % 3 != 0 or r.body.endswith(b"data: [DONE]\n\n")
                    return r.status, r.headers.get("x-spillway-route"), complete

            tasks = [asyncio.create_task(one_request(i)) for i in range(400)]
            reloads = 0
            while not all(t.done() for t in tasks):
                write(path, two if reloads % 2 == 0 else one)
                assert await gw.gateway.reload_file("test")
                reloads += 1
                await asyncio.sleep(0.015)
            results = await asyncio.gather(*tasks)
        assert Counter(r[0] for r in results) == {200: 400}
        assert all(r[2] for r in results)
        assert Counter(r[1] for r in results).keys() == {"via-a", "via-b"}
        assert reloads >= 5
        assert metric(gw, "spillway_config_reloads_total", result="success") == reloads
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("pools: [", "invalid YAML"),
        ("backends: {}\npools: {}\nmodels: {chat: {routes: [{pools: [nope]}]}}\n",
         "undefined pool 'nope'"),
    ],
    ids=["yaml", "semantics"],
)  # fmt: skip
async def test_invalid_config_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, problem: str
) -> None:
    a = await FakeOpenAI("a").start()
    b = await FakeOpenAI("b").start()
    one, _ = two_configs(a, b, server={"watch_config_seconds": 0})
    path = tmp_path / "spillway.yaml"
    write(path, one)
    gw = await start_gateway(one, config_path=str(path))
    try:
        write(path, text)
        with caplog.at_level(logging.ERROR, logger="spillway"):
            assert not await gw.gateway.reload_file("test")
        assert metric(gw, "spillway_config_reloads_total", result="error") == 1
        assert any("refused" in r.getMessage() and problem in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw)
        assert (r.status, r.headers["x-spillway-route"]) == (200, "via-a")
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


async def test_the_watcher_reloads_a_changed_file(tmp_path: Path) -> None:
    a = await FakeOpenAI("a").start()
    b = await FakeOpenAI("b").start()
    one, two = two_configs(a, b, server={"watch_config_seconds": 0.05})
    path = tmp_path / "spillway.yaml"
    write(path, one)
    gw = await start_gateway(one, config_path=str(path))

    def route() -> str:
        return gw.gateway.runtime.cfg.models["chat"].routes[0].name or ""

    try:
        write(path, two)
        await wait_for(lambda: route() == "via-b", what="the watcher to reload")
        write(path, "pools: [")  # broken: refused once, not on every poll
        await wait_for(
            lambda: metric(gw, "spillway_config_reloads_total", result="error") == 1,
            what="the refusal",
        )
        await asyncio.sleep(0.3)
        assert metric(gw, "spillway_config_reloads_total", result="error") == 1
        assert route() == "via-b"
        path.touch()  # touched, not changed: no reload
        await asyncio.sleep(0.2)
        assert metric(gw, "spillway_config_reloads_total", result="success") == 1
        write(path, one)
        await wait_for(lambda: route() == "via-a", what="the watcher to reload again")
        async with aiohttp.ClientSession() as s:
            r = await post(s, gw)
        assert (r.status, r.backend) == (200, "a")
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


async def test_backend_state_survives_a_reload() -> None:
    a = await FakeOpenAI("a").start()
    doc = fleet_config({"a": backend(a)}, {"p": {"members": members("a")}},
                       health={"ejection_seconds": 30})  # fmt: skip
    gw = await start_gateway(doc)
    try:
        state = gw.gateway.runtime.states["a"]
        state.eject(0.0, gw.gateway.cfg.routing.health)
        doc["pools"]["p"]["strategy"] = "least_loaded"
        gw.gateway.reload(gw.gateway.cfg.model_validate(yaml.safe_load(yaml.safe_dump(doc))))
        assert gw.gateway.runtime.states["a"] is state  # still ejected after the reload
        doc["backends"]["a"]["url"] = a.url.replace("127.0.0.1", "localhost")
        gw.gateway.reload(gw.gateway.cfg.model_validate(yaml.safe_load(yaml.safe_dump(doc))))
        assert gw.gateway.runtime.states["a"].healthy  # another server now: a fresh record
    finally:
        await gw.stop()
        await a.stop()


def _many_keys(a: FakeOpenAI, n: int, simulate: bool = False) -> dict[str, Any]:
    up = {"provider": "simulate"} if simulate else backend(a)
    doc = fleet_config({"a": up}, {"p": {"members": members("a")}},
                       server={"watch_config_seconds": 0})  # fmt: skip
    doc["teams"]["t"] = {"limits": {"concurrent": 100}, "budgets": [{"tokens_per_day": 10**9}]}
    doc["keys"] += [
        {"id": f"k{i}", "team": "t", "sha256": hashlib.sha256(b"%d" % i).hexdigest()}
        for i in range(n)
    ]
    return doc


async def test_reload_parses_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config of 5,000 keys: the file is parsed in a worker thread, and the loop keeps
    turning while it is (checked by thread, not by timing, so a loaded machine cannot
    make it flaky)."""
    import router.gateway as gateway_module

    a = await FakeOpenAI("a").start()
    doc = _many_keys(a, 5000)
    path = tmp_path / "spillway.yaml"
    write(path, doc)
    parsed_on: list[int] = []
    ticks_during_parse: list[int] = []
    ticks = 0
    real_parse = gateway_module.parse_config

    def recording_parse(*args: Any, **kwargs: Any) -> Any:
        parsed_on.append(threading.get_ident())
        before = ticks
        try:
            return real_parse(*args, **kwargs)
        finally:
            ticks_during_parse.append(ticks - before)

    monkeypatch.setattr(gateway_module, "parse_config", recording_parse)
    gw = await start_gateway(doc, config_path=str(path))
    try:
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.001)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.02)
        assert await gw.gateway.reload_file("test")
        stop.set()
        await ticking
        assert parsed_on and all(t != threading.get_ident() for t in parsed_on)
        assert ticks_during_parse and ticks_during_parse[-1] > 0  # the loop turned meanwhile
    finally:
        await gw.stop()
        await a.stop()


async def test_memory_flat_across_a_thousand_reloads(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """Reload 1,000 times with a request after each (so every cache of the request path
    fills): the memory the process holds does not grow with the number of reloads. (The
    backend is the simulated one: this is about the gateway's own state, quotas on Redis
    included, not the upstream HTTP client's.)"""
    a = await FakeOpenAI("a").start()
    doc = _many_keys(a, 20, simulate=True)
    doc["redis"] = {"url": redis_url, "key_prefix": key_prefix}
    path = tmp_path / "spillway.yaml"
    write(path, doc)
    gw = await start_gateway(doc, config_path=str(path))

    async def rounds(n: int, s: aiohttp.ClientSession) -> None:
        for _ in range(n):
            assert await gw.gateway.reload_file("test")
            assert (await post(s, gw)).status == 200

    try:
        async with aiohttp.ClientSession() as s:
            await rounds(100, s)  # warm: every lazily built cache is there
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                await rounds(1000, s)
                await asyncio.sleep(0.1)  # the last settlements are sent
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
        assert grown < 512 * 1024, f"{grown} bytes more after 1,000 reloads"
    finally:
        await gw.stop()
        await a.stop()
