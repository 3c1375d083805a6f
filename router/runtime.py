"""Everything built from one config, swapped whole on reload.

A :class:`Runtime` is immutable once built; a request takes the current one
when it starts and keeps it to the end, so a reload never changes a request
in flight. Backend live state (in-flight counts, health, load) is carried over
by backend name (unless its URL changed) so a reload does not forget who is
down, pool queues are carried over by pool name (requests waiting keep their
place), and the retry budget is shared by every runtime of the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from router.auth import Authenticator
from router.config import Config
from router.identity.service import Identity
from router.logs import AccessLog
from router.metrics import Metrics
from router.providers import ProviderBackend, build_backend
from router.quota import Quota
from router.quota.base import Store
from router.quota.memory_store import MemoryStore
from router.quota.service import Detached
from router.routing.balance import Balancer
from router.routing.health import BackendState
from router.routing.queueing import Gate, Scheduler
from router.routing.retry import RetryBudget
from router.routing.rules import Rules
from router.upstream import Upstream

if TYPE_CHECKING:
    from router.tracing import Tracing


class Runtime:
    def __init__(
        self,
        cfg: Config,
        *,
        upstream: Upstream,
        metrics: Metrics,
        store: Store | None,
        memory: MemoryStore,
        states: dict[str, BackendState] | None = None,
        retry_budget: RetryBudget | None = None,
        gates: Mapping[str, Gate] | None = None,
        identity: Identity | None = None,
        tracing: Tracing | None = None,
        detached: Detached | None = None,
    ) -> None:
        self.tracing = tracing  # None: tracing off (router.tracing is then never imported)
        self.cfg = cfg
        self.metrics = metrics
        keys, self.jwt = identity.sources(cfg) if identity is not None else (None, None)
        self.auth = Authenticator(cfg, keys, self.jwt)
        self.rules = Rules(cfg)
        self.quota = Quota(cfg, store, memory, metrics, detached)
        if retry_budget is None:
            retry_budget = RetryBudget(cfg.routing.retries)
        else:
            retry_budget.configure(cfg.routing.retries)
        self.retry_budget = retry_budget
        old = states or {}
        self.states: dict[str, BackendState] = {}
        for name, b in cfg.backends.items():
            state = old.get(name)
            if state is None or state.url != b.url or state.metrics_url != b.metrics_url:
                state = BackendState(name, url=b.url, metrics_url=b.metrics_url)
            state.max_concurrency = b.max_concurrency
            self.states[name] = state
        self.backends: dict[str, ProviderBackend] = {
            name: build_backend(name, b, upstream) for name, b in cfg.backends.items()
        }
        apis = {name: backend.apis for name, backend in self.backends.items()}
        self.balancers = {
            name: Balancer(name, pool, self.states, apis) for name, pool in cfg.pools.items()
        }
        self.scheduler = Scheduler(cfg, self.balancers, metrics.queue_series, gates)
        self.route_headers = cfg.server.route_headers
        self.access = AccessLog(cfg.logging)


class RuntimeHolder:
    """The current :class:`Runtime`; ``swap`` replaces it atomically."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime

    def swap(self, runtime: Runtime) -> Runtime:
        old, self.current = self.current, runtime
        return old
