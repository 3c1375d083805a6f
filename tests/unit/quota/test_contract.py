"""One table of quota cases, run on both stores: the Lua scripts on a real Redis and the
in-process store must give the same answers, step for step.

Each case is a list of steps on one plan; what a step expects is written once and
checked against both stores. Expected rate-limit figures never depend on where in a
calendar minute the case runs: a burst inside the sliding window counts the same.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from router.quota.base import ADMITTED, BUDGET_SHORT, RATE_LIMITED, Store
from router.quota.memory_store import MemoryStore
from router.quota.plan import RATE_SPAN, Planner
from router.quota.redis_store import RedisStore
from tests.unit.quota.test_stores import Clock, quota_config

LEASE = 60


@dataclass
class Admit:
    rid: str
    prompt: int
    out: int
    code: int
    granted: int | None = None  # out as granted (clamped), or what would fit
    failed: str | None = None  # the name of the refusing check
    min_out: int = 0


@dataclass
class Settle:
    rid: str
    prompt: int
    completion: int
    refund: bool = False
    orphan: bool = False


@dataclass
class Used:
    values: list[float]  # per check, in plan order


Step = Admit | Settle | Used

# fmt: off
TEAM_LIMITS = {"limits": {"requests_per_minute": 3, "concurrent": 2},
               "budgets": [{"tokens_per_day": 1000}]}

CASES: dict[str, tuple[dict[str, Any], list[Step]]] = {
    "all or nothing": (TEAM_LIMITS, [
        Admit("a", 100, 200, ADMITTED, 200),
        Admit("b", 100, 200, ADMITTED, 200),
        Used([2, 2, 600]),
        Admit("c", 100, 10, RATE_LIMITED, failed="concurrent"),
        Used([2, 2, 600]),  # the refused request reserved nothing
        Settle("a", 10, 20),
        Used([2, 1, 330]),
        Admit("c", 100, 10, ADMITTED, 10),
        Admit("d", 1, 1, RATE_LIMITED, failed="requests_per_minute"),
    ]),
    "settled once, replay does nothing": (TEAM_LIMITS, [
        Admit("a", 100, 400, ADMITTED, 400),
        Settle("a", 20, 30),
        Settle("a", 20, 30),
        Settle("a", 0, 0, refund=True),  # too late: settled
        Used([1, 0, 50]),
        Admit("a", 100, 400, ADMITTED, 400),
        Used([1, 0, 50]),
    ]),
    "refund gives the request back": (TEAM_LIMITS, [
        Admit("a", 100, 400, ADMITTED),
        Settle("a", 0, 0, refund=True),
        Used([0, 0, 0]),
    ]),
    "clamp or refuse": ({"budgets": [{"tokens_per_day": 1000}]}, [
        Admit("a", 100, 700, ADMITTED, 700),
        Admit("b", 100, 400, BUDGET_SHORT, 100, failed="tokens_per_day"),
        Admit("c", 100, 400, ADMITTED, 100, min_out=1),
        Used([1000]),
        Admit("d", 10, 1, BUDGET_SHORT, failed="tokens_per_day", min_out=1),
    ]),
    "orphan refund first: a late admission does nothing": (TEAM_LIMITS, [
        Settle("a", 0, 0, refund=True, orphan=True),
        Admit("a", 100, 400, ADMITTED, 0),  # the admission lands after its refund
        Used([0, 0, 0]),
        Settle("a", 0, 0, refund=True, orphan=True),
        Used([0, 0, 0]),
    ]),
    "orphan refund of an admission made: given back, then written back": (TEAM_LIMITS, [
        Admit("a", 100, 400, ADMITTED, 400),
        Settle("a", 0, 0, refund=True, orphan=True),
        Used([0, 0, 0]),
        Settle("a", 40, 60, orphan=True),  # what was served in-process meanwhile
        Settle("a", 40, 60, orphan=True),
        Used([1, 0, 100]),
    ]),
    "written back once: charged in full": (TEAM_LIMITS, [
        Settle("a", 40, 60, orphan=True),
        Settle("a", 40, 60, orphan=True),  # a retry
        Used([1, 0, 100]),
        Admit("a", 100, 400, ADMITTED, 0),
        Used([1, 0, 100]),
    ]),
    "refunded then written back: charged once": (TEAM_LIMITS, [
        Settle("a", 0, 0, refund=True, orphan=True),
        Settle("a", 40, 60, orphan=True),
        Settle("a", 40, 60, orphan=True),
        Used([1, 0, 100]),
    ]),
    "written back onto its admission: settled as usual": (TEAM_LIMITS, [
        Admit("a", 100, 400, ADMITTED, 400),
        Settle("a", 40, 60, orphan=True),
        Used([1, 0, 100]),
        Settle("a", 0, 0, refund=True, orphan=True),
        Used([1, 0, 100]),
    ]),
    "not orphan, no record: nothing": (TEAM_LIMITS, [
        Settle("a", 40, 60),
        Used([0, 0, 0]),
    ]),
    "tokens per minute with refunds": ({"limits": {"tokens_per_minute": 1000}}, [
        Admit("a", 300, 300, ADMITTED, 300),
        Admit("b", 300, 300, RATE_LIMITED, failed="tokens_per_minute"),
        Settle("a", 100, 50),
        Used([150]),
        Admit("b", 300, 300, ADMITTED, 300),
        Settle("b", 0, 0, refund=True),
        Used([150]),
    ]),
}
# fmt: on


@pytest.mark.parametrize("case", list(CASES))
async def test_case(store: Store, key_prefix: str, case: str) -> None:
    if isinstance(store, MemoryStore):
        store.clock = Clock()  # one instant: no minute ever turns
    for attempt in range(3):
        began, ended = await run_case(store, f"{key_prefix}-{attempt}", case)
        # a minute that turned mid-case makes the rate counts slide: run it again
        if int(began // RATE_SPAN) == int(ended // RATE_SPAN):
            return
    raise AssertionError("three minutes turned during three runs of one case")


async def run_case(store: Store, key_prefix: str, case: str) -> tuple[float, float]:
    """Run one case; the store's clock before and after."""
    team, steps = CASES[case]
    checks = Planner(quota_config(key_prefix, **team)).checks("k", "local")
    began, _ = await store.status(checks)
    for n, step in enumerate(steps):
        where = f"{case}, step {n}: {step}"
        if isinstance(step, Admit):
            reply = await store.admit(step.rid, checks, step.prompt, step.out, 1, step.min_out,
                                      LEASE)  # fmt: skip
            assert reply.code == step.code, where
            if step.granted is not None:
                assert reply.out == step.granted, where
            if step.failed is not None:
                assert checks[reply.failed].name == step.failed, where
        elif isinstance(step, Settle):
            store.settle(step.rid, checks, step.prompt, step.completion, step.refund, LEASE,
                         step.orphan)  # fmt: skip
            if isinstance(store, RedisStore):
                await asyncio.sleep(0.03)  # settlements are queued
        else:
            _, used = await store.status(checks)
            if used != step.values:  # (a turned minute is told apart by the caller)
                ended, _ = await store.status(checks)
                if int(began // RATE_SPAN) != int(ended // RATE_SPAN):
                    return began, ended
            assert used == step.values, where
    ended, _ = await store.status(checks)
    return began, ended
