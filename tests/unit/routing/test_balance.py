"""Choosing a member inside a pool: strategies, affinity, saturation."""

from __future__ import annotations

from collections import Counter
from typing import Any

from router.config import Pool
from router.routing.balance import Balancer
from router.routing.health import BackendState, Load


def pool(strategy: str, *members: str | tuple[str, float], **extra: Any) -> Pool:
    ms = []
    for m in members:
        name, weight = (m, 1.0) if isinstance(m, str) else m
        ms.append({"backend": name, "model": "m", "weight": weight})
    return Pool.model_validate({"strategy": strategy, "members": ms, **extra})


def states(*names: str, max_concurrency: int | None = None) -> dict[str, BackendState]:
    return {n: BackendState(n, max_concurrency=max_concurrency) for n in names}


def firsts(b: Balancer, n: int, session: str | None = None) -> Counter[str]:
    return Counter(b.order(0.0, session)[0].backend for _ in range(n))


def test_round_robin_rotates_and_lists_everyone() -> None:
    b = Balancer("p", pool("round_robin", "a", "b", "c"), states("a", "b", "c"))
    orders = [[m.backend for m in b.order()] for _ in range(3)]
    assert [o[0] for o in orders] == ["a", "b", "c"]
    assert all(sorted(o) == ["a", "b", "c"] for o in orders)


def test_weighted_is_proportional_and_smooth() -> None:
    b = Balancer("p", pool("weighted", ("a", 3), ("b", 1)), states("a", "b"))
    seq = [b.order()[0].backend for _ in range(8)]
    assert Counter(seq) == {"a": 6, "b": 2}
    assert "b" in seq[:4] and "b" in seq[4:]  # interleaved, not a burst of a's


def test_unhealthy_and_saturated_members_go_last() -> None:
    st = states("a", "b", "c", max_concurrency=2)
    b = Balancer("p", pool("round_robin", "a", "b", "c"), st)
    st["a"].healthy = False
    st["b"].inflight = 2
    for _ in range(3):
        order = [m.backend for m in b.order()]
        assert order[0] == "c" and sorted(order[1:]) == ["a", "b"]
    assert b.status() == "ok"
    st["c"].inflight = 2
    assert b.status() == "saturated"
    st["c"].inflight = 1
    assert b.status() == "ok"  # drained: traffic returns


def test_pool_status_unhealthy_when_nobody_is_healthy() -> None:
    st = states("a", "b")
    b = Balancer("p", pool("round_robin", "a", "b"), st)
    st["a"].healthy = st["b"].healthy = False
    assert b.status() == "unhealthy"
    assert len(b.order()) == 2  # still listed: the caller may try them in a panic


def test_waiting_queue_past_max_waiting_saturates() -> None:
    st = states("a", "b")
    b = Balancer("p", pool("least_loaded", "a", "b", max_waiting=4), st)
    st["a"].update_load(Load(running=8, waiting=5, kv_cache=0.9))
    assert b.saturated(b.members[0]) and not b.saturated(b.members[1])
    st["b"].update_load(Load(running=8, waiting=4, kv_cache=0.9))
    assert b.status() == "ok"  # b is at the threshold, not past it
    st["b"].update_load(Load(running=8, waiting=6, kv_cache=0.9))
    assert b.status() == "saturated"


def test_least_loaded_prefers_the_shorter_vllm_queue() -> None:
    st = states("a", "b")
    b = Balancer("p", pool("least_loaded", "a", "b"), st)
    st["a"].update_load(Load(running=4, waiting=6, kv_cache=0.5))
    st["b"].update_load(Load(running=4, waiting=0, kv_cache=0.5))
    assert firsts(b, 10) == {"b": 10}


def test_least_loaded_counts_own_inflight_between_scrapes() -> None:
    st = states("a", "b")
    b = Balancer("p", pool("least_loaded", "a", "b"), st)
    st["a"].update_load(Load(running=2, waiting=0, kv_cache=0.1))
    st["b"].update_load(Load(running=0, waiting=0, kv_cache=0.1))
    picks = []
    for _ in range(4):  # each pick starts a request on the chosen member
        m = b.order()[0]
        m.state.inflight += 1
        picks.append(m.backend)
    assert picks[:2] == ["b", "b"]
    assert Counter(picks) == {"a": 1, "b": 3}


def test_least_loaded_without_metrics_uses_inflight_and_weight() -> None:
    st = states("a", "b")
    b = Balancer("p", pool("least_loaded", ("a", 1), ("b", 3)), st)
    st["a"].inflight = 1
    st["b"].inflight = 2  # 2/3 per unit of weight < 1
    assert b.order()[0].backend == "b"


def test_least_loaded_ties_rotate_and_kv_breaks_ties() -> None:
    st = states("a", "b")
    b = Balancer("p", pool("least_loaded", "a", "b"), st)
    assert firsts(b, 10) == {"a": 5, "b": 5}
    st["a"].update_load(Load(running=1, waiting=0, kv_cache=0.8))
    st["b"].update_load(Load(running=1, waiting=0, kv_cache=0.2))
    assert firsts(b, 6) == {"b": 6}


def test_lowest_latency_is_peak_ewma() -> None:
    st = states("fast", "slow", "new")
    b = Balancer("p", pool("lowest_latency", "fast", "slow", "new"), st)
    st["fast"].record_success(0.1)
    st["slow"].record_success(0.5)
    assert firsts(b, 3) == {"new": 3}  # never measured: tried first
    st["new"].record_success(0.5)
    assert firsts(b, 5) == {"fast": 5}
    st["fast"].inflight = 9  # 0.1 x 10 = 1.0 > 0.5 x 1: its queue makes it slower
    assert b.order()[0].backend in ("slow", "new")


def test_affinity_sticks_and_moves_only_when_it_must() -> None:
    names = [f"g{i}" for i in range(5)]
    st = states(*names, max_concurrency=1)
    b = Balancer("p", pool("round_robin", *names, affinity="user"), st)
    homes = {f"user-{i}": b.order(0.0, f"user-{i}")[0].backend for i in range(50)}
    assert len(set(homes.values())) >= 4  # spread over the members
    for user, home in homes.items():
        assert firsts(b, 3, user) == {home: 3}  # the same member every time
    # the home of some sessions is ejected: only those sessions move
    gone = homes["user-0"]
    st[gone].healthy = False
    for user, home in homes.items():
        now = b.order(0.0, user)[0].backend
        assert (now == home) == (home != gone)
    st[gone].healthy = True
    st[gone].inflight = 1  # saturated: moves too
    assert b.order(0.0, "user-0")[0].backend != gone
    st[gone].inflight = 0
    assert b.order(0.0, "user-0")[0].backend == gone  # and comes back


def test_session_key_sources() -> None:
    st = states("a", "b")
    by_user = Balancer("p", pool("round_robin", "a", "b", affinity="user"), st)
    assert by_user.session_key("alice", {}) == "alice"
    assert by_user.session_key(None, {"x-session-id": "s"}) is None
    by_header = Balancer(
        "p", pool("round_robin", "a", "b", affinity="header", affinity_header="x-conv"), st
    )
    assert by_header.session_key("alice", {"x-conv": "c1"}) == "c1"
    assert by_header.session_key("alice", {}) is None
    none = Balancer("p", pool("round_robin", "a", "b"), st)
    assert none.session_key("alice", {"x-session-id": "s"}) is None


def test_throttled_member_goes_after_the_others() -> None:
    st = states("a", "b")
    b = Balancer("p", pool("round_robin", "a", "b"), st)
    st["a"].throttle(10.0)
    assert [b.order(5.0)[0].backend for _ in range(4)] == ["b"] * 4
    assert {b.order(11.0)[0].backend for _ in range(4)} == {"a", "b"}


def test_what_was_sent_since_a_queueing_scrape_counts_as_waiting() -> None:
    st = states("a")
    b = Balancer("p", pool("least_loaded", "a", max_waiting=4), st)
    s = st["a"]
    s.update_load(Load(running=8, waiting=3, kv_cache=0.5))  # the server is queueing
    assert not b.saturated(b.members[0])
    s.inflight += 2  # sent since the scrape: they wait too
    assert s.waiting_now() == 5 and b.saturated(b.members[0])
    s.inflight -= 2
    assert not b.saturated(b.members[0])
    s.update_load(Load(running=3, waiting=0, kv_cache=0.1))  # room in the batch
    s.inflight += 6
    assert s.waiting_now() == 0 and not b.saturated(b.members[0])


def test_room_counts_free_slots_of_available_members() -> None:
    st = states("a", "b", "c", max_concurrency=4)
    st["c"].max_concurrency = None
    b = Balancer("p", pool("round_robin", "a", "b", "c"), st)
    assert b.room() == 4 + 4 + 1
    st["a"].inflight = 3
    st["b"].healthy = False
    assert b.room() == 1 + 1
    st["a"].inflight = 4
    assert b.room() == 1  # the member without a limit: one at a time
