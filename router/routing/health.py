"""Live state of each backend: in-flight requests, health, latency, load.

One :class:`BackendState` per configured backend, shared by every pool that
lists it, so in-flight counts and health are per server, not per pool.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class BackendState:
    name: str
    max_concurrency: int | None = None
    inflight: int = 0
    healthy: bool = True
    consecutive_failures: int = 0
    ttft_ewma: float | None = None  # seconds
    waiting: float = 0.0  # scraped from a vLLM-like /metrics
    running: float = 0.0
    kv_cache: float = 0.0

    @property
    def saturated(self) -> bool:
        return self.max_concurrency is not None and self.inflight >= self.max_concurrency

    def record_success(self, ttft: float | None) -> None:
        self.consecutive_failures = 0
        self.healthy = True
        if ttft is not None:
            self.ttft_ewma = ttft if self.ttft_ewma is None else 0.8 * self.ttft_ewma + 0.2 * ttft

    def record_failure(self) -> None:
        self.consecutive_failures += 1
