"""The fair queue alone: order, shares, bands, depth, timeouts (no clock, no sockets)."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping

import pytest

from router.routing.scheduler import Entry, FairQueue


def queue(
    weights: Mapping[str, float] | None = None, *, min_share: float = 0.0, max_depth: int = 10_000
) -> FairQueue:
    return FairQueue(max_depth=max_depth, min_share=min_share, weights=weights or {})


def entry(
    team: str, cost: float = 1.0, band: int = 0, at: float = 0.0, wait: float = 60.0
) -> Entry:
    return Entry(team, band, cost, at, at + wait)


def fill(q: FairQueue, team: str, n: int, **kw: float) -> list[Entry]:
    out = []
    for _ in range(n):
        e = entry(team, **kw)  # type: ignore[arg-type]
        assert q.push(e) == (True, None)
        out.append(e)
    return out


def served(q: FairQueue, n: int) -> list[str]:
    out = []
    for _ in range(n):
        e = q.pop()
        assert e is not None
        out.append(e.team)
    return out


def test_fifo_within_a_team_and_empty_pop() -> None:
    q = queue()
    assert q.pop() is None
    es = fill(q, "a", 3)
    assert [q.pop() for _ in range(3)] == es
    assert q.pop() is None and len(q) == 0


def test_two_backlogged_teams_alternate() -> None:
    q = queue()
    fill(q, "a", 10)
    fill(q, "b", 10)
    assert served(q, 6) == ["a", "b", "a", "b", "a", "b"]


def test_weights_share_the_turns() -> None:
    q = queue({"a": 1, "d": 3})
    fill(q, "a", 40)
    fill(q, "d", 40)
    first = Counter(served(q, 40))
    assert first == {"a": 10, "d": 30}


def test_cost_is_charged_so_big_prompts_do_not_win_by_count() -> None:
    q = queue()
    fill(q, "big", 20, cost=4000)
    fill(q, "small", 80, cost=1000)
    got = Counter(served(q, 50))
    assert got == {"big": 10, "small": 40}  # equal tokens: 40k each


def test_newcomer_goes_ahead_of_a_flood() -> None:
    q = queue()
    fill(q, "a", 50)
    served(q, 5)
    q.push(entry("b"))
    assert served(q, 2) == ["b", "a"]  # its tag is the band's virtual time: next in line


def test_an_idle_team_gets_no_credit_for_idling() -> None:
    q = queue()
    fill(q, "a", 200)
    served(q, 100)  # b sent nothing all this time
    fill(q, "b", 50)
    got = served(q, 20)
    assert 9 <= got.count("b") <= 11  # shares from now on, not a burst of 100 for b


def test_removed_and_expired_entries_do_not_cost_their_team() -> None:
    q = queue()
    a = fill(q, "a", 4)
    b = fill(q, "b", 4)
    assert q.remove(b[0]) and q.remove(b[1])
    assert not q.remove(b[0])  # already gone
    assert served(q, 4) == ["a", "b", "a", "b"]
    assert q.pop() is a[2] and len(q) == 1


def test_expire_takes_out_due_entries_only() -> None:
    q = queue()
    early = entry("a", at=0.0, wait=1.0)
    late = entry("a", at=0.5, wait=1.0)
    other = entry("b", at=0.2, wait=1.0)
    for e in (early, late, other):
        q.push(e)
    assert q.next_deadline() == 1.0
    assert q.expire(0.99) == []
    assert q.expire(1.2) == [early, other]
    assert q.next_deadline() == 1.5
    assert q.pop() is late
    assert q.expire(10.0) == [] and q.next_deadline() is None


def test_higher_band_first_and_strict_without_min_share() -> None:
    q = queue()
    fill(q, "low", 5, band=0)
    fill(q, "high", 5, band=10)
    assert served(q, 5) == ["high"] * 5
    assert served(q, 5) == ["low"] * 5


@pytest.mark.parametrize("share", [0.1, 0.25])
def test_min_share_keeps_a_lower_band_moving(share: float) -> None:
    q = queue(min_share=share)
    fill(q, "low", 1000, band=0)
    fill(q, "high", 1000, band=10)
    got = Counter(served(q, 400))
    assert abs(got["low"] - 400 * share) <= 2


def test_min_share_counts_cost_and_each_band() -> None:
    q = queue(min_share=0.1)
    fill(q, "top", 1000, band=20)
    fill(q, "mid", 1000, band=10, cost=2.0)
    fill(q, "low", 1000, band=0)
    cost: Counter[str] = Counter()
    for _ in range(600):
        e = q.pop()
        assert e is not None
        cost[e.team] += e.cost
    total = sum(cost.values())
    assert abs(cost["mid"] / total - 0.1) < 0.01
    assert abs(cost["low"] / total - 0.1) < 0.01


def test_min_share_is_not_banked_while_a_band_is_idle() -> None:
    q = queue(min_share=0.2)
    fill(q, "high", 500, band=10)
    served(q, 100)  # nobody below: nothing owed
    fill(q, "low", 100, band=0)
    got = served(q, 10)
    assert got.count("low") == 2


def test_weights_apply_within_a_band_while_bands_share() -> None:
    q = queue({"a": 1, "b": 3}, min_share=0.2)
    fill(q, "vip", 1000, band=5)
    fill(q, "a", 1000, band=0)
    fill(q, "b", 1000, band=0)
    got = Counter(served(q, 500))
    assert abs(got["a"] + got["b"] - 100) <= 2
    assert abs(got["b"] / (got["a"] + got["b"]) - 0.75) < 0.05


def test_a_full_queue_pushes_out_the_heaviest_team_not_the_newcomer() -> None:
    q = queue(max_depth=4)
    flood = fill(q, "a", 4)
    ok, out = q.push(entry("b"))
    assert ok and out is flood[-1]  # the flood's newest request makes room
    ok, out = q.push(entry("a"))
    assert (ok, out) == (False, None)  # the flood itself is refused
    ok, out = q.push(entry("b"))
    assert ok and out is flood[-2]
    ok, out = q.push(entry("b"))
    assert (ok, out) == (False, None)  # b would be as heavy as a: refused
    assert len(q) == 4


def test_a_full_queue_makes_room_for_a_higher_band_only() -> None:
    q = queue(max_depth=3)
    low = fill(q, "x", 2, band=0)
    fill(q, "y", 1, band=5)
    ok, out = q.push(entry("z", band=10))
    assert ok and out is low[-1]
    assert q.push(entry("w", band=-5)) == (False, None)
    assert served(q, 3) == ["z", "y", "x"]


def test_flood_and_trickle_on_a_simulated_server() -> None:
    """A server of 4 slots, 1 s per request: a flood of 40 outstanding requests and a
    team sending at 20% of capacity. The trickle waits less than one service time and
    gets everything it asks; the flood gets the rest."""
    slots, service = 4, 1.0
    q = queue()
    now = 0.0
    free = slots
    events: list[tuple[float, int, str]] = []  # (time, order, kind)
    order = 0
    waits: dict[str, list[float]] = {"flood": [], "trickle": []}
    done: Counter[str] = Counter()
    for _ in range(40):
        q.push(entry("flood", at=0.0, wait=1e9))
    for k in range(100):  # 0.8 requests/s = 20% of 4/s, evenly spaced
        events.append((0.3 + k * 1.25, order, "arrive"))
        order += 1
    heapq.heapify(events)
    while events and now < 120:
        now, _, kind = heapq.heappop(events)
        if kind == "arrive":
            q.push(entry("trickle", at=now, wait=1e9))
        elif kind.startswith("done:"):
            free += 1
            team = kind[5:]
            done[team] += 1
            if team == "flood":
                q.push(entry("flood", at=now, wait=1e9))  # the flood keeps 40 outstanding
        while free and len(q):
            e = q.pop()
            assert e is not None
            waits[e.team].append(now - e.arrived)
            free -= 1
            order += 1
            heapq.heappush(events, (now + service, order, "done:" + e.team))
    assert len(waits["trickle"]) >= 95  # all it asked for (a few still in service)
    assert max(waits["trickle"]) < service
    assert done["flood"] >= 0.75 * 4 * 120 * 0.8  # the rest of the capacity


def test_requests_that_went_straight_through_count_when_a_queue_forms() -> None:
    q = queue()
    for _ in range(3):
        q.passed("a", 0, 1.0)  # a used the pool while nothing waited
    fill(q, "a", 3)
    fill(q, "b", 3)
    assert served(q, 4) == ["b", "a", "b", "a"]  # b first, then shares


def test_passing_straight_through_leaves_no_lasting_debt() -> None:
    q = queue()
    for _ in range(500):
        q.passed("a", 0, 1.0)  # a busy morning with nothing waiting
    fill(q, "b", 10)
    fill(q, "a", 10)
    assert served(q, 6) == ["b", "b", "a", "b", "a", "b"]  # one request behind, no more
