"""The background loop behind load-aware routing and health: scrapes and probes.

Owned by the :class:`router.gateway.Gateway` (started and stopped in the app's
``cleanup_ctx``); never on a request's path. Every ``routing.health.
interval_seconds`` it:

* scrapes each distinct ``metrics_url`` (vLLM's Prometheus text) and stores the
  load on the backends behind it; a failed scrape marks their load unknown so a
  stale queue is never used;
* probes each ejected backend whose cooldown is over: ``GET {url}{probe_path}``
  for OpenAI-compatible backends, else its ``metrics_url``. Any HTTP answer below
  500 brings it back (on probation); no answer ejects it again, for longer.
  Backends with nothing to probe come back on probation when the cooldown ends;
* publishes ``spillway_backend_healthy``.

It reads the current runtime on every pass, so a reload takes effect at once.
"""

from __future__ import annotations

import asyncio
import logging

from router.config import Backend, HealthSettings
from router.errors import UpstreamError
from router.metrics import Metrics
from router.routing.health import BackendState, parse_load
from router.runtime import Runtime, RuntimeHolder
from router.upstream import Upstream

log = logging.getLogger("spillway.health")


def probe_target(b: Backend, policy: HealthSettings) -> tuple[str, dict[str, str]] | None:
    """(url, headers) to probe a backend with, or None when there is nothing to ask."""
    if b.provider == "openai" and b.url:
        headers = dict(b.headers)
        if b.api_key is not None:
            headers["Authorization"] = f"Bearer {b.api_key.get_secret_value()}"
        return b.url.rstrip("/") + policy.probe_path, headers
    if b.metrics_url:
        return b.metrics_url, {}
    return None


class Monitor:
    def __init__(self, holder: RuntimeHolder, upstream: Upstream, metrics: Metrics) -> None:
        self.holder = holder
        self.upstream = upstream
        self.metrics = metrics
        self.passes = 0

    async def run(self) -> None:
        while True:
            rt = self.holder.current
            try:
                await self.tick(rt)
            except Exception:  # a bug here must not stop health checking for good
                log.exception("health pass failed")
            await asyncio.sleep(rt.cfg.routing.health.interval_seconds)

    async def tick(self, rt: Runtime) -> None:
        now = asyncio.get_running_loop().time()
        policy = rt.cfg.routing.health
        jobs = []
        scrapes: dict[str, list[BackendState]] = {}
        for name, b in rt.cfg.backends.items():
            state = rt.states[name]
            if b.metrics_url:
                scrapes.setdefault(b.metrics_url, []).append(state)
            if state.probe_due(now):
                target = probe_target(b, policy)
                if target is None:
                    state.probe_result(True, now, policy)
                    log.info("backend %s back on probation (cooldown over)", name)
                else:
                    jobs.append(self._probe(state, *target, policy))
        for url, states in scrapes.items():
            jobs.append(self._scrape(url, states, policy))
        if jobs:
            await asyncio.gather(*jobs)
        self.publish(rt)
        self.passes += 1

    async def _probe(
        self, state: BackendState, url: str, headers: dict[str, str], policy: HealthSettings
    ) -> None:
        try:
            status, _ = await self.upstream.get(url, headers, policy.probe_timeout_seconds)
            ok = status < 500
        except UpstreamError:
            ok = False
        now = asyncio.get_running_loop().time()
        state.probe_result(ok, now, policy)
        if ok:
            log.info("backend %s answered its probe; back in rotation", state.name)
        else:
            log.info(
                "backend %s still failing its probe; next probe in %.1fs",
                state.name, state.ejected_until - now,
            )  # fmt: skip

    async def _scrape(self, url: str, states: list[BackendState], policy: HealthSettings) -> None:
        try:
            status, body = await self.upstream.get(url, {}, policy.scrape_timeout_seconds)
            load = parse_load(body.decode("utf-8", "replace")) if status == 200 else None
        except UpstreamError:
            load = None
        for state in states:
            if load is None and state.load_known:
                log.warning("load of backend %s unknown: scraping %s failed", state.name, url)
            state.update_load(load)

    def publish(self, rt: Runtime) -> None:
        m = self.metrics
        for name, state in rt.states.items():
            m.child(m.backend_up, name).set(1 if state.healthy else 0)
