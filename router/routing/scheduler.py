"""Weighted fair queueing over teams in priority bands (pure and deterministic).

One :class:`FairQueue` per queued pool holds the requests waiting for it. No
clock and no I/O here: the caller stamps each :class:`Entry` with its arrival
and deadline and says what time it is when expiring, so every decision can be
replayed in a test.

Order. The highest priority band with requests waiting is served first, except
that every lower band with requests waiting is owed ``min_share`` of whatever
is served while it waits (by cost): a band that is owed something goes first,
so a flood in a higher band slows a lower band down to ``min_share`` but never
stops it. Within a band, teams share by weight with start-time fair queueing
(Goyal, Vin and Cheng, 1996): the first request of each team carries a virtual
start tag, the smallest tag is served, and serving a request of cost ``c``
moves its team's next tag ``c / weight`` further and the band's virtual time
to the tag served. A request that went straight through (nothing waited) is
tagged and served the same way (:meth:`FairQueue.passed`), so when a queue
forms the team that was using the pool goes after the ones that were not. A
team that was idle starts at the band's virtual time: no credit for having
been idle, and no more than one request's debt from its past.

Cost is the request's reserved token bound (prompt bound + output cap x n), so
a team sending huge prompts gets its share of tokens, not more by count.

Depth. When ``max_depth`` requests wait, a newcomer pushes out the newest
request of the heaviest team (queued cost / weight) of the lowest band — if
that band is below the newcomer's, or is the newcomer's and that team is
heavier than the newcomer's team would be with it; otherwise the newcomer is
refused. A flooding team fills the queue and then displaces only itself.
"""

from __future__ import annotations

import heapq
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from router.errors import InvalidRequest

PRIORITY_HEADER = "x-spillway-priority"
_PRIORITY = re.compile(r"^\s*[+-]?[0-9]{1,4}\s*$")
WAITING, SERVED, GONE = 0, 1, 2
_OWED = 1e-9  # a credit above this is owed (below: rounding)


def asked_priority(value: str) -> int:
    """The priority an ``x-spillway-priority`` header asks for; a 400 when malformed."""
    if not _PRIORITY.match(value):
        raise InvalidRequest(
            f"Header {PRIORITY_HEADER} must be an integer (it can lower the team's "
            "priority, never raise it).",
            code="invalid_priority",
        )
    return int(value)


def band_of(levels: Iterable[int], priority: int) -> int:
    """The highest of the configured ``levels`` at or below ``priority``; a negative
    priority below them all is the sheddable band -1 (or the lowest level)."""
    best: int | None = None
    lowest = 0
    for level in levels:
        lowest = min(lowest, level)
        if level <= priority and (best is None or level > best):
            best = level
    return best if best is not None else min(-1, lowest)


@dataclass(slots=True, eq=False)
class Entry:
    """One waiting request; ``waiter`` is whatever the caller wakes it with."""

    team: str
    band: int
    cost: float
    arrived: float
    deadline: float
    waiter: Any = None
    seq: int = 0
    state: int = WAITING


@dataclass(slots=True, eq=False)
class _Flow:
    """One team's requests in one band, oldest first (gone ones skipped lazily)."""

    team: str
    weight: float
    entries: deque[Entry] = field(default_factory=deque)
    live: int = 0
    cost: float = 0.0  # queued cost
    start: float = 0.0  # virtual start tag of the first live entry
    finish: float = 0.0  # virtual finish tag of the last entry served

    def head(self) -> Entry:
        entries = self.entries
        while entries[0].state != WAITING:
            entries.popleft()
        return entries[0]

    def tail(self) -> Entry:
        entries = self.entries
        while entries[-1].state != WAITING:
            entries.pop()
        return entries[-1]

    def load(self) -> float:
        return self.cost / self.weight


@dataclass(slots=True, eq=False)
class _Band:
    priority: int
    flows: dict[str, _Flow] = field(default_factory=dict)
    active: dict[str, _Flow] = field(default_factory=dict)  # flows with live entries
    live: int = 0
    vtime: float = 0.0
    credit: float = 0.0  # what this band is owed of its minimum share


class FairQueue:
    def __init__(self, *, max_depth: int, min_share: float, weights: Mapping[str, float]) -> None:
        self.max_depth = max_depth
        self.min_share = min_share
        self.weights = dict(weights)
        self._bands: dict[int, _Band] = {}
        self._live = 0
        self._seq = 0
        self._deadlines: list[tuple[float, int, Entry]] = []

    def __len__(self) -> int:
        return self._live

    def configure(self, *, max_depth: int, min_share: float, weights: Mapping[str, float]) -> None:
        """New settings (a config reload); what waits keeps its place."""
        self.max_depth = max_depth
        self.min_share = min_share
        self.weights = dict(weights)
        for band in self._bands.values():
            for team, flow in band.flows.items():
                flow.weight = self.weights.get(team, 1.0)

    # -- in -------------------------------------------------------------------------
    def push(self, entry: Entry) -> tuple[bool, Entry | None]:
        """Queue ``entry``: (accepted, the entry pushed out to make room, if any)."""
        victim = None
        if self._live >= self.max_depth:
            victim = self._victim(entry)
            if victim is None:
                return False, None
            self.remove(victim)
        self._seq += 1
        entry.seq = self._seq
        entry.state = WAITING
        band = self._band(entry.band)
        flow = self._flow(band, entry.team)
        if not flow.live:
            flow.start = max(band.vtime, flow.finish)
            band.active[entry.team] = flow
        flow.entries.append(entry)
        flow.live += 1
        flow.cost += entry.cost
        band.live += 1
        self._live += 1
        heapq.heappush(self._deadlines, (entry.deadline, entry.seq, entry))
        return True, victim

    def _flow(self, band: _Band, team: str) -> _Flow:
        flow = band.flows.get(team)
        if flow is None:
            flow = band.flows[team] = _Flow(team, self.weights.get(team, 1.0))
        return flow

    def _band(self, priority: int) -> _Band:
        band = self._bands.get(priority)
        if band is None:
            band = self._bands[priority] = _Band(priority)
        return band

    def passed(self, team: str, band: int, cost: float) -> None:
        """A request went straight through (nothing waited): serve it in virtual time."""
        group = self._band(band)
        flow = self._flow(group, team)
        if flow.live:
            return  # cannot happen while requests wait; their tags stay as they are
        start = max(group.vtime, flow.finish)
        flow.finish = start + cost / flow.weight
        group.vtime = start

    def _victim(self, newcomer: Entry) -> Entry | None:
        lowest = min((b for b in self._bands.values() if b.live), key=lambda b: b.priority)
        if lowest.priority > newcomer.band:
            return None
        heaviest = max(lowest.active.values(), key=_Flow.load)
        if lowest.priority == newcomer.band:
            if heaviest.team == newcomer.team:
                return None
            own = lowest.active.get(newcomer.team)
            weight = self.weights.get(newcomer.team, 1.0)
            mine = ((own.cost if own is not None else 0.0) + newcomer.cost) / weight
            if heaviest.load() <= mine:
                return None
        return heaviest.tail()

    # -- out ------------------------------------------------------------------------
    def pop(self) -> Entry | None:
        """The next request to serve, or None when nothing waits."""
        if not self._live:
            return None
        waiting = sorted((b for b in self._bands.values() if b.live), key=lambda b: -b.priority)
        band = waiting[0]
        if self.min_share and len(waiting) > 1:
            for lower in waiting[1:]:
                if lower.credit > _OWED:
                    band = lower
                    break
        flow = min(band.active.values(), key=lambda f: (f.start, f.head().seq))
        entry = flow.head()
        flow.entries.popleft()
        start = flow.start
        self._take(band, flow, entry, SERVED)
        flow.finish = start + entry.cost / flow.weight
        band.vtime = max(band.vtime, start)
        if flow.live:
            flow.start = flow.finish
        if self.min_share and len(waiting) > 1:
            for lower in waiting[1:]:
                if lower.live:
                    lower.credit += self.min_share * entry.cost
            if band is not waiting[0] and band.live:
                band.credit -= entry.cost
        return entry

    def remove(self, entry: Entry) -> bool:
        """Take a waiting entry out (its client left); False when it is not waiting."""
        if entry.state != WAITING:
            return False
        band = self._bands[entry.band]
        self._take(band, band.flows[entry.team], entry, GONE)
        return True

    def expire(self, now: float) -> list[Entry]:
        """Take out and return every waiting entry whose deadline is at or before ``now``."""
        out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[2]
            if self.remove(entry):
                out.append(entry)
        return out

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and heap[0][2].state != WAITING:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _take(self, band: _Band, flow: _Flow, entry: Entry, state: int) -> None:
        entry.state = state
        flow.live -= 1
        flow.cost -= entry.cost
        band.live -= 1
        self._live -= 1
        if not flow.live:
            flow.cost = 0.0  # no float residue
            flow.entries.clear()
            del band.active[flow.team]
        if not band.live:
            band.credit = 0.0

    # -- views ----------------------------------------------------------------------
    def depths(self) -> Iterator[tuple[int, str, int]]:
        """(band, team, requests waiting) for every team with requests waiting."""
        for priority in sorted(self._bands, reverse=True):
            for team, flow in self._bands[priority].active.items():
                yield priority, team, flow.live
