"""The health loop: what it probes, and members with nothing to probe."""

from __future__ import annotations

import asyncio

from router.config import Backend, HealthSettings
from router.monitor import probe_target
from router.providers import build_backend
from router.upstream import Upstream
from tests.support.fakes import FakeOpenAI
from tests.support.fleet import backend, fleet_config, members, metric, wait_for
from tests.support.gateway import start_gateway


async def test_probe_targets() -> None:
    policy = HealthSettings(probe_path="/models")
    vllm = Backend(provider="openai", url="http://10.0.0.1:8000/v1/", api_key="sk-up",
                   headers={"x-org": "o"}, metrics_url="http://10.0.0.1:8000/metrics")  # fmt: skip
    other = Backend(provider="anthropic", api_key="k", metrics_url="http://m:9000/metrics")
    sim = Backend(provider="simulate")
    upstream = Upstream()
    try:
        built = {name: build_backend(name, b, upstream)
                 for name, b in (("vllm", vllm), ("other", other), ("sim", sim))}  # fmt: skip
        assert probe_target(vllm, built["vllm"], policy) == (
            "http://10.0.0.1:8000/v1/models", {"x-org": "o", "Authorization": "Bearer sk-up"},
            built["vllm"].egress,
        )  # fmt: skip
        assert probe_target(other, built["other"], policy) == ("http://m:9000/metrics", {}, None)
        assert probe_target(sim, built["sim"], policy) is None
    finally:
        await upstream.close()


async def test_a_member_with_nothing_to_probe_returns_on_probation() -> None:
    gw = await start_gateway(fleet_config(
        {"sim": {"provider": "simulate"}}, {"p": {"members": members("sim")}},
        health={"ejection_seconds": 0.2},
    ))  # fmt: skip
    try:
        state = gw.gateway.runtime.states["sim"]
        state.eject(asyncio.get_running_loop().time(), gw.gateway.cfg.routing.health)
        await wait_for(lambda: metric(gw, "spillway_backend_healthy", backend="sim") == 0,
                       what="the gauge")  # fmt: skip
        await wait_for(lambda: state.healthy, what="the cooldown to end")
        assert state.consecutive_failures == gw.gateway.cfg.routing.health.failure_threshold - 1
        await wait_for(lambda: metric(gw, "spillway_backend_healthy", backend="sim") == 1,
                       what="the gauge")  # fmt: skip
    finally:
        await gw.stop()


async def test_a_failing_probe_keeps_it_out_for_longer() -> None:
    up = await FakeOpenAI("up").start()
    gw = await start_gateway(fleet_config(
        {"up": backend(up)}, {"p": {"members": members("up")}},
        health={"ejection_seconds": 0.1, "max_ejection_seconds": 10},
    ))  # fmt: skip
    try:
        await up.kill()
        state = gw.gateway.runtime.states["up"]
        state.eject(asyncio.get_running_loop().time(), gw.gateway.cfg.routing.health)
        await wait_for(lambda: state.ejections >= 3, what="failed probes")
        assert not state.healthy
        # 0.1, 0.2, 0.4, ...: each failed probe doubles the wait
        left = state.ejected_until - asyncio.get_running_loop().time()
        assert left > 0.1
        await up.revive()
        await wait_for(lambda: state.healthy, within=10, what="the probe to pass")
        assert up.probes >= 1
    finally:
        await gw.stop()
        await up.stop()
