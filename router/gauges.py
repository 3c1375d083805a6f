"""Gauges kept fresh off the request path: budgets and backend health.

A :class:`GaugeRefresher` is a background task owned by the gateway. Every
``metrics.refresh_seconds`` it reads what each team, key and pool budget has
used in its current window (the same counters admission uses; one status call
per hash tag on Redis) and the live state of each backend, and sets
``spillway_budget_{used,remaining,limit}`` and ``spillway_backend_healthy``.
A request does no work for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection

from router.metrics import Metrics
from router.quota.base import StoreUnavailable
from router.runtime import Runtime, RuntimeHolder

log = logging.getLogger("spillway.metrics")

Labels = tuple[str, str, str, str, str, str]


class GaugeRefresher:
    def __init__(self, holder: RuntimeHolder, metrics: Metrics) -> None:
        self.holder = holder
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._budget_labels: set[Labels] = set()
        self._backends: set[str] = set()
        self._warned_at = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="spillway-gauges")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            rt = self.holder.current
            try:
                await self.refresh(rt)
            except Exception:  # a bad tick must not stop the next ones
                log.exception("refreshing the budget and health gauges failed")
            await asyncio.sleep(rt.cfg.metrics.refresh_seconds)

    async def refresh(self, rt: Runtime) -> None:
        """Set every gauge from ``rt`` once."""
        m = self.metrics
        backends = set(rt.states)
        for name, state in rt.states.items():
            m.child(m.backend_up, name).set(1.0 if state.healthy else 0.0)
        self._forget(m.backend_up, {(b,) for b in self._backends - backends})
        self._backends = backends

        if rt.cfg.redis.enabled:
            m.redis_up.set(1 if await rt.quota.primary.ping() else 0)
        checks = rt.quota.planner.budget_checks()
        if not checks:
            self._forget_budgets(set())
            return
        try:
            _, used = await rt.quota.primary.status([c for c, _ in checks])
        except StoreUnavailable as exc:
            m.child(m.redis_errors, "status").inc()
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("budget gauges not refreshed: redis unavailable (%s)", exc)
            return
        seen: set[Labels] = set()
        for (c, team), u in zip(checks, used, strict=True):
            labels: Labels = (c.scope, c.owner, team, ",".join(c.pools or ()), c.unit, c.window)
            if labels in seen:
                continue  # the same amount listed twice: one counter
            seen.add(labels)
            limit = c.display(c.limit)
            spent = c.display(u)
            m.child(m.budget_limit, *labels).set(limit)
            m.child(m.budget_used, *labels).set(spent)
            m.child(m.budget_remaining, *labels).set(max(0.0, limit - spent))
        self._forget_budgets(seen)

    def _forget_budgets(self, seen: set[Labels]) -> None:
        """Remove series of budgets a reload took away."""
        gone = self._budget_labels - seen
        m = self.metrics
        for metric in (m.budget_limit, m.budget_used, m.budget_remaining):
            self._forget(metric, gone)
        self._budget_labels = seen

    def _forget(self, metric: object, gone: Collection[tuple[str, ...]]) -> None:
        # Multiprocess mode keeps samples in files and cannot remove a series.
        if not gone or self.metrics.multiprocess_dir is not None:
            return
        for labels in gone:
            self.metrics.forget(metric, *labels)
