"""Admission and settlement against Redis (standalone or Cluster).

Every admission is one ``EVALSHA`` of ``admit.lua``; admissions queued in the
same event-loop tick go out as one pipeline, and queued settlements ride along
(or go on their own a few milliseconds later). Settlement never blocks a
response. A script missing after a restart or failover is reloaded and the
call resent; both scripts are idempotent per request id, so a resend after a
timeout is applied once.

On a Cluster, the checks of one hash tag (a team, a pool) run in one script;
a request touching two tags runs two scripts in the same pipeline, and a
refusal on one gives back what the other reserved.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from router.config import RedisSettings
from router.quota.base import ADMITTED, Reply, StoreUnavailable
from router.quota.plan import Check

log = logging.getLogger("spillway.quota")

SETTLE_DELAY = 0.002  # seconds a lone settlement waits for company
SETTLE_ATTEMPTS = 5


def _script(name: str) -> str:
    lua = resources.files("router.quota").joinpath("lua")
    return lua.joinpath("common.lua").read_text() + "\n" + lua.joinpath(name).read_text()


class _Script:
    __slots__ = ("sha", "text")

    def __init__(self, name: str) -> None:
        self.text = _script(name)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


_Item = tuple[_Script, list[str], list[Any], "asyncio.Future[Any] | None", int]


class RedisStore:
    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._prefix = settings.key_prefix
        common: dict[str, Any] = {
            "socket_timeout": settings.socket_timeout_seconds,
            "socket_connect_timeout": settings.connect_timeout_seconds,
            "decode_responses": False,
        }
        self.client: Any
        if settings.cluster:
            self.client = RedisCluster.from_url(settings.url, **common)
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.url,
                max_connections=settings.max_connections,
                timeout=settings.socket_timeout_seconds,
                **common,
            )
            self.client = aioredis.Redis(connection_pool=pool)
        self._cluster = settings.cluster
        self._admit = _Script("admit.lua")
        self._settle = _Script("settle.lua")
        self._status = _Script("status.lua")
        self._queue: list[_Item] = []
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._handle_soon = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._timeout = settings.socket_timeout_seconds * 2

    # ------------------------------------------------------------------ groups
    def _groups(self, checks: Sequence[Check]) -> list[tuple[str, list[int]]]:
        if not self._cluster:
            return [(checks[0].tag, list(range(len(checks))))]
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(checks):
            groups.setdefault(c.tag, []).append(i)
        return list(groups.items())

    def _record_keys(self, tag: str, rid: str) -> list[str]:
        return [f"{self._prefix}:{tag}:rec:{rid}", f"{self._prefix}:{tag}:pending"]

    # ---------------------------------------------------------------- admission
    async def admit(
        self, rid: str, checks: Sequence[Check], prompt: int, out: int, n: int,
        min_out: int, lease: int,
    ) -> Reply:
        if not checks:
            return Reply(ADMITTED, out, -1, 0.0, ())
        groups = self._groups(checks)
        loop = asyncio.get_running_loop()
        futures = []
        for tag, idx in groups:
            keys = self._record_keys(tag, rid) + [checks[i].key for i in idx]
            args: list[Any] = [rid, lease, out, min_out, len(idx)]
            for i in idx:
                c = checks[i]
                base, per = c.amounts(prompt, n)
                args += [c.kind, c.window, repr(c.limit), repr(base), repr(per)]
            fut: asyncio.Future[Any] = loop.create_future()
            self._queue.append((self._admit, keys, args, fut, 0))
            futures.append(fut)
        self._schedule(soon=True)
        try:
            raw = [await f for f in futures]
        except asyncio.CancelledError:
            for (tag, idx), f in zip(groups, futures, strict=True):
                f.add_done_callback(self._release_on_cancel(rid, tag, len(idx), lease))
            raise
        if len(groups) == 1:
            return _parse(raw[0], len(checks))
        return self._merge(rid, groups, raw, len(checks), lease)

    def _release_on_cancel(self, rid: str, tag: str, n: int, lease: int) -> Any:
        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            if int(f.result()[0]) == ADMITTED:
                self._enqueue_settle(tag, rid, [0] * n, lease)

        return done

    def _merge(
        self, rid: str, groups: list[tuple[str, list[int]]], raw: list[Any], n: int, lease: int
    ) -> Reply:
        replies = [_parse(r, len(idx)) for r, (_, idx) in zip(raw, groups, strict=True)]
        used: list[float] = [0.0] * n
        for reply, (_, idx) in zip(replies, groups, strict=True):
            for j, i in enumerate(idx):
                if j < len(reply.used):
                    used[i] = reply.used[j]
        bad = next((r for r in replies if r.code != ADMITTED), None)
        if bad is None:
            return Reply(ADMITTED, min(r.out for r in replies), -1, replies[0].now, tuple(used))
        for reply, (tag, idx) in zip(replies, groups, strict=True):
            if reply.code == ADMITTED:
                self._enqueue_settle(tag, rid, [0] * len(idx), lease)
        bad_group = groups[replies.index(bad)][1]
        return Reply(bad.code, bad.out, bad_group[bad.failed], bad.now, tuple(used))

    # --------------------------------------------------------------- settlement
    def settle(self, rid: str, checks: Sequence[Check], actual: Sequence[int], lease: int) -> None:
        if not checks:
            return
        for tag, idx in self._groups(checks):
            self._enqueue_settle(tag, rid, [actual[i] for i in idx], lease)

    def _enqueue_settle(self, tag: str, rid: str, actual: list[int], lease: int) -> None:
        keys = self._record_keys(tag, rid)
        self._queue.append((self._settle, keys, [rid, lease, *actual], None, 0))
        self._schedule(soon=False)

    # ----------------------------------------------------------------- batching
    def _schedule(self, *, soon: bool) -> None:
        if self._handle is not None:
            if self._handle_soon or not soon:
                return
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._handle_soon = soon
        self._handle = (
            loop.call_soon(self._flush) if soon else loop.call_later(SETTLE_DELAY, self._flush)
        )

    def _flush(self) -> None:
        self._handle = None
        batch, self._queue = self._queue, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[_Item]) -> list[Any]:
        """Send a batch: one pipeline, or on a Cluster one call per item in parallel
        (a Cluster pipeline cannot carry EVALSHA)."""
        async with asyncio.timeout(self._timeout):
            if self._cluster:
                return list(
                    await asyncio.gather(
                        *(self.client.evalsha(s.sha, len(k), *k, *a) for s, k, a, _, _ in batch),
                        return_exceptions=True,
                    )
                )
            pipe = self.client.pipeline(transaction=False)
            for script, keys, args, _, _ in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def _send(self, batch: list[_Item], reloaded: bool = False) -> None:
        try:
            results = await self._execute(batch)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(batch, exc)
            return
        except BaseException as exc:  # never leave a waiter hanging
            self._failed(batch, exc)
            raise
        missing = [i for i, r in zip(batch, results, strict=True) if isinstance(r, NoScriptError)]
        if missing and not reloaded:
            try:
                await self._load_scripts()
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(missing, exc)
            else:
                await self._send(missing, reloaded=True)
        errors: list[_Item] = []
        first_error: BaseException | None = None
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError) and not reloaded:
                continue
            fut = item[3]
            if isinstance(result, Exception):
                errors.append(item)
                first_error = first_error or result
            elif fut is not None and not fut.done():
                fut.set_result(result)
        if errors and first_error is not None:
            log.error("redis script failed: %s", first_error)
            self._failed(errors, first_error)

    def _failed(self, batch: list[_Item], exc: BaseException) -> None:
        retry: list[_Item] = []
        for script, keys, args, fut, attempts in batch:
            if fut is not None:
                if not fut.done():
                    fut.set_exception(StoreUnavailable(f"redis: {type(exc).__name__}: {exc}"))
            elif attempts + 1 < SETTLE_ATTEMPTS:
                retry.append((script, keys, args, None, attempts + 1))
            else:
                log.error("giving up a settlement after %d attempts: %s", SETTLE_ATTEMPTS, exc)
        if retry:
            loop = asyncio.get_running_loop()

            def requeue() -> None:
                self._queue.extend(retry)
                self._schedule(soon=False)

            loop.call_later(0.05 * 2 ** retry[0][4], requeue)

    async def _load_scripts(self) -> None:
        for script in (self._admit, self._settle, self._status):
            await self.client.script_load(script.text)

    # ------------------------------------------------------------------- other
    async def status(self, checks: Sequence[Check]) -> tuple[float, list[float]]:
        if not checks:
            return 0.0, []
        used: list[float] = [0.0] * len(checks)
        now = 0.0
        for _tag, idx in self._groups(checks):
            keys = [checks[i].key for i in idx]
            args: list[Any] = [len(idx)]
            for i in idx:
                args += [checks[i].kind, checks[i].window]
            try:
                async with asyncio.timeout(self._timeout):
                    try:
                        raw = await self.client.evalsha(self._status.sha, len(keys), *keys, *args)
                    except NoScriptError:
                        await self._load_scripts()
                        raw = await self.client.evalsha(self._status.sha, len(keys), *keys, *args)
            except (RedisError, OSError, TimeoutError) as exc:
                raise StoreUnavailable(str(exc)) from None
            now = float(raw[0])
            for j, i in enumerate(idx):
                used[i] = float(raw[1 + j])
        return now, used

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        """Send what is queued, wait for what is in flight, close the client."""
        for _ in range(3):
            if self._handle is not None:
                self._handle.cancel()
                self._flush()
            if not self._tasks:
                break
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._cluster:
            await self.client.aclose()
        else:
            await self.client.aclose(close_connection_pool=True)


def _parse(raw: Any, n: int) -> Reply:
    code, out, failed, now = int(raw[0]), int(raw[1]), int(raw[2]), float(raw[3])
    used = tuple(float(x) for x in raw[4:]) if len(raw) > 4 else (0.0,) * 0
    return Reply(code, out, failed, now, used)
