"""Strategies choosing a member inside a pool (pure apart from their counters).

``order()`` returns every member, best first; the rest are the fallbacks a
retry walks through. Unhealthy or saturated members go last.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.config import Pool
from router.routing.health import BackendState


@dataclass(slots=True, eq=False)
class Member:
    pool: str
    index: int
    backend: str
    model: str
    weight: float
    state: BackendState

    @property
    def available(self) -> bool:
        return self.state.healthy and not self.state.saturated


class Balancer:
    """One per pool per config; holds the strategy's counters."""

    def __init__(self, name: str, cfg: Pool, states: dict[str, BackendState]) -> None:
        self.name = name
        self.strategy = cfg.strategy
        self.members = [
            Member(name, i, m.backend, m.model, m.weight, states[m.backend])
            for i, m in enumerate(cfg.members)
        ]
        self._next = 0
        self._current = [0.0] * len(self.members)  # smooth weighted round robin

    def order(self) -> list[Member]:
        members = self.members
        if len(members) == 1:
            return list(members)
        if self.strategy == "weighted":
            first = self._pick_weighted()
        elif self.strategy == "least_loaded":
            first = min(members, key=_load)
        elif self.strategy == "lowest_latency":
            first = min(members, key=_latency)
        else:
            first = members[self._next % len(members)]
            self._next += 1
        rest = [m for m in members if m is not first]
        ordered = [first, *rest]
        return sorted(ordered, key=lambda m: not m.available)  # stable: keeps the choice

    def _pick_weighted(self) -> Member:
        total = 0.0
        best = 0
        for i, m in enumerate(self.members):
            self._current[i] += m.weight
            total += m.weight
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= total
        return self.members[best]


def _load(m: Member) -> tuple[float, float]:
    s = m.state
    return ((s.inflight + s.waiting + s.running) / m.weight, s.kv_cache)


def _latency(m: Member) -> float:
    return m.state.ttft_ewma if m.state.ttft_ewma is not None else 0.0
