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
* ``prefix_affinity`` keeps a conversation on the member that holds its prefix
  cache: rendezvous hashing of the conversation's opening (the call's
  ``prefix_key``: a chat conversation's opening messages, a completions
  prompt's or embeddings input's leading bytes) with bounded load
  (:mod:`router.routing.prefix`) among the members serving the call, the load
  being the requests at the member as ``least_loaded`` counts them;
  least-loaded when every member is over the bound or the call has no key.

Session affinity (``affinity: user|header``) puts first the member that
rendezvous hashing gives the session key, among available members: the same
key lands on the same member on every replica, and only its own sessions move
when a member leaves.

A member serves the client APIs of its backend (``apis``; Responses as its
``responses`` setting says) and, when it declares
``fim``, fill-in-the-middle; the walk skips members that cannot serve a call.

A member is saturated when it is at its ``max_concurrency`` or its waiting
queue is past the pool's ``max_waiting`` (scraped; when the scrape found the
server queueing, every request this gateway sent since counts as waiting too);
a pool is saturated when every healthy member is, and unhealthy when no member
is healthy. :meth:`Balancer.room` counts how many more requests the pool takes
now, for a pool that queues.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from router.config import Pool
from router.fim import FimTemplate
from router.routing.health import BackendState
from router.routing.prefix import bounded_choice, score
from router.serving import member_apis

EVERY_API = frozenset(("chat", "completions", "embeddings"))
TOKENIZE = frozenset(("tokenize",))  # a member declaring ``tokenize``: vLLM's /tokenize

PoolStatus = Literal["ok", "saturated", "unhealthy"]


class Prefixed(Protocol):
    """A call ``prefix_affinity`` can place (:class:`router.inbound.base.ClientCall`)."""

    @property
    def apis(self) -> frozenset[str]: ...
    @property
    def fim(self) -> bool: ...

    def prefix_key(self, limit: int) -> bytes | None:
        """The digest of the opening of its prompt (reading at most ``limit`` bytes);
        None when it has none to place by."""
        ...


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
        self.epsilon = cfg.prefix_affinity.epsilon
        self.max_prefix_bytes = cfg.prefix_affinity.max_prefix_bytes
        self.members = [
            Member(
                pool=name,
                index=i,
                backend=m.backend,
                model=m.model,
                weight=m.weight,
                state=states[m.backend],
                ident=f"{m.backend}\x00{m.model}".encode(),
                apis=(EVERY_API if apis is None else member_apis(apis[m.backend], m.responses))
                | (TOKENIZE if m.tokenize else frozenset()),
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
        return self.max_waiting is not None and s.load_known and s.waiting_now() > self.max_waiting

    def available(self, m: Member) -> bool:
        return m.state.healthy and not self.saturated(m)

    def room(self) -> int:
        """Requests the pool takes now: free slots under ``max_concurrency`` of each
        available member, one for an available member without a limit."""
        free = 0
        for m in self.members:
            s = m.state
            if not s.healthy or self.saturated(m):
                continue
            free += 1 if s.max_concurrency is None else s.max_concurrency - s.inflight
        return free

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

    def order(
        self,
        now: float = 0.0,
        session: str | None = None,
        call: Prefixed | None = None,
    ) -> list[Member]:
        """``session``: the affinity key; ``call``: what ``prefix_affinity`` places."""
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
            elif self.strategy == "prefix_affinity" and call is not None:
                avail = self._by_prefix(avail, call)
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
        if self.strategy in ("least_loaded", "prefix_affinity"):
            return sorted(rotated, key=_load)  # stable: ties keep the rotation
        return sorted(rotated, key=_latency_cost)

    def _by_prefix(self, avail: list[Member], call: Prefixed) -> list[Member]:
        """The member serving the call that its key hashes to within the load bound,
        then least-loaded (only least-loaded when the call has no key)."""
        rest = self._by_strategy(avail)
        key = call.prefix_key(self.max_prefix_bytes)
        if key is None:
            return rest
        apis, fim = call.apis, call.fim
        serving = [m for m in avail if m.serves(apis, fim)]
        ranked = sorted(serving, key=lambda m: score(key, m.ident, m.weight), reverse=True)
        first = bounded_choice(ranked, _in_flight, _weight, self.epsilon)
        if first is None:
            return rest
        rest.remove(first)
        return [first, *rest]

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


def _in_flight(m: Member) -> float:
    """Requests at the member: scraped running + waiting, corrected since the scrape."""
    return m.state.queue()


def _weight(m: Member) -> float:
    return m.weight


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
    key = session.encode("utf-8", "surrogateescape")  # a header's bytes, whatever they are
    best = members[0]
    best_score = -math.inf
    for m in members:
        got = score(key, m.ident, m.weight)
        if got > best_score:
            best, best_score = m, got
    return best
