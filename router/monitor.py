"""The background loop behind load-aware routing and health: scrapes and probes.

Owned by the :class:`router.gateway.Gateway` (started and stopped in the app's
``cleanup_ctx``); never on a request's path. Every ``routing.health.
interval_seconds`` it:

* scrapes each distinct ``metrics_url`` (vLLM's Prometheus text) and stores the
  load on the backends behind it; a failed scrape marks their load unknown so a
  stale queue is never used;
* probes each ejected backend whose cooldown is over: ``GET {url}{probe_path}``
  for OpenAI-compatible backends (with the backend's credential, TLS and proxy),
  else its ``metrics_url``. An HTTP answer below 500 brings it back (on
  probation), except 401/402/403 (the credential is still refused); no answer
  ejects it again, for longer.
  Backends with nothing to probe come back on probation when the cooldown ends;
* reads again the credentials that come from a file or the environment, when
  due (:mod:`router.providers.credentials`);
* publishes ``spillway_backend_healthy``.

It reads the current runtime on every pass, so a reload takes effect at once.
"""

from __future__ import annotations

import asyncio
import logging

from router.config import Backend, HealthSettings
from router.egress import Egress
from router.errors import UpstreamError
from router.metrics import Metrics
from router.providers import ProviderBackend
from router.routing.health import BackendState, parse_load
from router.runtime import Runtime, RuntimeHolder
from router.upstream import AUTH_STATUSES, Upstream

log = logging.getLogger("spillway.health")


def probe_target(
    b: Backend, backend: ProviderBackend, policy: HealthSettings
) -> tuple[str, dict[str, str], Egress | None] | None:
    """(url, headers, egress) to probe a backend with, or None when there is nothing
    to ask."""
    if b.provider == "openai" and b.url:
        return b.url.rstrip("/") + policy.probe_path, backend.probe_headers(), backend.egress
    if b.metrics_url:
        return b.metrics_url, {}, None
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
        egresses: dict[str, Egress | None] = {}
        for name, b in rt.cfg.backends.items():
            state = rt.states[name]
            rt.backends[name].refresh_credentials(now)
            if b.metrics_url:
                scrapes.setdefault(b.metrics_url, []).append(state)
                egresses.setdefault(b.metrics_url, rt.backends[name].egress)
            if state.probe_due(now):
                target = probe_target(b, rt.backends[name], policy)
                if target is None:
                    state.probe_result(True, now, policy)
                    log.info("backend %s back on probation (cooldown over)", name)
                else:
                    jobs.append(self._probe(state, *target, policy))
        for url, states in scrapes.items():
            jobs.append(self._scrape(url, states, egresses[url], policy))
        if jobs:
            await asyncio.gather(*jobs)
        self.publish(rt)
        self.passes += 1

    async def _probe(
        self, state: BackendState, url: str, headers: dict[str, str], egress: Egress | None,
        policy: HealthSettings,
    ) -> None:  # fmt: skip
        try:
            status, _ = await self.upstream.get(
                url, headers, policy.probe_timeout_seconds, egress=egress
            )
            ok = status < 500 and status not in AUTH_STATUSES
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

    async def _scrape(
        self, url: str, states: list[BackendState], egress: Egress | None,
        policy: HealthSettings,
    ) -> None:  # fmt: skip
        try:
            status, body = await self.upstream.get(
                url, {}, policy.scrape_timeout_seconds, egress=egress
            )
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
