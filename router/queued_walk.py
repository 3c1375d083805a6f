"""Walking a route through pools with a queue (:mod:`router.routing.queueing`).

A pool with ``queue:`` is not skipped when saturated: after admission the
request waits there for its turn, holding its reservation, then is served like
anywhere else and hands its turn on when done. When the queue lets it go (its
wait is over, a newcomer of more right pushed it out, or its priority is
sheddable) the reservation is refunded and the walk moves on to the next pool;
when no pool served it, the last queue's refusal (429 with ``Retry-After``) is
the answer. A client that leaves while queued is refunded at once.

The same for every endpoint: a request's cost in the queue is what it reserved
(prompt bound plus output cap times outputs; an embeddings request's input).
The proxy walks with :class:`QueuedWalk` only when some pool of the runtime
queues; otherwise :class:`~router.attempts.Walk` does no queue work at all.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from router.attempts import Walk
from router.errors import SpillwayError
from router.quota import BudgetShort, Ticket
from router.routing.queueing import Place, QueueExit


class QueuedWalk(Walk):
    """A walk that waits its turn in the queued pools of its route."""

    __slots__ = ("place",)

    async def run(self) -> web.StreamResponse:
        assert self.x.principal is not None
        place = self.rt.scheduler.place(self.x.principal.team, self.request.headers)
        assert place is not None  # some pool queues
        self.place: Place = place  # team and priority band
        return await super().run()

    def _status(self, pool: str, last_pool: bool) -> str:
        status = super()._status(pool, last_pool)
        return self.rt.scheduler.admission(pool, status, self.place, last_pool=last_pool)

    def _failure(self, shorts: dict[str, BudgetShort], saturated: bool) -> SpillwayError:
        refusal = self.place.refusal
        if self.last is None and refusal is not None:
            return refusal  # the last queue let the request go
        return super()._failure(shorts, saturated)

    async def _admitted(
        self, i: int, ticket: Ticket, panic: bool, last_pool: bool
    ) -> web.StreamResponse | None:
        """A pool with a queue: wait for a turn holding the reservation, then serve;
        None (reservation refunded) when the queue lets the request go."""
        x = self.x
        pool = x.pools[i]
        gate = None if panic else self.rt.scheduler.gates.get(pool)
        if gate is None:
            return await super()._admitted(i, ticket, panic, last_pool)
        assert x.call is not None
        loop = self.loop
        started = loop.time()
        cost = ticket.prompt + ticket.out * x.call.outputs
        try:
            await gate.wait(self.place, cost, last_pool=last_pool)
        except QueueExit as left:
            self._settle(ticket, "refund")
            self._fallback(pool, i, left.reason)
            return None
        except asyncio.CancelledError:
            self._settle(ticket, "refund")  # the client left the queue: nothing was used
            raise
        finally:
            x.queued += loop.time() - started
        try:
            return await self._serve_pool(pool, ticket, False, last_pool)
        finally:
            gate.release()
