"""The process-wide services behind the app: upstream session, stores, runtime.

Created with the app, started and stopped by its ``cleanup_ctx`` (with the
task that refreshes the budget and health gauges). ``reload``
builds a new :class:`Runtime` from a new config and swaps it in; requests in
flight keep the one they started with.
"""

from __future__ import annotations

import asyncio
import logging
import time

from router.config import Config
from router.gauges import GaugeRefresher
from router.metrics import Metrics
from router.proxy import Proxy
from router.quota.base import Store
from router.quota.memory_store import MemoryStore
from router.quota.redis_store import RedisStore
from router.runtime import Runtime, RuntimeHolder
from router.upstream import Upstream

log = logging.getLogger("spillway")


class Gateway:
    def __init__(self, cfg: Config, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics if metrics is not None else Metrics()
        self.started = time.time()
        self.draining = asyncio.Event()
        self.memory = MemoryStore()
        self._upstream: Upstream | None = None
        self._store: Store | None = None
        self._redis_url = ""
        self._holder: RuntimeHolder | None = None
        self._proxy: Proxy | None = None
        self._gauges: GaugeRefresher | None = None

    @property
    def holder(self) -> RuntimeHolder:
        assert self._holder is not None, "gateway not started"
        return self._holder

    @property
    def proxy(self) -> Proxy:
        assert self._proxy is not None, "gateway not started"
        return self._proxy

    @property
    def gauges(self) -> GaugeRefresher:
        assert self._gauges is not None, "gateway not started"
        return self._gauges

    @property
    def runtime(self) -> Runtime:
        return self.holder.current

    async def start(self) -> None:
        self._upstream = Upstream()
        self._redis_url = self.cfg.redis.url
        self._store = RedisStore(self.cfg.redis) if self.cfg.redis.url else None
        self._holder = RuntimeHolder(self._build(self.cfg))
        self._proxy = Proxy(self._holder)
        self._gauges = GaugeRefresher(self._holder, self.metrics)
        self._gauges.start()

    def _build(self, cfg: Config) -> Runtime:
        assert self._upstream is not None
        old = self._holder.current.states if self._holder is not None else None
        return Runtime(
            cfg, upstream=self._upstream, metrics=self.metrics, store=self._store,
            memory=self.memory, states=old,
        )  # fmt: skip

    def reload(self, cfg: Config) -> None:
        """Swap in ``cfg``. Redis settings need a restart and are kept as they were."""
        if cfg.redis.url != self._redis_url:
            log.warning("redis.url changed; it takes effect at the next restart")
        self.holder.swap(self._build(cfg))
        self.cfg = cfg

    async def stop(self) -> None:
        if self._gauges is not None:
            await self._gauges.stop()
        if self._store is not None:
            await self._store.aclose()
        if self._upstream is not None:
            await self._upstream.close()
