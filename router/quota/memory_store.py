"""The quota contract in-process: one replica, no Redis.

The same rules as the Lua scripts, step for step (all-or-nothing admission,
clamping, sliding rate windows, idempotent settlement, tombstones for
admissions whose outcome was unknown, leases), on the process clock; the cases
in ``tests/unit/quota/test_contract.py`` hold both to it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.quota.base import ADMITTED, BUDGET_SHORT, RATE_LIMITED, Reply
from router.quota.plan import Check, bucket_id, rate_wait, rate_weight

SETTLED_TTL = 120  # seconds a settled record absorbs a retried settlement (as in Lua)
_TTL = {"minute": 180, "hour": 7500, "day": 180000, "month": 2851200}


@dataclass(slots=True)
class _Record:
    state: str  # r reserved, s settled, x reclaimed, t refunded before it was seen
    out: int
    keys: list[str]
    amounts: list[int]  # -1: a concurrency slot
    expires: float  # lease end
    forget: float  # when the record itself goes


@dataclass(slots=True)
class _Counter:
    value: int = 0
    expires: float = 0.0


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._counters: dict[str, _Counter] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._records: dict[str, _Record] = {}
        self._sweep_at = 0.0

    def _key(self, check: Check, now: float, back: int = 0) -> str:
        if check.kind == "c":
            return check.key
        if check.kind == "r":
            return f"{check.key}:{int(now // 60) - back}"
        return f"{check.key}:{bucket_id(check.window, now)}"

    def _get(self, key: str, now: float) -> int:
        c = self._counters.get(key)
        if c is None or c.expires <= now:
            return 0
        return c.value

    def _add(self, key: str, amount: int, window: str, now: float) -> _Counter:
        """INCRBY, with the window's expiry set when the counter is new."""
        counter = self._counters.get(key)
        if counter is None or counter.expires <= now:
            counter = self._counters[key] = _Counter(0, now + _TTL[window])
        counter.value += amount
        return counter

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
        for key in [k for k, s in self._slots.items() if not s]:
            del self._slots[key]

    def _reclaim(self, rec: _Record, rid: str, now: float) -> None:
        for key, amount in zip(rec.keys, rec.amounts, strict=True):
            counter = self._counters.get(key)
            if amount == -1:
                self._slots.get(key, {}).pop(rid, None)
            elif amount > 0 and counter is not None and counter.expires > now:
                counter.value -= amount
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
        now = self.clock()
        prev = self._records.get(rid)
        if prev is not None:
            return Reply(ADMITTED, prev.out, -1, now, 0.0, ())
        self._sweep(now)
        keys: list[str] = []
        used: list[float] = []
        counts: list[float] = []  # rate checks: this minute's own count
        prevs: list[float] = []  # rate checks: the previous minute's count
        weight = rate_weight(now)
        amounts = [c.amounts(prompt, n) for c in checks]
        fit, short = out, -1
        for i, c in enumerate(checks):
            key = self._key(c, now)
            keys.append(key)
            if c.kind == "c":
                value: float = len(self._live_slots(key, now))
                before = 0.0
            else:
                value = self._get(key, now)
                before = self._get(self._key(c, now, 1), now) if c.kind == "r" else 0.0
            counts.append(value)
            prevs.append(before)
            used.append(value + before * weight if c.kind == "r" else value)
            if c.kind == "b":
                base, per = amounts[i]
                avail = c.limit - used[i] - base
                if avail < per * out:
                    f = math.floor(avail / per) if per > 0 else (out if avail >= 0 else -1)
                    if f < fit:
                        fit, short = f, i
        shown = [math.floor(u) for u in used]
        budget_fail = -1
        if fit < out:
            if min_out > 0 and fit >= min_out:
                out = fit
            else:
                budget_fail = short
        for i, c in enumerate(checks):
            base, per = amounts[i]
            cost = base + per * out
            if c.kind == "r" and used[i] + cost > c.limit:
                wait = rate_wait(counts[i], prevs[i], c.limit, cost, now)
                return Reply(RATE_LIMITED, out, i, now, wait, tuple(shown))
            if c.kind == "c" and used[i] + 1 > c.limit:
                return Reply(RATE_LIMITED, out, i, now, 1.0, tuple(shown))
        if budget_fail >= 0:
            return Reply(BUDGET_SHORT, fit, budget_fail, now, 0.0, tuple(shown))
        stored: list[int] = []
        for i, c in enumerate(checks):
            key = keys[i]
            if c.kind == "c":
                self._live_slots(key, now)[rid] = now + lease
                shown[i] += 1
                stored.append(-1)
                continue
            base, per = amounts[i]
            amount = math.ceil(base + per * out)
            if amount > 0:
                self._add(key, amount, c.window, now)
            shown[i] = math.floor(used[i] + amount)
            stored.append(amount)
        self._records[rid] = _Record("r", out, keys, stored, now + lease, now + lease * 4)
        return Reply(ADMITTED, out, -1, now, 0.0, tuple(shown))

    def settle(
        self, rid: str, checks: Sequence[Check], prompt: int, completion: int, refund: bool,
        lease: int, orphan: bool = False,
    ) -> None:  # fmt: skip
        now = self.clock()
        rec = self._records.get(rid)
        state = rec.state if rec is not None else ""
        if state == "s" or (state == "t" and refund):
            return
        if rec is None:
            if not orphan:
                return  # settled long ago: its record is gone
            if refund:
                self._records[rid] = _Record("t", 0, [], [], now, now + lease * 4)
                return
        if rec is None or state == "t":  # nothing is reserved here: charge in full
            for c in checks:
                amount = c.charge(prompt, completion)
                if c.kind != "c" and amount > 0:
                    self._add(self._key(c, now), amount, c.window, now)
            self._records[rid] = _Record("s", 0, [], [], now, now + lease)
            return
        for check, key, reserved in zip(checks, rec.keys, rec.amounts, strict=True):
            if reserved == -1:
                if state == "r":
                    self._slots.get(key, {}).pop(rid, None)
                continue
            amount = 0 if refund else check.charge(prompt, completion)
            delta = amount - reserved if state == "r" else amount
            counter = self._counters.get(key)
            if delta and counter is not None and counter.expires > now:
                counter.value += delta
        if orphan and refund:  # given back; a charge written back later still counts
            rec.state, rec.forget = "t", now + lease * 4
            return
        rec.state = "s"
        rec.forget = now + SETTLED_TTL

    async def status(self, checks: Sequence[Check]) -> tuple[float, list[float]]:
        now = self.clock()
        out: list[float] = []
        weight = rate_weight(now)
        for c in checks:
            key = self._key(c, now)
            if c.kind == "c":
                out.append(len(self._live_slots(key, now)))
            elif c.kind == "r":
                used = self._get(key, now) + self._get(self._key(c, now, 1), now) * weight
                out.append(math.floor(used))
            else:
                out.append(self._get(key, now))
        return now, out

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
