"""The process-wide services behind the app: upstream session, stores, runtime, tasks.

Created with the app, started and stopped by its ``cleanup_ctx`` (with the
task that refreshes the budget and health gauges). ``reload``
builds a new :class:`Runtime` from a new config and swaps it in; requests in
flight keep the one they started with. ``reload_file`` re-reads the config
file (on SIGHUP, and when the watcher sees the file change), reading and
parsing it in a worker thread so the event loop keeps serving: a config that
does not validate is refused with a log line and
``spillway_config_reloads_total{result="error"}``, and the old one keeps
serving. Background tasks (health probes and load scrapes, the config
watcher, budget checkpoints, settlements left by clients that hung up) are
owned here and awaited on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from router.config import Config, ConfigError
from router.config_load import parse_config
from router.gauges import GaugeRefresher
from router.identity.service import Identity
from router.inbound.registry import openai_codecs
from router.inbound.responses_store import MemoryResponses, RedisResponses, ResponseStore
from router.metrics import Metrics
from router.monitor import Monitor
from router.proxy import Proxy
from router.quota.base import Store, StoreUnavailable
from router.quota.checkpoint import BudgetCheckpoint
from router.quota.memory_store import MemoryStore
from router.quota.redis_store import RedisStore
from router.quota.service import Detached
from router.routing.retry import RetryBudget
from router.runtime import Runtime, RuntimeHolder
from router.upstream import Upstream

if TYPE_CHECKING:
    from router.tracing import Tracing

log = logging.getLogger("spillway")

_Fingerprint = tuple[int, int, int] | None


def _fingerprint(path: str) -> _Fingerprint:
    try:
        st = os.stat(path)  # follows symlinks (Kubernetes ConfigMaps swap a link)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Gateway:
    def __init__(
        self, cfg: Config, metrics: Metrics | None = None, config_path: str | None = None
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics if metrics is not None else Metrics()
        self.config_path = config_path
        self.started = time.time()
        self.loaded_at = self.started
        self.draining = asyncio.Event()
        self.memory = MemoryStore()
        self.monitor: Monitor | None = None
        self._upstream: Upstream | None = None
        self._store: Store | None = None
        self.checkpoint: BudgetCheckpoint | None = None
        self.detached = Detached()
        self._holder: RuntimeHolder | None = None
        self._proxy: Proxy | None = None
        self._retry_budget = RetryBudget(cfg.routing.retries)
        self._digest = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._reloads: set[asyncio.Task[bool]] = set()
        self._gauges: GaugeRefresher | None = None
        self._tracing: Tracing | None = None
        self.identity = Identity(cfg, on_key_store=self._key_store_state)

    def _key_store_state(self, up: bool) -> None:
        """spillway_key_store_up: a series only once a key database is followed."""
        self.metrics.child(self.metrics.key_store_up, "postgresql").set(1.0 if up else 0.0)

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
        if self.cfg.tracing.otlp_endpoint:
            self._tracing = start_tracing(self.cfg)
        self._upstream = Upstream()
        if self.cfg.redis.enabled:
            store = self._store = RedisStore(self.cfg.redis, self.metrics)
            self.checkpoint = BudgetCheckpoint(store, self.cfg.quota.checkpoint_file)
        self._holder = RuntimeHolder(self._build(self.cfg))
        holder = self._holder
        await self.identity.start(lambda: (holder.current.cfg, holder.current.jwt))
        self._proxy = Proxy(self._holder, openai_codecs(self._responses()))
        self.monitor = Monitor(self._holder, self._upstream, self.metrics)
        self.monitor.publish(self._holder.current)
        self._tasks.append(asyncio.create_task(self.monitor.run(), name="spillway-health"))
        if self.config_path is not None:
            self._digest = _digest_of(self.config_path)
            self._tasks.append(asyncio.create_task(self._watch(), name="spillway-config-watch"))
        if self.checkpoint is not None:
            self._tasks.append(asyncio.create_task(self._checkpoints(), name="spillway-budgets"))
        self._gauges = GaugeRefresher(self._holder, self.metrics)
        self._gauges.start()

    def _responses(self) -> ResponseStore | None:
        """Where Responses are kept (``responses.store``): the quota Redis, else memory."""
        settings = self.cfg.responses.store
        if settings is None:
            return None
        if isinstance(self._store, RedisStore):
            prefix = self.cfg.redis.key_prefix
            return RedisResponses(self._store.client, prefix, settings.ttl_seconds)
        return MemoryResponses(settings.ttl_seconds, settings.max_entries)

    def _build(self, cfg: Config) -> Runtime:
        assert self._upstream is not None
        current = self._holder.current if self._holder is not None else None
        return Runtime(
            cfg, upstream=self._upstream, metrics=self.metrics, store=self._store,
            memory=self.memory, states=current.states if current else None,
            retry_budget=self._retry_budget,
            gates=current.scheduler.gates if current else None,
            identity=self.identity, tracing=self._tracing, detached=self.detached,
        )  # fmt: skip

    def reload(self, cfg: Config) -> None:
        """Swap in ``cfg``. Listen and Redis settings need a restart and are kept."""
        if cfg.redis != self.cfg.redis:
            log.warning("redis settings changed; they take effect at the next restart")
        if cfg.listen != self.cfg.listen or cfg.server.metrics_port != self.cfg.server.metrics_port:
            log.warning("listen address changed; it takes effect at the next restart")
        for name in ("database", "admin", "tracing", "responses"):
            if getattr(cfg, name) != getattr(self.cfg, name):
                log.warning("%s settings changed; they take effect at the next restart", name)
        self.holder.swap(self._build(cfg))
        if cfg.logging.level != self.cfg.logging.level:
            logging.getLogger().setLevel(cfg.logging.level)
        self.cfg = cfg
        self.loaded_at = time.time()

    def request_reload(self, reason: str = "signal") -> None:
        """Reload the config file in the background (from a signal handler)."""
        task: asyncio.Task[bool] = asyncio.get_running_loop().create_task(self.reload_file(reason))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload_file(self, reason: str = "signal") -> bool:
        """Re-read the config file; False (old config kept) when it is not valid. The
        file is read and parsed in a worker thread: a large config never stalls the
        event loop."""
        path = self.config_path
        if path is None:
            log.warning("reload (%s) ignored: running on the built-in config", reason)
            return False
        try:
            raw, cfg = await asyncio.to_thread(_read_config, path)
        except OSError as exc:
            return self._refused(reason, [f"cannot read {path}: {exc.strerror}"])
        except UnicodeDecodeError:
            return self._refused(reason, [f"{path} is not UTF-8 text"])
        except ConfigError as exc:
            return self._refused(reason, exc.problems)
        try:
            self.reload(cfg)
        except ConfigError as exc:  # e.g. a TLS file that changed since it was checked
            return self._refused(reason, exc.problems)
        self._digest = hashlib.sha256(raw).hexdigest()
        self.metrics.child(self.metrics.reloads, "success").inc()
        log.info(
            "config reloaded (%s)", reason,
            extra={"fields": {"path": path, "backends": len(cfg.backends),
                              "pools": len(cfg.pools), "models": len(cfg.models)}},
        )  # fmt: skip
        return True

    def _refused(self, reason: str, problems: list[str]) -> bool:
        self.metrics.child(self.metrics.reloads, "error").inc()
        log.error(
            "config reload (%s) refused; the previous config keeps serving: %s",
            reason, "; ".join(problems),
            extra={"fields": {"path": self.config_path, "problems": problems}},
        )  # fmt: skip
        return False

    async def _watch(self) -> None:
        path = self.config_path
        assert path is not None
        seen = _fingerprint(path)
        while True:
            interval = self.cfg.server.watch_config_seconds
            await asyncio.sleep(interval or 1.0)
            if not interval:
                continue
            now = _fingerprint(path)
            if now == seen or now is None:
                continue  # unchanged, or mid-replacement (gone for an instant)
            seen = now
            if _digest_of(path) == self._digest:
                continue  # touched, not changed
            try:
                await self.reload_file("file changed")
            except Exception:  # keep watching whatever happened
                log.exception("config reload failed")

    async def _checkpoints(self) -> None:
        """Budget checkpoints (see :mod:`router.quota.checkpoint`)."""
        checkpoint = self.checkpoint
        assert checkpoint is not None
        warned = 0.0
        while True:
            interval = self.cfg.quota.checkpoint_seconds
            if interval:
                try:
                    await checkpoint.run_once(
                        [c for c, _ in self.runtime.quota.planner.budget_checks()]
                    )
                except StoreUnavailable as exc:
                    now = time.monotonic()
                    if now - warned > 60:
                        warned = now
                        log.warning("budget checkpoint skipped: redis unavailable (%s)", exc)
                except Exception:  # keep checkpointing whatever happened
                    log.exception("budget checkpoint failed")
            await asyncio.sleep(interval or 1.0)

    async def stop(self) -> None:
        if self._holder is not None:
            self._holder.current.access.flush()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for reload in list(self._reloads):
            reload.cancel()
        if self._gauges is not None:
            await self._gauges.stop()
        await self.detached.aclose(self.cfg.server.shutdown_grace_seconds)
        await self.identity.stop()
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)  # exports the spans still queued
        if self._store is not None:
            await self._store.aclose()
        if self._upstream is not None:
            await self._upstream.close()


def _read_config(path: str) -> tuple[bytes, Config]:
    raw = Path(path).read_bytes()
    return raw, parse_config(raw.decode("utf-8"), path, interleaved=True)


def start_tracing(cfg: Config) -> Tracing:
    try:
        from router.tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            [f"tracing.otlp_endpoint: tracing needs the otel extra "
             f"(pip install 'spillway[otel]'): {exc}"], "config",
        ) from None  # fmt: skip
    return Tracing(cfg.tracing)


def _digest_of(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""
