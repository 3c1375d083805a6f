"""Live state of each backend: in-flight requests, health, latency, scraped load.

One :class:`BackendState` per configured backend, shared by every pool that
lists it (and kept across reloads), so in-flight counts and health are per
server, not per pool. Times are event-loop (monotonic) seconds.

Health is passive first: ``failure_threshold`` consecutive failures eject a
member for a cooldown that doubles with every ejection in a row, up to a cap.
When the cooldown is over an active probe (see :mod:`router.monitor`) decides:
a member that answers comes back on probation (one more failure ejects it
again, for longer); one that does not stays out for the next, longer cooldown.
A success on real traffic clears the record.

Load comes from a vLLM-like ``/metrics`` endpoint (:func:`parse_load`) and is
corrected between scrapes by the requests this gateway sent or finished since.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from router.config import HealthSettings

EWMA_WEIGHT = 0.2  # weight of a new latency sample

# Prometheus gauges of vLLM (V1 and V0 names) and what they mean here
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # current, older
_WANTED = frozenset((RUNNING, WAITING, *KV_CACHE))


@dataclass(frozen=True, slots=True)
class Load:
    """What a backend's ``/metrics`` said about its queue."""

    running: float
    waiting: float
    kv_cache: float  # 0..1


def parse_load(text: str) -> Load | None:
    """Read vLLM's load gauges from Prometheus text; None when none is there.

    Series of one metric (several engines of a data-parallel server, several
    models) are summed for request counts and averaged for the KV-cache usage.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            rest = line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        if name not in _WANTED:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        sums[name] = sums.get(name, 0.0) + value
        counts[name] = counts.get(name, 0) + 1
    if not sums:
        return None
    kv = 0.0
    for name in KV_CACHE:
        if name in sums:
            kv = sums[name] / counts[name]
            break
    return Load(running=sums.get(RUNNING, 0.0), waiting=sums.get(WAITING, 0.0), kv_cache=kv)


@dataclass(slots=True, eq=False)
class BackendState:
    name: str
    url: str | None = None
    metrics_url: str | None = None
    max_concurrency: int | None = None
    inflight: int = 0
    healthy: bool = True
    consecutive_failures: int = 0
    ejections: int = 0  # ejections in a row, without a success in between
    ejected_until: float = 0.0
    throttled_until: float = 0.0  # a 429 asked to wait (Retry-After) until then
    ttft_ewma: float | None = None  # seconds to the first byte of an answer
    # scraped load; ``load_known`` is False until a scrape works (and after one fails)
    load_known: bool = False
    waiting: float = 0.0
    running: float = 0.0
    kv_cache: float = 0.0
    inflight_at_scrape: int = 0

    # -- capacity -------------------------------------------------------------------
    @property
    def at_limit(self) -> bool:
        return self.max_concurrency is not None and self.inflight >= self.max_concurrency

    @property
    def saturated(self) -> bool:
        return self.at_limit

    def queue(self) -> float:
        """Requests at the server now: scraped running + waiting, plus the ones this
        gateway sent since the scrape (minus those it finished); in-flight otherwise."""
        if not self.load_known:
            return float(self.inflight)
        return max(0.0, self.running + self.waiting + self.inflight - self.inflight_at_scrape)

    def waiting_now(self) -> float:
        """The scraped waiting queue; when the server was queueing at the scrape, every
        request this gateway sent since (minus those it finished) is waiting too."""
        if self.waiting <= 0:
            return self.waiting
        return self.waiting + max(0, self.inflight - self.inflight_at_scrape)

    def update_load(self, load: Load | None) -> None:
        if load is None:
            self.load_known = False
            return
        self.load_known = True
        self.running = load.running
        self.waiting = load.waiting
        self.kv_cache = load.kv_cache
        self.inflight_at_scrape = self.inflight

    # -- passive health -------------------------------------------------------------
    def record_success(self, latency: float | None) -> None:
        self.consecutive_failures = 0
        self.ejections = 0
        self.healthy = True
        if latency is not None:
            ewma = self.ttft_ewma
            self.ttft_ewma = (
                latency if ewma is None else (1 - EWMA_WEIGHT) * ewma + EWMA_WEIGHT * latency
            )

    def record_failure(self, now: float, policy: HealthSettings) -> bool:
        """Count a failed attempt; True when this failure ejected the member."""
        self.consecutive_failures += 1
        if self.healthy and self.consecutive_failures >= policy.failure_threshold:
            self.eject(now, policy)
            return True
        return False

    def throttle(self, until: float) -> None:
        self.throttled_until = max(self.throttled_until, until)

    def eject(self, now: float, policy: HealthSettings) -> float:
        """Take the member out; the cooldown doubles with each ejection in a row."""
        self.healthy = False
        self.ejections += 1
        cooldown = min(
            policy.max_ejection_seconds, policy.ejection_seconds * 2.0 ** (self.ejections - 1)
        )
        self.ejected_until = now + cooldown
        return cooldown

    def eject_for(self, now: float, seconds: float) -> None:
        """Take the member out for ``seconds`` whatever its record (its provider
        refused the gateway's credential: retrying soon cannot help)."""
        self.healthy = False
        self.ejections += 1
        self.consecutive_failures = 0
        self.ejected_until = max(self.ejected_until, now + seconds)

    # -- active probes --------------------------------------------------------------
    def probe_due(self, now: float) -> bool:
        return not self.healthy and now >= self.ejected_until

    def probe_result(self, ok: bool, now: float, policy: HealthSettings) -> None:
        """An answer brings the member back on probation; none ejects it for longer."""
        if self.healthy:
            return
        if ok:
            self.healthy = True
            self.consecutive_failures = policy.failure_threshold - 1  # probation
        else:
            self.eject(now, policy)
