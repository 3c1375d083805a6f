"""Prometheus metrics: a :class:`Metrics` object owning its CollectorRegistry.

Names carry the ``spillway_`` prefix; durations are seconds, counters end in
``_total``. Labels come only from config (model, pool, backend, team, key id,
limit names, status class) and the fixed endpoint names (chat, completions,
embeddings), never from a key or a request. Label children are
bound once and cached, so the hot path does a dict lookup and an ``inc``.

``spillway serve --workers N`` runs N processes behind one port. Each writes
its samples to memory-mapped files in a shared directory
(``PROMETHEUS_MULTIPROC_DIR``, prometheus-client's multiprocess mode) and
``/metrics`` on any worker merges them: counters and histograms add up across
workers, in-flight gauges are summed over live workers, budget gauges take the
most recent value, backend health the highest.

Fixed label values (reload results, Redis operations) are created up front so
their series exist, at zero, before the first event.
"""

from __future__ import annotations

import glob
import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RELOAD_RESULTS = ("success", "error")  # spillway_config_reloads_total{result}
REDIS_OPS = ("admit", "settle", "status")  # spillway_redis_errors_total{op}

# LLM latencies run from milliseconds (cache hits, errors) to minutes (long generations)
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
TOKEN_TIME_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
# waits in a pool's queue: from a slot freeing at once to max_wait_ms
QUEUE_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def multiprocess_dir() -> str | None:
    """The shared directory this process writes its samples to, if any."""
    if getattr(_values.ValueClass, "_multiprocess", False):
        return os.environ.get(MULTIPROC_ENV) or None
    return None


def prepare_multiprocess_dir(path: str) -> None:
    """Empty ``path`` of samples left by an earlier run (prometheus-client's rule)."""
    os.makedirs(path, exist_ok=True)
    for f in glob.glob(os.path.join(path, "*.db")):
        os.remove(f)


def use_multiprocess(path: str) -> None:
    """Keep every metric created from now on in ``path``, shared with sibling workers.

    prometheus-client picks its value store when it is imported; a worker forked
    by ``--workers`` switches it here, before it creates any metric.
    """
    os.environ[MULTIPROC_ENV] = path
    _values.ValueClass = _values.MultiProcessValue()  # type: ignore[no-untyped-call]


def mark_worker_dead(pid: int, path: str) -> None:
    """Drop the live gauges of a worker that exited (its counters stay counted)."""
    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        rk = ("model", "pool", "backend")
        self.requests = Counter(
            "spillway_requests_total", "Requests answered, by endpoint (the client API).",
            ("endpoint", "model", "pool", "backend", "team", "status_class"), registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "spillway_request_duration_seconds", "Time from request to last byte.",
            ("endpoint", *rk), buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "spillway_time_to_first_token_seconds", "Time to the first streamed token.",
            rk, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tpot = Histogram(
            "spillway_time_per_output_token_seconds", "Generation time per output token.",
            rk, buckets=TOKEN_TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "spillway_prompt_tokens_total",
            "Prompt (and embedding input) tokens, as the upstream reported them.",
            ("endpoint", "model", "pool", "backend", "team"), registry=r,
        )  # fmt: skip
        self.completion_tokens = Counter(
            "spillway_completion_tokens_total", "Completion tokens, as reported.",
            ("endpoint", "model", "pool", "backend", "team"), registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "spillway_cost_usd_total", "Spend in US dollars at the pools' prices.",
            ("model", "pool", "team"), registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "spillway_quota_rejections_total", "Requests refused by a rate limit or budget.",
            ("team", "kind", "limit"), registry=r,
        )  # fmt: skip
        # scope: team | key | pool; owner: its name; team: the owning team ('' for a pool);
        # pools: the budget's pool scope ('' when it covers every pool); unit: tokens | usd
        bk = ("scope", "owner", "team", "pools", "unit", "window")
        self.budget_used = Gauge(
            "spillway_budget_used", "Amount of a budget used in its current window.",
            bk, registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.budget_remaining = Gauge(
            "spillway_budget_remaining", "Amount of a budget left in its current window.",
            bk, registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.budget_limit = Gauge(
            "spillway_budget_limit", "Amount of a budget per window, as configured.",
            bk, registry=r, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.upstream_errors = Counter(
            "spillway_upstream_errors_total", "Failed upstream attempts.",
            ("backend", "kind"), registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "spillway_http_requests_total",
            "Answers outside the model endpoints (model list, quota, health, metrics, "
            "unknown paths and methods), by route template ('unmatched': no route).",
            ("route", "method", "status_class"), registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "spillway_retries_total", "Attempts repeated on another member.",
            ("pool", "backend"), registry=r,
        )  # fmt: skip
        self.retries_denied = Counter(
            "spillway_retries_denied_total",
            "Retries not made: the retry budget or max_attempts was spent.",
            ("pool", "reason"), registry=r,
        )  # fmt: skip
        self.ejections = Counter(
            "spillway_backend_ejections_total",
            "Backends taken out of rotation after consecutive failures.",
            ("backend",), registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "spillway_fallbacks_total", "Requests moved from one pool to the next.",
            ("model", "from_pool", "to_pool", "reason"), registry=r,
        )  # fmt: skip
        self.inflight = Gauge(
            "spillway_inflight_requests", "Requests in flight per backend.",
            ("backend",), registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.backend_up = Gauge(
            "spillway_backend_healthy", "1 when a backend takes traffic, 0 when ejected.",
            ("backend",), registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.reloads = Counter(
            "spillway_config_reloads_total", "Config reloads by result.", ("result",), registry=r
        )  # fmt: skip
        self.overhead = Histogram(
            "spillway_gateway_overhead_seconds",
            "Time the gateway spends on a request apart from waiting on the upstream.",
            ("model",), buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.redis_errors = Counter(
            "spillway_redis_errors_total", "Redis calls that failed.", ("op",), registry=r
        )  # fmt: skip
        self.quota_degraded = Counter(
            "spillway_quota_degraded_total",
            "Admissions decided in-process because Redis was unreachable (on_error: allow).",
            registry=r,
        )  # fmt: skip
        self.settlements_pending = Gauge(
            "spillway_quota_settlements_pending",
            "Settlements that failed to reach Redis and wait to be sent again.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.redis_up = Gauge(
            "spillway_redis_up",
            "1 when Redis answers; 0 while it does not (quotas then decided in-process "
            "with on_error: allow, the replica ready but degraded).",
            registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        qk = ("pool", "team", "priority")
        self.queue_depth = Gauge(
            "spillway_queue_depth", "Requests waiting in a pool's queue.",
            qk, registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.queue_wait = Histogram(
            "spillway_queue_wait_seconds",
            "Time a request waited in a pool's queue for its turn (0: it did not wait).",
            qk, buckets=QUEUE_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_dropped = Counter(
            "spillway_queue_dropped_total",
            "Requests a pool's queue let go without a turn: shed (sheddable priority), "
            "timeout (max_wait_ms), full (max_depth), disconnect (the client left).",
            (*qk, "reason"), registry=r,
        )  # fmt: skip
        self.queue_spilled = Counter(
            "spillway_queue_spilled_total",
            "Requests a pool's queue let go (shed, timed out, full) that moved on to the "
            "next pool of their route; the others were answered 429.",
            qk, registry=r,
        )  # fmt: skip
        # a series only when a key database is configured (store="postgresql")
        self.key_store_up = Gauge(
            "spillway_key_store_up",
            "1 while the key database is reachable; 0: serving database keys from the cache.",
            ("store",), registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self._children: dict[tuple[Any, ...], Any] = {}
        self._adders: dict[tuple[Any, ...], Callable[[float], None]] = {}
        self._series: dict[tuple[str, str, str, str, str], Series] = {}
        self._queue_series: dict[tuple[str, str, str], QueueSeries] = {}
        for result in RELOAD_RESULTS:
            self.child(self.reloads, result)
        for op in REDIS_OPS:
            self.child(self.redis_errors, op)
        self.multiprocess_dir = multiprocess_dir()

    def series(self, endpoint: str, model: str, pool: str, backend: str, team: str) -> Series:
        """Every per-request child of one (endpoint, model, pool, backend, team), bound once."""
        key = (endpoint, model, pool, backend, team)
        got = self._series.get(key)
        if got is None:
            got = self._series[key] = Series(self, *key)
        return got

    def queue_series(self, pool: str, team: str, priority: str) -> QueueSeries:
        """The queue children of one (pool, team, priority band), bound once."""
        key = (pool, team, priority)
        got = self._queue_series.get(key)
        if got is None:
            got = self._queue_series[key] = QueueSeries(self, pool, team, priority)
        return got

    def child(self, metric: Any, *labels: str) -> Any:
        """A bound label child, cached."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def adder(self, metric: Any, *labels: str) -> Callable[[float], None]:
        """A counter's or gauge's child's ``inc`` straight on its value (a gauge goes
        down by a negative amount), cached: without prometheus-client's per-call checks
        (the child is known to be valid)."""
        key = (id(metric), *labels)
        add = self._adders.get(key)
        if add is None:
            add = self._adders[key] = self.child(metric, *labels)._value.inc
        return add

    def forget(self, metric: Any, *labels: str) -> None:
        """Remove one series (single-process mode only)."""
        self._adders.pop((id(metric), *labels), None)
        if self._children.pop((id(metric), *labels), None) is not None:
            metric.remove(*labels)

    def exposition(self) -> bytes:
        """The text format: this process's registry, or every worker's samples merged."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


class _Fast:
    """``inc``/``observe`` straight on a child's value objects, skipping the
    per-call checks prometheus-client repeats (the child is known to be valid)."""

    __slots__ = ("_bounds", "_buckets", "_sum", "inc")

    def __init__(self, child: Any) -> None:
        if hasattr(child, "_buckets"):  # a histogram
            self._sum = child._sum.inc
            self._bounds = list(child._upper_bounds)
            self._buckets = [b.inc for b in child._buckets]
            self.inc = self._sum
        else:
            self.inc = child._value.inc
            self._bounds = []
            self._buckets = []
            self._sum = self.inc

    def observe(self, value: float) -> None:
        self._sum(value)
        self._buckets[bisect_left(self._bounds, value)](1)


class Series:
    """The label children one request records, looked up once per combination."""

    __slots__ = (
        "_key", "_m", "_status", "completion", "cost", "duration", "model", "overhead", "pool",
        "prompt", "team", "tpot", "ttft",
    )  # fmt: skip

    def __init__(
        self, m: Metrics, endpoint: str, model: str, pool: str, backend: str, team: str
    ) -> None:
        self._m = m
        self.model, self.pool, self.team = model, pool, team
        self._status: dict[str, _Fast] = {}
        self.duration = _Fast(m.child(m.duration, endpoint, model, pool, backend))
        self.ttft = _Fast(m.child(m.ttft, model, pool, backend))
        self.tpot = _Fast(m.child(m.tpot, model, pool, backend))
        self.prompt = _Fast(m.child(m.prompt_tokens, endpoint, model, pool, backend, team))
        self.completion = _Fast(m.child(m.completion_tokens, endpoint, model, pool, backend, team))
        self.cost = _Fast(m.child(m.cost, model, pool, team))
        self.overhead = _Fast(m.child(m.overhead, model))
        self._key = (endpoint, model, pool, backend, team)

    def requests(self, status_class: str) -> _Fast:
        got = self._status.get(status_class)
        if got is None:
            got = self._status[status_class] = _Fast(
                self._m.child(self._m.requests, *self._key, status_class)
            )
        return got


class QueueSeries:
    """What a pool's queue records for one team and priority band."""

    __slots__ = ("_labels", "_m", "depth", "wait")

    def __init__(self, m: Metrics, pool: str, team: str, priority: str) -> None:
        self._m = m
        self._labels = (pool, team, priority)
        self.depth = m.child(m.queue_depth, pool, team, priority)
        self.wait = _Fast(m.child(m.queue_wait, pool, team, priority))

    def dropped(self, reason: str) -> None:
        self._m.child(self._m.queue_dropped, *self._labels, reason).inc()

    def spilled(self) -> None:
        self._m.child(self._m.queue_spilled, *self._labels).inc()
