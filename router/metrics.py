"""Prometheus metrics: a :class:`Metrics` object owning its CollectorRegistry.

Names carry the ``spillway_`` prefix; durations are seconds, counters end in
``_total``. Labels come only from config (model, pool, backend, team, limit
names, status class), never from a key or a request. Label children are bound
once and cached, so the hot path does a dict lookup and an ``inc``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# LLM latencies run from milliseconds (cache hits, errors) to minutes (long generations)
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
TOKEN_TIME_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
OVERHEAD_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        rk = ("model", "pool", "backend")
        self.requests = Counter(
            "spillway_requests_total", "Chat completion requests answered.",
            ("model", "pool", "backend", "team", "status_class"), registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "spillway_request_duration_seconds", "Time from request to last byte.",
            rk, buckets=LATENCY_BUCKETS, registry=r,
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
            "spillway_prompt_tokens_total", "Prompt tokens, as the upstream reported them.",
            ("model", "pool", "backend", "team"), registry=r,
        )  # fmt: skip
        self.completion_tokens = Counter(
            "spillway_completion_tokens_total", "Completion tokens, as reported.",
            ("model", "pool", "backend", "team"), registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "spillway_cost_usd_total", "Spend in US dollars at the pools' prices.",
            ("model", "pool", "team"), registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "spillway_quota_rejections_total", "Requests refused by a rate limit or budget.",
            ("team", "kind", "limit"), registry=r,
        )  # fmt: skip
        self.budget_used = Gauge(
            "spillway_budget_used", "Amount of a budget used in its current window.",
            ("scope", "owner", "unit", "window"), registry=r,
        )  # fmt: skip
        self.budget_remaining = Gauge(
            "spillway_budget_remaining", "Amount of a budget left in its current window.",
            ("scope", "owner", "unit", "window"), registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "spillway_upstream_errors_total", "Failed upstream attempts.",
            ("backend", "kind"), registry=r,
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
            ("backend",), registry=r,
        )  # fmt: skip
        self.backend_up = Gauge(
            "spillway_backend_healthy", "1 when a backend takes traffic, 0 when ejected.",
            ("backend",), registry=r,
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
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """A bound label child, cached."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
