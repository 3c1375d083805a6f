"""Admission and settlement against Redis (standalone, Sentinel or Cluster; redis-py).

Every admission is one ``EVALSHA`` of ``admit.lua``, sent in the same turn of
the event loop in one pipeline with the other admissions of that turn and the
settlements waiting (a lone settlement waits a few milliseconds for company), so
a busy gateway sends many calls per round trip. A plan's checks go as one
pre-encoded argument: the per-call Python work is packing about a dozen
arguments.
Settlement never blocks a response. A script missing after a restart or a
failover is loaded again and its calls resent (NOSCRIPT means not run).

What is uncertain is never taken as "did not happen":

* An admission whose waiter left (the client hung up) is still seen through to
  Redis's answer; if it was admitted, it is refunded.
* An admission whose answer did not come (timeout, cut, stall) may still be
  applied by Redis: an *orphan* refund is queued for it. ``settle.lua`` leaves a
  tombstone when it finds no record, so an admission landing later does nothing.
* Settlements (and those refunds) are retried with backoff until they are
  applied or their lease is over; failures count in
  ``spillway_redis_errors_total{op="settle"}`` and the ones waiting for a retry in
  ``spillway_quota_settlements_pending``.

On a Cluster the checks of one hash tag (a team, a pool) run in one script; a
request touching two tags runs two scripts, and a refusal or failure on one
gives back what the other reserved.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from hiredis import pack_command
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from router.config import RedisSettings
from router.metrics import Metrics
from router.quota.base import ADMITTED, Reply, StoreUnavailable
from router.quota.connect import make_client
from router.quota.plan import Check, Checks

log = logging.getLogger("spillway.quota")

SETTLE_DELAY = 0.002  # seconds a lone settlement waits for company
RETRY_FIRST, RETRY_MAX = 0.05, 2.0  # backoff of a failed settlement, seconds
_FAILURES = (RedisError, OSError, TimeoutError)


def _script(name: str) -> str:
    lua = resources.files("router.quota").joinpath("lua")
    return lua.joinpath("common.lua").read_text() + "\n" + lua.joinpath(name).read_text()


class Script:
    __slots__ = ("sha", "sha_bytes", "text")

    def __init__(self, name: str) -> None:
        self.text = _script(name)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()
        self.sha_bytes = self.sha.encode()


class _Group:
    """The checks of one hash tag, as one script call takes them, encoded once per
    plan: the record key's prefix, the other keys, the checks' values."""

    __slots__ = ("checks", "keys", "record", "spec")

    def __init__(self, prefix: str, checks: Sequence[Check]) -> None:
        tag = checks[0].tag
        self.checks = checks
        self.record = f"{prefix}:{tag}:rec:"
        self.keys: tuple[str | bytes, ...] = (f"{prefix}:{tag}:pending",
                                              *(c.key_bytes for c in checks))  # fmt: skip
        self.spec = b";".join([c.spec for c in checks])


class _Item:
    """One queued script call. An admission has a future (its waiter); a settlement
    has a deadline (its lease's end) until which it is retried."""

    __slots__ = ("attempts", "deadline", "future", "group", "lease", "numbers", "rid",
                 "script")  # fmt: skip

    def __init__(
        self, script: Script, group: _Group, numbers: str, rid: str, lease: int,
        future: asyncio.Future[Any] | None,
    ) -> None:  # fmt: skip
        self.script, self.group, self.numbers, self.future = script, group, numbers, future
        self.rid, self.lease = rid, lease
        self.attempts = 0
        self.deadline = 0.0

    def command(self) -> tuple[Any, ...]:
        """``EVALSHA`` with its keys and arguments."""
        group = self.group
        keys = group.keys
        return (b"EVALSHA", self.script.sha_bytes, len(keys) + 1, group.record + self.rid,
                *keys, self.numbers, group.spec)  # fmt: skip


class RedisStore:
    def __init__(self, settings: RedisSettings, metrics: Metrics | None = None) -> None:
        self._prefix = settings.key_prefix
        self._cluster = settings.cluster
        self._timeout = settings.socket_timeout_seconds + settings.connect_timeout_seconds
        self._read_timeout = settings.socket_timeout_seconds  # a batch's, sent and answered
        self._connected = make_client(settings)
        self._client: Any = self._connected.client
        self._batches = self._connected.batches
        self._idle: list[AbstractConnection] = []  # the batcher's connections, kept
        self._metrics = metrics
        self._admit = Script("admit.lua")
        self._settle = Script("settle.lua")
        self._status = Script("status.lua")
        self._checkpoint = Script("checkpoint.lua")
        self._scripts = (self._admit, self._settle, self._status, self._checkpoint)
        self._limit = settings.max_connections  # pipelines in flight at once
        self._queue: list[_Item] = []
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._soon = False
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: list[_Item] = []  # failed settlements, sent again after a pause
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retrying = 0  # settlements that failed and wait for a retry
        self._closing = False

    @property
    def client(self) -> Any:
        """The redis-py client (for other keys kept in the same Redis)."""
        return self._client

    @property
    def pending(self) -> int:
        """Settlements queued again after a failure, not yet applied."""
        return self._retrying

    # ------------------------------------------------------------------ groups
    def _groups(self, checks: Sequence[Check]) -> list[Sequence[Check]]:
        if not self._cluster:
            return [checks]
        groups: dict[str, list[Check]] = {}
        for c in checks:
            groups.setdefault(c.tag, []).append(c)
        return list(groups.values())

    def _plan(self, checks: Sequence[Check]) -> list[_Group]:
        """The script calls of ``checks`` (one per hash tag on a Cluster), encoded once
        per plan and kept on it (the planner hands out the same plan for a caller and
        pool until the config changes)."""
        encoded = getattr(checks, "encoded", None)
        if encoded is not None and encoded[0] is self:
            return encoded[1]  # type: ignore[no-any-return]
        groups = [_Group(self._prefix, g) for g in self._groups(checks)]
        if isinstance(checks, Checks):
            checks.encoded = (self, groups)
        return groups

    # ---------------------------------------------------------------- admission
    async def admit(
        self, rid: str, checks: Sequence[Check], prompt: int, out: int, n: int,
        min_out: int, lease: int,
    ) -> Reply:  # fmt: skip
        if not checks:
            return Reply(ADMITTED, out, -1, 0.0, 0.0, ())
        loop = asyncio.get_running_loop()
        numbers = f"{lease},{out},{min_out},{prompt},{n},{rid}"
        groups = self._plan(checks)
        futures: list[asyncio.Future[Any]] = []
        for group in groups:
            future = loop.create_future()
            self._queue.append(_Item(self._admit, group, numbers, rid, lease, future))
            futures.append(future)
        self._schedule(soon=True)
        raw: list[Any] = []
        try:
            for future in futures:
                raw.append(await future)
        except BaseException:
            # the waiter left (or one group failed): every answer is still read, and
            # an admission made for nobody is refunded
            for future, group in zip(futures, groups, strict=True):
                self._give_back(future, group, rid, lease)
            raise
        if len(raw) == 1:
            return _parse(raw[0])
        return self._merge(rid, groups, raw, checks, lease)

    def _give_back(self, future: asyncio.Future[Any], group: _Group, rid: str, lease: int) -> None:
        if not future.done():
            future.cancel()  # its answer is refunded when it comes (see _deliver)
        elif (
            not future.cancelled() and future.exception() is None and _admitted(future.result())
        ):  # answered, but nobody took the answer
            self._enqueue_settle(group, rid, 0, 0, True, lease, False)

    def _merge(
        self, rid: str, groups: list[_Group], raw: list[Any], checks: Sequence[Check],
        lease: int,
    ) -> Reply:  # fmt: skip
        replies = [_parse(r) for r in raw]
        used: dict[int, float] = {}
        for reply, group in zip(replies, groups, strict=True):
            for c, u in zip(group.checks, reply.used, strict=False):
                used[id(c)] = u
        bad = next((r for r in replies if r.code != ADMITTED), None)
        all_used = tuple(used.get(id(c), 0.0) for c in checks)
        if bad is None:
            return Reply(ADMITTED, min(r.out for r in replies), -1, replies[0].now, 0.0,
                         all_used)  # fmt: skip
        for reply, group in zip(replies, groups, strict=True):
            if reply.code == ADMITTED:
                self._enqueue_settle(group, rid, 0, 0, True, lease, False)
        group = groups[replies.index(bad)]
        failed = checks.index(group.checks[bad.failed])
        return Reply(bad.code, bad.out, failed, bad.now, bad.wait, all_used)

    # --------------------------------------------------------------- settlement
    def settle(
        self, rid: str, checks: Sequence[Check], prompt: int, completion: int, refund: bool,
        lease: int, orphan: bool = False,
    ) -> None:  # fmt: skip
        for group in self._plan(checks) if checks else ():
            self._enqueue_settle(group, rid, prompt, completion, refund, lease, orphan)

    def _enqueue_settle(
        self, group: _Group, rid: str, prompt: int, completion: int, refund: bool,
        lease: int, orphan: bool,
    ) -> None:  # fmt: skip
        numbers = f"{lease},{prompt},{completion},{int(refund)},{int(orphan)},{rid}"
        item = _Item(self._settle, group, numbers, rid, lease, None)
        item.deadline = time.monotonic() + lease
        self._queue.append(item)
        self._schedule(soon=False)

    # ----------------------------------------------------------------- batching
    def _schedule(self, *, soon: bool) -> None:
        """An admission goes out in this turn of the event loop, in one pipeline with
        the other admissions made in it and whatever settlements are waiting; a
        settlement alone waits a little for company. (Each pipeline costs redis-py
        tens of microseconds of Python however small it is: one per loop turn instead
        of one per admission saved about a third of the CPU per request at 32
        concurrent requests.)"""
        if soon:
            if self._handle is not None and not self._soon:
                self._handle.cancel()
                self._handle = None
            if self._handle is None:
                self._soon = True
                self._handle = asyncio.get_running_loop().call_soon(self._flush)
        elif self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(SETTLE_DELAY, self._flush)

    def _flush(self) -> None:
        self._handle = None
        self._soon = False
        if not self._queue or self._inflight >= self._limit:
            return  # nothing to send, or every connection busy: sent when one is back
        batch, self._queue = self._queue, []
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight -= 1
        if self._queue and self._handle is None:
            self._flush()

    async def _execute(self, batch: Sequence[_Item]) -> list[Any]:
        """On standalone Redis (or Sentinel's primary) one write of the batch's calls,
        packed by hiredis, on a connection the batcher keeps (no pool checkout, no
        pipeline object, no timer per reply), the replies read in order; on a Cluster
        one call per item in parallel (each to its slot's node)."""
        if self._cluster:
            cluster: RedisCluster = self._client
            async with asyncio.timeout(self._timeout * 2):
                return list(
                    await asyncio.gather(
                        *(cluster.evalsha(i.script.sha, *i.command()[2:]) for i in batch),
                        return_exceptions=True,
                    )
                )  # fmt: skip
        assert self._batches is not None
        idle = self._idle
        pool = self._batches.connection_pool
        conn = idle.pop() if idle else await pool.get_connection()  # type: ignore[no-untyped-call]
        results: list[Any] = []
        try:
            packed = b"".join([pack_command(i.command()) for i in batch])
            if not conn.is_connected:  # (again) through Sentinel's choice of primary
                async with asyncio.timeout(self._timeout):
                    await conn.connect()
            async with asyncio.timeout(self._read_timeout):  # the batch's one deadline
                await conn.send_packed_command(packed)
                for _ in batch:
                    try:
                        results.append(await conn.read_response())
                    except ResponseError as exc:  # this call failed (NOSCRIPT, a bug...)
                        results.append(exc)
        except BaseException:
            await conn.disconnect(nowait=True)  # replies left unread must not answer others
            raise
        finally:
            idle.append(conn)  # connected again by its next send when it was dropped
        return results

    async def _send(self, batch: list[_Item]) -> None:
        try:
            results = await self._execute(batch)
            missing = [item for item, r in zip(batch, results, strict=True) if _noscript(r)]
            if missing:  # a restarted or promoted Redis: load the scripts, send again
                await self._load_scripts()
                again = await self._execute(missing)
                resent = dict(zip(map(id, missing), again, strict=True))
                results = [resent.get(id(item), r) for item, r in zip(batch, results, strict=True)]
        except _FAILURES as exc:
            self._failed(batch, exc)
            return
        except asyncio.CancelledError:
            self._failed(batch, StoreUnavailable("closed"))
            raise
        except Exception as exc:  # a bug: log it, and never leave a waiter hanging
            log.exception("redis batch failed")
            self._failed(batch, exc)
            return
        errors: list[_Item] = []
        first: BaseException | None = None
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(item)
                first = first or result
            else:
                self._deliver(item, result)
        if errors and first is not None:
            log.error("redis script failed: %s", first)
            self._failed(errors, first)

    def _deliver(self, item: _Item, result: Any) -> None:
        future = item.future
        if future is None:
            if item.attempts:
                self._retrying -= 1
                self._gauge()
        elif future.cancelled():  # the request left while waiting: give it back
            if _admitted(result):
                self._enqueue_settle(item.group, item.rid, 0, 0, True, item.lease, False)
        elif not future.done():
            future.set_result(result)

    def _failed(self, batch: list[_Item], exc: BaseException) -> None:
        """Admissions: the waiter hears "unavailable", and since Redis may still apply
        the call, an orphan refund is queued. Settlements: retried until their lease
        ends."""
        now = time.monotonic()
        retry: list[_Item] = []
        for item in batch:
            if item.future is not None:
                if not item.future.done():
                    item.future.set_exception(StoreUnavailable(f"redis: {exc}"))
                self._enqueue_settle(item.group, item.rid, 0, 0, True, item.lease, True)
                continue
            if self._metrics is not None:
                self._metrics.child(self._metrics.redis_errors, "settle").inc()
            if item.attempts == 0:
                self._retrying += 1
            item.attempts += 1
            if now < item.deadline and not self._closing:
                retry.append(item)
            else:
                self._retrying -= 1
                why = "the gateway stops" if self._closing else "its lease is over"
                log.error("settlement of %s dropped: %s (%s)", item.rid, why, exc)
        self._gauge()
        if retry:
            self._waiting += retry
            if self._retry_handle is None:
                attempts = min(i.attempts for i in retry)
                delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (attempts - 1))
                self._retry_handle = asyncio.get_running_loop().call_later(delay, self._requeue)

    def _requeue(self) -> None:
        self._retry_handle = None
        self._queue += self._waiting
        self._waiting = []
        self._schedule(soon=False)

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.settlements_pending.set(self._retrying)

    async def _load_scripts(self) -> None:
        if self._cluster:
            for script in self._scripts:
                await self._client.script_load(script.text)
            return
        pipe = self._client.pipeline(transaction=False)
        for script in self._scripts:
            pipe.script_load(script.text)
        await pipe.execute()

    # ------------------------------------------------------------------- other
    async def call(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """One script call now (status, checkpoints): raises StoreUnavailable."""
        for attempt in range(2):
            try:
                async with asyncio.timeout(self._timeout * 2):
                    return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                if attempt:
                    break
                try:
                    await self._load_scripts()
                except _FAILURES as exc:
                    raise StoreUnavailable(str(exc)) from None
            except _FAILURES as exc:
                raise StoreUnavailable(str(exc)) from None
        raise StoreUnavailable("script could not be loaded")

    @property
    def checkpoint_script(self) -> Script:
        return self._checkpoint

    @property
    def prefix(self) -> str:
        return self._prefix

    async def status(self, checks: Sequence[Check]) -> tuple[float, list[float]]:
        if not checks:
            return 0.0, []
        used: dict[int, float] = {}
        now = 0.0
        for group in self._groups(checks):
            args: list[Any] = [len(group)]
            for c in group:
                args += [c.kind, c.window]
            raw = await self.call(self._status, [c.key for c in group], args)
            now = float(raw[0])
            for c, value in zip(group, raw[1:], strict=True):
                used[id(c)] = float(value)
        return now, [used[id(c)] for c in checks]

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout * 2):
                return bool(await self._client.ping())
        except _FAILURES:
            return False

    async def aclose(self) -> None:
        """Send what is queued (retries waiting included, once), wait for what is in
        flight, close the client."""
        self._closing = True
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        self._requeue()
        for _ in range(3):
            if self._handle is not None:
                self._handle.cancel()
            self._handle = None
            while self._queue and self._inflight < self._limit:
                self._flush()
            if not self._tasks:
                break
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._connected.aclose()


def _noscript(result: Any) -> bool:
    return isinstance(result, NoScriptError) or (
        isinstance(result, RedisError) and str(result).startswith("NOSCRIPT")
    )


def _admitted(raw: Any) -> bool:
    return bool(int(raw[0]) == ADMITTED)


def _parse(raw: Any) -> Reply:
    code, out, failed = int(raw[0]), int(raw[1]), int(raw[2])
    return Reply(code, out, failed, float(raw[3]), float(raw[4]), tuple(map(float, raw[5:])))
