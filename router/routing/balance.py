"""Strategies choosing a member inside a pool (pure apart from their counters).

``order()`` returns the members a request may try, best first: the strategy's
choice, then the other available members, then (last, only tried when the
pool is unhealthy as a whole) the ejected or saturated ones.

* ``round_robin`` rotates; ``weighted`` is smooth weighted round robin (nginx).
* ``least_loaded`` compares requests at the server: scraped running + waiting
  corrected by this gateway's in-flight since the scrape (in-flight alone
  without ``metrics_url``), waiting counted twice, per unit of weight; ties go
  to the lower KV-cache usage, then rotate.
* ``lowest_latency`` is peak-EWMA: moving average of time to first byte times
  (in-flight + 1), so the fastest member takes traffic until its queue makes it
  slower than the next; members never measured go first.

Session affinity (``affinity: user|header``) puts first the member that
rendezvous hashing gives the session key, among available members: the same
key lands on the same member on every replica, and only its own sessions move
when a member leaves.

A member serves the client APIs of its backend (``apis``) and, when it declares
``fim``, fill-in-the-middle; the walk skips members that cannot serve a call.

A member is saturated when it is at its ``max_concurrency`` or its scraped
waiting queue is past the pool's ``max_waiting``; a pool is saturated when
every healthy member is, and unhealthy when no member is healthy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from router.config import Pool
from router.fim import FimTemplate
from router.routing.health import BackendState

EVERY_API = frozenset(("chat", "completions", "embeddings"))

PoolStatus = Literal["ok", "saturated", "unhealthy"]


@dataclass(slots=True, eq=False)
class Member:
    pool: str
    index: int
    backend: str
    model: str
    weight: float
    state: BackendState
    ident: bytes  # stable identity for rendezvous hashing
    apis: frozenset[str] = EVERY_API  # the client APIs its backend serves
    fills: bool = False  # declares fim: serves completions with `suffix`
    fim: FimTemplate | None = None  # the template the gateway renders (None: native)

    def serves(self, apis: frozenset[str], fim: bool) -> bool:
        """It has one of ``apis`` (and fills in the middle, when ``fim``)."""
        return (self.fills or not fim) and not self.apis.isdisjoint(apis)


class Balancer:
    """One per pool per config; holds the strategy's counters."""

    def __init__(
        self,
        name: str,
        cfg: Pool,
        states: Mapping[str, BackendState],
        apis: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """``apis``: the client APIs of each backend (default: every API)."""
        self.name = name
        self.strategy = cfg.strategy
        self.max_waiting = cfg.max_waiting
        self.affinity = cfg.affinity
        self.affinity_header = cfg.affinity_header
        self.members = [
            Member(
                pool=name,
                index=i,
                backend=m.backend,
                model=m.model,
                weight=m.weight,
                state=states[m.backend],
                ident=f"{m.backend}\x00{m.model}".encode(),
                apis=EVERY_API if apis is None else apis[m.backend],
                fills=m.fim is not None,
                fim=m.fim_template(),
            )
            for i, m in enumerate(cfg.members)
        ]
        self._serves = {
            (api, fim) for m in self.members for api in m.apis for fim in (False, True)
            if m.serves(frozenset((api,)), fim)
        }  # fmt: skip
        self._answers: dict[tuple[frozenset[str], bool], bool] = {}
        self._next = 0
        self._current = [0.0] * len(self.members)  # smooth weighted round robin

    def serves(self, apis: frozenset[str], fim: bool) -> bool:
        """Some member can serve a call in one of ``apis`` (with ``suffix`` when ``fim``)."""
        key = (apis, fim)
        got = self._answers.get(key)  # bounded: one entry per codec, with and without fim
        if got is None:
            got = self._answers[key] = any((api, fim) in self._serves for api in apis)
        return got

    # -- capacity ---------------------------------------------------------------------
    def saturated(self, m: Member) -> bool:
        s = m.state
        if s.max_concurrency is not None and s.inflight >= s.max_concurrency:
            return True
        return self.max_waiting is not None and s.load_known and s.waiting > self.max_waiting

    def available(self, m: Member) -> bool:
        return m.state.healthy and not self.saturated(m)

    def status(self) -> PoolStatus:
        healthy = False
        for m in self.members:
            if m.state.healthy:
                healthy = True
                if not self.saturated(m):
                    return "ok"
        return "saturated" if healthy else "unhealthy"

    # -- choice -----------------------------------------------------------------------
    def session_key(self, user: str | None, headers: Mapping[str, str]) -> str | None:
        if self.affinity == "user":
            return user or None
        if self.affinity == "header":
            return headers.get(self.affinity_header) or None
        return None

    def order(self, now: float = 0.0, session: str | None = None) -> list[Member]:
        members = self.members
        if len(members) == 1:
            return list(members)
        avail = [m for m in members if self.available(m)]
        if not avail:
            return list(members)
        if len(avail) > 1:
            if session is not None:
                first = _rendezvous(avail, session)
                avail.remove(first)
                avail.insert(0, first)
            else:
                avail = self._by_strategy(avail)
            throttled = [m for m in avail if m.state.throttled_until > now]
            if throttled and len(throttled) < len(avail):
                avail = [m for m in avail if m.state.throttled_until <= now] + throttled
        if len(avail) < len(members):
            avail += [m for m in members if m not in avail]
        return avail

    def _by_strategy(self, avail: list[Member]) -> list[Member]:
        start = self._next % len(avail)
        self._next += 1
        rotated = avail[start:] + avail[:start]
        if self.strategy == "round_robin":
            return rotated
        if self.strategy == "weighted":
            first = self._pick_weighted(avail)
            return [first, *(m for m in avail if m is not first)]
        if self.strategy == "least_loaded":
            return sorted(rotated, key=_load)  # stable: ties keep the rotation
        return sorted(rotated, key=_latency_cost)

    def _pick_weighted(self, avail: list[Member]) -> Member:
        total = 0.0
        best: Member | None = None
        cur = self._current
        for m in avail:
            cur[m.index] += m.weight
            total += m.weight
            if best is None or cur[m.index] > cur[best.index]:
                best = m
        assert best is not None
        cur[best.index] -= total
        return best


def _load(m: Member) -> tuple[float, float]:
    s = m.state
    waiting = s.waiting if s.load_known else 0.0
    return ((s.queue() + waiting) / m.weight, s.kv_cache if s.load_known else 0.0)


def _latency_cost(m: Member) -> float:
    s = m.state
    if s.ttft_ewma is None:
        return 0.0
    return s.ttft_ewma * (s.inflight + 1) / m.weight


def _rendezvous(members: list[Member], session: str) -> Member:
    """Weighted rendezvous (highest random weight) hashing."""
    key = session.encode()
    best = members[0]
    best_score = -math.inf
    for m in members:
        digest = hashlib.blake2b(key + b"\x00" + m.ident, digest_size=8).digest()
        u = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
        score = -m.weight / math.log(u)
        if score > best_score:
            best, best_score = m, score
    return best
