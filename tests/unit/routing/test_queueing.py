"""The asyncio side of pool queues: places, turns, timeouts, disconnects (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from multidict import CIMultiDict

from router.config import Config
from router.errors import InvalidRequest
from router.metrics import Metrics
from router.routing.balance import Balancer
from router.routing.health import BackendState
from router.routing.queueing import Gate, Place, QueueExit, Scheduler
from tests.support.gateway import make_config


def config(**queue: Any) -> Config:
    return make_config({
        "backends": {"gpu": {"provider": "simulate", "max_concurrency": 2},
                     "other": {"provider": "simulate"}},
        "pools": {"local": {"members": [{"backend": "gpu", "model": "m"}],
                           "queue": {"max_wait_ms": 5000, "max_depth": 100, **queue}},
                  "plain": {"members": [{"backend": "other", "model": "m"}]}},
        "models": {"chat": {"routes": [{"pools": ["local", "plain"]}]}},
        "teams": {"a": {}, "b": {"weight": 2}, "vip": {"priority": 10},
                  "batch": {"priority": -1}},
    })  # fmt: skip


class Rig:
    def __init__(self, cfg: Config) -> None:
        self.metrics = Metrics()
        self.states = {n: BackendState(n, max_concurrency=b.max_concurrency)
                       for n, b in cfg.backends.items()}  # fmt: skip
        self.balancers = {n: Balancer(n, p, self.states) for n, p in cfg.pools.items()}
        self.scheduler = Scheduler(cfg, self.balancers, self.metrics.queue_series)
        self.gate = self.scheduler.gates["local"]
        self.gpu = self.states["gpu"]

    def place(self, team: str, priority: str | None = None) -> Place:
        headers = CIMultiDict({"x-spillway-priority": priority} if priority is not None else {})
        got = self.scheduler.place(team, headers)
        assert got is not None
        return got

    def sample(self, name: str, **labels: str) -> float:
        got = self.metrics.registry.get_sample_value(name, {"pool": "local", **labels})
        return got or 0.0

    async def go(self, team: str, cost: float = 1.0, **kw: Any) -> asyncio.Task[None]:
        """A request that, once given its turn, runs on the member until finished."""
        task = asyncio.create_task(self.gate.wait(self.place(team, **kw), cost, last_pool=True))
        await asyncio.sleep(0)
        return task

    def start(self) -> None:
        self.gpu.inflight += 1  # what the walk does when its attempt starts

    def finish(self) -> None:
        self.gpu.inflight -= 1
        self.gate.release()


# ------------------------------------------------------------------------ places


def test_the_priority_header_lowers_and_never_raises() -> None:
    rig = Rig(config())
    assert rig.place("a").band == 0
    assert rig.place("a", "10").band == 0  # cannot raise
    assert rig.place("vip").band == 10
    assert rig.place("vip", "5").band == 0  # lowered to the band below
    assert rig.place("vip", " 10 ").band == 10
    assert rig.place("vip", "-3").band == -1 and rig.place("vip", "-3").sheddable
    assert rig.place("batch", "999").band == -1
    assert rig.place("a", "-9999").band == -1  # any negative is the sheddable band
    assert {rig.place(t, p).label for t in ("a", "vip") for p in ("7", "-50", "3")} <= {
        "0",
        "10",
        "-1",
    }  # labels are bands from config only


@pytest.mark.parametrize("bad", ["high", "1.5", "", "12345", "0x10", "1_0", "--1"])
def test_a_malformed_priority_header_is_a_400(bad: str) -> None:
    rig = Rig(config())
    with pytest.raises(InvalidRequest) as err:
        rig.place("a", bad)
    assert err.value.status == 400 and err.value.code == "invalid_priority"


def test_unknown_teams_share_one_bounded_label() -> None:
    rig = Rig(config())
    assert rig.place("someone-else").team == ""


def test_no_queued_pool_no_place() -> None:
    cfg = make_config({
        "backends": {"x": {"provider": "simulate"}},
        "pools": {"p": {"members": [{"backend": "x", "model": "m"}]}},
        "models": {"chat": {"routes": [{"pools": ["p"]}]}},
    })  # fmt: skip
    s = Scheduler(cfg, {"p": Balancer("p", cfg.pools["p"], {"x": BackendState("x")})},
                  Metrics().queue_series)  # fmt: skip
    assert s.place("t", CIMultiDict({"x-spillway-priority": "not even checked"})) is None


# ------------------------------------------------------------------------- turns


async def test_no_wait_while_there_is_room() -> None:
    rig = Rig(config())
    for _ in range(2):
        task = await rig.go("a")
        assert task.done() and task.exception() is None
        rig.start()
    assert rig.sample("spillway_queue_wait_seconds_count", team="a", priority="0") == 2
    blocked = await rig.go("a")
    assert not blocked.done() and len(rig.gate.queue) == 1
    assert rig.sample("spillway_queue_depth", team="a", priority="0") == 1
    rig.finish()
    await asyncio.sleep(0)
    assert blocked.done() and blocked.exception() is None
    assert rig.sample("spillway_queue_depth", team="a", priority="0") == 0
    assert rig.gate.in_transit == 0


async def test_turns_follow_the_fair_order_across_teams_and_bands() -> None:
    rig = Rig(config())
    for _ in range(2):
        await rig.go("a")
        rig.start()
    order: list[str] = []

    async def request(team: str) -> None:
        await rig.gate.wait(rig.place(team), 1.0, last_pool=True)
        order.append(team)

    tasks = []
    for team in ["a"] * 6 + ["b"] * 6 + ["vip"]:
        tasks.append(asyncio.create_task(request(team)))
        await asyncio.sleep(0)
    for _ in range(13):
        rig.finish()  # one finishes; the next in line starts
        await asyncio.sleep(0)
        rig.start()
    await asyncio.gather(*tasks)
    assert order[0] == "vip"  # the higher band first
    assert order[1:10].count("b") == 6  # weight 2: b gets two turns to a's one
    assert order[-3:] == ["a", "a", "a"]


async def test_waiting_past_max_wait_leaves_with_429() -> None:
    rig = Rig(config(max_wait_ms=30))
    for _ in range(2):
        await rig.go("a")
        rig.start()
    waiting = await rig.go("b")
    with pytest.raises(QueueExit) as left:
        await waiting
    assert left.value.reason == "queue_timeout"
    err = left.value.error
    assert err.status == 429 and err.code == "queue_timeout"
    assert err.headers["Retry-After"] == "1"
    assert len(rig.gate.queue) == 0
    assert rig.sample("spillway_queue_dropped_total", team="b", priority="0",
                      reason="timeout") == 1  # fmt: skip
    assert rig.sample("spillway_queue_spilled_total", team="b", priority="0") == 0  # last pool
    assert rig.sample("spillway_queue_depth", team="b", priority="0") == 0


async def test_a_client_leaving_the_line_frees_its_place() -> None:
    rig = Rig(config())
    for _ in range(2):
        await rig.go("a")
        rig.start()
    leaving = await rig.go("a")
    staying = await rig.go("b")
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert len(rig.gate.queue) == 1
    assert rig.sample("spillway_queue_dropped_total", team="a", priority="0",
                      reason="disconnect") == 1  # fmt: skip
    rig.finish()
    await asyncio.sleep(0)
    assert staying.done() and staying.exception() is None


async def test_a_turn_given_to_a_leaving_client_goes_to_the_next() -> None:
    rig = Rig(config())
    for _ in range(2):
        await rig.go("a")
        rig.start()
    first = await rig.go("a")
    second = await rig.go("b")
    rig.finish()  # first is given the turn ...
    first.cancel()  # ... but its client is gone before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0)
    assert second.done() and second.exception() is None
    assert rig.gate.in_transit == 0


async def test_a_full_queue_pushes_out_the_flood() -> None:
    rig = Rig(config(max_depth=3))
    for _ in range(2):
        await rig.go("a")
        rig.start()
    flood = [await rig.go("a") for _ in range(3)]
    newcomer = await rig.go("b")
    await asyncio.sleep(0)
    with pytest.raises(QueueExit) as out:
        await flood[-1]
    assert out.value.reason == "queue_full" and out.value.error.code == "queue_full"
    refused = await rig.go("a")
    with pytest.raises(QueueExit):
        await refused
    assert not newcomer.done() and len(rig.gate.queue) == 3
    assert rig.sample("spillway_queue_dropped_total", team="a", priority="0",
                      reason="full") == 2  # fmt: skip
    for task in (*flood[:2], newcomer):
        task.cancel()
    await asyncio.gather(*flood[:2], newcomer, return_exceptions=True)


async def test_sheddable_requests_never_wait() -> None:
    rig = Rig(config())
    ok = await rig.go("batch")
    assert ok.done() and ok.exception() is None  # room: it goes
    rig.start()
    rig.start()
    shed = await rig.go("batch")
    with pytest.raises(QueueExit) as out:
        await shed
    assert out.value.reason == "shed" and out.value.error.status == 429
    place = rig.place("batch")
    assert rig.scheduler.admission("local", "saturated", place, last_pool=False) == "shed"
    assert rig.scheduler.admission("local", "saturated", rig.place("a"), last_pool=False) == "ok"
    assert rig.scheduler.admission("plain", "saturated", rig.place("a"), last_pool=False) == (
        "saturated"
    )  # a pool without a queue: skipped as before
    assert rig.sample("spillway_queue_dropped_total", team="batch", priority="-1",
                      reason="shed") == 2  # fmt: skip
    assert rig.sample("spillway_queue_spilled_total", team="batch", priority="-1") == 1


async def test_room_appearing_without_a_release_is_noticed() -> None:
    rig = Rig(config())
    for _ in range(2):
        await rig.go("a")
        rig.start()
    waiting = await rig.go("a")
    rig.gpu.inflight -= 1  # a request of another pool sharing the backend ended
    await asyncio.wait_for(waiting, timeout=5)  # the gate's periodic look finds room


def test_gates_sharing_a_backend_wake_each_other() -> None:
    cfg = make_config({
        "backends": {"gpu": {"provider": "simulate", "max_concurrency": 1},
                     "x": {"provider": "simulate"}},
        "pools": {"p1": {"members": [{"backend": "gpu", "model": "m"}], "queue": {}},
                  "p2": {"members": [{"backend": "gpu", "model": "m"}], "queue": {}},
                  "p3": {"members": [{"backend": "x", "model": "m"}], "queue": {}}},
        "models": {"chat": {"routes": [{"pools": ["p1", "p2", "p3"]}]}},
    })  # fmt: skip
    states = {n: BackendState(n) for n in cfg.backends}
    s = Scheduler(cfg, {n: Balancer(n, p, states) for n, p in cfg.pools.items()},
                  Metrics().queue_series)  # fmt: skip
    gates: dict[str, Gate] = s.gates
    assert gates["p1"].peers == [gates["p2"]] and gates["p3"].peers == []
