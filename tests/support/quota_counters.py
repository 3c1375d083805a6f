"""A team's quota state read straight from Redis: slots, open reservations, counters."""

from __future__ import annotations

import redis


class TeamCounters:
    def __init__(self, port: int, prefix: str, team: str = "t") -> None:
        self.client = redis.Redis(port=port, socket_timeout=2)
        self.base = f"{prefix}:{{team:{team}}}"

    def slots(self) -> int:
        """Concurrency slots held by the team."""
        return int(self.client.zcard(f"{self.base}:team:conc"))

    def reservations(self) -> int:
        """Admissions neither settled nor refunded yet."""
        return int(self.client.zcard(f"{self.base}:pending"))

    def tokens_today(self) -> int:
        """The team's tokens_per_day counter (summed over days, should a test straddle one)."""
        keys = list(self.client.scan_iter(f"{self.base}:team:b:tokens:day:*"))
        return sum(int(self.client.get(k) or 0) for k in keys)

    def close(self) -> None:
        self.client.close()
