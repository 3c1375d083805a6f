"""The quota contract in-process: one replica, no Redis.

Same semantics as the Lua scripts (all-or-nothing admission, clamping,
idempotent settlement, leases), on the process clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.quota.base import ADMITTED, BUDGET_SHORT, RATE_LIMITED, Reply
from router.quota.plan import Check, bucket_id

SETTLED_TTL = 120  # seconds a settled record absorbs a retried settlement (as in Lua)
_TTL = {"minute": 180, "hour": 7500, "day": 180000, "month": 2851200}


@dataclass(slots=True)
class _Record:
    state: str  # r reserved, s settled, x reclaimed
    out: int
    keys: list[str]
    amounts: list[int]  # -1: a concurrency slot
    expires: float  # lease end
    forget: float  # when the record itself goes


@dataclass(slots=True)
class _Counter:
    value: int = 0
    expires: float = 0.0


@dataclass
class MemoryStore:
    clock: object = field(default=time.time)
    _counters: dict[str, _Counter] = field(default_factory=dict)
    _slots: dict[str, dict[str, float]] = field(default_factory=dict)
    _records: dict[str, _Record] = field(default_factory=dict)
    _sweep_at: float = 0.0

    def _now(self) -> float:
        clock = self.clock
        assert callable(clock)
        return float(clock())

    def _key(self, check: Check, now: float) -> str:
        return check.key if check.kind == "c" else f"{check.key}:{bucket_id(check.window, now)}"

    def _get(self, key: str, now: float) -> int:
        c = self._counters.get(key)
        if c is None or c.expires <= now:
            return 0
        return c.value

    def _live_slots(self, key: str, now: float) -> dict[str, float]:
        slots = self._slots.setdefault(key, {})
        for rid in [r for r, exp in slots.items() if exp <= now]:
            del slots[rid]
        return slots

    def _sweep(self, now: float) -> None:
        if now < self._sweep_at:
            return
        self._sweep_at = now + 1.0
        for rid, rec in list(self._records.items()):
            if rec.state == "r" and rec.expires <= now:
                self._reclaim(rec, rid, now)
            if rec.forget <= now:
                del self._records[rid]
        for key in [k for k, c in self._counters.items() if c.expires <= now]:
            del self._counters[key]

    def _reclaim(self, rec: _Record, rid: str, now: float) -> None:
        for key, amount in zip(rec.keys, rec.amounts, strict=True):
            if amount == -1:
                self._slots.get(key, {}).pop(rid, None)
            elif amount > 0 and key in self._counters:
                self._counters[key].value -= amount
        rec.state = "x"

    async def admit(
        self,
        rid: str,
        checks: Sequence[Check],
        prompt: int,
        out: int,
        n: int,
        min_out: int,
        lease: int,
    ) -> Reply:
        now = self._now()
        prev = self._records.get(rid)
        if prev is not None:
            return Reply(ADMITTED, prev.out, -1, now, ())
        self._sweep(now)
        keys: list[str] = []
        used: list[float] = []
        amounts = [c.amounts(prompt, n) for c in checks]
        fit, short = out, -1
        for i, c in enumerate(checks):
            key = self._key(c, now)
            keys.append(key)
            used.append(len(self._live_slots(key, now)) if c.kind == "c" else self._get(key, now))
            if c.kind == "b":
                base, per = amounts[i]
                avail = c.limit - used[i] - base
                if avail < per * out:
                    f = math.floor(avail / per) if per > 0 else (out if avail >= 0 else -1)
                    if f < fit:
                        fit, short = f, i
        budget_fail = -1
        if fit < out:
            if min_out > 0 and fit >= min_out:
                out = fit
            else:
                budget_fail = short
        for i, c in enumerate(checks):
            base, per = amounts[i]
            if (c.kind == "r" and used[i] + base + per * out > c.limit) or (
                c.kind == "c" and used[i] + 1 > c.limit
            ):
                return Reply(RATE_LIMITED, out, i, now, tuple(used))
        if budget_fail >= 0:
            return Reply(BUDGET_SHORT, fit, budget_fail, now, tuple(used))
        stored: list[int] = []
        for i, c in enumerate(checks):
            key = keys[i]
            if c.kind == "c":
                self._live_slots(key, now)[rid] = now + lease
                used[i] += 1
                stored.append(-1)
                continue
            base, per = amounts[i]
            amount = math.ceil(base + per * out)
            counter = self._counters.get(key)
            if counter is None or counter.expires <= now:
                counter = self._counters[key] = _Counter()
            counter.value += amount
            counter.expires = now + _TTL[c.window]
            used[i] += amount
            stored.append(amount)
        self._records[rid] = _Record("r", out, keys, stored, now + lease, now + lease * 4)
        return Reply(ADMITTED, out, -1, now, tuple(used))

    def settle(
        self, rid: str, checks: Sequence[Check], prompt: int, completion: int, refund: bool,
        lease: int,
    ) -> None:  # fmt: skip
        now = self._now()
        rec = self._records.get(rid)
        if rec is None or rec.state == "s":
            return
        for check, key, reserved in zip(checks, rec.keys, rec.amounts, strict=True):
            if reserved == -1:
                if rec.state == "r":
                    self._slots.get(key, {}).pop(rid, None)
                continue
            amount = 0 if refund else check.charge(prompt, completion)
            delta = amount - reserved if rec.state == "r" else amount
            counter = self._counters.get(key)
            if delta and counter is not None and counter.expires > now:
                counter.value += delta
        rec.state = "s"
        rec.forget = now + SETTLED_TTL

    async def status(self, checks: Sequence[Check]) -> tuple[float, list[float]]:
        now = self._now()
        out: list[float] = []
        for c in checks:
            key = self._key(c, now)
            out.append(len(self._live_slots(key, now)) if c.kind == "c" else self._get(key, now))
        return now, out

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
