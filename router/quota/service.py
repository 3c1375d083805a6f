"""Quota decisions for the proxy: admit a request on a pool, settle it after.

Turns a store's :class:`Reply` into a :class:`Ticket` (with OpenAI's
``x-ratelimit-*`` headers), a :class:`router.errors.RateLimited`, or a
:class:`BudgetShort` that lets the proxy try the next pool. When Redis cannot
answer, ``redis.on_error: allow`` decides in-process (logged at most every
ten seconds, counted in a metric); ``deny`` answers 503. What was decided
in-process is written back to Redis at settlement (an *orphan* settlement:
charged in full there, once). Accounting ids are made here, never taken from a
client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from router.config import Config
from router.contract import MAX_TOKENS
from router.errors import QuotaExceeded, RateLimited, ServiceUnavailable
from router.metrics import Metrics
from router.quota.base import ADMITTED, RATE_LIMITED, Reply, Store, StoreUnavailable
from router.quota.memory_store import MemoryStore
from router.quota.plan import Check, KeySpec, Planner, reset_at

log = logging.getLogger("spillway.quota")


@dataclass(slots=True, eq=False)
class Ticket:
    rid: str
    checks: tuple[Check, ...]
    store: Store
    out: int  # output tokens granted
    clamped: bool
    prompt: int  # the prompt bound reserved
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class BudgetShort(Exception):
    """A budget cannot cover the request on this pool (``need``: the least the request
    could reserve on it; more than the budget's whole amount can never fit)."""

    def __init__(self, check: Check, used: float, now: float, fit: int, need: float) -> None:
        super().__init__(check.describe())
        self.check = check
        self.used = used
        self.now = now
        self.fit = fit
        self.need = need

    def to_error(self) -> QuotaExceeded:
        """A 429 the client should not retry: the budget is spent until it resets
        (``Retry-After`` says when), or the request can never fit it."""
        c = self.check
        if self.need > c.limit:
            return QuotaExceeded(
                f"Request too large for {c.describe()}: it needs {_amount(c, self.need)}, "
                f"more than the whole budget of {_amount(c, c.limit)} per {c.window}; it "
                "can never fit. Send a shorter prompt or a lower max_tokens.",
                headers=NO_RETRY,
            )
        reset_epoch = reset_at(c.window, self.now)
        reset = datetime.fromtimestamp(reset_epoch, UTC)
        left = max(0.0, c.limit - self.used)
        if c.unit == "usd":
            amount = f"${c.display(left):,.2f} of ${c.display(c.limit):,.2f} left"
        else:
            amount = f"{int(left):,} of {int(c.limit):,} tokens left"
        return QuotaExceeded(
            f"Budget exhausted: {c.describe()} has {amount} this {c.window}, "
            f"less than this request may use; it resets at {reset:%Y-%m-%dT%H:%M:%SZ}.",
            headers={
                "x-spillway-budget-reset": f"{reset:%Y-%m-%dT%H:%M:%SZ}",
                "Retry-After": str(max(1, math.ceil(reset_epoch - self.now))),
                **NO_RETRY,
            },
        )


# OpenAI's SDKs never retry an answer that says so, whatever its status
NO_RETRY = {"x-should-retry": "false"}


def _amount(c: Check, amount: float) -> str:
    if c.unit == "usd":
        return f"${c.display(amount):,.2f}"
    return f"{math.ceil(amount):,} {c.unit}"


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``250ms``, ``12s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    s = math.ceil(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


_HEADER_NAMES = {
    unit: (f"x-ratelimit-limit-{unit}", f"x-ratelimit-remaining-{unit}",
           f"x-ratelimit-reset-{unit}")
    for unit in ("requests", "tokens")
}  # fmt: skip


def _rate_headers(
    checks: Sequence[Check], reply: Reply, resets: dict[tuple[str, int], str]
) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers from the tightest rate limit of each unit."""
    used = reply.used
    if not used:
        return {}
    best: dict[str, tuple[float, Check]] = {}
    for c, u in zip(checks, used, strict=True):
        if c.kind == "r":
            left = c.limit - u
            got = best.get(c.unit)
            if got is None or left < got[0]:
                best[c.unit] = (left, c)
    headers: dict[str, str] = {}
    now = reply.now
    for unit, (left, c) in best.items():
        key = (c.window, int(now))
        reset = resets.get(key)
        if reset is None:
            if len(resets) > 64:
                resets.clear()
            reset = resets[key] = go_duration(reset_at(c.window, now) - int(now))
        limit_name, remaining_name, reset_name = _HEADER_NAMES[unit]
        headers[limit_name] = c.limit_text
        headers[remaining_name] = str(int(left)) if left > 0 else "0"
        headers[reset_name] = reset
    return headers


class Detached:
    """Work that outlives its request: settlements waiting, off any request, for an
    upstream answer whose client left. Owned by the gateway, awaited when it stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("detached settlement failed", exc_info=task.exception())

    async def aclose(self, grace: float) -> None:
        """Let the work finish within ``grace`` seconds, then cancel it (each task
        settles with what it knows when cancelled)."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Quota:
    def __init__(
        self,
        cfg: Config,
        primary: Store | None,
        fallback: MemoryStore,
        metrics: Metrics,
        detached: Detached | None = None,
    ) -> None:
        self.planner = Planner(cfg)
        self.detached = detached if detached is not None else Detached()
        self._id_prefix = os.urandom(8).hex() + ":"
        self._ids = 0
        self.primary: Store = primary if primary is not None else fallback
        self.fallback = fallback
        self.deny_on_error = cfg.redis.on_error == "deny"
        self.lease = cfg.quota.lease_seconds
        self.clamp = cfg.quota.on_budget_short == "clamp"
        self.metrics = metrics
        self._warned_at = 0.0
        self._resets: dict[tuple[str, int], str] = {}  # (window, second) -> reset text

    def checks(self, key: KeySpec | str, pool: str) -> tuple[Check, ...]:
        return self.planner.checks(key, pool)

    async def admit(
        self,
        *,
        key: KeySpec,
        pool: str,
        prompt: int,
        out: int,
        n: int,
        clamp: bool,
    ) -> Ticket:
        """Reserve for one attempt on ``pool``. Raises RateLimited or BudgetShort."""
        checks = self.planner.checks(key, pool)
        self._ids += 1
        rid = f"{self._id_prefix}{self._ids:x}"
        if not checks:
            return Ticket(rid, checks, self.primary, out, False, prompt)
        store = self.primary
        min_out = 1 if clamp and self.clamp else 0
        try:
            reply = await store.admit(rid, checks, prompt, out, n, min_out, self.lease)
        except StoreUnavailable as exc:
            store = self._degraded(exc)
            reply = await store.admit(rid, checks, prompt, out, n, min_out, self.lease)
        if reply.code == ADMITTED:
            return Ticket(
                rid, checks, store, reply.out, reply.out < out, prompt,
                _rate_headers(checks, reply, self._resets),
            )  # fmt: skip
        check = checks[reply.failed]
        used = reply.used[reply.failed] if reply.used else 0.0
        base, per = check.amounts(prompt, n)
        if reply.code == RATE_LIMITED:
            self.metrics.child(self.metrics.rejections, key.team, "rate", check.name).inc()
            raise self._rate_error(check, used, reply, checks, base + per * reply.out)
        least = min(out, 1) if self.clamp else out  # what a clamped request would still take
        raise BudgetShort(check, used, reply.now, reply.out, base + per * least)

    def budget_rejected(self, team: str, short: BudgetShort) -> QuotaExceeded:
        self.metrics.child(self.metrics.rejections, team, "budget", short.check.name).inc()
        return short.to_error()

    def _degraded(self, exc: StoreUnavailable) -> Store:
        self.metrics.child(self.metrics.redis_errors, "admit").inc()
        now = time.monotonic()
        if now - self._warned_at > 10:
            self._warned_at = now
            log.warning(
                "redis unavailable (%s); %s", exc,
                "refusing requests (on_error: deny)" if self.deny_on_error
                else "deciding quotas in-process (on_error: allow)",
            )  # fmt: skip
        if self.deny_on_error:
            raise ServiceUnavailable(
                "Quota service unavailable; the request was not admitted. Try again shortly.",
                headers={"Retry-After": "1"},
            )
        self.metrics.quota_degraded.inc()
        return self.fallback

    def _rate_error(
        self, check: Check, used: float, reply: Reply, checks: Sequence[Check], cost: float
    ) -> RateLimited:
        headers = _rate_headers(checks, reply, self._resets)
        if check.kind == "r" and cost > check.limit:  # no wait makes room: don't retry
            headers.update(NO_RETRY)
            return RateLimited(
                f"Request too large for {check.scope} {check.owner!r} on {check.name}: "
                f"limit {int(check.limit)}, requested {math.ceil(cost)} (the prompt's bound "
                "and the output reservation); it can never fit. Send a shorter prompt or a "
                "lower max_tokens.",
                type=check.unit, headers=headers,
            )  # fmt: skip
        if check.kind == "c":
            wait = 1.0
            msg = (
                f"Too many concurrent requests for {check.scope} {check.owner!r}: "
                f"limit {int(check.limit)} in flight. Retry when one finishes."
            )
            etype = "requests"
        else:
            wait = reply.wait if reply.wait > 0 else reset_at(check.window, reply.now) - reply.now
            etype = check.unit
            msg = (
                f"Rate limit reached for {check.scope} {check.owner!r} on {check.name}: "
                f"limit {int(check.limit)}, used {int(used)}. "
                f"Try again in {go_duration(wait)}."
            )
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return RateLimited(msg, type=etype, headers=headers)

    def settle(self, ticket: Ticket, prompt: int, completion: int, *, refund: bool = False) -> None:
        """Charge actual usage (``refund``: the attempt is undone, request count too).
        Counts an upstream reported are untrusted: kept within 0..MAX_TOKENS, so that
        the stores' arithmetic never leaves a counter's range."""
        if ticket.settled or not ticket.checks:
            ticket.settled = True
            return
        ticket.settled = True
        prompt = min(max(prompt, 0), MAX_TOKENS)
        completion = min(max(completion, 0), MAX_TOKENS)
        ticket.store.settle(ticket.rid, ticket.checks, prompt, completion, refund, self.lease)
        if ticket.store is not self.primary:  # decided in-process: write it back to Redis
            self.primary.settle(
                ticket.rid, ticket.checks, prompt, completion, refund, self.lease, True
            )

    async def status(
        self, key: KeySpec | str, pools: Collection[str] | None = None
    ) -> dict[str, Any]:
        """The caller's limits and budgets with what is used and left (GET /v1/quota).
        ``pools``: the pools the caller may be routed to; another pool's budget (the
        traffic of other teams) is not shown. None: every pool."""
        checks = list(self.planner.identity_checks(key))
        seen = {c.key for c in checks}
        for pool in self.planner.scoped_pools(key):
            if pools is not None and pool not in pools:
                continue
            for c in self.planner.checks(key, pool):
                if c.key not in seen:
                    seen.add(c.key)
                    checks.append(c)
        try:
            now, used = await self.primary.status(checks)
        except StoreUnavailable:
            now, used = await self.fallback.status(checks)
        limits: list[dict[str, Any]] = []
        budgets: list[dict[str, Any]] = []
        for c, u in zip(checks, used, strict=True):
            entry: dict[str, Any] = {
                "scope": c.scope, "owner": c.owner, "name": c.name, "unit": c.unit,
                "limit": c.display(c.limit), "used": c.display(u),
                "remaining": max(0, c.display(c.limit - u)),
            }  # fmt: skip
            if c.window:
                entry["window"] = c.window
                entry["resets_at"] = datetime.fromtimestamp(reset_at(c.window, now), UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
            if c.pools is not None:
                entry["pools"] = list(c.pools)
            (budgets if c.kind == "b" else limits).append(entry)
        return {"object": "quota", "limits": limits, "budgets": budgets}
