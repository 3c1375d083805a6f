"""The contract both stores keep (Redis for many replicas, in-process for one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from router.quota.plan import Check

ADMITTED, RATE_LIMITED, BUDGET_SHORT = 1, 2, 3


class StoreUnavailable(Exception):
    """The store could not answer (Redis down or too slow)."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int  # ADMITTED | RATE_LIMITED | BUDGET_SHORT
    out: int  # output tokens granted (clamped) or, when short, what would fit
    failed: int  # index of the check that refused, -1 when admitted
    now: float  # the store's clock, epoch seconds
    wait: float  # rate limited: seconds until the refusing limit has room (else 0)
    used: tuple[float, ...]  # per check: after admission, or before a refusal (whole)


class Store(Protocol):
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
        """Reserve on every check, or none. ``min_out`` 0 forbids clamping."""
        ...

    def settle(
        self, rid: str, checks: Sequence[Check], prompt: int, completion: int, refund: bool,
        lease: int, orphan: bool = False,
    ) -> None:  # fmt: skip
        """Queue the settlement of ``rid`` with the tokens used (idempotent); never blocks
        the caller. ``refund`` undoes the attempt, its request count included.
        ``orphan``: this store may never have seen the admission (its outcome was
        unknown, or it was decided elsewhere): without a record the usage is charged in
        full and a record is left so a late admission does nothing."""
        ...

    async def status(self, checks: Sequence[Check]) -> tuple[float, list[float]]:
        """(now, used per check) for the current windows."""
        ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None:
        """Flush queued settlements and close."""
        ...
