"""Waiting for a turn in a saturated pool: the asyncio side of the fair queue.

A pool with ``queue:`` gets a :class:`Gate`. A request walking its route is
admitted by quota on the pool first (so it waits holding its reservation), then
calls :meth:`Gate.wait`: it goes on at once when nothing waits and the pool has
room, otherwise it joins the pool's :class:`~router.routing.scheduler.FairQueue`
and waits until the gate gives it a turn, its ``max_wait_ms`` is over, or a
newcomer of more right pushes it out of a full queue. Those two end with
:class:`QueueExit`: the walk refunds the reservation and moves on to the next
pool, or answers 429 with ``Retry-After`` when none follows. A client that
disconnects while waiting leaves the queue at once (the walk refunds its
reservation, which frees its concurrency slot too).

Turns are given when the pool has room (:meth:`Balancer.room`: free
``max_concurrency`` slots of available members, one per available member
without a limit) net of the turns given whose request has not started yet.
The gate looks when a request finishes on the pool or on a pool sharing one of
its backends, when a request arrives, and every :data:`POLL_SECONDS` while
requests wait (room can also come from a scrape, a member coming back, or a
pool without a queue sharing a backend). One timer per gate, never a task.

Priority: the team's ``priority``; the ``x-spillway-priority`` header may lower
it, never raise it. It maps to the highest band configured at or below it (the
bands are the teams' priorities and 0), so metric labels stay bounded whatever
a client sends. A negative priority is sheddable: never queued; it is turned
away (on to the next pool, else 429) whenever the pool is saturated or others
wait.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from router.config import Config, QueueSettings
from router.errors import RateLimited, SpillwayError
from router.routing.balance import Balancer
from router.routing.scheduler import PRIORITY_HEADER, Entry, FairQueue, asked_priority, band_of

POLL_SECONDS = 0.05


class _Gauge(Protocol):
    def inc(self, amount: float = 1) -> None: ...
    def dec(self, amount: float = 1) -> None: ...


class _Histogram(Protocol):
    def observe(self, value: float) -> None: ...


class QueueSeries(Protocol):
    """What a gate records per team and band (:class:`router.metrics.QueueSeries`)."""

    @property
    def depth(self) -> _Gauge: ...
    @property
    def wait(self) -> _Histogram: ...
    def dropped(self, reason: str) -> None: ...
    def spilled(self) -> None: ...


SeriesFactory = Callable[[str, str, str], QueueSeries]  # (pool, team, priority band)


class QueueExit(Exception):
    """A request leaves a pool's queue without a turn; ``reason`` names why for the
    fallback metric (``shed``, ``queue_timeout``, ``queue_full``)."""

    def __init__(self, reason: str, error: SpillwayError) -> None:
        super().__init__(error.message)
        self.reason = reason
        self.error = error


@dataclass(slots=True, eq=False)
class Place:
    """One request's standing in the queues: its team and priority band."""

    team: str  # a configured team ('' for any other), so labels stay bounded
    band: int
    label: str
    refusal: SpillwayError | None = None  # the last queue's answer, when none served

    @property
    def sheddable(self) -> bool:
        return self.band < 0


@dataclass(slots=True, eq=False)
class _Waiter:
    future: asyncio.Future[str]  # "go", "timeout" or "full"
    series: QueueSeries


class Gate:
    """The queue in front of one pool."""

    def __init__(
        self,
        name: str,
        settings: QueueSettings,
        balancer: Balancer,
        weights: Mapping[str, float],
        series: SeriesFactory,
    ) -> None:
        self.name = name
        self.queue = FairQueue(
            max_depth=settings.max_depth, min_share=settings.min_share, weights=weights
        )
        self.configure(settings, balancer, weights)
        self.in_transit = 0  # turns given whose request has not started yet
        self.peers: list[Gate] = []  # gates of pools sharing a backend with this one
        self._series = series
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def configure(
        self, settings: QueueSettings, balancer: Balancer, weights: Mapping[str, float]
    ) -> None:
        """Settings and members of a (reloaded) config; requests waiting keep their place
        and deadline."""
        self.settings = settings
        self.max_wait = settings.max_wait_ms / 1000
        self.balancer = balancer
        self.queue.configure(
            max_depth=settings.max_depth, min_share=settings.min_share, weights=weights
        )

    def room(self) -> int:
        return self.balancer.room() - self.in_transit

    def series(self, place: Place) -> QueueSeries:
        return self._series(self.name, place.team, place.label)

    async def wait(self, place: Place, cost: float, *, last_pool: bool) -> None:
        """Return when the request may go on to a member; raise :class:`QueueExit`."""
        series = self.series(place)
        queue = self.queue
        if not queue and self.room() > 0:
            queue.passed(place.team, place.band, cost)
            series.wait.observe(0.0)
            return
        if place.sheddable:
            raise self.refuse(place, "shed", last_pool)
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        future: asyncio.Future[str] = loop.create_future()
        entry = Entry(place.team, place.band, cost, now, now + self.max_wait,
                      waiter=_Waiter(future, series))  # fmt: skip
        accepted, pushed_out = queue.push(entry)
        if pushed_out is not None:
            self._finish(pushed_out, "full")
        if not accepted:
            raise self.refuse(place, "full", last_pool)
        series.depth.inc()
        self.dispatch()
        self._arm(now)
        try:
            outcome = await future
        except asyncio.CancelledError:
            if not future.cancelled():  # woken just before the client left
                if future.result() == "go":
                    self.in_transit -= 1
                    self.dispatch()
                else:
                    series.dropped("disconnect")
            elif queue.remove(entry):
                series.depth.dec()
                series.dropped("disconnect")
            raise
        if outcome != "go":
            raise self.refuse(place, outcome, last_pool)
        self.in_transit -= 1
        series.wait.observe(loop.time() - now)

    def refuse(self, place: Place, why: str, last_pool: bool) -> QueueExit:
        """Count a request the queue lets go, and the answer it gets if nothing serves it."""
        series = self.series(place)
        series.dropped(why)
        if not last_pool:
            series.spilled()
        s = self.settings
        if why == "shed":
            reason = "shed"
            message = (
                "The model's pool is at capacity and requests of this priority are not "
                "queued; retry later."
            )
        elif why == "full":
            reason = "queue_full"
            message = (
                f"The model's pool is at capacity and its queue is full ({s.max_depth} "
                "requests waiting); retry shortly."
            )
        else:
            reason = "queue_timeout"
            message = (
                f"The model's pool stayed at capacity for the {s.max_wait_ms} ms a request "
                "may wait in its queue; retry shortly."
            )
        retry_after = max(1, math.ceil(self.max_wait))
        error = RateLimited(message, code=reason, headers={"Retry-After": str(retry_after)})
        place.refusal = error
        return QueueExit(reason, error)

    def release(self) -> None:
        """A request finished on the pool: its slot goes to the next in line, here or
        in a pool sharing a backend."""
        if self.queue:
            self.dispatch()
        for peer in self.peers:
            if peer.queue:
                peer.dispatch()

    def dispatch(self) -> None:
        """Give turns while the pool has room, in the fair queue's order."""
        queue = self.queue
        while queue and self.room() > 0:
            entry = queue.pop()
            assert entry is not None
            waiter: _Waiter = entry.waiter
            waiter.series.depth.dec()
            if waiter.future.done():  # cancelled: the client left
                waiter.series.dropped("disconnect")
                continue
            waiter.future.set_result("go")
            self.in_transit += 1

    def _finish(self, entry: Entry, outcome: str) -> None:
        """An entry the queue took out (timed out, pushed out): wake its request."""
        waiter: _Waiter = entry.waiter
        waiter.series.depth.dec()
        if waiter.future.done():
            waiter.series.dropped("disconnect")
        else:
            waiter.future.set_result(outcome)

    def _arm(self, now: float) -> None:
        """One timer: the next deadline, or the next look for room while requests wait."""
        deadline = self.queue.next_deadline()
        if deadline is None or self._loop is None:
            return
        at = min(deadline, now + POLL_SECONDS)
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._tick)
        self._timer_at = at

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        assert self._loop is not None
        now = self._loop.time()
        for entry in self.queue.expire(now + 1e-3):
            self._finish(entry, "timeout")
        self.dispatch()
        self._arm(now)


class Scheduler:
    """The gates of one runtime's queued pools, and each request's place.

    ``previous``: the gates of the runtime a reload replaces; a pool that still
    queues keeps its gate (reconfigured), so requests waiting in it keep their place
    and new ones line up behind them."""

    def __init__(
        self,
        cfg: Config,
        balancers: Mapping[str, Balancer],
        series: SeriesFactory,
        previous: Mapping[str, Gate] | None = None,
    ) -> None:
        self.priorities = {name: team.priority for name, team in cfg.teams.items()}
        weights = {name: team.weight for name, team in cfg.teams.items()}
        self.bands = sorted({0, *self.priorities.values()})
        self.gates: dict[str, Gate] = {}
        for name, pool in cfg.pools.items():
            if pool.queue is None:
                continue
            gate = (previous or {}).get(name)
            if gate is None:
                gate = Gate(name, pool.queue, balancers[name], weights, series)
            else:
                gate.configure(pool.queue, balancers[name], weights)
            self.gates[name] = gate
        for name, gate in self.gates.items():
            backends = {m.backend for m in cfg.pools[name].members}
            gate.peers = [
                other for other_name, other in self.gates.items()
                if other_name != name
                and backends & {m.backend for m in cfg.pools[other_name].members}
            ]  # fmt: skip

    def place(self, team: str, headers: Mapping[str, str]) -> Place | None:
        """The request's team and band; None when no pool queues. A malformed
        ``x-spillway-priority`` is a 400."""
        if not self.gates:
            return None
        known = team in self.priorities
        priority = self.priorities[team] if known else 0
        asked = headers.get(PRIORITY_HEADER)
        if asked is not None:
            priority = min(priority, asked_priority(asked))
        band = band_of(self.bands, priority)
        return Place(team if known else "", band, str(band))

    def admission(self, pool: str, status: str, place: Place, *, last_pool: bool) -> str:
        """How the walk treats a pool: ``ok`` (admit; a queued pool may then make the
        request wait), ``saturated`` or ``unhealthy`` (skip), ``shed`` (skip, counted)."""
        gate = self.gates.get(pool)
        if gate is None or status == "unhealthy":
            return status
        if place.sheddable and (status == "saturated" or gate.queue):
            gate.refuse(place, "shed", last_pool)
            return "shed"
        return "ok"
